package scsi

import (
	"encoding/binary"
	"slices"
	"strconv"
	"strings"
)

// Persistent reservation types (SPC-4 6.15.4 table 175).
const (
	prWE   = 0x1 // write exclusive
	prEA   = 0x3 // exclusive access
	prWERO = 0x5 // write exclusive, registrants only
	prEARO = 0x6 // exclusive access, registrants only
	prWEAR = 0x7 // write exclusive, all registrants
	prEAAR = 0x8 // exclusive access, all registrants
)

// PERSISTENT RESERVE OUT service actions (SPC-4 6.16.2).
const (
	proRegister = iota
	proReserve
	proRelease
	proClear
	proPreempt
	proPreemptAbort
	proRegisterIgnore
	proRegisterMove
)

// PERSISTENT RESERVE IN service actions (SPC-4 6.15.1).
const (
	priReadKeys = iota
	priReadReservation
	priReportCapabilities
	priReadFullStatus
)

const (
	proBasicLen  = 24 // basic PERSISTENT RESERVE OUT parameter list
	tidMinLen    = 24 // iSCSI TransportID: header + at least 20 bytes of name
	isidDigits   = 12 // an ISID is 6 bytes
	portSep      = ",i,0x"
	maxPRRegs    = 1024 // registrations kept per logical unit
	maxNameLen   = 223  // bytes of an iSCSI name (RFC 7143 4.2.7.1)
	maxTIDsBytes = 1 << 16
)

// registration is one registered I_T nexus, or a set of them: every
// initiator port of Name (Port empty: TransportID format 00b) and every
// target port (Rel 0: ALL_TG_PT).
type registration struct {
	ID   uint64 // unique within the logical unit; names the holder
	Key  uint64
	Name string // iSCSI initiator name
	Port string // initiator port "<name>,i,0x<ISID>", or empty for any
	Rel  uint16 // relative target port identifier, or 0 for all
}

// covers reports whether the registration applies to nexus n.
func (r *registration) covers(n *Nexus) bool {
	if r.Rel != 0 && r.Rel != relOf(n) {
		return false
	}
	if r.Port == "" {
		return strings.EqualFold(r.Name, nameOf(n))
	}
	return samePort(r.Port, n.InitiatorPort)
}

// overlaps reports whether r and o could both apply to one I_T nexus.
func (r *registration) overlaps(o *registration) bool {
	if r.Rel != 0 && o.Rel != 0 && r.Rel != o.Rel {
		return false
	}
	if !strings.EqualFold(r.Name, o.Name) {
		return false
	}
	return r.Port == "" || o.Port == "" || samePort(r.Port, o.Port)
}

// relOf is the relative target port of n (1 when the transport left it 0).
func relOf(n *Nexus) uint16 { return max(n.RelativePort, 1) }

// nameOf is the initiator name of n, taken from its port name if unset.
func nameOf(n *Nexus) string {
	if n.InitiatorName != "" {
		return n.InitiatorName
	}
	name, _, _ := splitPort(n.InitiatorPort)
	return name
}

// splitPort splits "<name>,i,0x<ISID>" into its name and ISID.
func splitPort(s string) (name string, isid uint64, ok bool) {
	i := lastIndexFold(s, portSep)
	if i < 0 {
		return s, 0, false
	}
	hex := s[i+len(portSep):]
	if hex == "" || len(hex) > isidDigits {
		return s, 0, false
	}
	v, err := strconv.ParseUint(hex, 16, 64)
	if err != nil {
		return s, 0, false
	}
	return s[:i], v, true
}

// lastIndexFold is the index of the last ASCII case-insensitive match of
// sep in s, or -1.
func lastIndexFold(s, sep string) int {
	for i := len(s) - len(sep); i >= 0; i-- {
		if strings.EqualFold(s[i:i+len(sep)], sep) {
			return i
		}
	}
	return -1
}

// samePort compares two initiator port names: names case-insensitively,
// ISIDs by value.
func samePort(a, b string) bool {
	if a == b {
		return true
	}
	an, ai, aok := splitPort(a)
	bn, bi, bok := splitPort(b)
	return aok && bok && ai == bi && strings.EqualFold(an, bn)
}

// prState is a snapshot of the persistent reservation state of a logical
// unit. Snapshots are immutable once published in Disk.pr, so commands
// check conflicts with one atomic load; changes copy, edit and publish.
// Its exported fields are what APTPL persists.
type prState struct {
	Gen    uint32 // PRgeneration
	Regs   []registration
	Type   byte   // reservation type, 0 when there is no reservation
	Holder uint64 // ID of the holding registration (unused for all-registrants)
	APTPL  bool
	NextID uint64
}

func (p *prState) clone() *prState {
	q := *p
	q.Regs = slices.Clone(p.Regs)
	return &q
}

// allRegistrants reports whether every registrant holds the reservation.
func (p *prState) allRegistrants() bool { return p.Type == prWEAR || p.Type == prEAAR }

// find returns the index of the registration covering n, or -1.
func (p *prState) find(n *Nexus) int {
	for i := range p.Regs {
		if p.Regs[i].covers(n) {
			return i
		}
	}
	return -1
}

// holds reports whether registration i holds the reservation.
func (p *prState) holds(i int) bool {
	return i >= 0 && p.Type != 0 && (p.allRegistrants() || p.Regs[i].ID == p.Holder)
}

// holderKey is the key of the holder of a reservation that is not
// all-registrants.
func (p *prState) holderKey() uint64 {
	for i := range p.Regs {
		if p.Regs[i].ID == p.Holder {
			return p.Regs[i].Key
		}
	}
	return 0
}

// conflicts reports whether a command from n conflicts with the
// reservation (SPC-4 5.13.1, SBC-3 4.17): read says the command only
// reads, so only the exclusive access types stop it.
func (p *prState) conflicts(n *Nexus, read bool) bool {
	i := p.find(n)
	if p.holds(i) {
		return false
	}
	switch p.Type {
	case prWE:
		return !read
	case prEA:
		return true
	case prWERO, prWEAR:
		return !read && i < 0
	case prEARO, prEAAR:
		return i < 0
	}
	return false
}

// validType reports whether t is a reservation type the disk supports.
func validType(t byte) bool {
	switch t {
	case prWE, prEA, prWERO, prEARO, prWEAR, prEAAR:
		return true
	}
	return false
}

// transportID is a decoded iSCSI TransportID (SPC-4 7.6.4.6).
type transportID struct {
	name string
	port string // empty for format 00b (the initiator device, any port)
}

// parseTransportID decodes the TransportID at the start of b and returns
// it with its length.
func parseTransportID(b []byte) (transportID, int, bool) {
	if len(b) < 4 || b[0]&0x0f != protoISCSI {
		return transportID{}, 0, false
	}
	total := 4 + int(binary.BigEndian.Uint16(b[2:]))
	if total < tidMinLen || total%4 != 0 || total > len(b) {
		return transportID{}, 0, false
	}
	s := b[4:total]
	end := slices.Index(s, 0)
	if end <= 0 {
		return transportID{}, 0, false
	}
	str := string(s[:end])
	switch b[0] >> 6 {
	case 0:
		if lastIndexFold(str, portSep) >= 0 || len(str) > maxNameLen {
			return transportID{}, 0, false
		}
		return transportID{name: str}, total, true
	case 1:
		name, _, ok := splitPort(str)
		if !ok || name == "" || len(name) > maxNameLen {
			return transportID{}, 0, false
		}
		return transportID{name: name, port: str}, total, true
	}
	return transportID{}, 0, false
}

// reportable says whether r names its initiator, or initiator port, the
// way a TransportID can: what READ FULL STATUS reports of it reads back
// as r. Registrations made by PR OUT always are; a restored state file
// is checked.
func (r *registration) reportable() bool {
	id, _, ok := parseTransportID(encodeTransportID(nil, r))
	return ok && strings.EqualFold(id.name, r.Name) && (id.port == "") == (r.Port == "") &&
		(r.Port == "" || samePort(id.port, r.Port))
}

// encodeTransportID appends the TransportID of r: format 01b with the
// ISID when r names one initiator port, else format 00b.
func encodeTransportID(b []byte, r *registration) []byte {
	var s string
	format := byte(0)
	if r.Port != "" {
		name, isid, _ := splitPort(r.Port)
		s = name + portSep + strconv.FormatUint(isid|1<<48, 16)[1:]
		format = 1
	} else {
		s = r.Name
	}
	n := max((len(s)+1+3)&^3, tidMinLen-4)
	b = append(b, format<<6|protoISCSI, 0, byte(n>>8), byte(n))
	b = append(b, s...)
	return append(b, make([]byte, n-len(s))...)
}
