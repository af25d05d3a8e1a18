// Package iscsi implements the iSCSI protocol (RFC 7143) for a target: the PDU
// codec, login and parameter negotiation, discovery, sessions, connections,
// task handling and task management. It is independent of the network
// transport: a Transport delivers and sends PDUs, TCP being one of them.
package iscsi

import (
	"encoding/binary"
	"fmt"
)

// Opcode is the iSCSI PDU opcode (the low six bits of the first BHS byte).
type Opcode uint8

// Initiator opcodes.
const (
	OpNOPOut     Opcode = 0x00
	OpSCSICmd    Opcode = 0x01
	OpTaskMgmt   Opcode = 0x02
	OpLoginReq   Opcode = 0x03
	OpTextReq    Opcode = 0x04
	OpDataOut    Opcode = 0x05
	OpLogoutReq  Opcode = 0x06
	OpSNACK      Opcode = 0x10
	OpNOPIn      Opcode = 0x20
	OpSCSIResp   Opcode = 0x21
	OpTaskResp   Opcode = 0x22
	OpLoginResp  Opcode = 0x23
	OpTextResp   Opcode = 0x24
	OpDataIn     Opcode = 0x25
	OpLogoutResp Opcode = 0x26
	OpR2T        Opcode = 0x31
	OpAsync      Opcode = 0x32
	OpReject     Opcode = 0x3f
)

var opNames = map[Opcode]string{
	OpNOPOut: "NOP-Out", OpSCSICmd: "SCSI Command", OpTaskMgmt: "Task Management Request",
	OpLoginReq: "Login Request", OpTextReq: "Text Request", OpDataOut: "SCSI Data-Out",
	OpLogoutReq: "Logout Request", OpSNACK: "SNACK Request", OpNOPIn: "NOP-In",
	OpSCSIResp: "SCSI Response", OpTaskResp: "Task Management Response", OpLoginResp: "Login Response",
	OpTextResp: "Text Response", OpDataIn: "SCSI Data-In", OpLogoutResp: "Logout Response",
	OpR2T: "R2T", OpAsync: "Asynchronous Message", OpReject: "Reject",
}

// String names the opcode as RFC 7143 does.
func (o Opcode) String() string {
	if s, ok := opNames[o]; ok {
		return s
	}
	return fmt.Sprintf("opcode 0x%02x", uint8(o))
}

// BHSLen is the size of the Basic Header Segment.
const BHSLen = 48

// NoTag is the reserved task tag value 0xffffffff.
const NoTag = 0xffffffff

// BHS is a Basic Header Segment. Its accessors name the fields shared by all
// PDUs; opcode-specific fields are read with U32/U16 at RFC offsets.
type BHS [BHSLen]byte

// Opcode returns the PDU's opcode.
func (b *BHS) Opcode() Opcode { return Opcode(b[0] & 0x3f) }

// Immediate reports the I bit (immediate delivery).
func (b *BHS) Immediate() bool { return b[0]&0x40 != 0 }

// Final reports the F bit.
func (b *BHS) Final() bool { return b[1]&0x80 != 0 }

// Flags returns the opcode-specific flags byte.
func (b *BHS) Flags() byte { return b[1] }

// TotalAHSLen is the AHS length in bytes.
func (b *BHS) TotalAHSLen() int { return int(b[4]) * 4 }

// DataLen is the data segment length in bytes, without padding.
func (b *BHS) DataLen() int { return int(b[5])<<16 | int(b[6])<<8 | int(b[7]) }

// SetDataLen stores the data segment length.
func (b *BHS) SetDataLen(n int) { b[5], b[6], b[7] = byte(n>>16), byte(n>>8), byte(n) }

// LUN returns bytes 8-15 as a big-endian number.
func (b *BHS) LUN() uint64 { return binary.BigEndian.Uint64(b[8:16]) }

// SetLUN stores bytes 8-15.
func (b *BHS) SetLUN(v uint64) { binary.BigEndian.PutUint64(b[8:16], v) }

// ITT is the initiator task tag.
func (b *BHS) ITT() uint32 { return b.U32(16) }

// U32 reads the big-endian word at off.
func (b *BHS) U32(off int) uint32 { return binary.BigEndian.Uint32(b[off:]) }

// SetU32 stores a big-endian word at off.
func (b *BHS) SetU32(off int, v uint32) { binary.BigEndian.PutUint32(b[off:], v) }

// U16 reads the big-endian half-word at off.
func (b *BHS) U16(off int) uint16 { return binary.BigEndian.Uint16(b[off:]) }

// SetU16 stores a big-endian half-word at off.
func (b *BHS) SetU16(off int, v uint16) { binary.BigEndian.PutUint16(b[off:], v) }

// Field offsets shared by several PDU types.
const (
	offITT       = 16
	offTTT       = 20 // target transfer tag; EDTL in a SCSI Command
	offCmdSN     = 24 // CmdSN (requests), StatSN (responses)
	offExpStatSN = 28 // ExpStatSN (requests), ExpCmdSN (responses)
	offMaxCmdSN  = 32 // MaxCmdSN (responses); DataSN/R2TSN at 36
	offDataSN    = 36
	offOffset    = 40
	offResidual  = 44
)

// Padded rounds n up to a multiple of four, the PDU segment alignment.
func Padded(n int) int { return (n + 3) &^ 3 }

// DecodeLUN turns the 8-byte SAM LUN field into a LUN number. Peripheral
// (00b) and flat (01b) addressing are understood; ok is false otherwise.
func DecodeLUN(v uint64) (lun uint64, ok bool) {
	hi := uint16(v >> 48)
	if v&0x0000ffffffffffff != 0 {
		return 0, false
	}
	switch hi >> 14 {
	case 0:
		if hi>>8 != 0 {
			return 0, false // bus identifier other than 0
		}
		return uint64(hi & 0xff), true
	case 1:
		return uint64(hi & 0x3fff), true
	}
	return 0, false
}

// EncodeLUN returns the 8-byte SAM LUN field for a LUN number: peripheral
// addressing below 256, flat addressing up to 16383.
func EncodeLUN(lun uint64) uint64 {
	if lun < 256 {
		return lun << 48
	}
	return (0x4000 | lun&0x3fff) << 48
}
