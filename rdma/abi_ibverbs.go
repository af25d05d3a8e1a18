//go:build linux

package rdma

// Mirrors of the libibverbs structures the libibverbs provider reads or fills in, from
// <infiniband/verbs.h> (rdma-core 44, x86_64/arm64 LP64). They are libibverbs' ABI (stable since
// rdma-core's IBVERBS_1.1 symbol version); abi_ibverbs_test.go pins every size and offset, and
// checks them against the header with a C compiler where one is installed.

// ibvContextOps is struct ibv_context_ops: the provider's function table. Only the data path
// entries are called (they are inline functions in verbs.h); the others are placeholders.
type ibvContextOps struct {
	_           [7]uintptr // _compat_query_device ... _compat_dereg_mr
	AllocMW     uintptr
	BindMW      uintptr
	DeallocMW   uintptr
	_           uintptr // _compat_create_cq
	PollCQ      uintptr
	ReqNotifyCQ uintptr
	_           [7]uintptr // _compat_cq_event ... _compat_destroy_srq
	PostSRQRecv uintptr
	_           [4]uintptr // _compat_create_qp ... _compat_destroy_qp
	PostSend    uintptr
	PostRecv    uintptr
	_           [5]uintptr // _compat_create_ah ... _compat_async_event
}

// ibvContext is struct ibv_context up to num_comp_vectors (a mutex and a pointer follow).
type ibvContext struct {
	Device         uintptr
	Ops            ibvContextOps
	CmdFD          int32
	AsyncFD        int32
	NumCompVectors int32
}

// ibvDevice is struct ibv_device.
type ibvDevice struct {
	_             [2]uintptr // _ops
	NodeType      int32
	TransportType int32
	Name          [64]byte
	DevName       [64]byte
	DevPath       [256]byte
	IBDevPath     [256]byte
}

// ibvPD is struct ibv_pd.
type ibvPD struct {
	Context uintptr
	Handle  uint32
}

// ibvMR is struct ibv_mr.
type ibvMR struct {
	Context uintptr
	PD      uintptr
	Addr    uintptr
	Length  uint64
	Handle  uint32
	LKey    uint32
	RKey    uint32
}

// ibvMW is struct ibv_mw.
type ibvMW struct {
	Context uintptr
	PD      uintptr
	RKey    uint32
	Handle  uint32
	Type    uint32
}

// ibvCompChannel is struct ibv_comp_channel.
type ibvCompChannel struct {
	Context uintptr
	FD      int32
	Refcnt  int32
}

// ibvCQ is struct ibv_cq up to cqe (a mutex, a condition variable and event counters follow).
type ibvCQ struct {
	Context   uintptr
	Channel   uintptr
	CQContext uintptr
	Handle    uint32
	CQE       int32
}

// ibvQP is struct ibv_qp up to qp_type (a mutex, a condition variable and a counter follow).
type ibvQP struct {
	Context   uintptr
	QPContext uintptr
	PD        uintptr
	SendCQ    uintptr
	RecvCQ    uintptr
	SRQ       uintptr
	Handle    uint32
	QPNum     uint32
	State     uint32
	QPType    uint32
}

// ibvSGE is struct ibv_sge.
type ibvSGE struct {
	Addr   uint64
	Length uint32
	LKey   uint32
}

// ibvSendWR is struct ibv_send_wr: the wr union as its rdma member (padded to the atomic one),
// the qp_type union, and the union after it as its bind_mw member.
type ibvSendWR struct {
	WRID       uint64
	Next       uintptr
	SGList     uintptr
	NumSGE     int32
	Opcode     uint32
	SendFlags  uint32
	Ex         uint32 // imm_data or invalidate_rkey
	RemoteAddr uint64 // wr.rdma.remote_addr
	RKey       uint32 // wr.rdma.rkey
	_          [20]byte
	RemoteSRQN uint32 // qp_type.xrc.remote_srqn
	_          uint32
	BindMW     uintptr // bind_mw.mw
	BindRKey   uint32  // bind_mw.rkey
	_          uint32
	BindMR     uintptr // bind_mw.bind_info.mr
	BindAddr   uint64
	BindLength uint64
	BindAccess uint32
	_          uint32
}

// ibvRecvWR is struct ibv_recv_wr.
type ibvRecvWR struct {
	WRID   uint64
	Next   uintptr
	SGList uintptr
	NumSGE int32
	_      int32
}

// ibvWC is struct ibv_wc.
type ibvWC struct {
	WRID         uint64
	Status       uint32
	Opcode       uint32
	VendorErr    uint32
	ByteLen      uint32
	Ex           uint32 // imm_data or invalidated_rkey
	QPNum        uint32
	SrcQP        uint32
	WCFlags      uint32
	PkeyIndex    uint16
	SLID         uint16
	SL           uint8
	DLIDPathBits uint8
	_            [2]byte
}

// Completion flags of libibverbs (enum ibv_wc_flags): GRH and WITH_IMM are numbered like the
// kernel's, WITH_INV and IP_CSUM_OK are the kernel's IP_CSUM_OK and WITH_INVALIDATE swapped.
const (
	ibvWCKeep     = 1<<0 | 1<<1 // IBV_WC_GRH, IBV_WC_WITH_IMM
	ibvWCIPCsumOK = 1 << 2
	ibvWCWithInv  = 1 << 3
)

// ibvQPCap is struct ibv_qp_cap.
type ibvQPCap struct {
	MaxSendWR, MaxRecvWR, MaxSendSGE, MaxRecvSGE, MaxInlineData uint32
}

// ibvQPInitAttr is struct ibv_qp_init_attr.
type ibvQPInitAttr struct {
	QPContext uintptr
	SendCQ    uintptr
	RecvCQ    uintptr
	SRQ       uintptr
	Cap       ibvQPCap
	QPType    uint32
	SQSigAll  int32
	_         int32
}

// ibvGlobalRoute is struct ibv_global_route.
type ibvGlobalRoute struct {
	DGID         [16]byte
	FlowLabel    uint32
	SGIDIndex    uint8
	HopLimit     uint8
	TrafficClass uint8
	_            uint8
}

// ibvAHAttr is struct ibv_ah_attr.
type ibvAHAttr struct {
	GRH         ibvGlobalRoute
	DLID        uint16
	SL          uint8
	SrcPathBits uint8
	StaticRate  uint8
	IsGlobal    uint8
	PortNum     uint8
	_           uint8
}

// ibvQPAttr is struct ibv_qp_attr.
type ibvQPAttr struct {
	QPState         uint32
	CurQPState      uint32
	PathMTU         uint32
	PathMigState    uint32
	QKey            uint32
	RQPSN           uint32
	SQPSN           uint32
	DestQPNum       uint32
	QPAccessFlags   uint32
	Cap             ibvQPCap
	AHAttr          ibvAHAttr
	AltAHAttr       ibvAHAttr
	PkeyIndex       uint16
	AltPkeyIndex    uint16
	EnSQDAsyncNotif uint8
	SQDraining      uint8
	MaxRdAtomic     uint8
	MaxDestRdAtomic uint8
	MinRNRTimer     uint8
	PortNum         uint8
	Timeout         uint8
	RetryCnt        uint8
	RNRRetry        uint8
	AltPortNum      uint8
	AltTimeout      uint8
	_               uint8
	RateLimit       uint32
	_               uint32 // union ibv_gid in ah_attr aligns the struct to 8
}

// ibvDeviceAttr is struct ibv_device_attr.
type ibvDeviceAttr struct {
	FWVer                 [64]byte
	NodeGUID              uint64 // big endian
	SysImageGUID          uint64
	MaxMRSize             uint64
	PageSizeCap           uint64
	VendorID              uint32
	VendorPartID          uint32
	HWVer                 uint32
	MaxQP                 int32
	MaxQPWR               int32
	DeviceCapFlags        uint32
	MaxSGE                int32
	MaxSGERd              int32
	MaxCQ                 int32
	MaxCQE                int32
	MaxMR                 int32
	MaxPD                 int32
	MaxQPRdAtom           int32
	MaxEERdAtom           int32
	MaxResRdAtom          int32
	MaxQPInitRdAtom       int32
	MaxEEInitRdAtom       int32
	AtomicCap             uint32
	MaxEE                 int32
	MaxRDD                int32
	MaxMW                 int32
	MaxRawIPv6QP          int32
	MaxRawEthyQP          int32
	MaxMcastGrp           int32
	MaxMcastQPAttach      int32
	MaxTotalMcastQPAttach int32
	MaxAH                 int32
	MaxFMR                int32
	MaxMapPerFMR          int32
	MaxSRQ                int32
	MaxSRQWR              int32
	MaxSRQSGE             int32
	MaxPkeys              uint16
	LocalCAAckDelay       uint8
	PhysPortCnt           uint8
	_                     [4]byte
}

// ibvPortAttr is struct ibv_port_attr.
type ibvPortAttr struct {
	State         uint32
	MaxMTU        uint32
	ActiveMTU     uint32
	GIDTblLen     int32
	PortCapFlags  uint32
	MaxMsgSz      uint32
	BadPkeyCntr   uint32
	QkeyViolCntr  uint32
	PkeyTblLen    uint16
	LID           uint16
	SMLID         uint16
	LMC           uint8
	MaxVLNum      uint8
	SMSL          uint8
	SubnetTimeout uint8
	InitTypeReply uint8
	ActiveWidth   uint8
	ActiveSpeed   uint8
	PhysState     uint8
	LinkLayer     uint8
	Flags         uint8
	PortCapFlags2 uint16
	_             [2]byte
}

// ibvAsyncEvent is struct ibv_async_event.
type ibvAsyncEvent struct {
	Element   uintptr // cq, qp, srq, wq or port_num
	EventType uint32
	_         uint32
}
