package scsi

import (
	"encoding/binary"
	"math/bits"
)

// opFlags modify how Execute treats a command before its handler runs.
type opFlags uint16

const (
	// fUAExempt commands run, and keep pending unit attentions, per SPC-4 5.14.
	fUAExempt opFlags = 1 << iota
	// fResOK commands are allowed under another nexus's SCSI-2 reservation.
	fResOK
	// fThin commands exist only on thin-provisioned logical units.
	fThin
	// fPRRead commands only read: under a persistent reservation they
	// conflict only with the exclusive access types (SPC-4 5.13.1,
	// SBC-3 4.17). Commands with neither fPRRead nor fPRFree are treated
	// as writes.
	fPRRead
	// fPRFree commands are never refused because of a persistent
	// reservation (or check reservations themselves).
	fPRFree
	// fStandby commands run through a target port group in the standby
	// state (SPC-4 5.15.2.4.4).
	fStandby
	// fUnavail commands run through a group in the unavailable state.
	fUnavail
	// fTransit commands run through a group that is transitioning.
	fTransit
	// fFence commands change the medium or the persistent reservations:
	// a fenced logical unit refuses them (see Fence). init sets it on
	// every write-class command (neither fPRRead nor fPRFree) and on
	// PERSISTENT RESERVE OUT.
	fFence

	// fInfo is for commands that only report target information.
	fInfo = fUAExempt | fResOK | fPRFree | fStandby | fUnavail | fTransit
)

// opPersistentReserveOut is the operation code of PERSISTENT RESERVE OUT.
const opPersistentReserveOut = 0x5f

// opEntry describes one supported command: its CDB usage data (the bits
// the device server evaluates; every other bit must be zero), how Execute
// treats it and the handler that runs it.
type opEntry struct {
	usage []byte // CDB usage data; usage[0] is the opcode, len is the CDB length
	sa    uint16 // service action, when hasSA
	hasSA bool
	flags opFlags
	fn    func(d *Disk, c *Command) result
}

// opList holds every supported command in REPORT SUPPORTED OPERATION CODES
// order; opIndex finds them by opcode.
var (
	opList  []*opEntry
	opIndex [256][]*opEntry
)

func init() {
	// Byte masks: LBA and length fields are 0xff; flag bytes list exactly
	// the bits the handlers evaluate; the CONTROL byte (last) is always 0
	// because NACA and LINK are not supported.
	opList = []*opEntry{
		{usage: []byte{0x00, 0, 0, 0, 0, 0}, flags: fPRFree, fn: (*Disk).testUnitReady},
		{usage: []byte{0x03, 0x01, 0, 0, 0xff, 0}, flags: fInfo, fn: (*Disk).requestSense},
		{usage: []byte{0x08, 0x1f, 0xff, 0xff, 0xff, 0}, flags: fPRRead, fn: (*Disk).read},
		{usage: []byte{0x0a, 0x1f, 0xff, 0xff, 0xff, 0}, fn: (*Disk).write},
		{usage: []byte{0x12, 0x03, 0xff, 0xff, 0xff, 0}, flags: fInfo, fn: (*Disk).inquiry},
		{usage: []byte{0x15, 0x11, 0, 0, 0xff, 0}, flags: fStandby, fn: (*Disk).modeSelect},
		{usage: []byte{0x16, 0, 0, 0, 0, 0}, flags: fPRFree, fn: (*Disk).reserve},
		{usage: []byte{0x17, 0, 0, 0, 0, 0}, flags: fResOK | fPRFree, fn: (*Disk).release},
		{usage: []byte{0x1a, 0x08, 0xff, 0xff, 0xff, 0}, flags: fPRRead | fStandby, fn: (*Disk).modeSense},
		{usage: []byte{0x1b, 0x01, 0, 0x0f, 0xf7, 0}, flags: fPRFree, fn: (*Disk).startStopUnit},
		{usage: []byte{0x1e, 0, 0, 0, 0x03, 0}, flags: fResOK | fPRFree, fn: (*Disk).preventAllow},
		{usage: []byte{0x25, 0, 0xff, 0xff, 0xff, 0xff, 0, 0, 0x01, 0}, flags: fPRFree, fn: (*Disk).readCapacity10},
		{usage: []byte{0x28, 0xfe, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}, flags: fPRRead, fn: (*Disk).read},
		{usage: []byte{0x2a, 0xfa, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}, fn: (*Disk).write},
		{usage: []byte{0x2e, 0xf6, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}, fn: (*Disk).write},
		{usage: []byte{0x2f, 0xf6, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}, flags: fPRRead, fn: (*Disk).verify},
		{usage: []byte{0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}, flags: fPRRead, fn: (*Disk).prefetch},
		{usage: []byte{0x35, 0x06, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}, fn: (*Disk).syncCache},
		{usage: []byte{0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0}, flags: fPRRead, fn: (*Disk).readDefectData},
		{usage: []byte{0x41, 0xf8, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0}, fn: (*Disk).writeSame},
		{usage: []byte{0x42, 0x01, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0}, flags: fThin, fn: (*Disk).unmap},
		{usage: []byte{0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0}, sa: sanOverwrite, hasSA: true, fn: (*Disk).sanitize},
		{usage: []byte{0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0}, sa: sanBlockErase, hasSA: true, flags: fThin, fn: (*Disk).sanitize},
		{usage: []byte{0x48, 0xbf, 0, 0, 0, 0, 0, 0xff, 0xff, 0}, sa: sanExitFailure, hasSA: true, fn: (*Disk).sanitize},
		{usage: []byte{0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0}, flags: fStandby, fn: (*Disk).modeSelect},
		{usage: []byte{0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0}, flags: fPRFree, fn: (*Disk).reserve},
		{usage: []byte{0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0}, flags: fResOK | fPRFree, fn: (*Disk).release},
		{usage: []byte{0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0}, flags: fPRRead | fStandby, fn: (*Disk).modeSense},
	}
	for sa := range uint16(priReadFullStatus + 1) {
		opList = append(opList, &opEntry{usage: []byte{0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0}, sa: sa, hasSA: true,
			flags: fPRFree | fStandby, fn: (*Disk).prIn})
	}
	for sa := range uint16(proRegisterMove + 1) {
		opList = append(opList, &opEntry{usage: []byte{opPersistentReserveOut, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0}, sa: sa, hasSA: true,
			flags: fPRFree | fStandby, fn: (*Disk).prOut})
	}
	opList = append(opList, []*opEntry{
		{usage: []byte{0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}, sa: 0x00, hasSA: true, fn: (*Disk).extendedCopy},
		{usage: []byte{0x84, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}, sa: rcrCopyStatus, hasSA: true, flags: fPRRead, fn: (*Disk).receiveCopyResults},
		{usage: []byte{0x84, 0x1f, 0xff, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}, sa: rcrOpParams, hasSA: true, flags: fPRRead, fn: (*Disk).receiveCopyResults},
		{usage: cdb16(0x88, 0xfe), flags: fPRRead, fn: (*Disk).read},
		{usage: []byte{0x89, 0xfa, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0}, fn: (*Disk).compareAndWrite},
		{usage: cdb16(0x8a, 0xfa), fn: (*Disk).write},
		{usage: cdb16(0x8b, 0xfa), fn: (*Disk).orWrite},
		{usage: cdb16(0x8e, 0xf6), fn: (*Disk).write},
		{usage: cdb16(0x8f, 0xf6), flags: fPRRead, fn: (*Disk).verify},
		{usage: cdb16(0x90, 0x02), flags: fPRRead, fn: (*Disk).prefetch},
		{usage: cdb16(0x91, 0x06), fn: (*Disk).syncCache},
		{usage: cdb16(0x93, 0xf9), fn: (*Disk).writeSame},
		{usage: []byte{0x9c, 0xf8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0}, fn: (*Disk).writeAtomic},
		{usage: []byte{0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0}, sa: 0x10, hasSA: true, flags: fPRFree, fn: (*Disk).readCapacity16},
		{usage: []byte{0x9e, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}, sa: 0x12, hasSA: true, flags: fThin | fPRRead, fn: (*Disk).getLBAStatus},
		{usage: []byte{0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}, flags: fInfo, fn: (*Disk).reportLUNs},
		{usage: []byte{0xa3, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}, sa: 0x0a, hasSA: true, flags: fInfo, fn: (*Disk).reportTPGs},
		{usage: []byte{0xa3, 0x1f, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}, sa: 0x0c, hasSA: true, flags: fInfo, fn: (*Disk).reportOpcodes},
		{usage: []byte{0xa3, 0x1f, 0x80, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}, sa: 0x0d, hasSA: true, flags: fInfo, fn: (*Disk).reportTMFs},
		{usage: []byte{0xa4, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0}, sa: 0x0a, hasSA: true, flags: fResOK | fStandby | fUnavail, fn: (*Disk).setTPGs},
		{usage: cdb12(0xa8, 0xfe), flags: fPRRead, fn: (*Disk).read},
		{usage: cdb12(0xaa, 0xfa), fn: (*Disk).write},
		{usage: cdb12(0xae, 0xf6), fn: (*Disk).write},
		{usage: cdb12(0xaf, 0xf6), flags: fPRRead, fn: (*Disk).verify},
		{usage: []byte{0xb7, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}, flags: fPRRead, fn: (*Disk).readDefectData},
	}...)
	for _, e := range opList {
		if e.flags&(fPRRead|fPRFree) == 0 || e.usage[0] == opPersistentReserveOut {
			e.flags |= fFence
		}
		opIndex[e.usage[0]] = append(opIndex[e.usage[0]], e)
	}
}

// cdb12 is the usage data of a 12-byte LBA/length command with flag byte f.
func cdb12(op, f byte) []byte {
	return []byte{op, f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0}
}

// cdb16 is the usage data of a 16-byte LBA/length command with flag byte f.
func cdb16(op, f byte) []byte {
	return []byte{op, f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0}
}

// lookup finds the command cdb invokes on d. It fails with INVALID COMMAND
// OPERATION CODE, or INVALID FIELD IN CDB for an unknown service action.
func (d *Disk) lookup(cdb []byte) (*opEntry, senseData, bool) {
	if len(cdb) == 0 {
		return nil, illegal(ascInvalidOpcode), false
	}
	es := opIndex[cdb[0]]
	if len(es) == 0 {
		return nil, illegal(ascInvalidOpcode), false
	}
	if es[0].hasSA {
		if len(cdb) < 2 {
			return nil, invalidCDB(1, 4), false
		}
		sa := uint16(cdb[1] & 0x1f)
		for _, e := range es {
			if e.sa == sa && d.has(e) {
				return e, senseData{}, true
			}
		}
		return nil, invalidCDB(1, 4), false
	}
	if !d.has(es[0]) {
		return nil, illegal(ascInvalidOpcode), false
	}
	return es[0], senseData{}, true
}

// has reports whether d supports the command.
func (d *Disk) has(e *opEntry) bool { return e.flags&fThin == 0 || d.cfg.Thin }

// check fails with INVALID FIELD IN CDB, pointing at the most significant
// offending bit, when cdb is short or sets a bit outside the usage data.
func (e *opEntry) check(cdb []byte) (senseData, bool) {
	if len(cdb) < len(e.usage) {
		return invalidCDB(len(cdb), 7), false
	}
	for i := 1; i < len(e.usage); i++ {
		if bad := cdb[i] &^ e.usage[i]; bad != 0 {
			return invalidCDB(i, bits.Len8(bad)-1), false
		}
	}
	return senseData{}, true
}

// lbaFields decodes the LOGICAL BLOCK ADDRESS and TRANSFER LENGTH of a
// 6, 10, 12 or 16-byte command and the index of the length field.
func lbaFields(cdb []byte) (lba uint64, n uint32, lenIdx int) {
	switch cdb[0] >> 5 {
	case 0: // 6-byte
		lba = uint64(cdb[1]&0x1f)<<16 | uint64(cdb[2])<<8 | uint64(cdb[3])
		return lba, uint32(cdb[4]), 4
	case 1, 2: // 10-byte
		return uint64(binary.BigEndian.Uint32(cdb[2:])), uint32(binary.BigEndian.Uint16(cdb[7:])), 7
	case 5: // 12-byte
		return uint64(binary.BigEndian.Uint32(cdb[2:])), binary.BigEndian.Uint32(cdb[6:]), 6
	}
	return binary.BigEndian.Uint64(cdb[2:]), binary.BigEndian.Uint32(cdb[10:]), 10
}

// protectField fails with INVALID FIELD IN CDB when the RDPROTECT,
// WRPROTECT, VRPROTECT or ORPROTECT field (byte 1 bits 7-5) is set: the
// disk has no protection information.
func protectField(cdb []byte) (senseData, bool) {
	if cdb[0]>>5 != 0 && cdb[1]&0xe0 != 0 {
		return invalidCDB(1, 7), false
	}
	return senseData{}, true
}
