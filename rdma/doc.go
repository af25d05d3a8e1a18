// Package rdma is a cgo-free RDMA verbs and rdma_cm layer for Linux.
//
// It speaks the rdma_cm write() ABI on /dev/infiniband/rdma_cm directly, with
// golang.org/x/sys/unix only. A device is driven by one of two kinds of provider, chosen per
// device by a ProviderChoice (auto, native, libibverbs):
//
//   - native: the kernel's uverbs write() ABI on /dev/infiniband/uverbsN, with the data path
//     (send/receive queues, completion queue) behind the Provider interface; the rdma_rxe
//     (Soft-RoCE) provider is built in.
//   - libibverbs: libibverbs.so.1 loaded at run time with purego (no cgo; the binary then
//     links the C library dynamically), for every device rdma-core has a provider for. Objects
//     are created through libibverbs; posting and polling call the provider's ops table, with
//     work requests and completions in mmap'd memory. The QPs it creates are ordinary kernel
//     QPs: the same rdma_cm connects them, and ibv_modify_qp moves them through their states.
//     Completion and async events are read from duplicates of libibverbs' fds in the Go
//     netpoller and acknowledged to libibverbs.
//
// Both give the same types (Context, PD, MR, CQ, QP, CompChannel): callers do not know which
// drives a device.
//
// Object model, in the order things are created (and destroyed in reverse):
//
//	Context (one per device: uverbs fd, async event fd)
//	  PD          protection domain
//	    MR        registered memory (AllocBuffer: mmap'd page-aligned memory + MR)
//	    MW        type 2 memory window onto an MR: bound by a work request (MW.BindWR) on a
//	              QP, closed by the peer's SEND with invalidate
//	  CompChannel completion event fd, registered with the Go netpoller
//	    CQ        completion queue
//	      QP      reliable-connected queue pair
//
// Context.Close destroys whatever is still alive in that order. The rdma_cm side (CM, ID,
// CMEvent) establishes connections; Listener, ConnRequest and Dial combine both into a
// connected Conn (ID + completion channel + CQ + QP) for callers that want a QP to a peer:
//
//	pool := rdma.NewDevicePool()        // one Context and PD per device, shared by connections
//	cm, _ := rdma.OpenCM()
//	l, _ := rdma.Listen(cm, netip.MustParseAddrPort("192.0.2.1:3260"), 128)
//	req, _ := l.Next(ctx)               // req.PrivateData: the peer's connect private data
//	conn, _ := req.Accept(ctx, rdma.ConnConfig{Pool: pool, Prepare: postReceives})
//	conn.QP.PostSend(rdma.SendWR{Opcode: rdma.OpRDMAWrite, Flags: rdma.SendSignaled, ...})
//	n, _ := conn.CQ.Wait(ctx, wcs)      // sleeps in the netpoller until a completion arrives
//	<-conn.Done()                        // peer gone: QP already in ERR, waiters woken by flushes
//	conn.Close()
//
// Waiting for completions: CQ.Wait polls (CQ.Spin times), arms the CQ and sleeps on its
// CompChannel. Per completion event that costs the arm (one raw write), the netpoller's wait and
// one raw read; the event fd is read with raw system calls because a goroutine's first ordinary
// system call after waking in the netpoller wakes the runtime's sysmon thread, which doubled the
// event-mode round trip under emulation. NewCompChannelSyscallWait is the alternative for a
// dedicated waiter that sleeps in epoll_wait(2).
//
// Memory for RDMA must not move: register mmap'd memory (PD.AllocBuffer) or other non-Go-heap
// memory with PD.RegMR. Virtual addresses are absolute (MR.Addr is the remote_addr base).
//
// Nothing here knows about iSCSI.
package rdma
