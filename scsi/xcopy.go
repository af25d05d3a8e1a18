package scsi

import (
	"encoding/binary"
	"errors"
	"sync"

	"github.com/iserd/iserd/bdev"
)

// EXTENDED COPY (LID1) limits, reported by RECEIVE COPY RESULTS with the
// OPERATING PARAMETERS service action and enforced.
const (
	xcMaxCSCDs      = 16
	xcMaxSegments   = 64
	xcHeaderLen     = 16
	xcCSCDLen       = 32
	xcB2BLen        = 28
	xcMaxListLen    = xcMaxCSCDs*xcCSCDLen + xcMaxSegments*xcB2BLen
	xcMaxSegBytes   = 64 << 20
	xcChunk         = 1 << 20 // bytes moved per read/write step
	xcIdentCSCD     = 0xe4    // identification CSCD descriptor
	xcBlockToBlock  = 0x02    // block device to block device segment
	xcMaxHeld       = 64      // copy results kept per logical unit
	rcrCopyStatus   = 0x00
	rcrOpParams     = 0x03
	keyCopyAborted  = 0x0a
	copyStatusOK    = 0x01 // COPY MANAGER STATUS: completed without errors
	copyStatusError = 0x02 // completed with errors
)

// copyKey names the results of one EXTENDED COPY: the nexus and its list
// identifier.
type copyKey struct {
	nexus uint64
	list  byte
}

// copyResult is what RECEIVE COPY RESULTS (COPY STATUS) reports.
type copyResult struct {
	status   byte
	segments uint16
	bytes    uint64
}

// copyTable holds the results of completed EXTENDED COPY commands whose
// LIST ID USAGE asked for them to be kept.
type copyTable struct {
	mu   sync.Mutex
	held map[copyKey]copyResult
}

func (t *copyTable) put(k copyKey, r copyResult) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.held == nil {
		t.held = make(map[copyKey]copyResult)
	}
	if _, ok := t.held[k]; !ok && len(t.held) >= xcMaxHeld {
		for old := range t.held {
			delete(t.held, old)
			break
		}
	}
	t.held[k] = r
}

func (t *copyTable) get(k copyKey) (copyResult, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	r, ok := t.held[k]
	return r, ok
}

// forget drops the results held for nexus (on I_T nexus loss).
func (t *copyTable) forget(nexus uint64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for k := range t.held {
		if k.nexus == nexus {
			delete(t.held, k)
		}
	}
}

var (
	sensePLL        = illegal(ascParamListLength)
	copyUnreachable = senseData{key: keyCopyAborted, code: ascCopyTargetUnreachable}
	copyAborted     = senseData{key: keyCopyAborted, code: ascNoAdditional}
)

// segment is one decoded block-to-block segment descriptor.
type segment struct {
	src, dst       int // CSCD indexes
	blocks         uint64
	srcLBA, dstLBA uint64
}

// cscd is one decoded identification CSCD descriptor.
type cscd struct {
	desig []byte // the designation descriptor (header and designator)
	null  bool
}

// extendedCopy implements EXTENDED COPY (LID1, SPC-4 6.4) for
// block-to-block segments between logical units of the target named by
// their NAA designator. The data moves inside the target, through bdev.
func (d *Disk) extendedCopy(c *Command) result {
	plen := int(binary.BigEndian.Uint32(c.CDB[10:]))
	c.Wanted = plen
	if plen == 0 {
		return good
	}
	if len(c.DataOut) < plen || plen < xcHeaderLen {
		return fail(sensePLL)
	}
	b := c.DataOut[:plen]
	usage := b[1] >> 3 & 3
	cl, sl, il := int(binary.BigEndian.Uint16(b[2:])), int(binary.BigEndian.Uint32(b[8:])), binary.BigEndian.Uint32(b[12:])
	if cl+sl > xcMaxListLen {
		return fail(sensePLL)
	}
	if xcHeaderLen+cl+sl+int(il) > plen {
		return fail(sensePLL)
	}
	if il != 0 {
		return fail(invalidParam(12, 7))
	}
	if usage == 1 {
		return fail(invalidParam(1, 4))
	}
	if cl%xcCSCDLen != 0 {
		return fail(invalidParam(2, 7))
	}
	if cl/xcCSCDLen > xcMaxCSCDs {
		return fail(illegal(ascTooManyTargetDescs))
	}
	var cscds []cscd
	for off := xcHeaderLen; off < xcHeaderLen+cl; off += xcCSCDLen {
		desc := b[off : off+xcCSCDLen]
		if desc[0] != xcIdentCSCD {
			return fail(illegal(ascUnsupportedTargetDesc))
		}
		if desc[1]&0x1f != pdtDisk {
			return fail(illegal(ascUnsupportedTargetDesc))
		}
		n := min(int(desc[7]), 20)
		cscds = append(cscds, cscd{desig: desc[4 : 8+n], null: desc[1]&0x20 != 0})
	}
	var segs []segment
	for off := xcHeaderLen + cl; off < xcHeaderLen+cl+sl; {
		if off+4 > xcHeaderLen+cl+sl {
			return fail(sensePLL)
		}
		desc := b[off:]
		n := 4 + int(binary.BigEndian.Uint16(desc[2:]))
		if desc[0] != xcBlockToBlock {
			return fail(illegal(ascUnsupportedSegmentDesc))
		}
		if n != xcB2BLen || off+n > xcHeaderLen+cl+sl {
			return fail(invalidParam(off+2, 7))
		}
		if len(segs) == xcMaxSegments {
			return fail(illegal(ascTooManySegmentDescs))
		}
		segs = append(segs, segment{
			src: int(binary.BigEndian.Uint16(desc[4:])), dst: int(binary.BigEndian.Uint16(desc[6:])),
			blocks: uint64(binary.BigEndian.Uint16(desc[10:])),
			srcLBA: binary.BigEndian.Uint64(desc[12:]), dstLBA: binary.BigEndian.Uint64(desc[20:]),
		})
		off += n
	}
	if s, ok := d.writable(c); !ok {
		return fail(s)
	}
	go d.runCopy(c, cscds, segs, copyKey{nexus: nexusIDOf(c.Nexus), list: b[0]}, usage != 3)
	return pending
}

// runCopy performs the segments in order, records the results when keep
// is set and completes c.
func (d *Disk) runCopy(c *Command, cscds []cscd, segs []segment, k copyKey, keep bool) {
	res := copyResult{status: copyStatusOK}
	r := good
	for _, sg := range segs {
		var n uint64
		if r, n = d.copySegment(c, cscds, sg); r.status != StatusGood {
			res.status = copyStatusError
			break
		}
		res.segments++
		res.bytes += n
	}
	if keep {
		d.copies.put(k, res)
	}
	d.complete(c, r)
}

// copySegment copies one block-to-block segment and returns the bytes moved.
func (d *Disk) copySegment(c *Command, cscds []cscd, sg segment) (result, uint64) {
	src, dst := d.copyTarget(cscds, sg.src), d.copyTarget(cscds, sg.dst)
	if src == nil || dst == nil {
		return fail(copyUnreachable), 0
	}
	if src.cfg.BlockSize != dst.cfg.BlockSize {
		return fail(copyAborted), 0
	}
	if s, ok := dst.writable(c); !ok {
		return fail(s), 0
	}
	if _, ok := src.checkRange(sg.srcLBA, sg.blocks); !ok {
		return fail(copyAborted), 0
	}
	if _, ok := dst.checkRange(sg.dstLBA, sg.blocks); !ok {
		return fail(copyAborted), 0
	}
	total := sg.blocks << src.shift
	if total > xcMaxSegBytes {
		return fail(copyAborted), 0
	}
	buf := alignedBuf(int(min(total, xcChunk)))
	for done := uint64(0); done < total; {
		n := min(total-done, uint64(len(buf)))
		chunk := buf[:n]
		if err := src.syncIO(c, &bdev.Request{Op: bdev.OpRead, Offset: int64(sg.srcLBA<<src.shift + done), Buf: chunk}); err != nil {
			return fail(ioError(err, false)), done
		}
		lock := lockReq{lba: (sg.dstLBA<<dst.shift + done) >> dst.shift, n: n >> dst.shift}
		granted := make(chan struct{})
		lock.grant = func() { close(granted) }
		if !dst.locks.beginWrite(&lock) {
			<-granted
		}
		err := dst.syncIO(c, &bdev.Request{Op: bdev.OpWrite, Offset: int64(sg.dstLBA<<dst.shift + done), Buf: chunk})
		dst.locks.release(&lock)
		if errors.Is(err, errConflict) {
			return conflictResult, done
		}
		if err != nil {
			return fail(ioError(err, true)), done
		}
		done += n
	}
	return good, total
}

// copyTarget resolves CSCD index i to a logical unit of the target: an
// NAA designator of one of its logical units. It returns nil when the
// index or the designator names nothing reachable.
func (d *Disk) copyTarget(cscds []cscd, i int) *Disk {
	if i >= len(cscds) || cscds[i].null {
		return nil
	}
	desig := cscds[i].desig
	if len(desig) < 4 || desig[0]&0x0f != codeBinary || desig[1]&0x3f != assocLU|desigNAA {
		return nil
	}
	id := desig[4:]
	t := d.tgt.Load()
	if t == nil {
		return nil
	}
	for _, o := range *t.luns.Load() {
		var naa [8]byte
		binary.BigEndian.PutUint64(naa[:], 3<<60|o.cfg.NAA)
		if string(id) == string(naa[:]) {
			return o
		}
	}
	return nil
}

// receiveCopyResults implements RECEIVE COPY RESULTS (SPC-4 6.18) with the
// COPY STATUS and OPERATING PARAMETERS service actions.
func (d *Disk) receiveCopyResults(c *Command) result {
	cdb := c.CDB
	alloc := int(binary.BigEndian.Uint32(cdb[10:]))
	if cdb[1]&0x1f == rcrCopyStatus {
		r, ok := d.copies.get(copyKey{nexus: nexusIDOf(c.Nexus), list: cdb[2]})
		if !ok {
			return fail(invalidCDB(2, 7))
		}
		b := make([]byte, 12)
		binary.BigEndian.PutUint32(b, 8)
		b[4] = r.status
		binary.BigEndian.PutUint16(b[5:], r.segments)
		b[7] = 0x00 // TRANSFER COUNT UNITS: bytes
		binary.BigEndian.PutUint32(b[8:], uint32(min(r.bytes, 0xffffffff)))
		return respond(c, b, alloc)
	}
	b := make([]byte, 44, 46)
	binary.BigEndian.PutUint16(b[8:], xcMaxCSCDs)
	binary.BigEndian.PutUint16(b[10:], xcMaxSegments)
	binary.BigEndian.PutUint32(b[12:], xcMaxListLen)
	binary.BigEndian.PutUint32(b[16:], xcMaxSegBytes)
	binary.BigEndian.PutUint16(b[34:], 1) // TOTAL CONCURRENT COPIES
	b[36] = 1                             // MAXIMUM CONCURRENT COPIES
	b[37] = byte(d.shift)                 // DATA SEGMENT GRANULARITY (log2)
	b[43] = 2                             // IMPLEMENTED DESCRIPTOR LIST LENGTH
	b = append(b, xcBlockToBlock, xcIdentCSCD)
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return respond(c, b, alloc)
}

// thirdPartyCopy is the body of the Third-party Copy VPD page (SPC-4
// 7.8.17): a Supported Commands descriptor listing EXTENDED COPY (LID1)
// and RECEIVE COPY RESULTS (COPY STATUS, OPERATING PARAMETERS).
func thirdPartyCopy() []byte {
	cmds := []byte{0x83, 1, 0x00, 0x84, 2, rcrCopyStatus, rcrOpParams}
	body := append([]byte{byte(len(cmds))}, cmds...)
	for len(body)%4 != 0 {
		body = append(body, 0)
	}
	b := []byte{0x00, 0x01, byte(len(body) >> 8), byte(len(body))} // SUPPORTED COMMANDS
	return append(b, body...)
}
