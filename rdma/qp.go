//go:build linux

package rdma

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

// ErrQueueFull is returned when a send or receive queue has no free slot.
var ErrQueueFull = errors.New("rdma: work queue full")

// Opcode is a send work request opcode (enum ib_uverbs_wr_opcode).
type Opcode uint32

// Send opcodes.
const (
	OpRDMAWrite   Opcode = 0
	OpSend        Opcode = 2
	OpRDMARead    Opcode = 4
	OpBindMW      Opcode = 8 // build with MW.BindWR
	OpSendWithInv Opcode = 9
)

// SendFlags modify a send work request (enum ib_send_flags).
type SendFlags uint32

// Send flags.
const (
	SendFence     SendFlags = 1
	SendSignaled  SendFlags = 2
	SendSolicited SendFlags = 4
	SendInline    SendFlags = 8 // set implicitly when SendWR.Inline is not nil
)

// SGE is a scatter/gather entry: Length bytes at Addr in the region of LKey.
type SGE struct {
	Addr   uint64
	Length uint32
	LKey   uint32
}

// SendWR is a send work request.
type SendWR struct {
	ID     uint64
	Opcode Opcode
	Flags  SendFlags
	SGL    []SGE
	// Inline, when not nil, is copied into the work request itself (up to the QP's MaxInline
	// bytes) and SGL is ignored; the buffer can be reused as soon as PostSend returns.
	Inline []byte
	// RemoteAddr and RKey name the peer's memory for RDMA WRITE and RDMA READ.
	RemoteAddr uint64
	RKey       uint32
	// InvalidateRKey is the peer's rkey to invalidate with OpSendWithInv.
	InvalidateRKey uint32
	// Bind is what OpBindMW binds.
	Bind MWBind
}

// RecvWR is a receive work request.
type RecvWR struct {
	ID  uint64
	SGL []SGE
}

// QPState is enum ib_qp_state.
type QPState uint8

// QP states.
const (
	QPReset QPState = 0
	QPInit  QPState = 1
	QPRTR   QPState = 2
	QPRTS   QPState = 3
	QPSQD   QPState = 4
	QPSQE   QPState = 5
	QPErr   QPState = 6
)

// QPAttrMask selects the QPAttr fields a Modify applies (enum ib_qp_attr_mask).
type QPAttrMask uint32

// QP attribute mask bits.
const (
	QPAttrState           QPAttrMask = 1 << 0
	QPAttrCurState        QPAttrMask = 1 << 1
	QPAttrAccessFlags     QPAttrMask = 1 << 3
	QPAttrPkeyIndex       QPAttrMask = 1 << 4
	QPAttrPort            QPAttrMask = 1 << 5
	QPAttrQKey            QPAttrMask = 1 << 6
	QPAttrAV              QPAttrMask = 1 << 7
	QPAttrPathMTU         QPAttrMask = 1 << 8
	QPAttrTimeout         QPAttrMask = 1 << 9
	QPAttrRetryCnt        QPAttrMask = 1 << 10
	QPAttrRNRRetry        QPAttrMask = 1 << 11
	QPAttrRQPSN           QPAttrMask = 1 << 12
	QPAttrMaxQPRdAtomic   QPAttrMask = 1 << 13
	QPAttrMinRNRTimer     QPAttrMask = 1 << 15
	QPAttrSQPSN           QPAttrMask = 1 << 16
	QPAttrMaxDestRdAtomic QPAttrMask = 1 << 17
	QPAttrDestQPN         QPAttrMask = 1 << 20
	// qpAttrWriteMask is every bit the legacy MODIFY_QP command accepts.
	qpAttrWriteMask QPAttrMask = 1<<21 - 1
)

// AHAttr is an address vector (the path to the peer).
type AHAttr struct {
	DGID         [16]byte
	FlowLabel    uint32
	SGIDIndex    uint8
	HopLimit     uint8
	TrafficClass uint8
	DLID         uint16
	SL           uint8
	SrcPathBits  uint8
	StaticRate   uint8
	IsGlobal     bool
	PortNum      uint8
}

// QPAttr holds QP attributes for Modify (fields selected by a QPAttrMask).
type QPAttr struct {
	State           QPState
	CurState        QPState
	PathMTU         MTU
	QKey            uint32
	RQPSN           uint32
	SQPSN           uint32
	DestQPNum       uint32
	AccessFlags     Access
	AH              AHAttr
	PkeyIndex       uint16
	MaxRdAtomic     uint8 // outstanding RDMA READs this QP issues (initiator depth)
	MaxDestRdAtomic uint8 // RDMA READs this QP serves at once (responder resources)
	MinRNRTimer     uint8
	PortNum         uint8
	Timeout         uint8
	RetryCnt        uint8
	RNRRetry        uint8
}

// QPInitAttr describes a reliable-connected QP to create.
type QPInitAttr struct {
	SendCQ, RecvCQ *CQ
	MaxSendWR      int
	MaxRecvWR      int
	MaxSendSGE     int
	MaxRecvSGE     int
	MaxInline      int
	// SignalAll makes every send work request generate a completion.
	SignalAll bool
}

// QPCaps are the capacities the kernel granted to a QP (at least the ones asked for).
type QPCaps struct {
	MaxSendWR, MaxRecvWR, MaxSendSGE, MaxRecvSGE, MaxInline int
}

// QP is a reliable-connected queue pair.
type QP struct {
	ctx    *Context
	pd     *PD
	handle uint32
	uh     uint64  // user handle: with libibverbs, the struct ibv_qp *
	lib    uintptr // struct ibv_qp * (libibverbs)
	// Num is the QP number the peer addresses.
	Num uint32
	// Caps are the capacities granted by the kernel.
	Caps  QPCaps
	rings QPRings

	sendMu, recvMu sync.Mutex
	stage          postStage  // guarded by sendMu (send side) and recvMu (receive side)
	mu             sync.Mutex // guards dead against Destroy
	dead           bool
}

const qpTypeRC = 2

// Handle returns the kernel handle of the QP (for providers).
func (qp *QP) Handle() uint32 { return qp.handle }

// CreateQP creates a reliable-connected QP in the RESET state.
func (pd *PD) CreateQP(a QPInitAttr) (*QP, error) {
	c := pd.ctx
	if a.SendCQ == nil || a.RecvCQ == nil || a.SendCQ.ctx != c || a.RecvCQ.ctx != c {
		return nil, errors.New("rdma: create QP: send and receive CQs of the same device are required")
	}
	if a.MaxSendWR < 1 || a.MaxRecvWR < 0 || a.MaxSendSGE < 1 || a.MaxRecvSGE < 0 || a.MaxInline < 0 {
		return nil, fmt.Errorf("rdma: create QP: bad capacities %+v", a)
	}
	if c.lib != nil {
		return pd.createIbvQP(&a)
	}
	drvIn, drvOutLen := c.prov.QPDriverData()
	resp := make([]byte, int(unsafe.Sizeof(uverbsCreateQPResp{}))+drvOutLen)
	c.mu.Lock()
	if c.closed || pd.dead {
		c.mu.Unlock()
		return nil, fmt.Errorf("rdma: create QP: %w", ErrClosed)
	}
	uh := c.newUserHandle()
	cmd := uverbsCreateQP{
		UserHandle: uh, PDHandle: pd.handle, SendCQHandle: a.SendCQ.handle, RecvCQHandle: a.RecvCQ.handle,
		MaxSendWR: uint32(a.MaxSendWR), MaxRecvWR: uint32(a.MaxRecvWR), MaxSendSGE: uint32(a.MaxSendSGE),
		MaxRecvSGE: uint32(a.MaxRecvSGE), MaxInlineData: uint32(a.MaxInline), QPType: qpTypeRC,
	}
	if a.SignalAll {
		cmd.SQSigAll = 1
	}
	err := c.executeLocked(cmdCreateQP, resp, asBytes(&cmd), drvIn)
	c.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("rdma: %s: %w", c.Device.Name, err)
	}
	r := (*uverbsCreateQPResp)(unsafe.Pointer(&resp[0]))
	qp := &QP{ctx: c, pd: pd, handle: r.QPHandle, uh: uh, Num: r.QPN, Caps: QPCaps{
		MaxSendWR: int(r.MaxSendWR), MaxRecvWR: int(r.MaxRecvWR), MaxSendSGE: int(r.MaxSendSGE),
		MaxRecvSGE: int(r.MaxRecvSGE), MaxInline: int(r.MaxInlineData)}}
	qp.stage = newPostStage(qp.Caps)
	qp.rings, err = c.prov.NewQPRings(c, qp, resp[unsafe.Sizeof(*r):])
	if err != nil {
		_ = c.execute(cmdDestroyQP, make([]byte, 4), asBytes(&uverbsDestroyObj{Handle: qp.handle}))
		return nil, err
	}
	c.mu.Lock()
	c.qps[uh] = qp
	c.mu.Unlock()
	return qp, nil
}

// createIbvQP creates the QP through libibverbs (ibv_create_qp), which reports the capacities
// granted in the attribute block.
func (pd *PD) createIbvQP(a *QPInitAttr) (*QP, error) {
	c := pd.ctx
	ic := c.lib
	if c.isClosed() {
		return nil, fmt.Errorf("rdma: create QP: %w", ErrClosed)
	}
	ic.mu.Lock()
	in := ic.qpInit
	*in = ibvQPInitAttr{SendCQ: a.SendCQ.lib, RecvCQ: a.RecvCQ.lib, QPType: qpTypeRC, Cap: ibvQPCap{
		MaxSendWR: uint32(a.MaxSendWR), MaxRecvWR: uint32(a.MaxRecvWR), MaxSendSGE: uint32(a.MaxSendSGE),
		MaxRecvSGE: uint32(a.MaxRecvSGE), MaxInlineData: uint32(a.MaxInline)}}
	if a.SignalAll {
		in.SQSigAll = 1
	}
	p, err := ic.lib.callErrno(ic.lib.createQP, pd.lib, addrOf(in))
	granted := in.Cap
	ic.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("rdma: %s: ibv_create_qp: %w", c.Device.Name, err)
	}
	v := (*ibvQP)(cptr(p))
	qp := &QP{ctx: c, pd: pd, handle: v.Handle, uh: uint64(p), lib: p, Num: v.QPNum, Caps: QPCaps{
		MaxSendWR: int(granted.MaxSendWR), MaxRecvWR: int(granted.MaxRecvWR), MaxSendSGE: int(granted.MaxSendSGE),
		MaxRecvSGE: int(granted.MaxRecvSGE), MaxInline: int(granted.MaxInlineData)}}
	qp.stage = newPostStage(qp.Caps)
	rings, err := newIbvQPRings(p, &ic.c.Ops, qp.Caps)
	if err != nil {
		call(ic.lib.destroyQP, p)
		return nil, err
	}
	qp.rings = rings
	c.mu.Lock()
	c.qps[qp.uh] = qp
	c.mu.Unlock()
	return qp, nil
}

// Modify changes the QP attributes selected by mask (e.g. the INIT, RTR and RTS transitions).
func (qp *QP) Modify(a *QPAttr, mask QPAttrMask) error {
	if mask&^qpAttrWriteMask != 0 {
		return fmt.Errorf("rdma: modify QP: attribute mask %#x has bits the kernel does not accept", uint32(mask))
	}
	cmd := uverbsModifyQP{
		Dest: uverbsQPDest{
			DGID: a.AH.DGID, FlowLabel: a.AH.FlowLabel, DLID: a.AH.DLID, SGIDIndex: a.AH.SGIDIndex,
			HopLimit: a.AH.HopLimit, TrafficClass: a.AH.TrafficClass, SL: a.AH.SL,
			SrcPathBits: a.AH.SrcPathBits, StaticRate: a.AH.StaticRate, PortNum: a.AH.PortNum,
		},
		QPHandle: qp.handle, AttrMask: uint32(mask), QKey: a.QKey, RQPSN: a.RQPSN, SQPSN: a.SQPSN,
		DestQPNum: a.DestQPNum, QPAccessFlags: uint32(a.AccessFlags), PkeyIndex: a.PkeyIndex,
		QPState: uint8(a.State), CurQPState: uint8(a.CurState), PathMTU: uint8(a.PathMTU),
		MaxRdAtomic: a.MaxRdAtomic, MaxDestRdAtomic: a.MaxDestRdAtomic, MinRNRTimer: a.MinRNRTimer,
		PortNum: a.PortNum, Timeout: a.Timeout, RetryCnt: a.RetryCnt, RNRRetry: a.RNRRetry,
	}
	if a.AH.IsGlobal {
		cmd.Dest.IsGlobal = 1
	}
	qp.mu.Lock()
	defer qp.mu.Unlock()
	if qp.dead {
		return fmt.Errorf("rdma: modify QP %d: %w", qp.Num, ErrClosed)
	}
	if ic := qp.ctx.lib; ic != nil {
		ic.mu.Lock()
		err := callInt(ic.lib.modifyQP, qp.lib, addrOf(ic.qpAttrFrom(a)), uintptr(mask))
		ic.mu.Unlock()
		if err != nil {
			return fmt.Errorf("rdma: modify QP %d to state %d (mask %#x): ibv_modify_qp: %w", qp.Num, a.State, uint32(mask), err)
		}
		return nil
	}
	if err := qp.ctx.execute(cmdModifyQP, nil, asBytes(&cmd)); err != nil {
		return fmt.Errorf("rdma: modify QP %d to state %d (mask %#x): %w", qp.Num, a.State, uint32(mask), err)
	}
	return nil
}

// PostSend queues send work requests and rings the doorbell once. Work requests need
// SendSignaled (or a QP created with SignalAll) to produce a completion; an unsignaled request's
// slot is freed when a later signaled one completes.
//
// The work requests are copied (through QP-owned staging memory) before the provider sees them,
// so neither wrs nor the SGL and Inline slices they point to escape: posting allocates nothing.
func (qp *QP) PostSend(wrs ...SendWR) error {
	qp.sendMu.Lock()
	defer qp.sendMu.Unlock()
	if qp.isDead() {
		return fmt.Errorf("rdma: post send: %w", ErrClosed)
	}
	st := &qp.stage
	for done := 0; done < len(wrs); {
		k := 0
		for ; k < stageWRs && done+k < len(wrs); k++ {
			wr := &wrs[done+k]
			if len(wr.SGL) > qp.Caps.MaxSendSGE {
				return qp.postErr("send", done+k, len(wrs), fmt.Errorf("%d SGEs exceed the QP's %d", len(wr.SGL), qp.Caps.MaxSendSGE))
			}
			if len(wr.Inline) > qp.Caps.MaxInline {
				return qp.postErr("send", done+k, len(wrs), fmt.Errorf("%d inline bytes exceed the QP's %d", len(wr.Inline), qp.Caps.MaxInline))
			}
			sges := st.sendSGEs[k*qp.Caps.MaxSendSGE:]
			s := SendWR{ID: wr.ID, Opcode: wr.Opcode, Flags: wr.Flags, RemoteAddr: wr.RemoteAddr, RKey: wr.RKey,
				InvalidateRKey: wr.InvalidateRKey, Bind: wr.Bind, SGL: sges[:copy(sges, wr.SGL)]}
			if wr.Inline != nil {
				in := st.inline[k*qp.Caps.MaxInline:]
				s.Inline = in[:copy(in, wr.Inline)]
			}
			st.send[k] = s
		}
		n, err := qp.rings.PostSend(st.send[:k])
		done += n
		if err != nil {
			return qp.postErr("send", done, len(wrs), err)
		}
	}
	return nil
}

func (qp *QP) postErr(what string, queued, total int, err error) error {
	return fmt.Errorf("rdma: post %s on QP %d (%d of %d queued): %w", what, qp.Num, queued, total, err)
}

// PostRecv queues receive work requests; like PostSend it allocates nothing.
func (qp *QP) PostRecv(wrs ...RecvWR) error {
	qp.recvMu.Lock()
	defer qp.recvMu.Unlock()
	if qp.isDead() {
		return fmt.Errorf("rdma: post recv: %w", ErrClosed)
	}
	st := &qp.stage
	for done := 0; done < len(wrs); {
		k := 0
		for ; k < stageWRs && done+k < len(wrs); k++ {
			wr := &wrs[done+k]
			if len(wr.SGL) > qp.Caps.MaxRecvSGE {
				return qp.postErr("recv", done+k, len(wrs), fmt.Errorf("%d SGEs exceed the QP's %d", len(wr.SGL), qp.Caps.MaxRecvSGE))
			}
			sges := st.recvSGEs[k*qp.Caps.MaxRecvSGE:]
			st.recv[k] = RecvWR{ID: wr.ID, SGL: sges[:copy(sges, wr.SGL)]}
		}
		n, err := qp.rings.PostRecv(st.recv[:k])
		done += n
		if err != nil {
			return qp.postErr("recv", done, len(wrs), err)
		}
	}
	return nil
}

// stageWRs is how many work requests one provider call takes.
const stageWRs = 16

// postStage is QP-owned copies of the work requests being posted (see PostSend).
type postStage struct {
	send     [stageWRs]SendWR
	recv     [stageWRs]RecvWR
	sendSGEs []SGE  // stageWRs * MaxSendSGE
	recvSGEs []SGE  // stageWRs * MaxRecvSGE
	inline   []byte // stageWRs * MaxInline
}

func newPostStage(c QPCaps) postStage {
	return postStage{sendSGEs: make([]SGE, stageWRs*c.MaxSendSGE), recvSGEs: make([]SGE, stageWRs*c.MaxRecvSGE),
		inline: make([]byte, stageWRs*c.MaxInline)}
}

func (qp *QP) isDead() bool {
	qp.mu.Lock()
	defer qp.mu.Unlock()
	return qp.dead
}

// Destroy destroys the QP and unmaps its queues. Outstanding work requests are dropped without
// completions: move the QP to QPErr and drain its CQs first when they matter.
func (qp *QP) Destroy() error {
	qp.sendMu.Lock()
	defer qp.sendMu.Unlock()
	qp.recvMu.Lock()
	defer qp.recvMu.Unlock()
	qp.mu.Lock()
	defer qp.mu.Unlock()
	if qp.dead {
		return nil
	}
	c := qp.ctx
	var err error
	if c.lib != nil {
		// Not under c.mu: ibv_destroy_qp waits for the acknowledgement of the QP's async
		// events, which the async reader gives before it takes c.mu.
		if err = callInt(c.lib.lib.destroyQP, qp.lib); err == nil {
			c.mu.Lock()
			delete(c.qps, qp.uh)
			c.mu.Unlock()
		}
	} else {
		var r uverbsDestroyQPResp
		c.mu.Lock()
		if !c.closed {
			err = deviceGone(c.executeLocked(cmdDestroyQP, asBytes(&r), asBytes(&uverbsDestroyObj{Handle: qp.handle})))
		}
		if err == nil {
			delete(c.qps, qp.uh)
		}
		c.mu.Unlock()
	}
	if err != nil {
		return fmt.Errorf("rdma: destroy QP %d: %w", qp.Num, err)
	}
	qp.dead = true
	return qp.rings.Close()
}
