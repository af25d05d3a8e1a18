//go:build linux

package rdma

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// CMEventType is enum rdma_cm_event_type.
type CMEventType uint32

// rdma_cm event types.
const (
	CMAddrResolved    CMEventType = 0
	CMAddrError       CMEventType = 1
	CMRouteResolved   CMEventType = 2
	CMRouteError      CMEventType = 3
	CMConnectRequest  CMEventType = 4
	CMConnectResponse CMEventType = 5
	CMConnectError    CMEventType = 6
	CMUnreachable     CMEventType = 7
	CMRejected        CMEventType = 8
	CMEstablished     CMEventType = 9
	CMDisconnected    CMEventType = 10
	CMDeviceRemoval   CMEventType = 11
	CMMulticastJoin   CMEventType = 12
	CMMulticastError  CMEventType = 13
	CMAddrChange      CMEventType = 14
	CMTimewaitExit    CMEventType = 15
)

var cmEventNames = [...]string{"ADDR_RESOLVED", "ADDR_ERROR", "ROUTE_RESOLVED", "ROUTE_ERROR",
	"CONNECT_REQUEST", "CONNECT_RESPONSE", "CONNECT_ERROR", "UNREACHABLE", "REJECTED", "ESTABLISHED",
	"DISCONNECTED", "DEVICE_REMOVAL", "MULTICAST_JOIN", "MULTICAST_ERROR", "ADDR_CHANGE", "TIMEWAIT_EXIT"}

// String returns the kernel's name of the event type.
func (t CMEventType) String() string {
	if int(t) < len(cmEventNames) {
		return cmEventNames[t]
	}
	return fmt.Sprintf("CM_EVENT_%d", uint32(t))
}

// CMEvent is one rdma_cm event.
type CMEvent struct {
	Type CMEventType
	// Status is the kernel's status: 0, a negative errno, or for CMRejected the reject reason.
	Status int
	// ID is the identifier the event is about; for CMConnectRequest it is the new connection's
	// identifier, which must be accepted, rejected or destroyed.
	ID *ID
	// PrivateData is the peer's private data (connect request, reply or reject).
	PrivateData []byte
	// ResponderResources and InitiatorDepth are the peer's offer, already in the local point of
	// view (connect request and response).
	ResponderResources uint8
	InitiatorDepth     uint8
}

// Err returns nil when Status is 0, else an error naming the event and status.
func (e *CMEvent) Err() error {
	if e.Status == 0 {
		return nil
	}
	if e.Status < 0 {
		return fmt.Errorf("rdma_cm %v: %w", e.Type, syscall.Errno(-e.Status))
	}
	return fmt.Errorf("rdma_cm %v: status %d", e.Type, e.Status)
}

// CM is an open /dev/infiniband/rdma_cm. One goroutine reads its events (through the Go
// netpoller) and hands each to the ID it concerns.
type CM struct {
	f  *os.File
	rc syscall.RawConn

	mu      sync.Mutex
	scratch *cmdScratch
	ids     map[uint64]*ID
	closed  bool

	evBuf *ucmEventResp
	done  chan struct{}
}

// cmPath is the rdma_cm character device; tests may point it elsewhere.
var cmPath = "/dev/infiniband/rdma_cm"

// OpenCM opens the rdma_cm device.
func OpenCM() (*CM, error) {
	fd, err := unix.Open(cmPath, unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENODEV) {
			return nil, fmt.Errorf("rdma: open %s: %w (%w)", cmPath, ErrNoDevice, err)
		}
		return nil, fmt.Errorf("rdma: open %s: %w", cmPath, err)
	}
	f := os.NewFile(uintptr(fd), cmPath)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("rdma: %s: %w", cmPath, err)
	}
	cm := &CM{f: f, rc: rc, scratch: new(cmdScratch), ids: map[uint64]*ID{}, evBuf: new(ucmEventResp), done: make(chan struct{})}
	go cm.readEvents()
	return cm, nil
}

var ucmNames = map[uint32]string{
	ucmCreateID: "CREATE_ID", ucmDestroyID: "DESTROY_ID", ucmResolveRoute: "RESOLVE_ROUTE",
	ucmConnect: "CONNECT", ucmListen: "LISTEN", ucmAccept: "ACCEPT", ucmReject: "REJECT",
	ucmDisconnect: "DISCONNECT", ucmInitQPAttr: "INIT_QP_ATTR", ucmGetEvent: "GET_EVENT",
	ucmMigrateID: "MIGRATE_ID", ucmQuery: "QUERY", ucmBind: "BIND", ucmResolveAddr: "RESOLVE_ADDR",
}

// execute issues one rdma_cm command; as for uverbs, a command with a response starts with the
// response pointer slot, which is filled in here.
func (cm *CM) execute(cmd uint32, resp []byte, req []byte) error {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	if cm.closed {
		return fmt.Errorf("rdma_cm %s: %w", ucmNames[cmd], ErrClosed)
	}
	return cm.executeLocked(cmd, resp, req, 0)
}

// executeLocked issues cmd; respAt is the offset of the response pointer slot in req.
func (cm *CM) executeLocked(cmd uint32, resp, req []byte, respAt int) error {
	reqBuf, respBuf := &cm.scratch.req, &cm.scratch.resp
	hdrLen := int(unsafe.Sizeof(ucmCmdHdr{}))
	n := hdrLen + len(req)
	if n > len(reqBuf) || len(resp) > len(respBuf) {
		return fmt.Errorf("rdma_cm %s: command too large", ucmNames[cmd])
	}
	*(*ucmCmdHdr)(unsafe.Pointer(&reqBuf[0])) = ucmCmdHdr{Cmd: cmd, In: uint16(len(req)), Out: uint16(len(resp))}
	copy(reqBuf[hdrLen:], req)
	if len(resp) > 0 {
		clear(respBuf[:len(resp)])
		binary.NativeEndian.PutUint64(reqBuf[hdrLen+respAt:], uint64(uintptr(unsafe.Pointer(&respBuf[0]))))
	}
	var werr error
	var w int
	err := cm.rc.Control(func(fd uintptr) { w, werr = unix.Write(int(fd), reqBuf[:n]) })
	if err == nil {
		err = werr
	}
	if err != nil {
		return fmt.Errorf("rdma_cm %s: %w", ucmNames[cmd], err)
	}
	if w != n {
		return fmt.Errorf("rdma_cm %s: short write %d of %d", ucmNames[cmd], w, n)
	}
	copy(resp, respBuf[:len(resp)])
	return nil
}

// readEvents fetches events while the fd is open: GET_EVENT on the non-blocking fd answers
// EAGAIN when there is none, and the netpoller wakes us when the fd turns readable.
func (cm *CM) readEvents() {
	defer close(cm.done)
	var cmdBuf [unsafe.Sizeof(ucmCmdHdr{}) + unsafe.Sizeof(ucmGetEventCmd{})]byte
	*(*ucmCmdHdr)(unsafe.Pointer(&cmdBuf[0])) = ucmCmdHdr{Cmd: ucmGetEvent,
		In: uint16(unsafe.Sizeof(ucmGetEventCmd{})), Out: uint16(unsafe.Sizeof(ucmEventResp{}))}
	binary.NativeEndian.PutUint64(cmdBuf[8:], uint64(uintptr(unsafe.Pointer(cm.evBuf))))
	for {
		var werr error
		err := cm.rc.Read(func(fd uintptr) bool {
			_, werr = unix.Write(int(fd), cmdBuf[:])
			return werr != unix.EAGAIN
		})
		if err == nil {
			err = werr
		}
		if err != nil {
			cm.shutdownIDs()
			return
		}
		cm.dispatch(*cm.evBuf)
	}
}

func (cm *CM) dispatch(r ucmEventResp) {
	ev := CMEvent{Type: CMEventType(r.Event), Status: int(r.Status),
		ResponderResources: r.Conn.ResponderResources, InitiatorDepth: r.Conn.InitiatorDepth}
	if n := int(r.Conn.PrivateDataLen); n > 0 && n <= ucmMaxPrivData {
		ev.PrivateData = append([]byte(nil), r.Conn.PrivateData[:n]...)
	}
	cm.mu.Lock()
	target := cm.ids[r.UID]
	if target == nil {
		cm.mu.Unlock()
		return
	}
	if ev.Type == CMConnectRequest {
		// The new connection's id; it gets its own uid when accepted.
		ev.ID = cm.newIDLocked(r.ID)
	} else {
		ev.ID = target
	}
	cm.mu.Unlock()
	target.deliver(ev)
}

// nextUID numbers IDs across all CMs, so that an ID keeps its uid when it migrates.
var nextUID atomic.Uint64

func (cm *CM) newIDLocked(handle uint32) *ID {
	id := &ID{cm: cm, handle: handle, uid: nextUID.Add(1), events: make(chan CMEvent), wake: make(chan struct{}, 1), gone: make(chan struct{})}
	cm.ids[id.uid] = id
	go id.pump()
	return id
}

func (cm *CM) shutdownIDs() {
	cm.mu.Lock()
	ids := mapValues(cm.ids)
	cm.ids = map[uint64]*ID{}
	cm.closed = true
	cm.mu.Unlock()
	for _, id := range ids {
		id.markGone()
	}
}

// Close destroys every ID still open (the kernel disconnects their connections) and closes the
// device. Event channels of the IDs are closed.
func (cm *CM) Close() error {
	cm.mu.Lock()
	ids := mapValues(cm.ids)
	cm.mu.Unlock()
	var errs []error
	for _, id := range ids {
		errs = append(errs, id.Destroy())
	}
	errs = append(errs, cm.f.Close())
	<-cm.done
	return errors.Join(errs...)
}

// ID is an rdma_cm identifier (struct rdma_cm_id): a listener or one connection.
type ID struct {
	cm     *CM
	handle uint32
	uid    uint64

	mu     sync.Mutex
	queue  []CMEvent
	wake   chan struct{}
	events chan CMEvent
	gone   chan struct{}
	dead   bool
}

// CreateID creates an identifier for reliable-connected service (RDMA_PS_TCP, IB_QPT_RC).
func (cm *CM) CreateID() (*ID, error) {
	cm.mu.Lock()
	defer cm.mu.Unlock()
	if cm.closed {
		return nil, fmt.Errorf("rdma_cm: create id: %w", ErrClosed)
	}
	id := cm.newIDLocked(0)
	var r ucmCreateIDResp
	cmd := ucmCreateIDCmd{UID: id.uid, PS: psTCP, QPType: qpTypeRC}
	if err := cm.executeLocked(ucmCreateID, asBytes(&r), asBytes(&cmd), int(unsafe.Offsetof(cmd.Response))); err != nil {
		delete(cm.ids, id.uid)
		id.markGone()
		return nil, err
	}
	id.handle = r.ID
	return id, nil
}

// Events delivers the events of this ID in order (for a listener: connect requests). The
// channel is closed when the ID is destroyed.
func (id *ID) Events() <-chan CMEvent { return id.events }

// deliver queues ev without blocking the CM's reader.
func (id *ID) deliver(ev CMEvent) {
	id.mu.Lock()
	if !id.dead {
		id.queue = append(id.queue, ev)
	}
	id.mu.Unlock()
	select {
	case id.wake <- struct{}{}:
	default:
	}
}

// pump moves queued events to the Events channel until the ID is gone.
func (id *ID) pump() {
	defer close(id.events)
	for {
		id.mu.Lock()
		var ev CMEvent
		have := len(id.queue) > 0
		if have {
			ev = id.queue[0]
			id.queue = id.queue[1:]
		}
		id.mu.Unlock()
		if !have {
			select {
			case <-id.wake:
				continue
			case <-id.gone:
				return
			}
		}
		select {
		case id.events <- ev:
		case <-id.gone:
			return
		}
	}
}

func (id *ID) markGone() {
	id.mu.Lock()
	defer id.mu.Unlock()
	if !id.dead {
		id.dead = true
		id.queue = nil
		close(id.gone)
	}
}

// WaitEvent returns the next event of the ID. It returns an error when the event is not one
// of want (the event is still returned), when ctx ends or when the ID is destroyed.
func (id *ID) WaitEvent(ctx context.Context, want ...CMEventType) (CMEvent, error) {
	select {
	case ev, ok := <-id.events:
		if !ok {
			return CMEvent{}, fmt.Errorf("rdma_cm: id destroyed: %w", ErrClosed)
		}
		for _, w := range want {
			if ev.Type == w {
				return ev, ev.Err()
			}
		}
		if err := ev.Err(); err != nil {
			return ev, fmt.Errorf("rdma_cm: waiting for %v: %w", want, err)
		}
		return ev, fmt.Errorf("rdma_cm: waiting for %v, got %v", want, ev.Type)
	case <-ctx.Done():
		return CMEvent{}, fmt.Errorf("rdma_cm: waiting for %v: %w", want, ctx.Err())
	}
}

func (id *ID) setCM(cm *CM) {
	id.mu.Lock()
	id.cm = cm
	id.mu.Unlock()
}

func (id *ID) getCM() *CM {
	id.mu.Lock()
	defer id.mu.Unlock()
	return id.cm
}

func (id *ID) exec(cmd uint32, resp []byte, req []byte) error {
	if err := id.getCM().execute(cmd, resp, req); err != nil {
		return fmt.Errorf("rdma_cm id %d: %w", id.handle, err)
	}
	return nil
}

// encodeSockaddr writes ap as a struct sockaddr_in or sockaddr_in6 and returns its length.
func encodeSockaddr(dst *[sockaddrStorSize]byte, ap netip.AddrPort) (uint16, error) {
	a := ap.Addr()
	switch {
	case a.Is4():
		binary.NativeEndian.PutUint16(dst[0:], unix.AF_INET)
		binary.BigEndian.PutUint16(dst[2:], ap.Port())
		b := a.As4()
		copy(dst[4:8], b[:])
		return unix.SizeofSockaddrInet4, nil
	case a.Is6():
		binary.NativeEndian.PutUint16(dst[0:], unix.AF_INET6)
		binary.BigEndian.PutUint16(dst[2:], ap.Port())
		b := a.As16()
		copy(dst[8:24], b[:])
		return unix.SizeofSockaddrInet6, nil
	}
	return 0, fmt.Errorf("rdma_cm: invalid address %v", ap)
}

// decodeSockaddr reads a struct sockaddr_in or sockaddr_in6.
func decodeSockaddr(b []byte) netip.AddrPort {
	if len(b) < 4 {
		return netip.AddrPort{}
	}
	port := binary.BigEndian.Uint16(b[2:])
	switch binary.NativeEndian.Uint16(b) {
	case unix.AF_INET:
		if len(b) >= 8 {
			return netip.AddrPortFrom(netip.AddrFrom4([4]byte(b[4:8])), port)
		}
	case unix.AF_INET6:
		if len(b) >= 24 {
			return netip.AddrPortFrom(netip.AddrFrom16([16]byte(b[8:24])).Unmap(), port)
		}
	}
	return netip.AddrPort{}
}

// Bind binds the ID to a local address (port 0 picks one).
func (id *ID) Bind(addr netip.AddrPort) error {
	cmd := ucmBindCmd{ID: id.handle}
	n, err := encodeSockaddr(&cmd.Addr, addr)
	if err != nil {
		return err
	}
	cmd.AddrSize = n
	return id.exec(ucmBind, nil, asBytes(&cmd))
}

// Listen makes a bound ID accept connect requests (delivered as CMConnectRequest events).
func (id *ID) Listen(backlog int) error {
	if backlog <= 0 {
		backlog = 128
	}
	return id.exec(ucmListen, nil, asBytes(&ucmListenCmd{ID: id.handle, Backlog: uint32(backlog)}))
}

// ResolveAddr starts resolving dst (and binds to src when it is valid); CMAddrResolved or
// CMAddrError follows.
func (id *ID) ResolveAddr(src, dst netip.AddrPort, timeout time.Duration) error {
	cmd := ucmResolveAddrCmd{ID: id.handle, TimeoutMS: uint32(timeout / time.Millisecond)}
	var err error
	if src.IsValid() {
		if cmd.SrcSize, err = encodeSockaddr(&cmd.SrcAddr, src); err != nil {
			return err
		}
	}
	if cmd.DstSize, err = encodeSockaddr(&cmd.DstAddr, dst); err != nil {
		return err
	}
	return id.exec(ucmResolveAddr, nil, asBytes(&cmd))
}

// ResolveRoute starts resolving the route to the resolved address; CMRouteResolved or
// CMRouteError follows.
func (id *ID) ResolveRoute(timeout time.Duration) error {
	return id.exec(ucmResolveRoute, nil, asBytes(&ucmResolveRouteCmd{ID: id.handle, TimeoutMS: uint32(timeout / time.Millisecond)}))
}

// ConnParam are the connection parameters of Connect and Accept.
type ConnParam struct {
	PrivateData        []byte // at most 56 bytes in a request, 196 in a reply
	ResponderResources uint8
	InitiatorDepth     uint8
	RetryCount         uint8
	RNRRetryCount      uint8
	QPNum              uint32
}

func (p *ConnParam) encode() (ucmConnParam, error) {
	var c ucmConnParam
	if len(p.PrivateData) > ucmMaxPrivData {
		return c, fmt.Errorf("rdma_cm: %d bytes of private data exceed %d", len(p.PrivateData), ucmMaxPrivData)
	}
	c.QPNum = p.QPNum
	c.PrivateDataLen = uint8(copy(c.PrivateData[:], p.PrivateData))
	c.ResponderResources = p.ResponderResources
	c.InitiatorDepth = p.InitiatorDepth
	c.RetryCount = min(p.RetryCount, 7)
	c.RNRRetryCount = min(p.RNRRetryCount, 7)
	c.Valid = 1
	return c, nil
}

// Connect sends a connect request for the QP p.QPNum; CMConnectResponse (the caller moves the
// QP to RTR and RTS and calls Accept with nil to send the RTU), CMRejected or CMUnreachable follows.
func (id *ID) Connect(p ConnParam) error {
	cp, err := p.encode()
	if err != nil {
		return err
	}
	return id.exec(ucmConnect, nil, asBytes(&ucmConnectCmd{ConnParam: cp, ID: id.handle}))
}

// Accept accepts a connect request with p (passive side; the QP must be in RTS already), or with
// p nil completes an active connection after CMConnectResponse.
func (id *ID) Accept(p *ConnParam) error {
	cmd := ucmAcceptCmd{UID: id.uid, ID: id.handle}
	if p != nil {
		cp, err := p.encode()
		if err != nil {
			return err
		}
		cmd.ConnParam = cp
	}
	return id.exec(ucmAccept, nil, asBytes(&cmd))
}

// Reject refuses a connect request, sending privateData (up to 148 bytes) to the peer.
func (id *ID) Reject(privateData []byte) error {
	if len(privateData) > ucmMaxPrivData {
		return fmt.Errorf("rdma_cm: %d bytes of reject data exceed %d", len(privateData), ucmMaxPrivData)
	}
	cmd := ucmRejectCmd{ID: id.handle}
	cmd.PrivateDataLen = uint8(copy(cmd.PrivateData[:], privateData))
	return id.exec(ucmReject, nil, asBytes(&cmd))
}

// Disconnect starts tearing the connection down; both sides then see CMDisconnected.
func (id *ID) Disconnect() error {
	return id.exec(ucmDisconnect, nil, asBytes(&ucmIDCmd{ID: id.handle}))
}

// InitQPAttr returns the attributes (and mask) that take a QP of this connection to state.
func (id *ID) InitQPAttr(state QPState) (QPAttr, QPAttrMask, error) {
	var r uverbsQPAttr
	if err := id.exec(ucmInitQPAttr, asBytes(&r), asBytes(&ucmInitQPAttrCmd{ID: id.handle, QPState: uint32(state)})); err != nil {
		return QPAttr{}, 0, err
	}
	a := QPAttr{
		State: QPState(r.QPState), CurState: QPState(r.CurQPState), PathMTU: MTU(r.PathMTU), QKey: r.QKey,
		RQPSN: r.RQPSN, SQPSN: r.SQPSN, DestQPNum: r.DestQPNum, AccessFlags: Access(r.QPAccessFlags),
		AH: AHAttr{DGID: r.AHAttr.GRH.DGID, FlowLabel: r.AHAttr.GRH.FlowLabel, SGIDIndex: r.AHAttr.GRH.SGIDIndex,
			HopLimit: r.AHAttr.GRH.HopLimit, TrafficClass: r.AHAttr.GRH.TrafficClass, DLID: r.AHAttr.DLID,
			SL: r.AHAttr.SL, SrcPathBits: r.AHAttr.SrcPathBits, StaticRate: r.AHAttr.StaticRate,
			IsGlobal: r.AHAttr.IsGlobal != 0, PortNum: r.AHAttr.PortNum},
		PkeyIndex: r.PkeyIndex, MaxRdAtomic: r.MaxRdAtomic, MaxDestRdAtomic: r.MaxDestRdAtomic,
		MinRNRTimer: r.MinRNRTimer, PortNum: r.PortNum, Timeout: r.Timeout, RetryCnt: r.RetryCnt, RNRRetry: r.RNRRetry,
	}
	return a, QPAttrMask(r.QPAttrMask) & qpAttrWriteMask, nil
}

// AddrInfo is what QueryAddr reports about a bound or resolved ID.
type AddrInfo struct {
	NodeGUID uint64 // host order; matches Device.NodeGUID
	Port     int
	Src, Dst netip.AddrPort
}

// QueryAddr reports the device, port and addresses of the ID.
func (id *ID) QueryAddr() (AddrInfo, error) {
	var r ucmQueryAddrResp
	if err := id.exec(ucmQuery, asBytes(&r), asBytes(&ucmQueryCmd{ID: id.handle, Option: ucmQueryAddr})); err != nil {
		return AddrInfo{}, err
	}
	var g [8]byte
	binary.NativeEndian.PutUint64(g[:], r.NodeGUID)
	return AddrInfo{NodeGUID: binary.BigEndian.Uint64(g[:]), Port: int(r.PortNum),
		Src: decodeSockaddr(r.SrcAddr[:min(int(r.SrcSize), sockaddrStorSize)]),
		Dst: decodeSockaddr(r.DstAddr[:min(int(r.DstSize), sockaddrStorSize)])}, nil
}

// Migrate moves the ID (and its pending events) to another CM, e.g. to give a connection its
// own event reader.
func (id *ID) Migrate(to *CM) error {
	if to == id.getCM() {
		return nil
	}
	// The command goes to the destination file and names the current one by its fd.
	from := id.getCM()
	var fd int
	if err := from.rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return fmt.Errorf("rdma_cm: migrate: %w", err)
	}
	// Known to both CMs while it moves, so no event is dropped on either side.
	to.mu.Lock()
	to.ids[id.uid] = id
	to.mu.Unlock()
	var r ucmMigrateResp
	if err := to.execute(ucmMigrateID, asBytes(&r), asBytes(&ucmMigrateIDCmd{ID: id.handle, FD: uint32(fd)})); err != nil {
		to.mu.Lock()
		delete(to.ids, id.uid)
		to.mu.Unlock()
		return fmt.Errorf("rdma_cm id %d: %w", id.handle, err)
	}
	from.mu.Lock()
	delete(from.ids, id.uid)
	from.mu.Unlock()
	id.setCM(to)
	return nil
}

// Destroy destroys the ID (disconnecting it if needed) and closes its event channel.
func (id *ID) Destroy() error {
	cm := id.getCM()
	cm.mu.Lock()
	_, live := cm.ids[id.uid]
	delete(cm.ids, id.uid)
	closed := cm.closed
	cm.mu.Unlock()
	id.markGone()
	if !live || closed {
		return nil
	}
	var r ucmDestroyIDResp
	return id.exec(ucmDestroyID, asBytes(&r), asBytes(&ucmDestroyIDCmd{ID: id.handle}))
}
