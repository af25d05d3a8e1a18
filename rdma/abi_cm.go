//go:build linux

package rdma

// Mirrors of the rdma_cm write() ABI from include/uapi/rdma/rdma_user_cm.h (ABI version 4),
// pinned in abi_test.go.

// rdma_cm command numbers.
const (
	ucmCreateID      = 0
	ucmDestroyID     = 1
	ucmResolveRoute  = 4
	ucmConnect       = 6
	ucmListen        = 7
	ucmAccept        = 8
	ucmReject        = 9
	ucmDisconnect    = 10
	ucmInitQPAttr    = 11
	ucmGetEvent      = 12
	ucmMigrateID     = 18
	ucmQuery         = 19
	ucmBind          = 20
	ucmResolveAddr   = 21
	ucmQueryAddr     = 0 // rdma_ucm_query.option
	psTCP            = 0x0106
	ucmMaxPrivData   = 256
	sockaddrStorSize = 128
)

type ucmCmdHdr struct {
	Cmd uint32
	In  uint16
	Out uint16
}

type ucmCreateIDCmd struct {
	UID      uint64
	Response uint64
	PS       uint16
	QPType   uint8
	Reserved [5]uint8
}

type ucmCreateIDResp struct {
	ID uint32
}

type ucmDestroyIDCmd struct {
	Response uint64
	ID       uint32
	Reserved uint32
}

type ucmDestroyIDResp struct {
	EventsReported uint32
}

type ucmBindCmd struct {
	ID       uint32
	AddrSize uint16
	Reserved uint16
	Addr     [sockaddrStorSize]byte
}

type ucmResolveAddrCmd struct {
	ID        uint32
	TimeoutMS uint32
	SrcSize   uint16
	DstSize   uint16
	Reserved  uint32
	SrcAddr   [sockaddrStorSize]byte
	DstAddr   [sockaddrStorSize]byte
}

type ucmResolveRouteCmd struct {
	ID        uint32
	TimeoutMS uint32
}

type ucmQueryCmd struct {
	Response uint64
	ID       uint32
	Option   uint32
}

type ucmQueryAddrResp struct {
	NodeGUID   uint64 // big-endian on the wire
	PortNum    uint8
	Reserved   uint8
	Pkey       uint16
	SrcSize    uint16
	DstSize    uint16
	SrcAddr    [sockaddrStorSize]byte
	DstAddr    [sockaddrStorSize]byte
	IBDevIndex uint32
	Reserved1  uint32
}

type ucmConnParam struct {
	QPNum              uint32
	QKey               uint32
	PrivateData        [ucmMaxPrivData]byte
	PrivateDataLen     uint8
	SRQ                uint8
	ResponderResources uint8
	InitiatorDepth     uint8
	FlowControl        uint8
	RetryCount         uint8
	RNRRetryCount      uint8
	Valid              uint8
}

type ucmECE struct {
	VendorID uint32
	AttrMod  uint32
}

type ucmConnectCmd struct {
	ConnParam ucmConnParam
	ID        uint32
	Reserved  uint32
	ECE       ucmECE
}

type ucmListenCmd struct {
	ID      uint32
	Backlog uint32
}

type ucmAcceptCmd struct {
	UID       uint64
	ConnParam ucmConnParam
	ID        uint32
	Reserved  uint32
	ECE       ucmECE
}

type ucmRejectCmd struct {
	ID             uint32
	PrivateDataLen uint8
	Reason         uint8
	Reserved       [2]uint8
	PrivateData    [ucmMaxPrivData]byte
}

// ucmIDCmd is the body of DISCONNECT: one id.
type ucmIDCmd struct {
	ID uint32
}

type ucmInitQPAttrCmd struct {
	Response uint64
	ID       uint32
	QPState  uint32
}

type ucmGetEventCmd struct {
	Response uint64
}

// ucmEventResp is struct rdma_ucm_event_resp. Its param union starts at offset 20 (only
// 4-byte aligned); the connected-mode member is decoded, the UD tail is kept as bytes.
type ucmEventResp struct {
	UID     uint64
	ID      uint32
	Event   uint32
	Status  int32
	Conn    ucmConnParam
	UDTail  [32]byte // rdma_ucm_ud_param is 32 bytes longer than rdma_ucm_conn_param
	Reserve uint32
	ECE     ucmECE
}

type ucmMigrateIDCmd struct {
	Response uint64
	ID       uint32
	FD       uint32
}

type ucmMigrateResp struct {
	EventsReported uint32
}
