//go:build linux

package rdma

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrMemlock is wrapped in the error of a registration the kernel refused for lack of lockable
// memory (RLIMIT_MEMLOCK without CAP_IPC_LOCK).
var ErrMemlock = errors.New("rdma: memory registration exceeds RLIMIT_MEMLOCK")

// Access is a set of memory access rights (enum ib_access_flags).
type Access uint32

// Access rights for memory regions and QPs.
const (
	AccessLocalWrite   Access = 1
	AccessRemoteWrite  Access = 2
	AccessRemoteRead   Access = 4
	AccessRemoteAtomic Access = 8
)

// PD is a protection domain.
type PD struct {
	ctx    *Context
	handle uint32
	lib    uintptr // struct ibv_pd * (libibverbs)
	dead   bool
}

// AllocPD allocates a protection domain.
func (c *Context) AllocPD() (*PD, error) {
	var r uverbsAllocPDResp
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, fmt.Errorf("rdma: alloc PD: %w", ErrClosed)
	}
	pd := &PD{ctx: c}
	if c.lib != nil {
		p, err := c.lib.lib.callErrno(c.lib.lib.allocPD, c.lib.ctx)
		if err != nil {
			return nil, fmt.Errorf("rdma: %s: ibv_alloc_pd: %w", c.Device.Name, err)
		}
		pd.lib, pd.handle = p, (*ibvPD)(cptr(p)).Handle
	} else if err := c.executeLocked(cmdAllocPD, asBytes(&r), asBytes(&uverbsRespCmd{})); err != nil {
		return nil, fmt.Errorf("rdma: %s: %w", c.Device.Name, err)
	} else {
		pd.handle = r.PDHandle
	}
	c.pds[pd] = struct{}{}
	return pd, nil
}

// Context returns the device context the PD belongs to.
func (pd *PD) Context() *Context { return pd.ctx }

// Dealloc frees the protection domain; its MRs and QPs must be gone first.
func (pd *PD) Dealloc() error {
	c := pd.ctx
	c.mu.Lock()
	defer c.mu.Unlock()
	if pd.dead || c.closed {
		return nil
	}
	var err error
	if c.lib != nil {
		err = callInt(c.lib.lib.deallocPD, pd.lib)
	} else {
		err = deviceGone(c.executeLocked(cmdDeallocPD, nil, asBytes(&uverbsHandleCmd{Handle: pd.handle})))
	}
	if err != nil {
		return fmt.Errorf("rdma: dealloc PD: %w", err)
	}
	pd.dead = true
	delete(c.pds, pd)
	return nil
}

// MR is a registered memory region.
type MR struct {
	pd     *PD
	handle uint32
	lib    uintptr // struct ibv_mr * (libibverbs)
	LKey   uint32  // key for local SGEs
	RKey   uint32  // key a peer uses for RDMA READ/WRITE
	Addr   uint64  // virtual address of the first byte (the peer's remote_addr base)
	Len    int
	buf    []byte // mmap'd memory owned by the MR (AllocBuffer), unmapped on Dereg
	dead   bool
}

// RegMR registers buf (which must stay alive and unmoved until Dereg: use mmap'd memory, not Go
// heap memory) with the given access rights.
func (pd *PD) RegMR(buf []byte, access Access) (*MR, error) {
	if len(buf) == 0 {
		return nil, errors.New("rdma: register empty buffer")
	}
	if access&(AccessRemoteWrite|AccessRemoteAtomic) != 0 && access&AccessLocalWrite == 0 {
		return nil, errors.New("rdma: remote write or atomic access needs local write access")
	}
	addr := uint64(uintptr(unsafe.Pointer(&buf[0])))
	c := pd.ctx
	var r uverbsRegMRResp
	c.mu.Lock()
	defer c.mu.Unlock()
	if pd.dead || c.closed {
		return nil, fmt.Errorf("rdma: register MR: %w", ErrClosed)
	}
	var mrp uintptr
	var err error
	if c.lib != nil {
		if mrp, err = c.lib.lib.callErrno(c.lib.lib.regMR, pd.lib, uintptr(addr), uintptr(len(buf)), uintptr(access)); err == nil {
			m := (*ibvMR)(cptr(mrp))
			r = uverbsRegMRResp{MRHandle: m.Handle, LKey: m.LKey, RKey: m.RKey}
		}
	} else {
		cmd := uverbsRegMR{Start: addr, Length: uint64(len(buf)), HCAVA: addr, PDHandle: pd.handle, AccessFlags: uint32(access)}
		err = c.executeLocked(cmdRegMR, asBytes(&r), asBytes(&cmd))
	}
	if err != nil {
		if errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.EPERM) {
			var lim unix.Rlimit
			_ = unix.Getrlimit(unix.RLIMIT_MEMLOCK, &lim)
			return nil, fmt.Errorf("rdma: register %d bytes (RLIMIT_MEMLOCK %d): %w: %w", len(buf), lim.Cur, ErrMemlock, err)
		}
		return nil, fmt.Errorf("rdma: register %d bytes: %w", len(buf), err)
	}
	mr := &MR{pd: pd, handle: r.MRHandle, lib: mrp, LKey: r.LKey, RKey: r.RKey, Addr: addr, Len: len(buf)}
	c.mrs[mr] = struct{}{}
	return mr, nil
}

// AllocBuffer maps size bytes (rounded up to whole pages) of anonymous page-aligned memory and
// registers it. Dereg releases the registration and unmaps the memory.
func (pd *PD) AllocBuffer(size int, access Access) (*MR, []byte, error) {
	if size <= 0 {
		return nil, nil, fmt.Errorf("rdma: bad buffer size %d", size)
	}
	page := unix.Getpagesize()
	mapped := (size + page - 1) / page * page
	mem, err := unix.Mmap(-1, 0, mapped, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return nil, nil, fmt.Errorf("rdma: mmap %d bytes: %w", mapped, err)
	}
	mr, err := pd.RegMR(mem, access)
	if err != nil {
		_ = unix.Munmap(mem)
		return nil, nil, err
	}
	mr.buf = mem
	return mr, mem[:size], nil
}

// SGE returns a scatter/gather entry for length bytes at offset off of the region.
func (mr *MR) SGE(off, length int) SGE {
	return SGE{Addr: mr.Addr + uint64(off), Length: uint32(length), LKey: mr.LKey}
}

// Dereg deregisters the region (and unmaps memory obtained from AllocBuffer).
func (mr *MR) Dereg() error {
	c := mr.pd.ctx
	c.mu.Lock()
	defer c.mu.Unlock()
	if mr.dead {
		return nil
	}
	var err error
	if c.lib != nil {
		if err = callInt(c.lib.lib.deregMR, mr.lib); err != nil {
			return fmt.Errorf("rdma: deregister MR: %w", err)
		}
	} else if !c.closed {
		err = deviceGone(c.executeLocked(cmdDeregMR, nil, asBytes(&uverbsHandleCmd{Handle: mr.handle})))
		if err != nil {
			return fmt.Errorf("rdma: deregister MR: %w", err)
		}
	}
	mr.dead = true
	delete(c.mrs, mr)
	if mr.buf != nil {
		if e := unix.Munmap(mr.buf); e != nil {
			return fmt.Errorf("rdma: munmap MR buffer: %w", e)
		}
		mr.buf = nil
	}
	return nil
}
