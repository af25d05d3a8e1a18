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
	"sync"

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
}

// regions holds one memory region per bdev.Pool region for one device.
type regions struct {
	mu     sync.RWMutex
	mrs    []*rdma.MR
	cancel func()
	err    error
}

// Listen starts listening for iSER connections on addr.
func Listen(srv *iscsi.Server, addr netip.AddrPort, log *zap.Logger) (*Portal, error) {
	cm, err := rdma.OpenCM()
	if err != nil {
		return nil, fmt.Errorf("iser portal %v: %w", addr, err)
	}
	l, err := rdma.Listen(cm, addr, 128)
	if err != nil {
		cm.Close()
		return nil, fmt.Errorf("iser portal %v: %w", addr, err)
	}
	return &Portal{srv: srv, log: log.With(zap.String("portal", addr.String()), zap.String("transport", "iser")),
		cm: cm, l: l, devs: rdma.NewDevicePool(), addr: addr, regions: map[*rdma.PD]*regions{}}, nil
}

// Addr is the address the portal listens on.
func (p *Portal) Addr() netip.AddrPort { return p.addr }

// Serve accepts connections until ctx ends or the listener fails, then
// releases the portal's devices once its connections are gone.
func (p *Portal) Serve(ctx context.Context) error {
	defer p.close()
	for {
		req, err := p.l.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("iser portal %v: %w", p.addr, err)
		}
		go p.accept(ctx, req)
	}
}

func (p *Portal) close() {
	p.l.Close()
	p.mu.Lock()
	for pd, r := range p.regions {
		r.cancel()
		r.mu.Lock()
		for _, mr := range r.mrs {
			if mr != nil {
				mr.Dereg()
			}
		}
		r.mu.Unlock()
		delete(p.regions, pd)
	}
	p.mu.Unlock()
	p.devs.Close()
	p.cm.Close()
}

// accept sets up one connection and hands it to the iSCSI engine.
func (p *Portal) accept(ctx context.Context, req *rdma.ConnRequest) {
	c, err := newConn(p, req)
	if err != nil {
		p.log.Warn("iSER connection refused", zap.Error(err))
		return
	}
	if !p.srv.ServeTransport(c) {
		c.Close()
	}
}

// poolRegions registers the server's buffer pool with the device of pd,
// once per device; regions mapped later are registered as they appear.
func (p *Portal) poolRegions(pd *rdma.PD) (*regions, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r := p.regions[pd]; r != nil {
		return r, r.err
	}
	pool := p.srv.Pool()
	r := &regions{mrs: make([]*rdma.MR, pool.MaxRegions())}
	r.cancel = pool.OnRegion(func(i int, mem []byte) {
		if mem == nil { // the pool unmaps the region: none of its buffers is in use
			r.mu.Lock()
			mr := r.mrs[i]
			r.mrs[i] = nil
			r.mu.Unlock()
			if mr != nil {
				if err := mr.Dereg(); err != nil {
					p.log.Warn("deregister buffer region", zap.Int("region", i), zap.Error(err))
				}
			}
			return
		}
		mr, err := pd.RegMR(mem, rdma.AccessLocalWrite)
		r.mu.Lock()
		defer r.mu.Unlock()
		if err != nil {
			r.err = errors.Join(r.err, fmt.Errorf("register buffer region %d: %w", i, err))
			return
		}
		r.mrs[i] = mr
	})
	p.regions[pd] = r
	return r, r.err
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
