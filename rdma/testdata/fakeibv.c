/* A stand-in for a libibverbs provider's data path, for rdma's host tests (see
 * libibverbs_test.go): post_send and post_recv describe every work request they are given in
 * a log, poll_cq hands out completions the test asks for, req_notify_cq counts. It reads the
 * structures through <infiniband/verbs.h>, so the log shows what a real provider would see. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <infiniband/verbs.h>

static char logbuf[65536];
static size_t loglen;
static int fail_at = -1;
static int ready;
static unsigned long long next_id;
static int arms[2];

static void logf_(const char *fmt, unsigned long long a, unsigned long long b, unsigned long long c,
		  unsigned long long d, unsigned long long e, unsigned long long f)
{
	if (loglen < sizeof(logbuf))
		loglen += snprintf(logbuf + loglen, sizeof(logbuf) - loglen, fmt, a, b, c, d, e, f);
}

static void log_sges(struct ibv_sge *sg, int n, int inl)
{
	for (int i = 0; i < n; i++) {
		if (inl && loglen < sizeof(logbuf))
			loglen += snprintf(logbuf + loglen, sizeof(logbuf) - loglen, " inline=%.*s",
					   (int)sg[i].length, (const char *)(uintptr_t)sg[i].addr);
		else if (!inl)
			logf_(" sge=%llx/%llu/%llx", sg[i].addr, sg[i].length, sg[i].lkey, 0, 0, 0);
	}
}

const char *fake_log(void) { logbuf[loglen < sizeof(logbuf) ? loglen : sizeof(logbuf) - 1] = 0; return logbuf; }
void fake_reset(int failAt) { loglen = 0; fail_at = failAt; arms[0] = arms[1] = 0; }
void fake_ready(int n) { ready = n; }
int fake_arms(int solicited) { return arms[solicited != 0]; }

int fake_post_send(struct ibv_qp *qp, struct ibv_send_wr *wr, struct ibv_send_wr **bad)
{
	for (int i = 0; wr; wr = wr->next, i++) {
		if (i == fail_at) {
			*bad = wr;
			return ENOMEM;
		}
		logf_("send id=%llu op=%llu flags=%llu", wr->wr_id, wr->opcode, wr->send_flags, 0, 0, 0);
		switch (wr->opcode) {
		case IBV_WR_RDMA_WRITE:
		case IBV_WR_RDMA_READ:
			logf_(" remote=%llx/%llx", wr->wr.rdma.remote_addr, wr->wr.rdma.rkey, 0, 0, 0, 0);
			break;
		case IBV_WR_SEND_WITH_INV:
			logf_(" inv=%llx", wr->invalidate_rkey, 0, 0, 0, 0, 0);
			break;
		case IBV_WR_BIND_MW:
			logf_(" bind=%llx/%llx mr=%llx at=%llx/%llu access=%llu", (uintptr_t)wr->bind_mw.mw,
			      wr->bind_mw.rkey, (uintptr_t)wr->bind_mw.bind_info.mr, wr->bind_mw.bind_info.addr,
			      wr->bind_mw.bind_info.length, wr->bind_mw.bind_info.mw_access_flags);
			break;
		default:
			break;
		}
		log_sges(wr->sg_list, wr->num_sge, !!(wr->send_flags & IBV_SEND_INLINE));
		logf_("\n", 0, 0, 0, 0, 0, 0);
	}
	return 0;
}

int fake_post_recv(struct ibv_qp *qp, struct ibv_recv_wr *wr, struct ibv_recv_wr **bad)
{
	for (int i = 0; wr; wr = wr->next, i++) {
		if (i == fail_at) {
			*bad = wr;
			return ENOMEM;
		}
		logf_("recv id=%llu", wr->wr_id, 0, 0, 0, 0, 0);
		log_sges(wr->sg_list, wr->num_sge, 0);
		logf_("\n", 0, 0, 0, 0, 0, 0);
	}
	return 0;
}

/* Every completion is a receive of rkey 0xabc; its flags cycle through what providers set: the
 * GRH and IBV_WC_WITH_INV (mlx5), the kernel's invalidate bit, which libibverbs calls
 * IBV_WC_IP_CSUM_OK (librxe), and none. */
int fake_poll_cq(struct ibv_cq *cq, int n, struct ibv_wc *wc)
{
	int got = 0;
	for (; got < n && ready > 0; got++, ready--) {
		memset(&wc[got], 0, sizeof(wc[got]));
		wc[got].wr_id = ++next_id;
		wc[got].status = next_id % 2 ? IBV_WC_SUCCESS : IBV_WC_WR_FLUSH_ERR;
		wc[got].opcode = IBV_WC_RECV;
		wc[got].byte_len = 100 + next_id;
		wc[got].invalidated_rkey = 0xabc;
		wc[got].qp_num = 7;
		wc[got].vendor_err = 0x12;
		wc[got].wc_flags = next_id % 3 == 1 ? IBV_WC_GRH | IBV_WC_WITH_INV :
				   next_id % 3 == 2 ? IBV_WC_IP_CSUM_OK : 0;
	}
	return got;
}

/* Stands in for ibv_ack_cq_events: counts the acknowledgements and keeps the last CQ. */
static unsigned long long acked_cq, acked;

void fake_ack_cq_events(struct ibv_cq *cq, unsigned int n)
{
	acked_cq = (uintptr_t)cq;
	acked += n;
}

unsigned long long fake_acked(void) { return acked; }
unsigned long long fake_acked_cq(void) { return acked_cq; }

int fake_req_notify_cq(struct ibv_cq *cq, int solicited)
{
	arms[solicited != 0]++;
	return 0;
}
