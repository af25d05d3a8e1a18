//go:build linux

package rdma

import (
	"testing"
	"unsafe"
)

// The numbers below were derived from /usr/include/rdma (linux-libc-dev for Linux 6.1) with
// sizeof/offsetof on x86_64; they are the kernel ABI and must never drift.
func TestABILayout(t *testing.T) {
	type off struct {
		field     string
		got, want uintptr
	}
	var (
		qd   uverbsQueryDeviceResp
		qp   uverbsQueryPort
		qpr  uverbsQueryPortResp
		rmr  uverbsRegMR
		ccq  uverbsCreateCQ
		wc   uverbsWC
		gr   uverbsGlobalRoute
		ah   uverbsAHAttr
		qa   uverbsQPAttr
		cqp  uverbsCreateQP
		dst  uverbsQPDest
		mqp  uverbsModifyQP
		ps   uverbsPostSend
		aev  uverbsAsyncEventDesc
		cid  ucmCreateIDCmd
		did  ucmDestroyIDCmd
		bnd  ucmBindCmd
		ra   ucmResolveAddrCmd
		qry  ucmQueryCmd
		qar  ucmQueryAddrResp
		cp   ucmConnParam
		con  ucmConnectCmd
		acc  ucmAcceptCmd
		rej  ucmRejectCmd
		iqa  ucmInitQPAttrCmd
		ev   ucmEventResp
		mig  ucmMigrateIDCmd
		swr  rxeSendWR
		bmw  rxeMWBind
		amw  uverbsAllocMW
		sge  rxeSGE
		mmi  rxeMMInfo
		dma  rxeDMAInfo
		swqe rxeSendWQE
		rwqe rxeRecvWQE
		qcr  rxeCreateQPResp
		qh   rxeQueueHdr
	)
	tests := []struct {
		name     string
		size, sz uintptr
		offsets  []off
	}{
		{"ib_uverbs_cmd_hdr", unsafe.Sizeof(uverbsCmdHdr{}), 8, nil},
		{"ib_uverbs_get_context_resp", unsafe.Sizeof(uverbsGetContextResp{}), 8, nil},
		{"ib_uverbs_query_device_resp", unsafe.Sizeof(qd), 176, []off{
			{"node_guid", unsafe.Offsetof(qd.NodeGUID), 8}, {"max_mr_size", unsafe.Offsetof(qd.MaxMRSize), 24},
			{"vendor_id", unsafe.Offsetof(qd.VendorID), 40}, {"max_qp_wr", unsafe.Offsetof(qd.MaxQPWR), 56},
			{"max_sge", unsafe.Offsetof(qd.MaxSGE), 64}, {"max_cqe", unsafe.Offsetof(qd.MaxCQE), 76},
			{"max_qp_rd_atom", unsafe.Offsetof(qd.MaxQPRdAtom), 88},
			{"max_qp_init_rd_atom", unsafe.Offsetof(qd.MaxQPInitRdAtom), 100},
			{"max_srq_sge", unsafe.Offsetof(qd.MaxSRQSGE), 164}, {"max_pkeys", unsafe.Offsetof(qd.MaxPkeys), 168},
			{"local_ca_ack_delay", unsafe.Offsetof(qd.LocalCAAckDelay), 170},
			{"phys_port_cnt", unsafe.Offsetof(qd.PhysPortCnt), 171},
		}},
		{"ib_uverbs_query_port", unsafe.Sizeof(qp), 16, []off{{"port_num", unsafe.Offsetof(qp.PortNum), 8}}},
		{"ib_uverbs_query_port_resp", unsafe.Sizeof(qpr), 40, []off{
			{"max_msg_sz", unsafe.Offsetof(qpr.MaxMsgSz), 4}, {"gid_tbl_len", unsafe.Offsetof(qpr.GIDTblLen), 16},
			{"pkey_tbl_len", unsafe.Offsetof(qpr.PkeyTblLen), 20}, {"lid", unsafe.Offsetof(qpr.LID), 22},
			{"state", unsafe.Offsetof(qpr.State), 26}, {"max_mtu", unsafe.Offsetof(qpr.MaxMTU), 27},
			{"active_mtu", unsafe.Offsetof(qpr.ActiveMTU), 28}, {"active_width", unsafe.Offsetof(qpr.ActiveWidth), 34},
			{"active_speed", unsafe.Offsetof(qpr.ActiveSpeed), 35}, {"phys_state", unsafe.Offsetof(qpr.PhysState), 36},
			{"link_layer", unsafe.Offsetof(qpr.LinkLayer), 37}, {"flags", unsafe.Offsetof(qpr.Flags), 38},
		}},
		{"ib_uverbs_alloc_pd_resp", unsafe.Sizeof(uverbsAllocPDResp{}), 4, nil},
		{"ib_uverbs_dealloc_pd", unsafe.Sizeof(uverbsHandleCmd{}), 4, nil},
		{"ib_uverbs_reg_mr", unsafe.Sizeof(rmr), 40, []off{
			{"start", unsafe.Offsetof(rmr.Start), 8}, {"length", unsafe.Offsetof(rmr.Length), 16},
			{"hca_va", unsafe.Offsetof(rmr.HCAVA), 24}, {"pd_handle", unsafe.Offsetof(rmr.PDHandle), 32},
			{"access_flags", unsafe.Offsetof(rmr.AccessFlags), 36},
		}},
		{"ib_uverbs_reg_mr_resp", unsafe.Sizeof(uverbsRegMRResp{}), 12, nil},
		{"ib_uverbs_alloc_mw", unsafe.Sizeof(amw), 16, []off{
			{"pd_handle", unsafe.Offsetof(amw.PDHandle), 8}, {"mw_type", unsafe.Offsetof(amw.MWType), 12},
		}},
		{"ib_uverbs_alloc_mw_resp", unsafe.Sizeof(uverbsAllocMWResp{}), 8, nil},
		{"ib_uverbs_create_comp_channel_resp", unsafe.Sizeof(uverbsCreateCompChannelResp{}), 4, nil},
		{"ib_uverbs_create_cq", unsafe.Sizeof(ccq), 32, []off{
			{"user_handle", unsafe.Offsetof(ccq.UserHandle), 8}, {"cqe", unsafe.Offsetof(ccq.CQE), 16},
			{"comp_vector", unsafe.Offsetof(ccq.CompVector), 20}, {"comp_channel", unsafe.Offsetof(ccq.CompChannel), 24},
		}},
		{"ib_uverbs_create_cq_resp", unsafe.Sizeof(uverbsCreateCQResp{}), 8, nil},
		{"ib_uverbs_destroy_cq", unsafe.Sizeof(uverbsDestroyObj{}), 16, nil},
		{"ib_uverbs_destroy_cq_resp", unsafe.Sizeof(uverbsDestroyCQResp{}), 8, nil},
		{"ib_uverbs_req_notify_cq", unsafe.Sizeof(uverbsReqNotifyCQ{}), 8, nil},
		{"ib_uverbs_wc", unsafe.Sizeof(wc), 48, []off{
			{"status", unsafe.Offsetof(wc.Status), 8}, {"opcode", unsafe.Offsetof(wc.Opcode), 12},
			{"vendor_err", unsafe.Offsetof(wc.VendorErr), 16}, {"byte_len", unsafe.Offsetof(wc.ByteLen), 20},
			{"ex", unsafe.Offsetof(wc.Ex), 24}, {"qp_num", unsafe.Offsetof(wc.QPNum), 28},
			{"src_qp", unsafe.Offsetof(wc.SrcQP), 32}, {"wc_flags", unsafe.Offsetof(wc.WCFlags), 36},
			{"pkey_index", unsafe.Offsetof(wc.PkeyIndex), 40}, {"slid", unsafe.Offsetof(wc.SLID), 42},
			{"sl", unsafe.Offsetof(wc.SL), 44}, {"dlid_path_bits", unsafe.Offsetof(wc.DLIDPathBits), 45},
			{"port_num", unsafe.Offsetof(wc.PortNum), 46},
		}},
		{"ib_uverbs_global_route", unsafe.Sizeof(gr), 24, []off{
			{"flow_label", unsafe.Offsetof(gr.FlowLabel), 16}, {"sgid_index", unsafe.Offsetof(gr.SGIDIndex), 20},
			{"hop_limit", unsafe.Offsetof(gr.HopLimit), 21}, {"traffic_class", unsafe.Offsetof(gr.TrafficClass), 22},
		}},
		{"ib_uverbs_ah_attr", unsafe.Sizeof(ah), 32, []off{
			{"dlid", unsafe.Offsetof(ah.DLID), 24}, {"sl", unsafe.Offsetof(ah.SL), 26},
			{"src_path_bits", unsafe.Offsetof(ah.SrcPathBits), 27}, {"static_rate", unsafe.Offsetof(ah.StaticRate), 28},
			{"is_global", unsafe.Offsetof(ah.IsGlobal), 29}, {"port_num", unsafe.Offsetof(ah.PortNum), 30},
		}},
		{"ib_uverbs_qp_attr", unsafe.Sizeof(qa), 144, []off{
			{"qp_state", unsafe.Offsetof(qa.QPState), 4}, {"cur_qp_state", unsafe.Offsetof(qa.CurQPState), 8},
			{"path_mtu", unsafe.Offsetof(qa.PathMTU), 12}, {"path_mig_state", unsafe.Offsetof(qa.PathMigState), 16},
			{"qkey", unsafe.Offsetof(qa.QKey), 20}, {"rq_psn", unsafe.Offsetof(qa.RQPSN), 24},
			{"sq_psn", unsafe.Offsetof(qa.SQPSN), 28}, {"dest_qp_num", unsafe.Offsetof(qa.DestQPNum), 32},
			{"qp_access_flags", unsafe.Offsetof(qa.QPAccessFlags), 36}, {"ah_attr", unsafe.Offsetof(qa.AHAttr), 40},
			{"alt_ah_attr", unsafe.Offsetof(qa.AltAHAttr), 72}, {"max_send_wr", unsafe.Offsetof(qa.MaxSendWR), 104},
			{"max_inline_data", unsafe.Offsetof(qa.MaxInlineData), 120}, {"pkey_index", unsafe.Offsetof(qa.PkeyIndex), 124},
			{"alt_pkey_index", unsafe.Offsetof(qa.AltPkeyIndex), 126},
			{"en_sqd_async_notify", unsafe.Offsetof(qa.EnSQDAsyncNotif), 128},
			{"sq_draining", unsafe.Offsetof(qa.SQDraining), 129}, {"max_rd_atomic", unsafe.Offsetof(qa.MaxRdAtomic), 130},
			{"max_dest_rd_atomic", unsafe.Offsetof(qa.MaxDestRdAtomic), 131},
			{"min_rnr_timer", unsafe.Offsetof(qa.MinRNRTimer), 132}, {"port_num", unsafe.Offsetof(qa.PortNum), 133},
			{"timeout", unsafe.Offsetof(qa.Timeout), 134}, {"retry_cnt", unsafe.Offsetof(qa.RetryCnt), 135},
			{"rnr_retry", unsafe.Offsetof(qa.RNRRetry), 136}, {"alt_port_num", unsafe.Offsetof(qa.AltPortNum), 137},
			{"alt_timeout", unsafe.Offsetof(qa.AltTimeout), 138},
		}},
		{"ib_uverbs_create_qp", unsafe.Sizeof(cqp), 56, []off{
			{"user_handle", unsafe.Offsetof(cqp.UserHandle), 8}, {"pd_handle", unsafe.Offsetof(cqp.PDHandle), 16},
			{"send_cq_handle", unsafe.Offsetof(cqp.SendCQHandle), 20}, {"recv_cq_handle", unsafe.Offsetof(cqp.RecvCQHandle), 24},
			{"srq_handle", unsafe.Offsetof(cqp.SRQHandle), 28}, {"max_send_wr", unsafe.Offsetof(cqp.MaxSendWR), 32},
			{"max_recv_wr", unsafe.Offsetof(cqp.MaxRecvWR), 36}, {"max_send_sge", unsafe.Offsetof(cqp.MaxSendSGE), 40},
			{"max_recv_sge", unsafe.Offsetof(cqp.MaxRecvSGE), 44}, {"max_inline_data", unsafe.Offsetof(cqp.MaxInlineData), 48},
			{"sq_sig_all", unsafe.Offsetof(cqp.SQSigAll), 52}, {"qp_type", unsafe.Offsetof(cqp.QPType), 53},
			{"is_srq", unsafe.Offsetof(cqp.IsSRQ), 54},
		}},
		{"ib_uverbs_create_qp_resp", unsafe.Sizeof(uverbsCreateQPResp{}), 32, nil},
		{"ib_uverbs_qp_dest", unsafe.Sizeof(dst), 32, []off{
			{"flow_label", unsafe.Offsetof(dst.FlowLabel), 16}, {"dlid", unsafe.Offsetof(dst.DLID), 20},
			{"sgid_index", unsafe.Offsetof(dst.SGIDIndex), 24}, {"hop_limit", unsafe.Offsetof(dst.HopLimit), 25},
			{"traffic_class", unsafe.Offsetof(dst.TrafficClass), 26}, {"sl", unsafe.Offsetof(dst.SL), 27},
			{"src_path_bits", unsafe.Offsetof(dst.SrcPathBits), 28}, {"static_rate", unsafe.Offsetof(dst.StaticRate), 29},
			{"is_global", unsafe.Offsetof(dst.IsGlobal), 30}, {"port_num", unsafe.Offsetof(dst.PortNum), 31},
		}},
		{"ib_uverbs_modify_qp", unsafe.Sizeof(mqp), 112, []off{
			{"alt_dest", unsafe.Offsetof(mqp.AltDest), 32}, {"qp_handle", unsafe.Offsetof(mqp.QPHandle), 64},
			{"attr_mask", unsafe.Offsetof(mqp.AttrMask), 68}, {"qkey", unsafe.Offsetof(mqp.QKey), 72},
			{"rq_psn", unsafe.Offsetof(mqp.RQPSN), 76}, {"sq_psn", unsafe.Offsetof(mqp.SQPSN), 80},
			{"dest_qp_num", unsafe.Offsetof(mqp.DestQPNum), 84}, {"qp_access_flags", unsafe.Offsetof(mqp.QPAccessFlags), 88},
			{"pkey_index", unsafe.Offsetof(mqp.PkeyIndex), 92}, {"alt_pkey_index", unsafe.Offsetof(mqp.AltPkeyIndex), 94},
			{"qp_state", unsafe.Offsetof(mqp.QPState), 96}, {"cur_qp_state", unsafe.Offsetof(mqp.CurQPState), 97},
			{"path_mtu", unsafe.Offsetof(mqp.PathMTU), 98}, {"path_mig_state", unsafe.Offsetof(mqp.PathMigState), 99},
			{"en_sqd_async_notify", unsafe.Offsetof(mqp.EnSQDAsyncNotif), 100},
			{"max_rd_atomic", unsafe.Offsetof(mqp.MaxRdAtomic), 101},
			{"max_dest_rd_atomic", unsafe.Offsetof(mqp.MaxDestRdAtomic), 102},
			{"min_rnr_timer", unsafe.Offsetof(mqp.MinRNRTimer), 103}, {"port_num", unsafe.Offsetof(mqp.PortNum), 104},
			{"timeout", unsafe.Offsetof(mqp.Timeout), 105}, {"retry_cnt", unsafe.Offsetof(mqp.RetryCnt), 106},
			{"rnr_retry", unsafe.Offsetof(mqp.RNRRetry), 107}, {"alt_port_num", unsafe.Offsetof(mqp.AltPortNum), 108},
			{"alt_timeout", unsafe.Offsetof(mqp.AltTimeout), 109},
		}},
		{"ib_uverbs_destroy_qp_resp", unsafe.Sizeof(uverbsDestroyQPResp{}), 4, nil},
		{"ib_uverbs_post_send", unsafe.Sizeof(ps), 24, []off{
			{"qp_handle", unsafe.Offsetof(ps.QPHandle), 8}, {"wr_count", unsafe.Offsetof(ps.WRCount), 12},
			{"sge_count", unsafe.Offsetof(ps.SGECount), 16}, {"wqe_size", unsafe.Offsetof(ps.WQESize), 20},
		}},
		{"ib_uverbs_post_send_resp", unsafe.Sizeof(uverbsPostSendResp{}), 4, nil},
		{"ib_uverbs_async_event_desc", unsafe.Sizeof(aev), 16, []off{{"event_type", unsafe.Offsetof(aev.EventType), 8}}},
		{"ib_uverbs_comp_event_desc", unsafe.Sizeof(uverbsCompEventDesc{}), 8, nil},
		{"rdma_ucm_cmd_hdr", unsafe.Sizeof(ucmCmdHdr{}), 8, nil},
		{"rdma_ucm_create_id", unsafe.Sizeof(cid), 24, []off{
			{"response", unsafe.Offsetof(cid.Response), 8}, {"ps", unsafe.Offsetof(cid.PS), 16},
			{"qp_type", unsafe.Offsetof(cid.QPType), 18},
		}},
		{"rdma_ucm_create_id_resp", unsafe.Sizeof(ucmCreateIDResp{}), 4, nil},
		{"rdma_ucm_destroy_id", unsafe.Sizeof(did), 16, []off{{"id", unsafe.Offsetof(did.ID), 8}}},
		{"rdma_ucm_destroy_id_resp", unsafe.Sizeof(ucmDestroyIDResp{}), 4, nil},
		{"rdma_ucm_bind", unsafe.Sizeof(bnd), 136, []off{
			{"addr_size", unsafe.Offsetof(bnd.AddrSize), 4}, {"addr", unsafe.Offsetof(bnd.Addr), 8},
		}},
		{"rdma_ucm_resolve_addr", unsafe.Sizeof(ra), 272, []off{
			{"timeout_ms", unsafe.Offsetof(ra.TimeoutMS), 4}, {"src_size", unsafe.Offsetof(ra.SrcSize), 8},
			{"dst_size", unsafe.Offsetof(ra.DstSize), 10}, {"src_addr", unsafe.Offsetof(ra.SrcAddr), 16},
			{"dst_addr", unsafe.Offsetof(ra.DstAddr), 144},
		}},
		{"rdma_ucm_resolve_route", unsafe.Sizeof(ucmResolveRouteCmd{}), 8, nil},
		{"rdma_ucm_query", unsafe.Sizeof(qry), 16, []off{
			{"id", unsafe.Offsetof(qry.ID), 8}, {"option", unsafe.Offsetof(qry.Option), 12},
		}},
		{"rdma_ucm_query_addr_resp", unsafe.Sizeof(qar), 280, []off{
			{"port_num", unsafe.Offsetof(qar.PortNum), 8}, {"pkey", unsafe.Offsetof(qar.Pkey), 10},
			{"src_size", unsafe.Offsetof(qar.SrcSize), 12}, {"dst_size", unsafe.Offsetof(qar.DstSize), 14},
			{"src_addr", unsafe.Offsetof(qar.SrcAddr), 16}, {"dst_addr", unsafe.Offsetof(qar.DstAddr), 144},
			{"ibdev_index", unsafe.Offsetof(qar.IBDevIndex), 272},
		}},
		{"rdma_ucm_conn_param", unsafe.Sizeof(cp), 272, []off{
			{"qkey", unsafe.Offsetof(cp.QKey), 4}, {"private_data", unsafe.Offsetof(cp.PrivateData), 8},
			{"private_data_len", unsafe.Offsetof(cp.PrivateDataLen), 264}, {"srq", unsafe.Offsetof(cp.SRQ), 265},
			{"responder_resources", unsafe.Offsetof(cp.ResponderResources), 266},
			{"initiator_depth", unsafe.Offsetof(cp.InitiatorDepth), 267},
			{"flow_control", unsafe.Offsetof(cp.FlowControl), 268}, {"retry_count", unsafe.Offsetof(cp.RetryCount), 269},
			{"rnr_retry_count", unsafe.Offsetof(cp.RNRRetryCount), 270}, {"valid", unsafe.Offsetof(cp.Valid), 271},
		}},
		{"rdma_ucm_connect", unsafe.Sizeof(con), 288, []off{
			{"id", unsafe.Offsetof(con.ID), 272}, {"ece", unsafe.Offsetof(con.ECE), 280},
		}},
		{"rdma_ucm_listen", unsafe.Sizeof(ucmListenCmd{}), 8, nil},
		{"rdma_ucm_accept", unsafe.Sizeof(acc), 296, []off{
			{"conn_param", unsafe.Offsetof(acc.ConnParam), 8}, {"id", unsafe.Offsetof(acc.ID), 280},
			{"ece", unsafe.Offsetof(acc.ECE), 288},
		}},
		{"rdma_ucm_reject", unsafe.Sizeof(rej), 264, []off{
			{"private_data_len", unsafe.Offsetof(rej.PrivateDataLen), 4}, {"reason", unsafe.Offsetof(rej.Reason), 5},
			{"private_data", unsafe.Offsetof(rej.PrivateData), 8},
		}},
		{"rdma_ucm_disconnect", unsafe.Sizeof(ucmIDCmd{}), 4, nil},
		{"rdma_ucm_init_qp_attr", unsafe.Sizeof(iqa), 16, []off{
			{"id", unsafe.Offsetof(iqa.ID), 8}, {"qp_state", unsafe.Offsetof(iqa.QPState), 12},
		}},
		{"rdma_ucm_get_event", unsafe.Sizeof(ucmGetEventCmd{}), 8, nil},
		{"rdma_ucm_event_resp", unsafe.Sizeof(ev), 336, []off{
			{"id", unsafe.Offsetof(ev.ID), 8}, {"event", unsafe.Offsetof(ev.Event), 12},
			{"status", unsafe.Offsetof(ev.Status), 16}, {"param", unsafe.Offsetof(ev.Conn), 20},
			{"reserved", unsafe.Offsetof(ev.Reserve), 324}, {"ece", unsafe.Offsetof(ev.ECE), 328},
		}},
		{"rdma_ucm_migrate_id", unsafe.Sizeof(mig), 16, []off{
			{"id", unsafe.Offsetof(mig.ID), 8}, {"fd", unsafe.Offsetof(mig.FD), 12},
		}},
		{"rdma_ucm_migrate_resp", unsafe.Sizeof(ucmMigrateResp{}), 4, nil},
		{"rxe_send_wr", unsafe.Sizeof(swr), 144, []off{
			{"reserved", unsafe.Offsetof(swr.Reserved), 8}, {"opcode", unsafe.Offsetof(swr.Opcode), 12},
			{"send_flags", unsafe.Offsetof(swr.SendFlags), 16}, {"ex", unsafe.Offsetof(swr.Ex), 20},
			{"wr.rdma.remote_addr", unsafe.Offsetof(swr.RemoteAddr), 24}, {"wr.rdma.rkey", unsafe.Offsetof(swr.RKey), 32},
		}},
		// The mw member of the wr union starts where wr.rdma.remote_addr does (24).
		{"rxe_send_wr.wr.mw", unsafe.Sizeof(bmw), 32, []off{
			{"length", 24 + unsafe.Offsetof(bmw.Length), 32}, {"mr_lkey", 24 + unsafe.Offsetof(bmw.MRLKey), 40},
			{"mw_rkey", 24 + unsafe.Offsetof(bmw.MWRKey), 44}, {"rkey", 24 + unsafe.Offsetof(bmw.RKey), 48},
			{"access", 24 + unsafe.Offsetof(bmw.Access), 52},
		}},
		{"rxe_sge", unsafe.Sizeof(sge), 16, []off{
			{"length", unsafe.Offsetof(sge.Length), 8}, {"lkey", unsafe.Offsetof(sge.LKey), 12},
		}},
		{"mminfo", unsafe.Sizeof(mmi), 16, []off{{"size", unsafe.Offsetof(mmi.Size), 8}}},
		{"rxe_dma_info", unsafe.Sizeof(dma), 24, []off{
			{"resid", unsafe.Offsetof(dma.Resid), 4}, {"cur_sge", unsafe.Offsetof(dma.CurSGE), 8},
			{"num_sge", unsafe.Offsetof(dma.NumSGE), 12}, {"sge_offset", unsafe.Offsetof(dma.SGEOffset), 16},
		}},
		{"rxe_send_wqe", unsafe.Sizeof(swqe), 208, []off{
			{"status", unsafe.Offsetof(swqe.Status), 144}, {"state", unsafe.Offsetof(swqe.State), 148},
			{"iova", unsafe.Offsetof(swqe.IOVA), 152}, {"mask", unsafe.Offsetof(swqe.Mask), 160},
			{"first_psn", unsafe.Offsetof(swqe.FirstPSN), 164}, {"last_psn", unsafe.Offsetof(swqe.LastPSN), 168},
			{"ack_length", unsafe.Offsetof(swqe.AckLength), 172}, {"ssn", unsafe.Offsetof(swqe.SSN), 176},
			{"has_rd_atomic", unsafe.Offsetof(swqe.HasRdAtomic), 180}, {"dma", unsafe.Offsetof(swqe.DMA), 184},
		}},
		{"rxe_recv_wqe", unsafe.Sizeof(rwqe), 40, []off{
			{"reserved", unsafe.Offsetof(rwqe.Reserved), 8}, {"padding", unsafe.Offsetof(rwqe.Padding), 12},
			{"dma", unsafe.Offsetof(rwqe.DMA), 16},
		}},
		{"rxe_create_cq_resp", unsafe.Sizeof(rxeCreateCQResp{}), 16, nil},
		{"rxe_create_qp_resp", unsafe.Sizeof(qcr), 32, []off{{"sq_mi", unsafe.Offsetof(qcr.SQMI), 16}}},
		{"rxe_queue_buf", unsafe.Sizeof(qh), 384, []off{
			{"index_mask", unsafe.Offsetof(qh.IndexMask), 4}, {"producer_index", unsafe.Offsetof(qh.ProducerIndex), 128},
			{"consumer_index", unsafe.Offsetof(qh.ConsumerIndex), 256},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.size != tt.sz {
				t.Errorf("sizeof(%s) = %d, kernel says %d", tt.name, tt.size, tt.sz)
			}
			for _, o := range tt.offsets {
				if o.got != o.want {
					t.Errorf("offsetof(%s.%s) = %d, kernel says %d", tt.name, o.field, o.got, o.want)
				}
			}
		})
	}
}
