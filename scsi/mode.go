package scsi

import (
	"encoding/binary"
	"math/bits"
)

// modeState holds the changeable mode parameters of a logical unit. It is
// replaced whole, so commands read it with one atomic load.
type modeState struct {
	wce    bool // caching page: write cache enabled
	dsense bool // control page: descriptor format sense data
	swp    bool // control page: software write protect
}

var defaultMode = modeState{wce: true}

// Page controls of MODE SENSE.
const (
	pcCurrent = iota
	pcChangeable
	pcDefault
	pcSaved
)

// modePages lists the supported mode pages in page code order.
var modePages = []byte{0x08, 0x0a, 0x1c}

// page encodes mode page code for page control pc, or nil if unsupported.
func (m *modeState) page(code byte, pc int) []byte {
	v := *m
	switch pc {
	case pcDefault:
		v = defaultMode
	case pcChangeable:
		v = modeState{wce: true, dsense: true, swp: true}
	}
	var p []byte
	switch code {
	case 0x08: // caching
		p = make([]byte, 0x14)
		p[2] = flag(v.wce, 0x04)
	case 0x0a: // control
		p = make([]byte, 0x0c)
		p[2] = flag(v.dsense, 0x04)
		p[4] = flag(v.swp, 0x08)
		if pc != pcChangeable {
			p[3] = 0x10                               // QUEUE ALGORITHM MODIFIER: unrestricted reordering
			binary.BigEndian.PutUint16(p[8:], 0xffff) // BUSY TIMEOUT PERIOD: unlimited
		}
	case 0x1c: // informational exceptions control
		p = make([]byte, 0x0c)
		if pc != pcChangeable {
			p[2] = 0x08 // DEXCPT: exception reporting disabled
		}
	default:
		return nil
	}
	p[0], p[1] = code, byte(len(p)-2)
	return p
}

func flag(on bool, bit byte) byte {
	if on {
		return bit
	}
	return 0
}

// modeSense implements MODE SENSE (6) and (10).
func (d *Disk) modeSense(c *Command) result {
	cdb := c.CDB
	ten := cdb[0] == 0x5a
	dbd, llbaa := cdb[1]&0x08 != 0, ten && cdb[1]&0x10 != 0
	pc, code, sub := int(cdb[2]>>6), cdb[2]&0x3f, cdb[3]
	alloc := int(cdb[4])
	if ten {
		alloc = int(binary.BigEndian.Uint16(cdb[7:]))
	}
	if pc == pcSaved {
		return fail(illegal(ascSavingNotSupported))
	}
	if sub != 0 && sub != 0xff {
		return fail(invalidCDB(3, 7))
	}
	m := d.mode.Load()
	var pages []byte
	if code == 0x3f {
		for _, p := range modePages {
			pages = append(pages, m.page(p, pc)...)
		}
	} else if pages = m.page(code, pc); pages == nil {
		return fail(invalidCDB(2, 5))
	}
	var devSpec byte
	if pc != pcChangeable {
		devSpec = 0x10                   // DPOFUA
		if _, ok := d.writable(c); !ok { // WP, per nexus for read-only ACLs
			devSpec |= 0x80 // WP
		}
	}
	var bd []byte
	if !dbd {
		bd = d.blockDescriptor(llbaa, pc == pcChangeable)
	}
	var hdr []byte
	if ten {
		hdr = make([]byte, 8)
		binary.BigEndian.PutUint16(hdr, uint16(6+len(bd)+len(pages)))
		hdr[3] = devSpec
		if llbaa && !dbd {
			hdr[4] = 0x01 // LONGLBA
		}
		binary.BigEndian.PutUint16(hdr[6:], uint16(len(bd)))
	} else {
		hdr = []byte{byte(3 + len(bd) + len(pages)), 0, devSpec, byte(len(bd))}
	}
	return respond(c, append(append(hdr, bd...), pages...), alloc)
}

// blockDescriptor encodes the short (8-byte) or long (16-byte) block
// descriptor; all zero for the changeable values.
func (d *Disk) blockDescriptor(long, changeable bool) []byte {
	if long {
		b := make([]byte, 16)
		if !changeable {
			binary.BigEndian.PutUint64(b, d.blocks())
			binary.BigEndian.PutUint32(b[12:], d.cfg.BlockSize)
		}
		return b
	}
	b := make([]byte, 8)
	if !changeable {
		binary.BigEndian.PutUint32(b, uint32(min(d.blocks(), 0xffffffff)))
		binary.BigEndian.PutUint32(b[4:], d.cfg.BlockSize) // byte 4 is reserved
	}
	return b
}

// modeSelect implements MODE SELECT (6) and (10). Every page is checked
// against the changeable mask before any takes effect; a change raises
// MODE PARAMETERS CHANGED to the other nexuses.
func (d *Disk) modeSelect(c *Command) result {
	cdb := c.CDB
	ten := cdb[0] == 0x55
	if cdb[1]&0x01 != 0 { // SP: no saved pages
		return fail(invalidCDB(1, 0))
	}
	plen, hdr := int(cdb[4]), 4
	if ten {
		plen, hdr = int(binary.BigEndian.Uint16(cdb[7:])), 8
	}
	c.Wanted = plen
	if plen == 0 {
		return good
	}
	if len(c.DataOut) < plen || plen < hdr {
		return fail(illegal(ascParamListLength))
	}
	data := c.DataOut[:plen]
	bdl, bdSize := int(data[3]), 8
	if ten {
		bdl = int(binary.BigEndian.Uint16(data[6:]))
		if data[4]&0x01 != 0 {
			bdSize = 16
		}
	}
	if hdr+bdl > plen {
		return fail(illegal(ascParamListLength))
	}
	if bdl%bdSize != 0 {
		return fail(invalidParam(hdr-1, 7))
	}
	for off := hdr; off < hdr+bdl; off += bdSize {
		if bl := binary.BigEndian.Uint32(data[off+bdSize-4:]) & 0xffffff; bl != 0 && bl != d.cfg.BlockSize {
			return fail(invalidParam(off+bdSize-3, 7))
		}
	}
	d.modeMu.Lock()
	defer d.modeMu.Unlock()
	old := d.mode.Load()
	next := *old
	for off := hdr + bdl; off < plen; {
		if off+2 > plen {
			return fail(illegal(ascParamListLength))
		}
		if data[off]&0xc0 != 0 { // PS is reserved here; no subpages
			return fail(invalidParam(off, 7-bits.LeadingZeros8(data[off]&0xc0)))
		}
		cur := next.page(data[off]&0x3f, pcCurrent)
		if cur == nil {
			return fail(invalidParam(off, 5))
		}
		if int(data[off+1]) != len(cur)-2 {
			return fail(invalidParam(off+1, 7))
		}
		if off+len(cur) > plen {
			return fail(illegal(ascParamListLength))
		}
		mask := next.page(cur[0], pcChangeable)
		p := data[off : off+len(cur)]
		for i := 2; i < len(cur); i++ {
			if bad := (p[i] ^ cur[i]) &^ mask[i]; bad != 0 {
				return fail(invalidParam(off+i, bits.Len8(bad)-1))
			}
		}
		switch cur[0] {
		case 0x08:
			next.wce = p[2]&0x04 != 0
		case 0x0a:
			next.dsense, next.swp = p[2]&0x04 != 0, p[4]&0x08 != 0
		}
		off += len(cur)
	}
	if next != *old {
		d.mode.Store(&next)
		if t := d.tgt.Load(); t != nil {
			t.mu.Lock()
			t.raise(d, ascModeParamsChanged, nexusIDOf(c.Nexus), true)
			t.mu.Unlock()
		}
	}
	return good
}
