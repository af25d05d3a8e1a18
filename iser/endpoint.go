package iser

import (
	"context"
	"errors"
	"fmt"

	"github.com/iserd/iserd/rdma"
)

// endpoint is the RDMA side of one connection: its queue pair, its
// completion queue and the connection manager's view of it. rdmaEndpoint
// is the real one; the package's tests put a fake in its place that moves
// bytes in memory, so the connection logic runs without an RDMA device.
type endpoint interface {
	// PostSend and PostRecv queue work requests, as rdma.QP's do: they
	// keep neither wrs nor the SGLs it points to.
	PostSend(wrs ...rdma.SendWR) error
	PostRecv(wrs ...rdma.RecvWR) error
	// Wait fills wcs with completions, blocking until there is at least
	// one or ctx ends (rdma.CQ.Wait).
	Wait(ctx context.Context, wcs []rdma.WorkCompletion) (int, error)
	// Done is closed when the connection ends; Err then says why.
	Done() <-chan struct{}
	Err() error
	// Close disconnects and releases the queues: completions not yet
	// taken are dropped, and posting fails from then on.
	Close() error
}

// rdmaEndpoint is an established rdma.Conn with the memory registered for
// the connection's own receive and send slots.
type rdmaEndpoint struct {
	*rdma.Conn
	mrs []*rdma.MR
	// release, once set, is told when the endpoint is closed (and whether its device went away).
	release func(removed bool)
}

// PostSend posts to the connection's QP.
func (e *rdmaEndpoint) PostSend(wrs ...rdma.SendWR) error { return e.QP.PostSend(wrs...) }

// PostRecv posts to the connection's QP.
func (e *rdmaEndpoint) PostRecv(wrs ...rdma.RecvWR) error { return e.QP.PostRecv(wrs...) }

// Wait waits on the connection's CQ.
func (e *rdmaEndpoint) Wait(ctx context.Context, wcs []rdma.WorkCompletion) (int, error) {
	return e.CQ.Wait(ctx, wcs)
}

// alloc maps and registers n bytes with the connection's PD; Close
// releases them.
func (e *rdmaEndpoint) alloc(n int) (*rdma.MR, []byte, error) {
	mr, mem, err := e.PD.AllocBuffer(n, rdma.AccessLocalWrite)
	if err != nil {
		return nil, nil, err
	}
	e.mrs = append(e.mrs, mr)
	return mr, mem, nil
}

// Close disconnects, then deregisters and unmaps the slot memory.
func (e *rdmaEndpoint) Close() error {
	var err error
	if e.Conn != nil {
		err = e.Conn.Close()
	}
	return errors.Join(err, e.freeBuffers())
}

// freeBuffers releases the slot memory (also when accepting failed) and tells release.
func (e *rdmaEndpoint) freeBuffers() error {
	defer func() {
		if e.release != nil {
			e.release(e.Conn != nil && errors.Is(e.Conn.Err(), rdma.ErrDeviceRemoved))
			e.release = nil
		}
	}()
	var errs []error
	for _, mr := range e.mrs {
		if err := mr.Dereg(); err != nil {
			errs = append(errs, fmt.Errorf("iSER slot memory: %w", err))
		}
	}
	e.mrs = nil
	return errors.Join(errs...)
}
