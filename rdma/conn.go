//go:build linux

package rdma

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"
)

// DevicePool opens each device once and keeps one Context and one PD per device, so that the
// connections on a device share their memory registrations. It is safe for concurrent use.
type DevicePool struct {
	choice ProviderChoice
	mu     sync.Mutex
	devs   map[uint64]*PD
}

// NewDevicePool returns an empty pool that opens devices with the provider ProviderAuto picks.
func NewDevicePool() *DevicePool { return NewDevicePoolFor(ProviderAuto) }

// NewDevicePoolFor returns an empty pool that opens devices with the provider choice picks.
func NewDevicePoolFor(choice ProviderChoice) *DevicePool {
	return &DevicePool{choice: choice, devs: map[uint64]*PD{}}
}

// OpenDevice is one device a pool holds open, and what is alive on it.
type OpenDevice struct {
	Name     string
	Provider string // "rxe" (native) or "libibverbs"
	QPs      int
	CQs      int
	MRs      int
}

// Open lists the devices the pool holds open.
func (p *DevicePool) Open() []OpenDevice {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]OpenDevice, 0, len(p.devs))
	for _, pd := range p.devs {
		qps, cqs, mrs := pd.ctx.Held()
		out = append(out, OpenDevice{Name: pd.ctx.Device.Name, Provider: pd.ctx.Provider(), QPs: qps, CQs: cqs, MRs: mrs})
	}
	return out
}

// PD returns the protection domain of the device with node GUID guid, opening it on first use.
func (p *DevicePool) PD(guid uint64) (*PD, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.devs == nil {
		return nil, fmt.Errorf("rdma: device pool: %w", ErrClosed)
	}
	if pd := p.devs[guid]; pd != nil {
		return pd, nil
	}
	dev, err := DeviceByGUID(guid)
	if err != nil {
		return nil, err
	}
	c, err := OpenWith(dev, p.choice)
	if err != nil {
		return nil, err
	}
	pd, err := c.AllocPD()
	if err != nil {
		c.Close()
		return nil, err
	}
	p.devs[guid] = pd
	return pd, nil
}

// Drop closes the device with node GUID guid (e.g. after ErrDeviceRemoved) and forgets it; a
// later PD call opens it afresh.
func (p *DevicePool) Drop(guid uint64) error {
	p.mu.Lock()
	pd := p.devs[guid]
	delete(p.devs, guid)
	p.mu.Unlock()
	if pd == nil {
		return nil
	}
	return pd.ctx.Close()
}

// Close closes every device of the pool (destroying what is left on them).
func (p *DevicePool) Close() error {
	p.mu.Lock()
	devs := p.devs
	p.devs = nil
	p.mu.Unlock()
	var errs []error
	for _, pd := range devs {
		errs = append(errs, pd.ctx.Close())
	}
	return errors.Join(errs...)
}

// ConnConfig sizes a connection's queues and carries what the two sides exchange.
type ConnConfig struct {
	Pool      *DevicePool // where the device context and PD come from (required)
	SendWR    int         // send queue depth (default 64)
	RecvWR    int         // receive queue depth (default 64)
	SendSGE   int         // default 1
	RecvSGE   int         // default 1
	MaxInline int         // default 0
	CQSize    int         // default SendWR+RecvWR
	SignalAll bool
	// ResponderResources and InitiatorDepth bound incoming and outgoing RDMA READs
	// (default: what the device allows, at most 16).
	ResponderResources uint8
	InitiatorDepth     uint8
	// PrivateData goes into the connect request (active) or the reply (passive).
	PrivateData []byte
	// Prepare runs once the QP is in INIT, before the connection can carry traffic: post the
	// first receives there.
	Prepare func(*Conn) error
	// ResolveTimeout bounds address and route resolution (default 2 s).
	ResolveTimeout time.Duration
	// AckTimeout is the QP's local ACK timeout exponent (4.096 us << AckTimeout per try). The
	// default 14 (67 ms) is what ibv_rc_pingpong uses; rdma_cm alone would pick 19 (2.1 s) on
	// RoCE, which turns every lost packet into a two-second stall.
	AckTimeout uint8
	// MinRNRTimer is the RNR NAK delay code the QP asks peers to wait (default 12: 0.64 ms;
	// rdma_cm alone would pick 0, which means 655 ms).
	MinRNRTimer uint8
	// SyscallWait gives the connection a completion channel whose single waiter sleeps in
	// epoll_wait(2) instead of the netpoller (see NewCompChannelSyscallWait).
	SyscallWait bool
}

func (cfg *ConnConfig) withDefaults() ConnConfig {
	c := *cfg
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.SendWR, 64)
	def(&c.RecvWR, 64)
	def(&c.SendSGE, 1)
	def(&c.RecvSGE, 1)
	def(&c.CQSize, c.SendWR+c.RecvWR)
	if c.ResolveTimeout <= 0 {
		c.ResolveTimeout = 2 * time.Second
	}
	if c.AckTimeout == 0 {
		c.AckTimeout = 14
	}
	if c.MinRNRTimer == 0 {
		c.MinRNRTimer = 12
	}
	return c
}

// Conn is one reliable connection: an rdma_cm ID with its QP, one CQ for both queues and a
// completion channel of its own. Once established, the Conn consumes its ID's events itself:
// watch Done and Err instead of ID.Events.
type Conn struct {
	ID   *ID
	PD   *PD
	Chan *CompChannel
	CQ   *CQ
	QP   *QP
	// PeerPrivateData is what the peer sent in its request (passive) or reply (active).
	PeerPrivateData []byte
	// ResponderResources and InitiatorDepth are the values in force on the connection.
	ResponderResources uint8
	InitiatorDepth     uint8
	// Src and Dst are the local and peer addresses.
	Src, Dst netip.AddrPort

	closeOnce sync.Once
	closeErr  error

	ackTimeout, minRNRTimer uint8

	done     chan struct{}
	doneOnce sync.Once
	mu       sync.Mutex
	err      error
}

// Done is closed when the connection ends (peer disconnect, device removal, or Close). By then
// the QP is in the error state, so every outstanding work request completes with a flush error
// and a goroutine waiting on the CQ wakes up.
func (c *Conn) Done() <-chan struct{} { return c.done }

// Err returns why the connection ended (nil while it is up).
func (c *Conn) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// end records why the connection ended, moves the QP to ERR and closes Done (once).
func (c *Conn) end(err error) {
	c.doneOnce.Do(func() {
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		_ = c.QP.Modify(&QPAttr{State: QPErr}, QPAttrState)
		close(c.done)
	})
}

// watch follows the ID's events once the connection is established.
func (c *Conn) watch() {
	for ev := range c.ID.Events() {
		switch ev.Type {
		case CMDeviceRemoval:
			c.end(fmt.Errorf("rdma: connection %v -> %v: %w", c.Src, c.Dst, ErrDeviceRemoved))
		case CMDisconnected, CMAddrChange, CMConnectError, CMUnreachable:
			c.end(fmt.Errorf("rdma: connection %v -> %v: %v: %w", c.Src, c.Dst, ev.Type, ErrDisconnected))
		}
	}
	c.end(fmt.Errorf("rdma: connection closed: %w", ErrDisconnected))
}

// ErrDisconnected is wrapped in Conn.Err once the connection is gone.
var ErrDisconnected = errors.New("rdma: disconnected")

// ErrDeviceRemoved is wrapped in Conn.Err when the connection's device goes away; it also matches
// ErrDisconnected. The kernel finishes removing the device only once every user closed it:
// close the connections and drop the device from the pool (DevicePool.Drop).
var ErrDeviceRemoved = fmt.Errorf("rdma: device removed: %w", ErrDisconnected)

// newConn builds CQ and QP for id on the device the ID resolved or received the request on.
func newConn(id *ID, cfg *ConnConfig) (*Conn, error) {
	if cfg.Pool == nil {
		return nil, errors.New("rdma: ConnConfig.Pool is required")
	}
	info, err := id.QueryAddr()
	if err != nil {
		return nil, err
	}
	pd, err := cfg.Pool.PD(info.NodeGUID)
	if err != nil {
		return nil, err
	}
	if err := pd.ctx.CheckPort(info.Port); err != nil {
		return nil, err
	}
	c := &Conn{ID: id, PD: pd, Src: info.Src, Dst: info.Dst, done: make(chan struct{})}
	if c.Chan, err = pd.ctx.newCompChannel(cfg.SyscallWait); err != nil {
		return nil, err
	}
	if c.CQ, err = pd.ctx.CreateCQ(cfg.CQSize, c.Chan, 0); err != nil {
		c.releaseVerbs()
		return nil, err
	}
	c.QP, err = pd.CreateQP(QPInitAttr{SendCQ: c.CQ, RecvCQ: c.CQ, MaxSendWR: cfg.SendWR, MaxRecvWR: cfg.RecvWR,
		MaxSendSGE: cfg.SendSGE, MaxRecvSGE: cfg.RecvSGE, MaxInline: cfg.MaxInline, SignalAll: cfg.SignalAll})
	if err != nil {
		c.releaseVerbs()
		return nil, err
	}
	c.ackTimeout, c.minRNRTimer = cfg.AckTimeout, cfg.MinRNRTimer
	if err := c.transition(QPInit, 0); err != nil {
		c.releaseVerbs()
		return nil, err
	}
	if cfg.Prepare != nil {
		if err := cfg.Prepare(c); err != nil {
			c.releaseVerbs()
			return nil, fmt.Errorf("rdma: prepare connection: %w", err)
		}
	}
	return c, nil
}

// readLimits returns the device's READ limits capped by cfg (and 16 by default).
func readLimits(pd *PD, cfg *ConnConfig) (resp, init uint8, err error) {
	a, err := pd.ctx.QueryDevice()
	if err != nil {
		return 0, 0, err
	}
	pick := func(want uint8, dev int) uint8 {
		if want == 0 {
			want = 16
		}
		return uint8(min(int(want), dev, 255))
	}
	return pick(cfg.ResponderResources, a.MaxQPRdAtom), pick(cfg.InitiatorDepth, a.MaxQPInitRdAtom), nil
}

// transition moves the QP to state with the attributes rdma_cm computes, the connection's ACK
// timeout and RNR timer; a non-zero rd overrides the READ limit of that state (responder
// resources for RTR, initiator depth for RTS).
func (c *Conn) transition(state QPState, rd uint8) error {
	a, mask, err := c.ID.InitQPAttr(state)
	if err != nil {
		return err
	}
	switch state {
	case QPRTR:
		a.MinRNRTimer, mask = c.minRNRTimer, mask|QPAttrMinRNRTimer
		if rd != 0 {
			a.MaxDestRdAtomic = rd
		}
	case QPRTS:
		a.Timeout, mask = c.ackTimeout, mask|QPAttrTimeout
		if rd != 0 {
			a.MaxRdAtomic = rd
		}
	}
	return c.QP.Modify(&a, mask)
}

// Listener accepts connections on an address.
type Listener struct {
	cm *CM
	id *ID
}

// Listen binds a listening ID to addr on cm.
func Listen(cm *CM, addr netip.AddrPort, backlog int) (*Listener, error) {
	id, err := cm.CreateID()
	if err != nil {
		return nil, err
	}
	if err := id.Bind(addr); err != nil {
		id.Destroy()
		return nil, fmt.Errorf("rdma: listen on %v: %w", addr, err)
	}
	if err := id.Listen(backlog); err != nil {
		id.Destroy()
		return nil, fmt.Errorf("rdma: listen on %v: %w", addr, err)
	}
	return &Listener{cm: cm, id: id}, nil
}

// ConnRequest is a pending connect request; Accept or Reject it.
type ConnRequest struct {
	ID                 *ID
	PrivateData        []byte
	ResponderResources uint8 // the peer's offer, local point of view
	InitiatorDepth     uint8
}

// Next waits for the next connect request.
func (l *Listener) Next(ctx context.Context) (*ConnRequest, error) {
	for {
		ev, err := l.id.WaitEvent(ctx, CMConnectRequest)
		if err != nil {
			if ev.ID != nil && ev.Type == CMConnectRequest {
				ev.ID.Destroy()
			}
			if ev.Type == CMDeviceRemoval {
				return nil, fmt.Errorf("rdma: listener: %w", ErrDeviceRemoved)
			}
			if errors.Is(err, ErrClosed) || ctx.Err() != nil {
				return nil, err
			}
			continue // e.g. a listener-level event we do not act on
		}
		return &ConnRequest{ID: ev.ID, PrivateData: ev.PrivateData,
			ResponderResources: ev.ResponderResources, InitiatorDepth: ev.InitiatorDepth}, nil
	}
}

// Close stops listening.
func (l *Listener) Close() error { return l.id.Destroy() }

// Reject refuses the request with private data and destroys its ID.
func (r *ConnRequest) Reject(privateData []byte) error {
	err := r.ID.Reject(privateData)
	return errors.Join(err, r.ID.Destroy())
}

// Accept builds the connection's QP, takes it to RTS, replies with cfg.PrivateData and waits
// until the connection is established. On error every resource (and the request's ID) is released.
func (r *ConnRequest) Accept(ctx context.Context, cfg ConnConfig) (*Conn, error) {
	cfg = cfg.withDefaults()
	c, err := newConn(r.ID, &cfg)
	if err != nil {
		r.ID.Reject(nil)
		r.ID.Destroy()
		return nil, err
	}
	c.PeerPrivateData = r.PrivateData
	if err := c.accept(ctx, r, &cfg); err != nil {
		c.Close()
		return nil, err
	}
	go c.watch()
	return c, nil
}

func (c *Conn) accept(ctx context.Context, r *ConnRequest, cfg *ConnConfig) error {
	resp, init, err := readLimits(c.PD, cfg)
	if err != nil {
		return err
	}
	c.ResponderResources = min(resp, r.ResponderResources)
	c.InitiatorDepth = min(init, r.InitiatorDepth)
	if err := c.transition(QPRTR, max(c.ResponderResources, 1)); err != nil {
		return err
	}
	if err := c.transition(QPRTS, max(c.InitiatorDepth, 1)); err != nil {
		return err
	}
	err = c.ID.Accept(&ConnParam{QPNum: c.QP.Num, PrivateData: cfg.PrivateData, ResponderResources: c.ResponderResources,
		InitiatorDepth: c.InitiatorDepth, RetryCount: 7, RNRRetryCount: 7})
	if err != nil {
		return err
	}
	_, err = c.ID.WaitEvent(ctx, CMEstablished)
	return err
}

// RejectedError is returned by Dial when the peer rejects the connection.
type RejectedError struct {
	Status      int
	PrivateData []byte
}

// Error describes the rejection.
func (e *RejectedError) Error() string {
	return fmt.Sprintf("rdma: connection rejected (reason %d, %d bytes of private data)", e.Status, len(e.PrivateData))
}

// Dial connects to dst over cm and returns the established connection.
func Dial(ctx context.Context, cm *CM, dst netip.AddrPort, cfg ConnConfig) (*Conn, error) {
	cfg = cfg.withDefaults()
	id, err := cm.CreateID()
	if err != nil {
		return nil, err
	}
	fail := func(err error) (*Conn, error) {
		id.Destroy()
		return nil, fmt.Errorf("rdma: dial %v: %w", dst, err)
	}
	if err := id.ResolveAddr(netip.AddrPort{}, dst, cfg.ResolveTimeout); err != nil {
		return fail(err)
	}
	if _, err := id.WaitEvent(ctx, CMAddrResolved); err != nil {
		return fail(err)
	}
	if err := id.ResolveRoute(cfg.ResolveTimeout); err != nil {
		return fail(err)
	}
	if _, err := id.WaitEvent(ctx, CMRouteResolved); err != nil {
		return fail(err)
	}
	c, err := newConn(id, &cfg)
	if err != nil {
		return fail(err)
	}
	if err := c.connect(ctx, &cfg); err != nil {
		c.Close()
		return nil, fmt.Errorf("rdma: dial %v: %w", dst, err)
	}
	go c.watch()
	return c, nil
}

func (c *Conn) connect(ctx context.Context, cfg *ConnConfig) error {
	resp, init, err := readLimits(c.PD, cfg)
	if err != nil {
		return err
	}
	err = c.ID.Connect(ConnParam{QPNum: c.QP.Num, PrivateData: cfg.PrivateData, ResponderResources: resp,
		InitiatorDepth: init, RetryCount: 7, RNRRetryCount: 7})
	if err != nil {
		return err
	}
	ev, err := c.ID.WaitEvent(ctx, CMConnectResponse)
	if err != nil {
		if ev.Type == CMRejected {
			return &RejectedError{Status: ev.Status, PrivateData: ev.PrivateData}
		}
		return err
	}
	c.PeerPrivateData = ev.PrivateData
	c.ResponderResources = min(resp, ev.ResponderResources)
	c.InitiatorDepth = min(init, ev.InitiatorDepth)
	if err := c.transition(QPRTR, 0); err != nil {
		return err
	}
	if err := c.transition(QPRTS, 0); err != nil {
		return err
	}
	return c.ID.Accept(nil) // sends the RTU
}

// Drain polls (without blocking) every completion left on the CQ, e.g. flushed ones after the QP
// moved to the error state, and returns how many it found.
func (c *Conn) Drain() int {
	var wc [32]WorkCompletion
	total := 0
	for {
		n, err := c.CQ.Poll(wc[:])
		total += n
		if n == 0 || err != nil {
			return total
		}
	}
}

// Close disconnects and releases the connection: QP to ERR, DISCONNECT, drain the flushed
// completions, destroy QP, CQ, completion channel and ID. The PD stays with the pool.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		var errs []error
		if c.QP != nil {
			c.end(fmt.Errorf("rdma: connection closed locally: %w", ErrDisconnected))
		}
		_ = c.ID.Disconnect() // fails harmlessly when the peer disconnected first
		if c.CQ != nil {
			c.Drain()
		}
		errs = append(errs, c.releaseVerbs(), c.ID.Destroy())
		c.closeErr = errors.Join(errs...)
	})
	return c.closeErr
}

// releaseVerbs destroys the connection's verbs objects, in dependency order.
func (c *Conn) releaseVerbs() error {
	var errs []error
	if c.QP != nil {
		errs = append(errs, c.QP.Destroy())
	}
	if c.CQ != nil {
		errs = append(errs, c.CQ.Destroy())
	}
	if c.Chan != nil {
		errs = append(errs, c.Chan.Close())
	}
	return errors.Join(errs...)
}

// Choice is the provider choice the pool opens devices with.
func (p *DevicePool) Choice() ProviderChoice { return p.choice }
