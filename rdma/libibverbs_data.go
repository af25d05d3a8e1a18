//go:build linux

package rdma

import (
	"errors"
	"fmt"
	"syscall"
	"unsafe"
)

// ibvQPRings posts work requests through the provider's post_send and post_recv. The work
// requests and SGEs are built in mmap'd memory the QP owns (stageWRs of each), so posting
// allocates nothing; inline data is copied there too and the provider copies it into its queue
// before post_send returns.
type ibvQPRings struct {
	qp                 uintptr // struct ibv_qp *
	postSend, postRecv uintptr
	mem                *cmem
	send               []ibvSendWR
	sendSGE            []ibvSGE
	inline             []byte
	recv               []ibvRecvWR
	recvSGE            []ibvSGE
	bad                []uintptr // bad_wr of post_send [0] and post_recv [1]
	caps               QPCaps
	// The arguments of post_send and post_recv: handed to purego as a slice that already
	// lives on the heap, so that a call allocates none.
	sendArgs, recvArgs [3]uintptr
}

// newIbvQPRings prepares the posting memory of a QP created through libibverbs.
func newIbvQPRings(qp uintptr, ops *ibvContextOps, caps QPCaps) (*ibvQPRings, error) {
	maxSend, maxRecv := max(caps.MaxSendSGE, 1), max(caps.MaxRecvSGE, 1)
	mem, err := newCmem(cmemSize[ibvSendWR](stageWRs) + cmemSize[ibvSGE](stageWRs*maxSend) +
		cmemSize[byte](stageWRs*caps.MaxInline) + cmemSize[ibvRecvWR](stageWRs) +
		cmemSize[ibvSGE](stageWRs*maxRecv) + cmemSize[uintptr](2))
	if err != nil {
		return nil, err
	}
	return &ibvQPRings{qp: qp, postSend: ops.PostSend, postRecv: ops.PostRecv, mem: mem, caps: caps,
		send: takeN[ibvSendWR](mem, stageWRs), sendSGE: takeN[ibvSGE](mem, stageWRs*maxSend),
		inline: takeN[byte](mem, stageWRs*caps.MaxInline), recv: takeN[ibvRecvWR](mem, stageWRs),
		recvSGE: takeN[ibvSGE](mem, stageWRs*maxRecv), bad: takeN[uintptr](mem, 2)}, nil
}

func addrOf[T any](p *T) uintptr { return uintptr(unsafe.Pointer(p)) }

// PostSend implements QPRings: one post_send call for the batch (at most stageWRs, as QP.PostSend
// hands them).
func (r *ibvQPRings) PostSend(wrs []SendWR) (int, error) {
	if len(wrs) > len(r.send) {
		return 0, fmt.Errorf("%d work requests exceed the staging of %d", len(wrs), len(r.send))
	}
	if len(wrs) == 0 {
		return 0, nil
	}
	maxSGE := max(r.caps.MaxSendSGE, 1)
	for i := range wrs {
		wr := &wrs[i]
		w := &r.send[i]
		*w = ibvSendWR{WRID: wr.ID, Opcode: uint32(wr.Opcode), SendFlags: uint32(wr.Flags &^ SendInline),
			RemoteAddr: wr.RemoteAddr, RKey: wr.RKey}
		if wr.Opcode == OpSendWithInv {
			w.Ex = wr.InvalidateRKey
		}
		if i+1 < len(wrs) {
			w.Next = addrOf(&r.send[i+1])
		}
		sges := r.sendSGE[i*maxSGE : (i+1)*maxSGE]
		switch {
		case wr.Opcode == OpBindMW:
			b := &wr.Bind
			if b.mwLib == 0 || b.mrLib == 0 {
				return i, errors.New("bind work request without a window and region of this device (use MW.BindWR)")
			}
			w.BindMW, w.BindRKey, w.BindMR = b.mwLib, b.RKey, b.mrLib
			w.BindAddr, w.BindLength, w.BindAccess = b.Addr, b.Length, uint32(b.Access)
		case wr.Inline != nil:
			if wr.Opcode == OpRDMARead {
				return i, errors.New("RDMA READ cannot be inline")
			}
			in := r.inline[i*r.caps.MaxInline : (i+1)*r.caps.MaxInline]
			n := copy(in, wr.Inline)
			if n > 0 {
				sges[0] = ibvSGE{Addr: uint64(addrOf(&in[0])), Length: uint32(n)}
				w.SGList, w.NumSGE = addrOf(&sges[0]), 1
			}
			w.SendFlags |= uint32(SendInline)
		default:
			for j, s := range wr.SGL {
				sges[j] = ibvSGE(s)
			}
			if len(wr.SGL) > 0 {
				w.SGList, w.NumSGE = addrOf(&sges[0]), int32(len(wr.SGL))
			}
		}
	}
	r.bad[0] = 0
	r.sendArgs = [3]uintptr{r.qp, addrOf(&r.send[0]), addrOf(&r.bad[0])}
	if err := callInt(r.postSend, r.sendArgs[:]...); err != nil {
		return r.badIndex(r.bad[0], addrOf(&r.send[0]), unsafe.Sizeof(ibvSendWR{}), len(wrs)), postErrno(err)
	}
	return len(wrs), nil
}

// badIndex turns the bad_wr a post returned into how many requests before it were queued.
func (r *ibvQPRings) badIndex(bad, first, size uintptr, n int) int {
	if bad < first || bad >= first+uintptr(n)*size {
		return 0
	}
	return int((bad - first) / size)
}

// postErrno maps the provider's ENOMEM for a full queue to ErrQueueFull.
func postErrno(err error) error {
	if errors.Is(err, syscall.ENOMEM) {
		return fmt.Errorf("%w (%w)", ErrQueueFull, err)
	}
	return err
}

// PostRecv implements QPRings.
func (r *ibvQPRings) PostRecv(wrs []RecvWR) (int, error) {
	if len(wrs) > len(r.recv) {
		return 0, fmt.Errorf("%d work requests exceed the staging of %d", len(wrs), len(r.recv))
	}
	if len(wrs) == 0 {
		return 0, nil
	}
	maxSGE := max(r.caps.MaxRecvSGE, 1)
	for i := range wrs {
		w := &r.recv[i]
		*w = ibvRecvWR{WRID: wrs[i].ID}
		if i+1 < len(wrs) {
			w.Next = addrOf(&r.recv[i+1])
		}
		sges := r.recvSGE[i*maxSGE : (i+1)*maxSGE]
		for j, s := range wrs[i].SGL {
			sges[j] = ibvSGE(s)
		}
		if len(wrs[i].SGL) > 0 {
			w.SGList, w.NumSGE = addrOf(&sges[0]), int32(len(wrs[i].SGL))
		}
	}
	r.bad[1] = 0
	r.recvArgs = [3]uintptr{r.qp, addrOf(&r.recv[0]), addrOf(&r.bad[1])}
	if err := callInt(r.postRecv, r.recvArgs[:]...); err != nil {
		return r.badIndex(r.bad[1], addrOf(&r.recv[0]), unsafe.Sizeof(ibvRecvWR{}), len(wrs)), postErrno(err)
	}
	return len(wrs), nil
}

// Close implements QPRings (after ibv_destroy_qp).
func (r *ibvQPRings) Close() error { return r.mem.free() }

// ibvCQRing polls through the provider's poll_cq into completions in mmap'd memory.
type ibvCQRing struct {
	cq, poll, reqNotify uintptr
	mem                 *cmem
	wc                  []ibvWC
	pollArgs            [3]uintptr // as ibvQPRings.sendArgs
	armArgs             [2]uintptr
}

func newIbvCQRing(cq uintptr, ops *ibvContextOps, n int) (*ibvCQRing, error) {
	mem, err := newCmem(cmemSize[ibvWC](n))
	if err != nil {
		return nil, err
	}
	return &ibvCQRing{cq: cq, poll: ops.PollCQ, reqNotify: ops.ReqNotifyCQ, mem: mem, wc: takeN[ibvWC](mem, n)}, nil
}

// arm asks for a completion event through the provider's req_notify_cq.
func (r *ibvCQRing) arm(solicitedOnly bool) error {
	r.armArgs = [2]uintptr{r.cq, 0}
	if solicitedOnly {
		r.armArgs[1] = 1
	}
	if err := callInt(r.reqNotify, r.armArgs[:]...); err != nil {
		return fmt.Errorf("req_notify_cq: %w", err)
	}
	return nil
}

// Poll implements CQRing. A provider error (a negative count) reads as no completion.
func (r *ibvCQRing) Poll(wc []WorkCompletion) int {
	n := min(len(wc), len(r.wc))
	if n == 0 {
		return 0
	}
	r.pollArgs = [3]uintptr{r.cq, uintptr(n), addrOf(&r.wc[0])}
	got := int(int32(call(r.poll, r.pollArgs[:]...)))
	for i := 0; i < got; i++ {
		u := &r.wc[i]
		// Providers disagree on the invalidate flag: mlx5 sets IBV_WC_WITH_INV, librxe passes the
		// kernel's IB_WC_WITH_INVALIDATE, which is libibverbs' IBV_WC_IP_CSUM_OK bit. That
		// checksum flag exists for UD and raw packet QPs only, so on our RC QPs either bit
		// means the SEND invalidated Ex.
		flags := u.WCFlags & ibvWCKeep
		if u.WCFlags&(ibvWCWithInv|ibvWCIPCsumOK) != 0 {
			flags |= WCWithInvalidate
		}
		wc[i] = WorkCompletion{ID: u.WRID, Status: WCStatus(u.Status), Opcode: WCOpcode(u.Opcode),
			ByteLen: u.ByteLen, Ex: u.Ex, QPNum: u.QPNum, Flags: flags, VendorErr: u.VendorErr}
	}
	return max(got, 0)
}

// Close implements CQRing (after ibv_destroy_cq).
func (r *ibvCQRing) Close() error { return r.mem.free() }
