//go:build linux

package rdma

import (
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// rxeProvider drives rdma_rxe (Soft-RoCE): send, receive and completion queues are rings in
// memory the kernel shares through mmap of the uverbs fd (struct rxe_queue_buf).
type rxeProvider struct{}

// Name implements Provider.
func (rxeProvider) Name() string { return "rxe" }

// Match accepts devices that have the rxe-only "parent" sysfs attribute or an rxe name.
func (rxeProvider) Match(d *Device) bool {
	return d.Parent != "" || strings.HasPrefix(d.Name, "rxe")
}

// CQDriverData implements Provider: no driver input, an mminfo back.
func (rxeProvider) CQDriverData() ([]byte, int) {
	return nil, int(unsafe.Sizeof(rxeCreateCQResp{}))
}

// QPDriverData implements Provider: no driver input (rxe refuses any), two mminfos back.
func (rxeProvider) QPDriverData() ([]byte, int) {
	return nil, int(unsafe.Sizeof(rxeCreateQPResp{}))
}

// NewCQRing implements Provider by mapping the completion ring.
func (rxeProvider) NewCQRing(c *Context, out []byte) (CQRing, error) {
	if len(out) < int(unsafe.Sizeof(rxeCreateCQResp{})) {
		return nil, errors.New("rdma: rxe CREATE_CQ answer too short")
	}
	r := (*rxeCreateCQResp)(unsafe.Pointer(&out[0]))
	q, err := mapRxeQueue(c.fd, r.MI, int(unsafe.Sizeof(uverbsWC{})))
	if err != nil {
		return nil, fmt.Errorf("rdma: rxe CQ: %w", err)
	}
	return &rxeCQ{q: q}, nil
}

// NewQPRings implements Provider by mapping the send and receive rings and preparing the doorbell.
func (rxeProvider) NewQPRings(c *Context, qp *QP, out []byte) (QPRings, error) {
	if len(out) < int(unsafe.Sizeof(rxeCreateQPResp{})) {
		return nil, errors.New("rdma: rxe CREATE_QP answer too short")
	}
	r := (*rxeCreateQPResp)(unsafe.Pointer(&out[0]))
	sq, err := mapRxeQueue(c.fd, r.SQMI, int(unsafe.Sizeof(rxeSendWQE{})+unsafe.Sizeof(rxeSGE{})))
	if err != nil {
		return nil, fmt.Errorf("rdma: rxe send queue: %w", err)
	}
	var rq *rxeQueue
	if r.RQMI.Size != 0 {
		rq, err = mapRxeQueue(c.fd, r.RQMI, int(unsafe.Sizeof(rxeRecvWQE{})))
		if err != nil {
			_ = sq.unmap()
			return nil, fmt.Errorf("rdma: rxe receive queue: %w", err)
		}
	}
	rings := &rxeQP{sq: sq, rq: rq, fd: c.fd, maxInline: qp.Caps.MaxInline, db: new(rxeDoorbell)}
	rings.db.cmd = rxeDoorbellCmd{
		Hdr: uverbsCmdHdr{Command: cmdPostSend, InWords: uint16(unsafe.Sizeof(rxeDoorbellCmd{}) / 4), OutWords: 1},
		Req: uverbsPostSend{QPHandle: qp.handle, WQESize: uverbsSendWRSize},
	}
	rings.db.cmd.Req.Response = uint64(uintptr(unsafe.Pointer(&rings.db.resp)))
	return rings, nil
}

// rxeQueue is one mmap'd rxe_queue_buf.
type rxeQueue struct {
	mem  []byte
	hdr  *rxeQueueHdr
	mask uint32
	log2 uint32
}

// mapRxeQueue maps the queue the kernel described in mi and checks its geometry: every slot of
// (index_mask+1) slots of 1<<log2_elem_size bytes must lie inside the mapping and hold minElem bytes.
func mapRxeQueue(fd int, mi rxeMMInfo, minElem int) (*rxeQueue, error) {
	hdrSize := int(unsafe.Sizeof(rxeQueueHdr{}))
	if int(mi.Size) < hdrSize {
		return nil, fmt.Errorf("queue mapping of %d bytes is smaller than its header", mi.Size)
	}
	mem, err := unix.Mmap(fd, int64(mi.Offset), int(mi.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes at %#x: %w", mi.Size, mi.Offset, err)
	}
	q := &rxeQueue{mem: mem, hdr: (*rxeQueueHdr)(unsafe.Pointer(&mem[0]))}
	q.log2 = atomic.LoadUint32(&q.hdr.Log2ElemSize)
	q.mask = atomic.LoadUint32(&q.hdr.IndexMask)
	slots := uint64(q.mask) + 1
	if q.log2 > 20 || q.mask&(q.mask+1) != 0 || 1<<q.log2 < minElem ||
		uint64(hdrSize)+slots<<q.log2 > uint64(len(mem)) {
		_ = unix.Munmap(mem)
		return nil, fmt.Errorf("queue geometry (elem 1<<%d, mask %#x, %d bytes) does not fit", q.log2, q.mask, len(mem))
	}
	return q, nil
}

// slot returns the bytes of slot i.
func (q *rxeQueue) slot(i uint32) []byte {
	off := int(unsafe.Sizeof(rxeQueueHdr{})) + int(i&q.mask)<<q.log2
	return q.mem[off : off+1<<q.log2]
}

func (q *rxeQueue) elemSize() int { return 1 << q.log2 }

func (q *rxeQueue) unmap() error {
	if q == nil || q.mem == nil {
		return nil
	}
	err := unix.Munmap(q.mem)
	q.mem, q.hdr = nil, nil
	if err != nil {
		return fmt.Errorf("rdma: munmap rxe queue: %w", err)
	}
	return nil
}

// rxeCQ consumes the completion ring: the kernel produces, we consume.
type rxeCQ struct{ q *rxeQueue }

// Poll implements CQRing: copy CQEs between consumer and producer, then publish the consumer.
func (r *rxeCQ) Poll(wc []WorkCompletion) int {
	q := r.q
	prod := atomic.LoadUint32(&q.hdr.ProducerIndex) // acquire: CQE contents are visible
	cons := atomic.LoadUint32(&q.hdr.ConsumerIndex)
	n := 0
	for n < len(wc) && cons != prod {
		s := q.slot(cons)
		u := (*uverbsWC)(unsafe.Pointer(&s[0]))
		wc[n] = WorkCompletion{ID: u.WRID, Status: WCStatus(u.Status), Opcode: WCOpcode(u.Opcode),
			ByteLen: u.ByteLen, Ex: u.Ex, QPNum: u.QPNum, Flags: u.WCFlags, VendorErr: u.VendorErr}
		cons = (cons + 1) & q.mask
		n++
	}
	if n > 0 {
		atomic.StoreUint32(&q.hdr.ConsumerIndex, cons) // release the slots to the kernel
	}
	return n
}

// Close implements CQRing.
func (r *rxeCQ) Close() error { return r.q.unmap() }

// rxeDoorbellCmd is the POST_SEND command with no work requests that makes the kernel process
// the send queue.
type rxeDoorbellCmd struct {
	Hdr uverbsCmdHdr
	Req uverbsPostSend
}

// rxeDoorbell is heap memory for the doorbell command and its response (the kernel writes
// bad_wr there).
type rxeDoorbell struct {
	cmd  rxeDoorbellCmd
	resp uverbsPostSendResp
}

// rxeQP holds a QP's send and receive rings: we produce, the kernel consumes.
type rxeQP struct {
	sq, rq    *rxeQueue
	fd        int
	maxInline int
	ssn       uint32
	db        *rxeDoorbell
}

const (
	rxeWQEHdr  = int(unsafe.Sizeof(rxeSendWQE{}))
	rxeRWQEHdr = int(unsafe.Sizeof(rxeRecvWQE{}))
	rxeSGESize = int(unsafe.Sizeof(rxeSGE{}))
)

// PostSend implements QPRings: write each WQE at the producer slot, publish the producer index,
// and ring the doorbell once for the batch.
func (r *rxeQP) PostSend(wrs []SendWR) (int, error) {
	q := r.sq
	prod := atomic.LoadUint32(&q.hdr.ProducerIndex)
	var err error
	n := 0
	for i := range wrs {
		if err = r.writeSendWQE(prod, &wrs[i]); err != nil {
			break
		}
		prod = (prod + 1) & q.mask
		atomic.StoreUint32(&q.hdr.ProducerIndex, prod) // release: the WQE is complete
		n++
	}
	if n > 0 {
		if dbErr := r.ring(); dbErr != nil {
			return n, errors.Join(err, dbErr)
		}
	}
	return n, err
}

func (r *rxeQP) writeSendWQE(prod uint32, wr *SendWR) error {
	q := r.sq
	if (prod+1)&q.mask == atomic.LoadUint32(&q.hdr.ConsumerIndex) {
		return ErrQueueFull
	}
	switch wr.Opcode {
	case OpSend, OpSendWithInv, OpRDMAWrite, OpRDMARead:
	case OpBindMW:
		return r.writeBindWQE(prod, wr)
	default:
		return fmt.Errorf("unsupported opcode %d", wr.Opcode)
	}
	slot := q.slot(prod)
	flags := wr.Flags
	var length int
	if wr.Inline != nil {
		if wr.Opcode == OpRDMARead {
			return errors.New("RDMA READ cannot be inline")
		}
		if len(wr.Inline) > r.maxInline || rxeWQEHdr+len(wr.Inline) > len(slot) {
			return fmt.Errorf("inline data of %d bytes exceeds the QP's %d", len(wr.Inline), r.maxInline)
		}
		flags |= SendInline
		length = copy(slot[rxeWQEHdr:], wr.Inline)
	} else {
		flags &^= SendInline
		if rxeWQEHdr+len(wr.SGL)*rxeSGESize > len(slot) {
			return fmt.Errorf("%d SGEs do not fit a send queue slot", len(wr.SGL))
		}
		for i, s := range wr.SGL {
			*(*rxeSGE)(unsafe.Pointer(&slot[rxeWQEHdr+i*rxeSGESize])) = rxeSGE(s)
			length += int(s.Length)
		}
	}
	if length > 1<<31 {
		return fmt.Errorf("work request of %d bytes is too long", length)
	}
	numSGE := uint32(len(wr.SGL))
	if wr.Inline != nil {
		numSGE = 1
	}
	ex := uint32(0)
	if wr.Opcode == OpSendWithInv {
		ex = wr.InvalidateRKey
	}
	r.ssn++
	*(*rxeSendWQE)(unsafe.Pointer(&slot[0])) = rxeSendWQE{
		WR: rxeSendWR{WRID: wr.ID, Opcode: uint32(wr.Opcode), SendFlags: uint32(flags), Ex: ex,
			RemoteAddr: wr.RemoteAddr, RKey: wr.RKey},
		IOVA: wr.RemoteAddr,
		SSN:  r.ssn,
		DMA:  rxeDMAInfo{Length: uint32(length), Resid: uint32(length), NumSGE: numSGE},
	}
	return nil
}

// writeBindWQE writes a bind_mw work request: no data, the window's parameters in the wr union.
func (r *rxeQP) writeBindWQE(prod uint32, wr *SendWR) error {
	b := &wr.Bind
	if len(wr.SGL) != 0 || wr.Inline != nil {
		return errors.New("a bind work request carries no data")
	}
	if b.Length == 0 || b.RKey&^0xff != b.MWRKey&^0xff {
		return fmt.Errorf("bad bind of window %#x as %#x, %d bytes", b.MWRKey, b.RKey, b.Length)
	}
	slot := r.sq.slot(prod)
	r.ssn++
	*(*rxeSendWQE)(unsafe.Pointer(&slot[0])) = rxeSendWQE{
		WR:  rxeSendWR{WRID: wr.ID, Opcode: uint32(OpBindMW), SendFlags: uint32(wr.Flags &^ SendInline)},
		SSN: r.ssn,
	}
	*(*rxeMWBind)(unsafe.Pointer(&slot[unsafe.Offsetof(rxeSendWR{}.RemoteAddr)])) = rxeMWBind{
		Addr: b.Addr, Length: b.Length, MRLKey: b.MRLKey, MWRKey: b.MWRKey, RKey: b.RKey, Access: uint32(b.Access)}
	return nil
}

// ring tells the kernel to process the send queue (legal only in RTS).
//
// The write never sleeps (rxe runs the requester inline and returns), so it is issued as a raw
// system call: the goroutine keeps its P instead of going through the scheduler's syscall
// bookkeeping, which costs measurably on a per-message path.
func (r *rxeQP) ring() error {
	size := unsafe.Sizeof(r.db.cmd)
	n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(r.fd), uintptr(unsafe.Pointer(&r.db.cmd)), size)
	if errno != 0 {
		return fmt.Errorf("doorbell: %w", errno)
	}
	if n != size {
		return fmt.Errorf("doorbell: short write %d", n)
	}
	return nil
}

// PostRecv implements QPRings; the kernel reads receive WQEs when packets arrive, no syscall.
func (r *rxeQP) PostRecv(wrs []RecvWR) (int, error) {
	q := r.rq
	if q == nil {
		return 0, errors.New("QP has no receive queue")
	}
	prod := atomic.LoadUint32(&q.hdr.ProducerIndex)
	for i := range wrs {
		if (prod+1)&q.mask == atomic.LoadUint32(&q.hdr.ConsumerIndex) {
			return i, ErrQueueFull
		}
		slot := q.slot(prod)
		if rxeRWQEHdr+len(wrs[i].SGL)*rxeSGESize > len(slot) {
			return i, fmt.Errorf("%d SGEs do not fit a receive queue slot", len(wrs[i].SGL))
		}
		var length uint32
		for j, s := range wrs[i].SGL {
			*(*rxeSGE)(unsafe.Pointer(&slot[rxeRWQEHdr+j*rxeSGESize])) = rxeSGE(s)
			length += s.Length
		}
		*(*rxeRecvWQE)(unsafe.Pointer(&slot[0])) = rxeRecvWQE{WRID: wrs[i].ID,
			DMA: rxeDMAInfo{Length: length, Resid: length, NumSGE: uint32(len(wrs[i].SGL))}}
		prod = (prod + 1) & q.mask
		atomic.StoreUint32(&q.hdr.ProducerIndex, prod)
	}
	return len(wrs), nil
}

// Close implements QPRings.
func (r *rxeQP) Close() error {
	return errors.Join(r.sq.unmap(), r.rq.unmap())
}
