package scsi

import "encoding/binary"

// Sense keys (SPC-4 table 45).
const (
	keyNoSense        = 0x00
	keyNotReady       = 0x02
	keyMediumError    = 0x03
	keyIllegalRequest = 0x05
	keyUnitAttention  = 0x06
	keyDataProtect    = 0x07
	keyAbortedCommand = 0x0b
	keyMiscompare     = 0x0e
)

// asc is an additional sense code and qualifier pair (ASC << 8 | ASCQ).
type asc uint16

// Additional sense codes used by the emulated disk (SPC-4 table 48).
const (
	ascNoAdditional           asc = 0x0000
	ascNotReadyTransition     asc = 0x040a
	ascNotReadyStandby        asc = 0x040b
	ascNotReadyUnavailable    asc = 0x040c
	ascSanitizeInProgress     asc = 0x041b
	ascWriteError             asc = 0x0c00
	ascCopyTargetUnreachable  asc = 0x0d02
	ascInvalidFieldInCmdIU    asc = 0x0e03
	ascUnrecoveredRead        asc = 0x1100
	ascParamListLength        asc = 0x1a00
	ascMiscompareVerify       asc = 0x1d00
	ascInvalidOpcode          asc = 0x2000
	ascLBAOutOfRange          asc = 0x2100
	ascInvalidFieldInCDB      asc = 0x2400
	ascLUNotSupported         asc = 0x2500
	ascInvalidFieldInParam    asc = 0x2600
	ascInvalidRelease         asc = 0x2604
	ascTooManyTargetDescs     asc = 0x2606
	ascUnsupportedTargetDesc  asc = 0x2607
	ascTooManySegmentDescs    asc = 0x2608
	ascUnsupportedSegmentDesc asc = 0x2609
	ascWriteProtected         asc = 0x2700
	ascSpaceAllocFailed       asc = 0x2707
	ascPowerOnReset           asc = 0x2900
	ascPowerOnOccurred        asc = 0x2901
	ascBusDeviceReset         asc = 0x2903
	ascModeParamsChanged      asc = 0x2a01
	ascReservationsPreempted  asc = 0x2a03
	ascReservationsReleased   asc = 0x2a04
	ascRegistrationsPreempted asc = 0x2a05
	ascALUAChanged            asc = 0x2a06
	ascCapacityChanged        asc = 0x2a09
	ascCommandTimeoutDuring   asc = 0x2e02 // COMMAND TIMEOUT DURING PROCESSING (SPC-5)
	ascCommandsCleared        asc = 0x2f00
	ascSanitizeFailed         asc = 0x3103
	ascSavingNotSupported     asc = 0x3900
	ascReportedLUNsChanged    asc = 0x3f0e
	ascInternalTargetFailure  asc = 0x4400
	ascInsufficientRegRes     asc = 0x5504
)

// senseData is a CHECK CONDITION outcome before it is encoded in fixed or
// descriptor format. It is a small value so failing commands never allocate.
type senseData struct {
	key  byte
	code asc
	// info is the INFORMATION field (LBA or byte offset) when hasInfo.
	info    uint64
	hasInfo bool
	// sks holds the sense-key specific bytes when hasSKS (SKSV is set).
	sks    [3]byte
	hasSKS bool
}

// invalidField points at byte idx, bit bit of the CDB (cdb) or of the
// parameter list (!cdb): INVALID FIELD IN CDB / PARAMETER LIST with SKSV set.
func invalidField(cdb bool, idx, bit int) senseData {
	s := senseData{key: keyIllegalRequest, code: ascInvalidFieldInParam, hasSKS: true}
	s.sks[0] = 0x80 | 0x08 | byte(bit&7) // SKSV, BPV, bit pointer
	if cdb {
		s.code = ascInvalidFieldInCDB
		s.sks[0] |= 0x40 // C/D: the error is in the CDB
	}
	binary.BigEndian.PutUint16(s.sks[1:], uint16(idx))
	return s
}

// invalidCDB is INVALID FIELD IN CDB pointing at byte idx, bit bit.
func invalidCDB(idx, bit int) senseData { return invalidField(true, idx, bit) }

// invalidParam is INVALID FIELD IN PARAMETER LIST at byte idx, bit bit.
func invalidParam(idx, bit int) senseData { return invalidField(false, idx, bit) }

// illegal is an ILLEGAL REQUEST without field pointer.
func illegal(code asc) senseData { return senseData{key: keyIllegalRequest, code: code} }

// lbaOutOfRange is LOGICAL BLOCK ADDRESS OUT OF RANGE for lba.
func lbaOutOfRange(lba uint64) senseData {
	return senseData{key: keyIllegalRequest, code: ascLBAOutOfRange, info: lba, hasInfo: true}
}

// writeProtected is DATA PROTECT / WRITE PROTECTED.
var writeProtected = senseData{key: keyDataProtect, code: ascWriteProtected}

// miscompare is MISCOMPARE DURING VERIFY OPERATION with the offset of the
// first differing byte in INFORMATION.
func miscompare(off int) senseData {
	return senseData{key: keyMiscompare, code: ascMiscompareVerify, info: uint64(off), hasInfo: true}
}

// fixedSenseLen and descSenseLen are the sizes encode produces.
const (
	fixedSenseLen = 18
	descSenseLen  = 8 + 12 + 8
)

// encode writes s into buf in descriptor format (desc) or fixed format and
// returns the length used. buf must hold at least descSenseLen bytes.
func (s *senseData) encode(buf []byte, desc bool) int {
	a, q := byte(s.code>>8), byte(s.code)
	if !desc {
		b := buf[:fixedSenseLen]
		clear(b)
		b[0] = 0x70
		if s.hasInfo && s.info <= 0xffffffff {
			b[0] |= 0x80 // VALID
			binary.BigEndian.PutUint32(b[3:], uint32(s.info))
		}
		b[2] = s.key
		b[7] = fixedSenseLen - 8
		b[12], b[13] = a, q
		if s.hasSKS {
			copy(b[15:], s.sks[:])
		}
		return fixedSenseLen
	}
	b := buf[:descSenseLen]
	clear(b)
	b[0] = 0x72
	b[1], b[2], b[3] = s.key, a, q
	n := 8
	if s.hasInfo {
		b[n], b[n+1], b[n+2] = 0x00, 0x0a, 0x80 // information descriptor, VALID
		binary.BigEndian.PutUint64(b[n+4:], s.info)
		n += 12
	}
	if s.hasSKS {
		b[n], b[n+1] = 0x02, 0x06 // sense key specific descriptor
		copy(b[n+4:], s.sks[:])
		n += 8
	}
	b[7] = byte(n - 8)
	return n
}
