// Package iser is the iSER transport (RFC 7145): iSCSI PDUs carried in RDMA
// SENDs, and command data moved by RDMA WRITE (reads) and RDMA READ (writes)
// straight between the initiator's buffers and the target's pool buffers.
// It plugs into the iscsi engine as an iscsi.Transport and iscsi.DataMover.
package iser

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/rdma"
)

// Portal accepts iSER connections on an address and serves them with an
// iscsi.Server.
type Portal struct {
	srv  *iscsi.Server
	log  *zap.Logger
	cm   *rdma.CM
	l    *rdma.Listener
	devs *rdma.DevicePool
	addr netip.AddrPort

	mu      sync.Mutex
	regions map[*rdma.PD]*regions // the buffer pool registered per device
	conns   map[*rdma.PD]int      // connections alive per device
	removed map[*rdma.PD]bool     // devices that went away: dropped once their last connection is closed
}

// Listen starts listening for iSER connections on addr, driving RDMA devices with the provider
// choice picks. It refuses an address whose network interface has no RDMA device, or whose
// device no provider can drive, and says why.
func Listen(srv *iscsi.Server, addr netip.AddrPort, provider rdma.ProviderChoice, log *zap.Logger) (*Portal, error) {
	if err := CheckAddr(addr.Addr(), provider); err != nil {
		return nil, fmt.Errorf("iser portal %v: %w", addr, err)
	}
	cm, err := rdma.OpenCM()
	if err != nil {
		return nil, fmt.Errorf("iser portal %v: %w", addr, err)
	}
	l, err := rdma.Listen(cm, addr, 128)
	if err != nil {
		cm.Close()
		return nil, fmt.Errorf("iser portal %v: %w", addr, err)
	}
	p := &Portal{srv: srv, log: log.With(zap.String("portal", addr.String()), zap.String("transport", "iser")),
		cm: cm, l: l, devs: rdma.NewDevicePoolFor(provider), addr: addr, regions: map[*rdma.PD]*regions{},
		conns: map[*rdma.PD]int{}, removed: map[*rdma.PD]bool{}}
	live.Lock()
	live.portals[p] = struct{}{}
	live.Unlock()
	return p, nil
}

// CheckAddr says whether an iSER portal on a can work: an RDMA device must sit on the network
// interface holding a (any device for a wildcard address) and provider must be able to drive it.
func CheckAddr(a netip.Addr, provider rdma.ProviderChoice) error {
	devs, err := rdma.DevicesForAddr(a)
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range devs {
		if _, err := provider.ProviderFor(d); err != nil {
			errs = append(errs, err)
			continue
		}
		return nil // one usable device is enough for a wildcard address
	}
	return errors.Join(errs...)
}

// live holds the portals serving, for OpenDevices.
var live = struct {
	sync.Mutex
	portals map[*Portal]struct{}
}{portals: map[*Portal]struct{}{}}

// OpenDevices lists the RDMA devices the iSER portals hold open, with the QPs, CQs and MRs alive
// on each (summed over the portals, which open devices separately).
func OpenDevices() []rdma.OpenDevice {
	live.Lock()
	defer live.Unlock()
	var out []rdma.OpenDevice
	for p := range live.portals {
		for _, d := range p.devs.Open() {
			i := slices.IndexFunc(out, func(o rdma.OpenDevice) bool { return o.Name == d.Name && o.Provider == d.Provider })
			if i < 0 {
				out = append(out, d)
				continue
			}
			out[i].QPs += d.QPs
			out[i].CQs += d.CQs
			out[i].MRs += d.MRs
		}
	}
	slices.SortFunc(out, func(a, b rdma.OpenDevice) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Addr is the address the portal listens on.
func (p *Portal) Addr() netip.AddrPort { return p.addr }

// Serve accepts connections until ctx ends or the listener fails, then
// releases the portal's devices once its connections are gone.
//
// When the RDMA device goes away (rdma link delete, driver unloaded), its connections end, the
// device is released once the last of them is closed, so that the kernel can finish removing
// it, and the portal listens again once a device holds its address again.
func (p *Portal) Serve(ctx context.Context) error {
	defer p.close()
	for {
		req, err := p.l.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !errors.Is(err, rdma.ErrDeviceRemoved) {
				return fmt.Errorf("iser portal %v: %w", p.addr, err)
			}
			if err := p.relisten(ctx); err != nil {
				return nil // ctx ended
			}
			continue
		}
		go p.accept(ctx, req)
	}
}

// relistenEvery is how often a portal whose device went away tries to listen again.
const relistenEvery = time.Second

// relisten replaces the listener after its device went away, once rdma_cm can bind the address
// again; it returns ctx.Err() when ctx ends first.
func (p *Portal) relisten(ctx context.Context) error {
	p.log.Warn("iSER portal: the RDMA device went away; its connections end, the portal listens again when a device holds the address")
	p.l.Close()
	p.mu.Lock()
	for pd := range p.regions {
		p.removed[pd] = true
		p.releaseIfIdleLocked(pd)
	}
	p.mu.Unlock()
	t := time.NewTicker(relistenEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if CheckAddr(p.addr.Addr(), p.devs.Choice()) != nil {
			continue
		}
		l, err := rdma.Listen(p.cm, p.addr, 128)
		if err != nil {
			continue
		}
		p.l = l
		p.log.Info("iSER portal listening again")
		return nil
	}
}

// connStart counts a connection on pd, until connGone.
func (p *Portal) connStart(pd *rdma.PD) {
	p.mu.Lock()
	p.conns[pd]++
	p.mu.Unlock()
}

// connGone is called when a connection on pd is closed; removed says it ended because the
// device went away.
func (p *Portal) connGone(pd *rdma.PD, removed bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.conns[pd]--
	if removed {
		p.removed[pd] = true
	}
	p.releaseIfIdleLocked(pd)
}

// releaseIfIdleLocked deregisters the buffer pool from a removed device and closes the device
// once no connection uses it; p.mu must be held.
func (p *Portal) releaseIfIdleLocked(pd *rdma.PD) {
	if !p.removed[pd] || p.conns[pd] > 0 {
		return
	}
	if r := p.regions[pd]; r != nil {
		r.close()
		delete(p.regions, pd)
	}
	delete(p.removed, pd)
	delete(p.conns, pd)
	guid := pd.Context().Device.NodeGUID
	if err := p.devs.Drop(guid); err != nil {
		p.log.Warn("release the removed RDMA device", zap.String("device", pd.Context().Device.Name), zap.Error(err))
		return
	}
	p.log.Info("released the removed RDMA device", zap.String("device", pd.Context().Device.Name))
}

func (p *Portal) close() {
	live.Lock()
	delete(live.portals, p)
	live.Unlock()
	p.l.Close()
	p.mu.Lock()
	for pd, r := range p.regions {
		r.close()
		delete(p.regions, pd)
	}
	p.mu.Unlock()
	p.devs.Close()
	p.cm.Close()
}

// accept sets up one connection and hands it to the iSCSI engine.
func (p *Portal) accept(ctx context.Context, req *rdma.ConnRequest) {
	c, err := p.establish(req)
	if err != nil {
		p.log.Warn("iSER connection refused", zap.Error(err))
		return
	}
	if !p.srv.ServeTransport(c) {
		c.Close()
	}
}

// establish accepts a connection request: the QP is built, the slot
// memory registered and every receive posted before the initiator hears
// the reply.
func (p *Portal) establish(req *rdma.ConnRequest) (*conn, error) {
	if len(req.PrivateData) >= 4 && req.PrivateData[0]&flagHello != 0 {
		req.Reject(nil)
		return nil, errors.New("initiator asked for iSER hello messages, which are not supported")
	}
	ep := &rdmaEndpoint{}
	var c *conn
	cfg := rdma.ConnConfig{
		Pool: p.devs, SendWR: sqDepth, RecvWR: numRecv, SendSGE: 1, RecvSGE: 1,
		CQSize:             sqDepth + numRecv,
		ResponderResources: req.ResponderResources, InitiatorDepth: req.InitiatorDepth,
		PrivateData: []byte{repZBVANot | repSendWInv, 0, 0, 0},
		Prepare: func(rc *rdma.Conn) error { // the QP is in INIT
			ep.Conn = rc
			reg, err := p.poolRegions(rc.PD)
			if err != nil {
				return err
			}
			p.connStart(rc.PD)
			ep.release = func(removed bool) { p.connGone(rc.PD, removed) }
			var s slots
			if s.recvMR, s.recvMem, err = ep.alloc(numRecv * slotSize); err != nil {
				return fmt.Errorf("receive buffers: %w", err)
			}
			if s.sendMR, s.sendMem, err = ep.alloc(numSend * slotSize); err != nil {
				return fmt.Errorf("send buffers: %w", err)
			}
			c = newConn(ep, s, p.srv.Pool(), reg, p.log)
			return c.postReceives()
		},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rc, err := req.Accept(ctx, cfg)
	if err != nil {
		ep.freeBuffers()
		return nil, fmt.Errorf("accept: %w", err)
	}
	c.start(int(rc.InitiatorDepth), rc.Src, rc.Dst)
	return c, nil
}

// poolRegions registers the server's buffer pool with the device of pd,
// once per device; regions mapped later are registered as they appear.
func (p *Portal) poolRegions(pd *rdma.PD) (*regions, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	r := p.regions[pd]
	if r == nil {
		r = trackRegions(p.srv.Pool(), pdRegistrar{pd}, p.log)
		p.regions[pd] = r
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r, r.err
}

// registrar registers memory with one device: pdRegistrar for an RDMA
// device, the tests' fake otherwise.
type registrar interface {
	register(mem []byte) (*rdma.MR, error)
	deregister(mr *rdma.MR) error
}

// pdRegistrar registers memory with an RDMA device's protection domain.
type pdRegistrar struct{ pd *rdma.PD }

func (r pdRegistrar) register(mem []byte) (*rdma.MR, error) {
	return r.pd.RegMR(mem, rdma.AccessLocalWrite)
}

func (pdRegistrar) deregister(mr *rdma.MR) error { return mr.Dereg() }

// regions holds one memory region per bdev.Pool region for one device.
type regions struct {
	dev    registrar
	log    *zap.Logger
	mu     sync.RWMutex
	mrs    []*rdma.MR
	cancel func()
	err    error // registrations that failed
}

// trackRegions registers pool's regions with dev, those mapped now and
// those mapped later, and deregisters each one as the pool unmaps it.
func trackRegions(pool *bdev.Pool, dev registrar, log *zap.Logger) *regions {
	r := &regions{dev: dev, log: log, mrs: make([]*rdma.MR, pool.MaxRegions())}
	r.cancel = pool.OnRegion(r.update)
	return r
}

// update follows one region of the pool: mapped (mem) or unmapped (nil).
func (r *regions) update(i int, mem []byte) {
	if mem == nil { // the pool unmaps the region: none of its buffers is in use
		r.mu.Lock()
		mr := r.mrs[i]
		r.mrs[i] = nil
		r.mu.Unlock()
		if mr != nil {
			if err := r.dev.deregister(mr); err != nil {
				r.log.Warn("deregister buffer region", zap.Int("region", i), zap.Error(err))
			}
		}
		return
	}
	mr, err := r.dev.register(mem)
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.err = errors.Join(r.err, fmt.Errorf("register buffer region %d: %w", i, err))
		return
	}
	r.mrs[i] = mr
}

// close stops following the pool and deregisters every region.
func (r *regions) close() {
	r.cancel()
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, mr := range r.mrs {
		if mr != nil {
			if err := r.dev.deregister(mr); err != nil {
				r.log.Warn("deregister buffer region", zap.Int("region", i), zap.Error(err))
			}
			r.mrs[i] = nil
		}
	}
}

// sge returns the scatter/gather entry for a pool buffer slice.
func (r *regions) sge(pool *bdev.Pool, b []byte) (rdma.SGE, error) {
	i, ok := pool.Index(b)
	if !ok {
		return rdma.SGE{}, errors.New("buffer is not from the registered pool")
	}
	r.mu.RLock()
	mr := r.mrs[i]
	r.mu.RUnlock()
	if mr == nil {
		return rdma.SGE{}, fmt.Errorf("buffer region %d is not registered with the device", i)
	}
	return mr.SGE(int(addrOf(b)-mr.Addr), len(b)), nil
}
