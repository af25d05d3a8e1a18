// Package rdma is a cgo-free RDMA verbs and rdma_cm layer for Linux.
//
// It speaks the kernel's uverbs write() ABI on /dev/infiniband/uverbsN and the rdma_cm
// write() ABI on /dev/infiniband/rdma_cm directly, with golang.org/x/sys/unix only. The
// data path (send/receive queues, completion queue) is provider specific and sits behind
// the Provider interface; the rdma_rxe (Soft-RoCE) provider is built in.
//
// Object model, in the order things are created (and destroyed in reverse):
//
//	Context (one per device: uverbs fd, async event fd)
//	  PD          protection domain
//	    MR        registered memory (Buffer: mmap'd page-aligned memory + MR)
//	  CompChannel completion event fd, registered with the Go netpoller
//	    CQ        completion queue
//	      QP      reliable-connected queue pair
//
// The rdma_cm side (CM, ID, Event) establishes connections; Listener and Dial combine both
// into a connected Conn for callers that just want a QP to a peer.
//
// Nothing here knows about iSCSI.
package rdma
