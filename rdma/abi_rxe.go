//go:build linux

package rdma

// Mirrors of the rdma_rxe shared-queue ABI from include/uapi/rdma/rdma_user_rxe.h, pinned in
// abi_test.go.

// rxeMMInfo is struct mminfo: where to mmap a queue on the uverbs fd.
type rxeMMInfo struct {
	Offset uint64
	Size   uint32
	Pad    uint32
}

type rxeCreateCQResp struct {
	MI rxeMMInfo
}

type rxeCreateQPResp struct {
	RQMI rxeMMInfo
	SQMI rxeMMInfo
}

// rxeQueueHdr is struct rxe_queue_buf without its flexible data member.
type rxeQueueHdr struct {
	Log2ElemSize  uint32
	IndexMask     uint32
	Pad1          [30]uint32
	ProducerIndex uint32
	Pad2          [31]uint32
	ConsumerIndex uint32
	Pad3          [31]uint32
}

// rxeSendWR is struct rxe_send_wr with its wr union reduced to the rdma member and padded to the
// size of the largest member (ud).
type rxeSendWR struct {
	WRID       uint64
	Reserved   uint32
	Opcode     uint32
	SendFlags  uint32
	Ex         uint32 // imm_data or invalidate_rkey
	RemoteAddr uint64
	RKey       uint32
	Reserved2  uint32
	UnionTail  [104]byte
}

// rxeMWBind is the mw member of rxe_send_wr's wr union (at RemoteAddr's offset): a bind_mw
// work request.
type rxeMWBind struct {
	Addr   uint64
	Length uint64
	MRLKey uint32
	MWRKey uint32
	RKey   uint32
	Access uint32
}

type rxeSGE struct {
	Addr   uint64
	Length uint32
	LKey   uint32
}

type rxeDMAInfo struct {
	Length    uint32
	Resid     uint32
	CurSGE    uint32
	NumSGE    uint32
	SGEOffset uint32
	Reserved  uint32
}

// rxeSendWQE is struct rxe_send_wqe; its sge[] or inline data follow at offset 208.
type rxeSendWQE struct {
	WR          rxeSendWR
	Status      uint32
	State       uint32
	IOVA        uint64
	Mask        uint32
	FirstPSN    uint32
	LastPSN     uint32
	AckLength   uint32
	SSN         uint32
	HasRdAtomic uint32
	DMA         rxeDMAInfo
}

// rxeRecvWQE is struct rxe_recv_wqe; its sge[] follow at offset 40.
type rxeRecvWQE struct {
	WRID     uint64
	Reserved uint32
	Padding  uint32
	DMA      rxeDMAInfo
}
