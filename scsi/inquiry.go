package scsi

import (
	"encoding/binary"
)

// Version descriptors claimed in standard INQUIRY data (SPC-4 table 151).
var versionDescriptors = []uint16{
	0x00a0, // SAM-5
	0x0460, // SPC-4
	0x04c0, // SBC-3
	0x0960, // iSCSI
}

const (
	stdInquiryLen  = 74   // through the eighth version descriptor
	pdtDisk        = 0x00 // peripheral device type: direct access block device
	pdtAbsent      = 0x7f // peripheral qualifier 011b, device type 1Fh
	protoISCSI     = 0x05 // protocol identifier for iSCSI
	codeBinary     = 0x01
	codeASCII      = 0x02
	codeUTF8       = 0x03
	assocLU        = 0x00
	assocPort      = 0x10
	assocTarget    = 0x20
	desigT10       = 0x01
	desigNAA       = 0x03
	desigRelPort   = 0x04
	desigTPG       = 0x05
	desigSCSIName  = 0x08
	maxNameDesigLn = 256
)

// defaultIdentity names an absent logical unit in INQUIRY data.
var defaultIdentity = DiskConfig{Vendor: "ISERD", Product: "VIRTUAL-DISK", Revision: "0001"}

// standardInquiry builds standard INQUIRY data with byte 0 set to b0 and
// byte 5 (TPGS, 3PC) to b5.
func standardInquiry(b0, b5 byte, cfg *DiskConfig) []byte {
	b := make([]byte, stdInquiryLen)
	b[0] = b0
	b[2] = 0x06 // VERSION: SPC-4
	b[3] = 0x12 // HISUP, RESPONSE DATA FORMAT 2
	b[4] = stdInquiryLen - 5
	b[5] = b5
	b[7] = 0x02 // CMDQUE
	pad(b[8:16], cfg.Vendor)
	pad(b[16:32], cfg.Product)
	pad(b[32:36], cfg.Revision)
	for i, v := range versionDescriptors {
		binary.BigEndian.PutUint16(b[58+2*i:], v)
	}
	return b
}

// pad copies s into b left-aligned and fills the rest with spaces.
func pad(b []byte, s string) {
	n := copy(b, s)
	for i := n; i < len(b); i++ {
		b[i] = ' '
	}
}

// absentInquiry answers INQUIRY for a LUN with no logical unit behind it.
func absentInquiry(c *Command) result {
	return respond(c, standardInquiry(pdtAbsent, 0, &defaultIdentity), int(binary.BigEndian.Uint16(c.CDB[3:])))
}

// inquiry implements INQUIRY: standard data or a VPD page.
func (d *Disk) inquiry(c *Command) result {
	cdb := c.CDB
	alloc := int(binary.BigEndian.Uint16(cdb[3:]))
	if cdb[1]&0x02 != 0 { // CMDDT is obsolete
		return fail(invalidCDB(1, 1))
	}
	if cdb[1]&0x01 == 0 {
		if cdb[2] != 0 {
			return fail(invalidCDB(2, 7))
		}
		t := d.tgt.Load()
		return respond(c, standardInquiry(pdtDisk, t.tpgs()|0x08, &d.cfg), alloc) // 3PC: EXTENDED COPY
	}
	var body []byte
	switch cdb[2] {
	case 0x00:
		body = []byte{0x00, 0x80, 0x83, 0x8f, 0xb0, 0xb1, 0xb2}
	case 0x80:
		body = []byte(d.cfg.Serial)
	case 0x83:
		body = d.deviceIdentification(c.Nexus)
	case 0x8f:
		body = thirdPartyCopy()
	case 0xb0:
		body = d.blockLimits()
	case 0xb1:
		body = make([]byte, 0x3c)
		body[1] = 0x01 // MEDIUM ROTATION RATE: non-rotating medium
		if d.cfg.Thin {
			body[3] = 0x40 // WABEREQ 01b: blocks read after BLOCK ERASE return zeroes
		}
	case 0xb2:
		body = d.provisioning()
	default:
		return fail(invalidCDB(2, 7))
	}
	page := make([]byte, 4, 4+len(body))
	page[0], page[1] = pdtDisk, cdb[2]
	binary.BigEndian.PutUint16(page[2:], uint16(len(body)))
	return respond(c, append(page, body...), alloc)
}

// designator appends a designation descriptor.
func designator(b []byte, code, assocType byte, piv bool, id []byte) []byte {
	b0, b1 := code, assocType
	if piv {
		b0 |= protoISCSI << 4
		b1 |= 0x80
	}
	b = append(b, b0, b1, 0, byte(len(id)))
	return append(b, id...)
}

// scsiName is a null-terminated SCSI name string padded to 4 bytes.
func scsiName(s string) []byte {
	n := min(len(s)+1, maxNameDesigLn-4)
	n = (n + 3) &^ 3
	b := make([]byte, n)
	copy(b[:n-1], s)
	return b
}

// deviceIdentification is the body of the Device Identification VPD page:
// the NAA and T10 vendor designators of the logical unit, the relative
// port and SCSI name of the target port n came through, and the target
// device name.
func (d *Disk) deviceIdentification(n *Nexus) []byte {
	var naa [8]byte
	binary.BigEndian.PutUint64(naa[:], 3<<60|d.cfg.NAA)
	b := designator(nil, codeBinary, assocLU|desigNAA, false, naa[:])
	t10 := make([]byte, 8, 8+len(d.cfg.Product)+1+len(d.cfg.Serial))
	pad(t10, d.cfg.Vendor)
	t10 = append(append(append(t10, d.cfg.Product...), ':'), d.cfg.Serial...)
	b = designator(b, codeASCII, assocLU|desigT10, false, t10)
	if n != nil {
		rel := max(n.RelativePort, 1)
		b = designator(b, codeBinary, assocPort|desigRelPort, true, []byte{0, 0, byte(rel >> 8), byte(rel)})
		if n.TargetPort != "" {
			b = designator(b, codeUTF8, assocPort|desigSCSIName, true, scsiName(n.TargetPort))
		}
		if t := d.tgt.Load(); t != nil {
			g := t.reportGroups(n)[0]
			if cg, ok := t.groupOf(n); ok {
				g = cg
			}
			b = designator(b, codeBinary, assocPort|desigTPG, false, []byte{0, 0, byte(g.ID >> 8), byte(g.ID)})
		}
	}
	if t := d.tgt.Load(); t != nil && t.name != "" {
		b = designator(b, codeUTF8, assocTarget|desigSCSIName, true, scsiName(t.name))
	}
	return b
}

// blockLimits is the body of the Block Limits VPD page (SBC-4 6.6.4). The
// optimal transfer length granularity and the optimal unmap granularity
// are one physical block.
func (d *Disk) blockLimits() []byte {
	lbppb := uint32(1) << d.pshift
	b := make([]byte, 0x3c)
	b[1] = maxCAWBlocks
	binary.BigEndian.PutUint16(b[2:], uint16(lbppb)) // OPTIMAL TRANSFER LENGTH GRANULARITY
	binary.BigEndian.PutUint32(b[4:], maxTransferBytes>>d.shift)
	binary.BigEndian.PutUint32(b[8:], optTransferBytes>>d.shift)
	binary.BigEndian.PutUint32(b[12:], maxTransferBytes>>d.shift) // MAXIMUM PREFETCH LENGTH
	if d.cfg.Thin {
		binary.BigEndian.PutUint32(b[16:], maxUnmapBlocks)
		binary.BigEndian.PutUint32(b[20:], maxUnmapDescs)
		binary.BigEndian.PutUint32(b[24:], lbppb) // OPTIMAL UNMAP GRANULARITY
		b[28] = 0x80                              // UGAVALID, alignment 0
	}
	binary.BigEndian.PutUint64(b[32:], maxWriteSameBytes>>d.shift)
	binary.BigEndian.PutUint32(b[40:], maxAtomicBytes>>d.shift) // MAXIMUM ATOMIC TRANSFER LENGTH
	binary.BigEndian.PutUint32(b[44:], 1)                       // ATOMIC ALIGNMENT
	binary.BigEndian.PutUint32(b[48:], 1)                       // ATOMIC TRANSFER LENGTH GRANULARITY
	return b
}

// provisioning is the body of the Logical Block Provisioning VPD page.
func (d *Disk) provisioning() []byte {
	b := make([]byte, 4)
	if d.cfg.Thin {
		b[1] = 0x80 | 0x40 | 0x20 | 0x04 // LBPU, LBPWS, LBPWS10, LBPRZ
		b[2] = 0x02                      // PROVISIONING TYPE: thin
	}
	return b
}
