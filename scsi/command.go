// Package scsi emulates SCSI logical units (SPC-4 / SBC-3 direct-access
// disks) for a target, independently of the transport that carries the
// commands. A Target routes each Command to the logical unit it addresses and
// completes it asynchronously through Command.Done.
package scsi

// Status is a SCSI status byte (SAM-5).
type Status byte

// SCSI status codes.
const (
	StatusGood                Status = 0x00
	StatusCheckCondition      Status = 0x02
	StatusConditionMet        Status = 0x04
	StatusBusy                Status = 0x08
	StatusReservationConflict Status = 0x18
	StatusTaskSetFull         Status = 0x28
	StatusACAActive           Status = 0x30
	StatusTaskAborted         Status = 0x40
)

// TaskAttr is the SAM task attribute of a command.
type TaskAttr uint8

// Task attributes as carried by iSCSI (RFC 7143 11.3.1.3).
const (
	AttrUntagged TaskAttr = iota
	AttrSimple
	AttrOrdered
	AttrHeadOfQueue
	AttrACA
)

// Nexus identifies an I_T nexus: one initiator port talking to one target
// port. Unit attentions, reservations and task sets are kept per nexus.
type Nexus struct {
	// ID is unique per nexus for the life of the process.
	ID uint64
	// InitiatorPort is the SCSI initiator port name, for iSCSI
	// "<initiator name>,i,0x<ISID>".
	InitiatorPort string
	// InitiatorName is the iSCSI initiator name alone (used by ACLs and
	// TransportIDs).
	InitiatorName string
	// TargetPort is the SCSI target port name, for iSCSI
	// "<target name>,t,0x<TPGT>".
	TargetPort string
	// RelativePort is the relative target port identifier (VPD 0x83).
	RelativePort uint16
	// PortGroup is the target port group the nexus came in through.
	PortGroup uint16
	// ReadOnly refuses writes from this nexus (an ACL setting).
	ReadOnly bool
	// LUNs, when not nil, is the list of LUNs this nexus may see (REPORT
	// LUNS answers with it); the transport maps them to the target's LUNs.
	LUNs []uint64
}

// Command is one SCSI command and, once Done is called, its outcome. The
// transport owns the Command and its buffers; the Target must not keep
// references to them after calling Done.
type Command struct {
	Nexus *Nexus
	LUN   uint64 // logical unit number (flat addressing, already decoded)
	CDB   []byte
	Attr  TaskAttr
	Tag   uint64 // task tag, unique among the nexus's tasks in flight

	// DataOut holds the data the initiator sent (write direction). Its
	// length is what the initiator transferred, which may differ from what
	// the CDB asks for.
	DataOut []byte
	// DataIn is the buffer for data to the initiator (read direction); its
	// length is the initiator's expected transfer length. The Target fills
	// DataIn[:InLen].
	DataIn []byte

	// Outcome, valid when Done is called.
	Status Status
	// Sense holds SenseLen bytes of sense data for CHECK CONDITION.
	Sense    [SenseSize]byte
	SenseLen int
	// InLen is the number of DataIn bytes to transfer (<= len(DataIn)).
	InLen int
	// Wanted is the number of bytes the command would have transferred
	// given an unlimited buffer, in the command's direction. The transport
	// derives residual overflow/underflow from it and its expected length.
	Wanted int

	// Inline says that the transport's goroutine has nothing else to do
	// until the command completes (one command in flight, no request
	// waiting to be read): its first block I/O goes to the backend as
	// bdev.Request.Inline, and Done may run before Execute returns.
	Inline bool

	// Done is called exactly once, from any goroutine, when the command
	// has completed.
	Done func(*Command)
	// Ctx is for the transport; the Target never touches it.
	Ctx any
}

// SenseSize is the room reserved for sense data (SPC-4 allows up to 252).
const SenseSize = 96

// Reset clears the outcome fields so a pooled Command can be reused.
func (c *Command) Reset() {
	c.Status, c.SenseLen, c.InLen, c.Wanted = StatusGood, 0, 0, 0
}
