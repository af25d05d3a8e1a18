//go:build linux

package rdma

// Mirrors of the uverbs write() ABI from include/uapi/rdma/ib_user_verbs.h (ABI version 6).
// Every struct here has its size and field offsets pinned in abi_test.go against the
// numbers the kernel headers give on x86_64 (the layouts are identical on arm64).

// Legacy write() command numbers (enum ib_uverbs_write_cmds).
const (
	cmdGetContext        = 0
	cmdQueryDevice       = 1
	cmdQueryPort         = 2
	cmdAllocPD           = 3
	cmdDeallocPD         = 4
	cmdRegMR             = 9
	cmdDeregMR           = 13
	cmdAllocMW           = 14
	cmdDeallocMW         = 16
	cmdCreateCompChannel = 17
	cmdCreateCQ          = 18
	cmdDestroyCQ         = 20
	cmdReqNotifyCQ       = 23
	cmdCreateQP          = 24
	cmdModifyQP          = 26
	cmdDestroyQP         = 27
	cmdPostSend          = 28
)

// uverbsCmdHdr is struct ib_uverbs_cmd_hdr: in_words and out_words count 32-bit words;
// in_words includes the header itself.
type uverbsCmdHdr struct {
	Command  uint32
	InWords  uint16
	OutWords uint16
}

// uverbsRespCmd is the common head of every command that has a response
// (ib_uverbs_get_context, ib_uverbs_query_device, ib_uverbs_alloc_pd, ib_uverbs_create_comp_channel).
type uverbsRespCmd struct {
	Response uint64
}

type uverbsGetContextResp struct {
	AsyncFD        uint32
	NumCompVectors uint32
}

type uverbsQueryDeviceResp struct {
	FWVer                 uint64
	NodeGUID              uint64 // big-endian on the wire
	SysImageGUID          uint64 // big-endian on the wire
	MaxMRSize             uint64
	PageSizeCap           uint64
	VendorID              uint32
	VendorPartID          uint32
	HWVer                 uint32
	MaxQP                 uint32
	MaxQPWR               uint32
	DeviceCapFlags        uint32
	MaxSGE                uint32
	MaxSGERd              uint32
	MaxCQ                 uint32
	MaxCQE                uint32
	MaxMR                 uint32
	MaxPD                 uint32
	MaxQPRdAtom           uint32
	MaxEERdAtom           uint32
	MaxResRdAtom          uint32
	MaxQPInitRdAtom       uint32
	MaxEEInitRdAtom       uint32
	AtomicCap             uint32
	MaxEE                 uint32
	MaxRDD                uint32
	MaxMW                 uint32
	MaxRawIPv6QP          uint32
	MaxRawEthyQP          uint32
	MaxMcastGrp           uint32
	MaxMcastQPAttach      uint32
	MaxTotalMcastQPAttach uint32
	MaxAH                 uint32
	MaxFMR                uint32
	MaxMapPerFMR          uint32
	MaxSRQ                uint32
	MaxSRQWR              uint32
	MaxSRQSGE             uint32
	MaxPkeys              uint16
	LocalCAAckDelay       uint8
	PhysPortCnt           uint8
	Reserved              [4]uint8
}

type uverbsQueryPort struct {
	Response uint64
	PortNum  uint8
	Reserved [7]uint8
}

type uverbsQueryPortResp struct {
	PortCapFlags  uint32
	MaxMsgSz      uint32
	BadPkeyCntr   uint32
	QkeyViolCntr  uint32
	GIDTblLen     uint32
	PkeyTblLen    uint16
	LID           uint16
	SMLID         uint16
	State         uint8
	MaxMTU        uint8
	ActiveMTU     uint8
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
	Reserved      uint8
}

type uverbsAllocPDResp struct {
	PDHandle uint32
}

// uverbsHandleCmd is the body of DEALLOC_PD, DEREG_MR and DEALLOC_MW: one handle, no response.
type uverbsHandleCmd struct {
	Handle uint32
}

type uverbsRegMR struct {
	Response    uint64
	Start       uint64
	Length      uint64
	HCAVA       uint64
	PDHandle    uint32
	AccessFlags uint32
}

type uverbsRegMRResp struct {
	MRHandle uint32
	LKey     uint32
	RKey     uint32
}

type uverbsAllocMW struct {
	Response uint64
	PDHandle uint32
	MWType   uint8
	Reserved [3]uint8
}

type uverbsAllocMWResp struct {
	MWHandle uint32
	RKey     uint32
}

type uverbsCreateCompChannelResp struct {
	FD uint32
}

type uverbsCreateCQ struct {
	Response    uint64
	UserHandle  uint64
	CQE         uint32
	CompVector  uint32
	CompChannel int32
	Reserved    uint32
}

type uverbsCreateCQResp struct {
	CQHandle uint32
	CQE      uint32
}

// uverbsDestroyObj is the body of DESTROY_CQ and DESTROY_QP.
type uverbsDestroyObj struct {
	Response uint64
	Handle   uint32
	Reserved uint32
}

type uverbsDestroyCQResp struct {
	CompEventsReported  uint32
	AsyncEventsReported uint32
}

type uverbsReqNotifyCQ struct {
	CQHandle      uint32
	SolicitedOnly uint32
}

// uverbsWC is struct ib_uverbs_wc, also the first 48 bytes of an rxe CQE.
type uverbsWC struct {
	WRID         uint64
	Status       uint32
	Opcode       uint32
	VendorErr    uint32
	ByteLen      uint32
	Ex           uint32 // imm_data (big-endian) or invalidate_rkey
	QPNum        uint32
	SrcQP        uint32
	WCFlags      uint32
	PkeyIndex    uint16
	SLID         uint16
	SL           uint8
	DLIDPathBits uint8
	PortNum      uint8
	Reserved     uint8
}

type uverbsGlobalRoute struct {
	DGID         [16]byte
	FlowLabel    uint32
	SGIDIndex    uint8
	HopLimit     uint8
	TrafficClass uint8
	Reserved     uint8
}

type uverbsAHAttr struct {
	GRH         uverbsGlobalRoute
	DLID        uint16
	SL          uint8
	SrcPathBits uint8
	StaticRate  uint8
	IsGlobal    uint8
	PortNum     uint8
	Reserved    uint8
}

// uverbsQPAttr is struct ib_uverbs_qp_attr, the answer of rdma_cm INIT_QP_ATTR.
type uverbsQPAttr struct {
	QPAttrMask      uint32
	QPState         uint32
	CurQPState      uint32
	PathMTU         uint32
	PathMigState    uint32
	QKey            uint32
	RQPSN           uint32
	SQPSN           uint32
	DestQPNum       uint32
	QPAccessFlags   uint32
	AHAttr          uverbsAHAttr
	AltAHAttr       uverbsAHAttr
	MaxSendWR       uint32
	MaxRecvWR       uint32
	MaxSendSGE      uint32
	MaxRecvSGE      uint32
	MaxInlineData   uint32
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
	Reserved        [5]uint8
}

type uverbsCreateQP struct {
	Response      uint64
	UserHandle    uint64
	PDHandle      uint32
	SendCQHandle  uint32
	RecvCQHandle  uint32
	SRQHandle     uint32
	MaxSendWR     uint32
	MaxRecvWR     uint32
	MaxSendSGE    uint32
	MaxRecvSGE    uint32
	MaxInlineData uint32
	SQSigAll      uint8
	QPType        uint8
	IsSRQ         uint8
	Reserved      uint8
}

type uverbsCreateQPResp struct {
	QPHandle      uint32
	QPN           uint32
	MaxSendWR     uint32
	MaxRecvWR     uint32
	MaxSendSGE    uint32
	MaxRecvSGE    uint32
	MaxInlineData uint32
	Reserved      uint32
}

// uverbsQPDest is struct ib_uverbs_qp_dest (the address vector inside MODIFY_QP).
type uverbsQPDest struct {
	DGID         [16]byte
	FlowLabel    uint32
	DLID         uint16
	Reserved     uint16
	SGIDIndex    uint8
	HopLimit     uint8
	TrafficClass uint8
	SL           uint8
	SrcPathBits  uint8
	StaticRate   uint8
	IsGlobal     uint8
	PortNum      uint8
}

type uverbsModifyQP struct {
	Dest            uverbsQPDest
	AltDest         uverbsQPDest
	QPHandle        uint32
	AttrMask        uint32
	QKey            uint32
	RQPSN           uint32
	SQPSN           uint32
	DestQPNum       uint32
	QPAccessFlags   uint32
	PkeyIndex       uint16
	AltPkeyIndex    uint16
	QPState         uint8
	CurQPState      uint8
	PathMTU         uint8
	PathMigState    uint8
	EnSQDAsyncNotif uint8
	MaxRdAtomic     uint8
	MaxDestRdAtomic uint8
	MinRNRTimer     uint8
	PortNum         uint8
	Timeout         uint8
	RetryCnt        uint8
	RNRRetry        uint8
	AltPortNum      uint8
	AltTimeout      uint8
	Reserved        [2]uint8
}

type uverbsDestroyQPResp struct {
	EventsReported uint32
}

type uverbsPostSend struct {
	Response uint64
	QPHandle uint32
	WRCount  uint32
	SGECount uint32
	WQESize  uint32
}

type uverbsPostSendResp struct {
	BadWR uint32
}

// uverbsSendWRSize is sizeof(struct ib_uverbs_send_wr); the rxe doorbell announces it as wqe_size.
const uverbsSendWRSize = 56

type uverbsAsyncEventDesc struct {
	Element   uint64
	EventType uint32
	Reserved  uint32
}

type uverbsCompEventDesc struct {
	CQHandle uint64
}
