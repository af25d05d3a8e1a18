//go:build linux && (amd64 || arm64)

package rdma

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unsafe"
)

// ibvLayout is one size or offset of a libibverbs structure: what the Go mirror has, what it
// must be (pinned from verbs.h of rdma-core 44 on LP64), and the C expression that computes it.
type ibvLayout struct {
	c         string // sizeof(struct x) or offsetof(struct x, field)
	got, want uintptr
}

func ibvLayouts() []ibvLayout {
	var (
		ctx ibvContext
		ops ibvContextOps
		dev ibvDevice
		pd  ibvPD
		mr  ibvMR
		mw  ibvMW
		ch  ibvCompChannel
		cq  ibvCQ
		qp  ibvQP
		sge ibvSGE
		swr ibvSendWR
		rwr ibvRecvWR
		wc  ibvWC
		cap ibvQPCap
		ia  ibvQPInitAttr
		gr  ibvGlobalRoute
		ah  ibvAHAttr
		qa  ibvQPAttr
		da  ibvDeviceAttr
		pa  ibvPortAttr
		ae  ibvAsyncEvent
	)
	size := func(s string, got, want uintptr) ibvLayout {
		return ibvLayout{"sizeof(struct " + s + ")", got, want}
	}
	off := func(s, f string, got, want uintptr) ibvLayout {
		return ibvLayout{"offsetof(struct " + s + ", " + f + ")", got, want}
	}
	return []ibvLayout{
		size("ibv_context_ops", unsafe.Sizeof(ops), 256),
		off("ibv_context_ops", "alloc_mw", unsafe.Offsetof(ops.AllocMW), 56),
		off("ibv_context_ops", "bind_mw", unsafe.Offsetof(ops.BindMW), 64),
		off("ibv_context_ops", "dealloc_mw", unsafe.Offsetof(ops.DeallocMW), 72),
		off("ibv_context_ops", "poll_cq", unsafe.Offsetof(ops.PollCQ), 88),
		off("ibv_context_ops", "req_notify_cq", unsafe.Offsetof(ops.ReqNotifyCQ), 96),
		off("ibv_context_ops", "post_srq_recv", unsafe.Offsetof(ops.PostSRQRecv), 160),
		off("ibv_context_ops", "post_send", unsafe.Offsetof(ops.PostSend), 200),
		off("ibv_context_ops", "post_recv", unsafe.Offsetof(ops.PostRecv), 208),
		off("ibv_context", "ops", unsafe.Offsetof(ctx.Ops), 8),
		off("ibv_context", "cmd_fd", unsafe.Offsetof(ctx.CmdFD), 264),
		off("ibv_context", "async_fd", unsafe.Offsetof(ctx.AsyncFD), 268),
		off("ibv_context", "num_comp_vectors", unsafe.Offsetof(ctx.NumCompVectors), 272),
		size("ibv_device", unsafe.Sizeof(dev), 664),
		off("ibv_device", "name", unsafe.Offsetof(dev.Name), 24),
		off("ibv_device", "dev_name", unsafe.Offsetof(dev.DevName), 88),
		off("ibv_device", "ibdev_path", unsafe.Offsetof(dev.IBDevPath), 408),
		size("ibv_pd", unsafe.Sizeof(pd), 16),
		off("ibv_pd", "handle", unsafe.Offsetof(pd.Handle), 8),
		size("ibv_mr", unsafe.Sizeof(mr), 48),
		off("ibv_mr", "handle", unsafe.Offsetof(mr.Handle), 32),
		off("ibv_mr", "lkey", unsafe.Offsetof(mr.LKey), 36),
		off("ibv_mr", "rkey", unsafe.Offsetof(mr.RKey), 40),
		off("ibv_mw", "rkey", unsafe.Offsetof(mw.RKey), 16),
		off("ibv_mw", "handle", unsafe.Offsetof(mw.Handle), 20),
		off("ibv_mw", "type", unsafe.Offsetof(mw.Type), 24),
		size("ibv_comp_channel", unsafe.Sizeof(ch), 16),
		off("ibv_comp_channel", "fd", unsafe.Offsetof(ch.FD), 8),
		off("ibv_cq", "handle", unsafe.Offsetof(cq.Handle), 24),
		off("ibv_cq", "cqe", unsafe.Offsetof(cq.CQE), 28),
		off("ibv_qp", "handle", unsafe.Offsetof(qp.Handle), 48),
		off("ibv_qp", "qp_num", unsafe.Offsetof(qp.QPNum), 52),
		off("ibv_qp", "qp_type", unsafe.Offsetof(qp.QPType), 60),
		size("ibv_sge", unsafe.Sizeof(sge), 16),
		off("ibv_sge", "lkey", unsafe.Offsetof(sge.LKey), 12),
		size("ibv_send_wr", unsafe.Sizeof(swr), 128),
		off("ibv_send_wr", "next", unsafe.Offsetof(swr.Next), 8),
		off("ibv_send_wr", "sg_list", unsafe.Offsetof(swr.SGList), 16),
		off("ibv_send_wr", "num_sge", unsafe.Offsetof(swr.NumSGE), 24),
		off("ibv_send_wr", "opcode", unsafe.Offsetof(swr.Opcode), 28),
		off("ibv_send_wr", "send_flags", unsafe.Offsetof(swr.SendFlags), 32),
		off("ibv_send_wr", "invalidate_rkey", unsafe.Offsetof(swr.Ex), 36),
		off("ibv_send_wr", "wr.rdma.remote_addr", unsafe.Offsetof(swr.RemoteAddr), 40),
		off("ibv_send_wr", "wr.rdma.rkey", unsafe.Offsetof(swr.RKey), 48),
		off("ibv_send_wr", "qp_type.xrc.remote_srqn", unsafe.Offsetof(swr.RemoteSRQN), 72),
		off("ibv_send_wr", "bind_mw.mw", unsafe.Offsetof(swr.BindMW), 80),
		off("ibv_send_wr", "bind_mw.rkey", unsafe.Offsetof(swr.BindRKey), 88),
		off("ibv_send_wr", "bind_mw.bind_info.mr", unsafe.Offsetof(swr.BindMR), 96),
		off("ibv_send_wr", "bind_mw.bind_info.addr", unsafe.Offsetof(swr.BindAddr), 104),
		off("ibv_send_wr", "bind_mw.bind_info.length", unsafe.Offsetof(swr.BindLength), 112),
		off("ibv_send_wr", "bind_mw.bind_info.mw_access_flags", unsafe.Offsetof(swr.BindAccess), 120),
		size("ibv_recv_wr", unsafe.Sizeof(rwr), 32),
		off("ibv_recv_wr", "num_sge", unsafe.Offsetof(rwr.NumSGE), 24),
		size("ibv_wc", unsafe.Sizeof(wc), 48),
		off("ibv_wc", "status", unsafe.Offsetof(wc.Status), 8),
		off("ibv_wc", "opcode", unsafe.Offsetof(wc.Opcode), 12),
		off("ibv_wc", "vendor_err", unsafe.Offsetof(wc.VendorErr), 16),
		off("ibv_wc", "byte_len", unsafe.Offsetof(wc.ByteLen), 20),
		off("ibv_wc", "invalidated_rkey", unsafe.Offsetof(wc.Ex), 24),
		off("ibv_wc", "qp_num", unsafe.Offsetof(wc.QPNum), 28),
		off("ibv_wc", "wc_flags", unsafe.Offsetof(wc.WCFlags), 36),
		off("ibv_wc", "dlid_path_bits", unsafe.Offsetof(wc.DLIDPathBits), 45),
		size("ibv_qp_cap", unsafe.Sizeof(cap), 20),
		size("ibv_qp_init_attr", unsafe.Sizeof(ia), 64),
		off("ibv_qp_init_attr", "send_cq", unsafe.Offsetof(ia.SendCQ), 8),
		off("ibv_qp_init_attr", "recv_cq", unsafe.Offsetof(ia.RecvCQ), 16),
		off("ibv_qp_init_attr", "cap", unsafe.Offsetof(ia.Cap), 32),
		off("ibv_qp_init_attr", "qp_type", unsafe.Offsetof(ia.QPType), 52),
		off("ibv_qp_init_attr", "sq_sig_all", unsafe.Offsetof(ia.SQSigAll), 56),
		size("ibv_global_route", unsafe.Sizeof(gr), 24),
		off("ibv_global_route", "flow_label", unsafe.Offsetof(gr.FlowLabel), 16),
		off("ibv_global_route", "traffic_class", unsafe.Offsetof(gr.TrafficClass), 22),
		size("ibv_ah_attr", unsafe.Sizeof(ah), 32),
		off("ibv_ah_attr", "dlid", unsafe.Offsetof(ah.DLID), 24),
		off("ibv_ah_attr", "is_global", unsafe.Offsetof(ah.IsGlobal), 29),
		off("ibv_ah_attr", "port_num", unsafe.Offsetof(ah.PortNum), 30),
		size("ibv_qp_attr", unsafe.Sizeof(qa), 144),
		off("ibv_qp_attr", "qkey", unsafe.Offsetof(qa.QKey), 16),
		off("ibv_qp_attr", "dest_qp_num", unsafe.Offsetof(qa.DestQPNum), 28),
		off("ibv_qp_attr", "qp_access_flags", unsafe.Offsetof(qa.QPAccessFlags), 32),
		off("ibv_qp_attr", "cap", unsafe.Offsetof(qa.Cap), 36),
		off("ibv_qp_attr", "ah_attr", unsafe.Offsetof(qa.AHAttr), 56),
		off("ibv_qp_attr", "alt_ah_attr", unsafe.Offsetof(qa.AltAHAttr), 88),
		off("ibv_qp_attr", "pkey_index", unsafe.Offsetof(qa.PkeyIndex), 120),
		off("ibv_qp_attr", "max_rd_atomic", unsafe.Offsetof(qa.MaxRdAtomic), 126),
		off("ibv_qp_attr", "max_dest_rd_atomic", unsafe.Offsetof(qa.MaxDestRdAtomic), 127),
		off("ibv_qp_attr", "min_rnr_timer", unsafe.Offsetof(qa.MinRNRTimer), 128),
		off("ibv_qp_attr", "port_num", unsafe.Offsetof(qa.PortNum), 129),
		off("ibv_qp_attr", "timeout", unsafe.Offsetof(qa.Timeout), 130),
		off("ibv_qp_attr", "rnr_retry", unsafe.Offsetof(qa.RNRRetry), 132),
		off("ibv_qp_attr", "rate_limit", unsafe.Offsetof(qa.RateLimit), 136),
		size("ibv_device_attr", unsafe.Sizeof(da), 232),
		off("ibv_device_attr", "node_guid", unsafe.Offsetof(da.NodeGUID), 64),
		off("ibv_device_attr", "max_mr_size", unsafe.Offsetof(da.MaxMRSize), 80),
		off("ibv_device_attr", "vendor_id", unsafe.Offsetof(da.VendorID), 96),
		off("ibv_device_attr", "max_qp_wr", unsafe.Offsetof(da.MaxQPWR), 112),
		off("ibv_device_attr", "max_sge", unsafe.Offsetof(da.MaxSGE), 120),
		off("ibv_device_attr", "max_cqe", unsafe.Offsetof(da.MaxCQE), 132),
		off("ibv_device_attr", "max_qp_rd_atom", unsafe.Offsetof(da.MaxQPRdAtom), 144),
		off("ibv_device_attr", "max_qp_init_rd_atom", unsafe.Offsetof(da.MaxQPInitRdAtom), 156),
		off("ibv_device_attr", "phys_port_cnt", unsafe.Offsetof(da.PhysPortCnt), 227),
		size("ibv_port_attr", unsafe.Sizeof(pa), 52),
		off("ibv_port_attr", "active_mtu", unsafe.Offsetof(pa.ActiveMTU), 8),
		off("ibv_port_attr", "gid_tbl_len", unsafe.Offsetof(pa.GIDTblLen), 12),
		off("ibv_port_attr", "max_msg_sz", unsafe.Offsetof(pa.MaxMsgSz), 20),
		off("ibv_port_attr", "link_layer", unsafe.Offsetof(pa.LinkLayer), 46),
		size("ibv_async_event", unsafe.Sizeof(ae), 16),
		off("ibv_async_event", "event_type", unsafe.Offsetof(ae.EventType), 8),
	}
}

// TestIbvABILayout pins the mirrors of the libibverbs structures.
func TestIbvABILayout(t *testing.T) {
	for _, l := range ibvLayouts() {
		if l.got != l.want {
			t.Errorf("%s = %d in Go, want %d", l.c, l.got, l.want)
		}
	}
}

// TestIbvCHeaderABI compiles the same sizes and offsets with verbs.h and compares.
func TestIbvCHeaderABI(t *testing.T) {
	layouts := ibvLayouts()
	var src strings.Builder
	src.WriteString("#include <stddef.h>\n#include <stdio.h>\n#include <infiniband/verbs.h>\nint main(void) {\n")
	for _, l := range layouts {
		fmt.Fprintf(&src, "\tprintf(\"%%zu\\n\", (size_t)%s);\n", l.c)
	}
	src.WriteString("\treturn 0;\n}\n")
	file := filepath.Join(t.TempDir(), "ibvabi.c")
	if err := os.WriteFile(file, []byte(src.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := compileC(t, file, false)
	out, err := exec.Command(bin).Output()
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Fields(string(out))
	if len(lines) != len(layouts) {
		t.Fatalf("the C program printed %d numbers for %d layouts", len(lines), len(layouts))
	}
	for i, l := range layouts {
		n, err := strconv.ParseUint(lines[i], 10, 64)
		if err != nil {
			t.Fatal(err)
		}
		if uintptr(n) != l.got {
			t.Errorf("%s = %d in verbs.h, %d in Go", l.c, n, l.got)
		}
	}
}
