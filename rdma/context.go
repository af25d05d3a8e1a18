//go:build linux

package rdma

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned by operations on an object that was destroyed or whose Context was closed.
var ErrClosed = errors.New("rdma: object closed")

// cmdScratchSize bounds one write() command and one response (the largest is QUERY_DEVICE's).
const cmdScratchSize = 512

// cmdScratch holds one command and its response. It lives on the heap (the Go heap does not move
// objects), so the response address handed to the kernel stays valid during the write().
type cmdScratch struct {
	req  [cmdScratchSize]byte
	resp [cmdScratchSize]byte
}

// Context is an open device: the uverbs command fd, its async event fd, and every object created
// through it. Close destroys whatever is still alive, in dependency order.
type Context struct {
	Device Device
	prov   Provider // native provider (nil when lib drives the device)
	lib    *ibvCtx  // libibverbs provider
	fd     int      // uverbs command fd (native; -1 with libibverbs)
	async  *os.File

	// NumCompVectors is the number of completion vectors the device offers.
	NumCompVectors int

	mu      sync.Mutex // guards scratch and the object tables
	scratch *cmdScratch
	closed  bool
	nextUH  uint64
	qps     map[uint64]*QP
	cqs     map[uint64]*CQ
	mrs     map[*MR]struct{}
	mws     map[*MW]struct{}
	pds     map[*PD]struct{}
	chans   map[*CompChannel]struct{}

	events    chan AsyncEvent
	asyncDone chan struct{}
	dropped   atomic.Uint64
}

// AsyncEventType is enum ib_event_type.
type AsyncEventType uint32

// Asynchronous event types.
const (
	EventCQErr            AsyncEventType = 0
	EventQPFatal          AsyncEventType = 1
	EventQPReqErr         AsyncEventType = 2
	EventQPAccessErr      AsyncEventType = 3
	EventCommEst          AsyncEventType = 4
	EventSQDrained        AsyncEventType = 5
	EventPathMig          AsyncEventType = 6
	EventPathMigErr       AsyncEventType = 7
	EventDeviceFatal      AsyncEventType = 8
	EventPortActive       AsyncEventType = 9
	EventPortErr          AsyncEventType = 10
	EventLIDChange        AsyncEventType = 11
	EventPkeyChange       AsyncEventType = 12
	EventSMChange         AsyncEventType = 13
	EventSRQErr           AsyncEventType = 14
	EventSRQLimitReached  AsyncEventType = 15
	EventQPLastWQEReached AsyncEventType = 16
	EventClientReregister AsyncEventType = 17
	EventGIDChange        AsyncEventType = 18
	EventWQFatal          AsyncEventType = 19
)

var asyncEventNames = [...]string{"CQ_ERR", "QP_FATAL", "QP_REQ_ERR", "QP_ACCESS_ERR", "COMM_EST",
	"SQ_DRAINED", "PATH_MIG", "PATH_MIG_ERR", "DEVICE_FATAL", "PORT_ACTIVE", "PORT_ERR", "LID_CHANGE",
	"PKEY_CHANGE", "SM_CHANGE", "SRQ_ERR", "SRQ_LIMIT_REACHED", "QP_LAST_WQE_REACHED",
	"CLIENT_REREGISTER", "GID_CHANGE", "WQ_FATAL"}

// String returns the kernel's name of the event type.
func (t AsyncEventType) String() string {
	if int(t) < len(asyncEventNames) {
		return asyncEventNames[t]
	}
	return fmt.Sprintf("EVENT_%d", uint32(t))
}

// AsyncEvent is one asynchronous event of a device. Exactly one of QP, CQ or Port is set,
// depending on the type (Port for port and device events).
type AsyncEvent struct {
	Type AsyncEventType
	QP   *QP
	CQ   *CQ
	Port int
}

// Open opens the device dev with the provider ProviderAuto picks for it.
func Open(dev Device) (*Context, error) { return OpenWith(dev, ProviderAuto) }

// OpenWith opens the device dev with the provider choice selects for it.
func OpenWith(dev Device, choice ProviderChoice) (*Context, error) {
	prov, err := choice.resolve(&dev)
	if err != nil {
		return nil, err
	}
	c := &Context{
		Device: dev, prov: prov, fd: -1, scratch: new(cmdScratch),
		qps: map[uint64]*QP{}, cqs: map[uint64]*CQ{}, mrs: map[*MR]struct{}{}, mws: map[*MW]struct{}{}, pds: map[*PD]struct{}{},
		chans: map[*CompChannel]struct{}{}, events: make(chan AsyncEvent, 64), asyncDone: make(chan struct{}),
	}
	if prov == nil {
		return c.openIbv()
	}
	fd, err := unix.Open(dev.UverbsPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("rdma: open %s: %w", dev.UverbsPath, err)
	}
	c.fd = fd
	var resp uverbsGetContextResp
	if err := c.execute(cmdGetContext, asBytes(&resp), asBytes(&uverbsRespCmd{})); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("rdma: %s: %w", dev.Name, err)
	}
	c.NumCompVectors = int(resp.NumCompVectors)
	c.async, err = pollableFile(int(resp.AsyncFD), dev.Name+"-async")
	if err != nil {
		unix.Close(int(resp.AsyncFD))
		unix.Close(fd)
		return nil, err
	}
	go c.readAsync()
	return c, nil
}

// OpenByName opens the device called name ("" opens the first device).
func OpenByName(name string) (*Context, error) {
	if name == "" {
		devs, err := Devices()
		if err != nil {
			return nil, err
		}
		return Open(devs[0])
	}
	d, err := DeviceByName(name)
	if err != nil {
		return nil, err
	}
	return Open(d)
}

// openIbv opens the device through libibverbs; the async event fd is a duplicate of the
// context's, read in Go like the native one (and every event acknowledged to libibverbs).
func (c *Context) openIbv() (*Context, error) {
	ic, err := openIbv(&c.Device)
	if err != nil {
		return nil, err
	}
	c.lib = ic
	c.NumCompVectors = int(ic.c.NumCompVectors)
	fd, err := dupFD(ic.c.AsyncFD, "async event")
	if err == nil {
		c.async, err = pollableFile(fd, c.Device.Name+"-async")
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		ic.close()
		return nil, err
	}
	go c.readAsync()
	return c, nil
}

// Provider names the provider that drives the device: "libibverbs", or the native one's name
// ("rxe").
func (c *Context) Provider() string {
	if c.lib != nil {
		return ProviderLibibverbs.String()
	}
	return c.prov.Name()
}

// Held counts the QPs, CQs and MRs alive on the device.
func (c *Context) Held() (qps, cqs, mrs int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.qps), len(c.cqs), len(c.mrs)
}

// pollableFile makes fd non-blocking and wraps it in an os.File, which registers it with the
// Go netpoller: a Read then parks the goroutine instead of blocking a thread.
func pollableFile(fd int, name string) (*os.File, error) {
	if err := unix.SetNonblock(fd, true); err != nil {
		return nil, fmt.Errorf("rdma: set %s non-blocking: %w", name, err)
	}
	unix.CloseOnExec(fd)
	return os.NewFile(uintptr(fd), name), nil
}

// Events delivers the device's asynchronous events. The channel is closed by Close. When nobody
// reads it, events beyond its buffer are dropped (and counted by DroppedEvents).
func (c *Context) Events() <-chan AsyncEvent { return c.events }

// DroppedEvents reports how many async events were dropped because Events was not drained.
func (c *Context) DroppedEvents() uint64 { return c.dropped.Load() }

func (c *Context) readAsync() {
	defer close(c.asyncDone)
	defer close(c.events)
	var buf [unsafe.Sizeof(uverbsAsyncEventDesc{})]byte
	for {
		n, err := c.async.Read(buf[:])
		if err != nil || n != len(buf) {
			return
		}
		desc := uverbsAsyncEventDesc{
			Element:   binary.NativeEndian.Uint64(buf[0:]),
			EventType: binary.NativeEndian.Uint32(buf[8:]),
		}
		ev := AsyncEvent{Type: AsyncEventType(desc.EventType)}
		if c.lib != nil {
			// Before taking c.mu: a destroy waits for this under it.
			c.lib.ackAsync(desc.Element, desc.EventType)
		}
		c.mu.Lock()
		switch ev.Type {
		case EventCQErr:
			ev.CQ = c.cqs[desc.Element]
		case EventDeviceFatal, EventPortActive, EventPortErr, EventLIDChange, EventPkeyChange,
			EventSMChange, EventClientReregister, EventGIDChange:
			ev.Port = int(desc.Element)
		case EventSRQErr, EventSRQLimitReached, EventWQFatal:
		default:
			ev.QP = c.qps[desc.Element]
		}
		c.mu.Unlock()
		select {
		case c.events <- ev:
		default:
			c.dropped.Add(1)
		}
	}
}

// asBytes views *p as its bytes (p must point to a plain ABI struct).
func asBytes[T any](p *T) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(p)), unsafe.Sizeof(*p))
}

var cmdNames = map[uint32]string{
	cmdGetContext: "GET_CONTEXT", cmdQueryDevice: "QUERY_DEVICE", cmdQueryPort: "QUERY_PORT",
	cmdAllocPD: "ALLOC_PD", cmdDeallocPD: "DEALLOC_PD", cmdRegMR: "REG_MR", cmdDeregMR: "DEREG_MR",
	cmdAllocMW: "ALLOC_MW", cmdDeallocMW: "DEALLOC_MW",
	cmdCreateCompChannel: "CREATE_COMP_CHANNEL", cmdCreateCQ: "CREATE_CQ", cmdDestroyCQ: "DESTROY_CQ",
	cmdReqNotifyCQ: "REQ_NOTIFY_CQ", cmdCreateQP: "CREATE_QP", cmdModifyQP: "MODIFY_QP",
	cmdDestroyQP: "DESTROY_QP", cmdPostSend: "POST_SEND",
}

// execute issues one legacy write() command. The request parts are concatenated after the header;
// when resp is not empty, the first 8 bytes of the request must be the response pointer slot,
// which execute fills in. resp receives the core response followed by the driver response.
func (c *Context) execute(cmd uint32, resp []byte, req ...[]byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return fmt.Errorf("uverbs %s: %w", cmdNames[cmd], ErrClosed)
	}
	return c.executeLocked(cmd, resp, req...)
}

func (c *Context) executeLocked(cmd uint32, resp []byte, req ...[]byte) error {
	s := c.scratch
	n := int(unsafe.Sizeof(uverbsCmdHdr{}))
	for _, r := range req {
		if n+len(r) > len(s.req) {
			return fmt.Errorf("uverbs %s: command of %d+ bytes too large", cmdNames[cmd], n+len(r))
		}
		n += copy(s.req[n:], r)
	}
	if n%4 != 0 || len(resp)%4 != 0 || len(resp) > len(s.resp) {
		return fmt.Errorf("uverbs %s: bad command or response length %d/%d", cmdNames[cmd], n, len(resp))
	}
	hdr := (*uverbsCmdHdr)(unsafe.Pointer(&s.req[0]))
	*hdr = uverbsCmdHdr{Command: cmd, InWords: uint16(n / 4), OutWords: uint16(len(resp) / 4)}
	if len(resp) > 0 {
		clear(s.resp[:len(resp)])
		binary.NativeEndian.PutUint64(s.req[8:], uint64(uintptr(unsafe.Pointer(&s.resp[0]))))
	}
	w, err := unix.Write(c.fd, s.req[:n])
	if err != nil {
		return fmt.Errorf("uverbs %s: %w", cmdNames[cmd], err)
	}
	if w != n {
		return fmt.Errorf("uverbs %s: short write %d of %d", cmdNames[cmd], w, n)
	}
	copy(resp, s.resp[:len(resp)])
	return nil
}

// deviceGone maps EIO, which a destroy command gets once the device was removed and the kernel
// already released the object, to success, so that teardown still frees the user-space side.
func deviceGone(err error) error {
	if errors.Is(err, unix.EIO) {
		return nil
	}
	return err
}

func (c *Context) newUserHandle() uint64 {
	c.nextUH++
	return c.nextUH
}

// DeviceAttr is the subset of the device attributes (ibv_device_attr) a consumer needs.
type DeviceAttr struct {
	FWVer           uint64
	NodeGUID        uint64 // host order
	MaxMRSize       uint64
	VendorID        uint32
	VendorPartID    uint32
	MaxQP           int
	MaxQPWR         int
	MaxSGE          int
	MaxCQ           int
	MaxCQE          int
	MaxMR           int
	MaxPD           int
	MaxQPRdAtom     int // responder resources per QP (incoming RDMA READs)
	MaxQPInitRdAtom int // initiator depth per QP (outgoing RDMA READs)
	PhysPortCnt     int
}

// QueryDevice returns the device attributes.
func (c *Context) QueryDevice() (DeviceAttr, error) {
	if c.lib != nil {
		if c.isClosed() {
			return DeviceAttr{}, fmt.Errorf("rdma: %s: query device: %w", c.Device.Name, ErrClosed)
		}
		a, err := c.lib.queryDevice()
		if err != nil {
			return a, fmt.Errorf("rdma: %s: %w", c.Device.Name, err)
		}
		return a, nil
	}
	var r uverbsQueryDeviceResp
	if err := c.execute(cmdQueryDevice, asBytes(&r), asBytes(&uverbsRespCmd{})); err != nil {
		return DeviceAttr{}, fmt.Errorf("rdma: %s: %w", c.Device.Name, err)
	}
	var guid [8]byte
	binary.NativeEndian.PutUint64(guid[:], r.NodeGUID)
	return DeviceAttr{
		FWVer: r.FWVer, NodeGUID: binary.BigEndian.Uint64(guid[:]), MaxMRSize: r.MaxMRSize,
		VendorID: r.VendorID, VendorPartID: r.VendorPartID, MaxQP: int(r.MaxQP), MaxQPWR: int(r.MaxQPWR),
		MaxSGE: int(r.MaxSGE), MaxCQ: int(r.MaxCQ), MaxCQE: int(r.MaxCQE), MaxMR: int(r.MaxMR),
		MaxPD: int(r.MaxPD), MaxQPRdAtom: int(r.MaxQPRdAtom), MaxQPInitRdAtom: int(r.MaxQPInitRdAtom),
		PhysPortCnt: int(r.PhysPortCnt),
	}, nil
}

// PortState is enum ib_port_state.
type PortState uint8

// Port states.
const (
	PortNop         PortState = 0
	PortDown        PortState = 1
	PortInit        PortState = 2
	PortArmed       PortState = 3
	PortActive      PortState = 4
	PortActiveDefer PortState = 5
)

// PortAttr is the subset of the port attributes a consumer needs.
type PortAttr struct {
	State     PortState
	MaxMTU    MTU
	ActiveMTU MTU
	GIDTblLen int
	MaxMsgSz  uint32
	LinkLayer uint8 // 0 unspecified, 1 InfiniBand, 2 Ethernet
}

// MTU is enum ib_mtu (1 = 256 bytes ... 5 = 4096 bytes).
type MTU uint8

// Bytes returns the MTU in bytes (0 for an invalid value).
func (m MTU) Bytes() int {
	if m < 1 || m > 5 {
		return 0
	}
	return 128 << m
}

// ErrPortDown is returned when a port needed for the data path is not ACTIVE.
var ErrPortDown = errors.New("rdma: port not active")

// QueryPort returns the attributes of port (1-based).
func (c *Context) QueryPort(port int) (PortAttr, error) {
	if port < 1 || port > 255 {
		return PortAttr{}, fmt.Errorf("rdma: bad port number %d", port)
	}
	if c.lib != nil {
		if c.isClosed() {
			return PortAttr{}, fmt.Errorf("rdma: %s: query port: %w", c.Device.Name, ErrClosed)
		}
		a, err := c.lib.queryPort(port)
		if err != nil {
			return a, fmt.Errorf("rdma: %s port %d: %w", c.Device.Name, port, err)
		}
		return a, nil
	}
	var r uverbsQueryPortResp
	if err := c.execute(cmdQueryPort, asBytes(&r), asBytes(&uverbsQueryPort{PortNum: uint8(port)})); err != nil {
		return PortAttr{}, fmt.Errorf("rdma: %s port %d: %w", c.Device.Name, port, err)
	}
	return PortAttr{State: PortState(r.State), MaxMTU: MTU(r.MaxMTU), ActiveMTU: MTU(r.ActiveMTU),
		GIDTblLen: int(r.GIDTblLen), MaxMsgSz: r.MaxMsgSz, LinkLayer: r.LinkLayer}, nil
}

// CheckPort returns ErrPortDown (wrapped) unless port is ACTIVE.
func (c *Context) CheckPort(port int) error {
	a, err := c.QueryPort(port)
	if err != nil {
		return err
	}
	if a.State != PortActive {
		return fmt.Errorf("rdma: %s port %d state %d: %w", c.Device.Name, port, a.State, ErrPortDown)
	}
	return nil
}

// Close destroys every object still alive (MWs, QPs, CQs, MRs, PDs, completion channels, in that
// order), closes the async event fd and the command fd. It is safe to call more than once.
func (c *Context) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	mws := mapKeys(c.mws)
	qps := mapValues(c.qps)
	cqs := mapValues(c.cqs)
	mrs := mapKeys(c.mrs)
	pds := mapKeys(c.pds)
	chans := mapKeys(c.chans)
	c.mu.Unlock()
	var errs []error
	// A bound window holds its QP and region: windows go first.
	for _, mw := range mws {
		errs = append(errs, mw.Dealloc())
	}
	for _, qp := range qps {
		errs = append(errs, qp.Destroy())
	}
	for _, cq := range cqs {
		errs = append(errs, cq.Destroy())
	}
	for _, mr := range mrs {
		errs = append(errs, mr.Dereg())
	}
	for _, pd := range pds {
		errs = append(errs, pd.Dealloc())
	}
	for _, ch := range chans {
		errs = append(errs, ch.Close())
	}
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	errs = append(errs, c.async.Close())
	<-c.asyncDone
	if c.lib != nil {
		if err := c.lib.close(); err != nil {
			errs = append(errs, fmt.Errorf("rdma: close %s: %w", c.Device.Name, err))
		}
	} else if err := unix.Close(c.fd); err != nil {
		errs = append(errs, fmt.Errorf("rdma: close %s: %w", c.Device.UverbsPath, err))
	}
	return errors.Join(errs...)
}

func mapValues[K comparable, V any](m map[K]V) []V {
	out := make([]V, 0, len(m))
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func mapKeys[K comparable, V any](m map[K]V) []K {
	out := make([]K, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}
