//go:build linux

package rdma

import (
	"errors"
	"fmt"
)

// AccessMWBind lets memory windows be bound to a region (IB_ACCESS_MW_BIND).
const AccessMWBind Access = 16

// mwType2 is IB_MW_TYPE_2: a window bound by a work request on one QP, usable by that QP's peer
// only and invalidated by the peer's SEND with invalidate.
const mwType2 = 2

// MW is a type 2 memory window: a remote key onto part of a registered region, opened by a bind
// work request (BindWR) on a QP and closed again when the peer sends with invalidate naming its
// key. Only that QP's peer can use the key.
type MW struct {
	pd     *PD
	handle uint32
	lib    uintptr // struct ibv_mw * (libibverbs)
	// RKey is the window's key as of the newest bind work request built for it; each bind
	// steps its low byte, so a key from before the bind no longer matches.
	RKey uint32
	dead bool
}

// AllocMW allocates a type 2 memory window (unbound).
func (pd *PD) AllocMW() (*MW, error) {
	c := pd.ctx
	var r uverbsAllocMWResp
	c.mu.Lock()
	defer c.mu.Unlock()
	if pd.dead || c.closed {
		return nil, fmt.Errorf("rdma: alloc MW: %w", ErrClosed)
	}
	mw := &MW{pd: pd}
	if c.lib != nil {
		if c.lib.c.Ops.AllocMW == 0 {
			return nil, fmt.Errorf("rdma: %s: alloc MW: the libibverbs provider has no memory windows", c.Device.Name)
		}
		p, err := c.lib.lib.callErrno(c.lib.c.Ops.AllocMW, pd.lib, mwType2)
		if err != nil {
			return nil, fmt.Errorf("rdma: %s: alloc MW: %w", c.Device.Name, err)
		}
		m := (*ibvMW)(cptr(p))
		mw.lib, mw.handle, mw.RKey = p, m.Handle, m.RKey
	} else if err := c.executeLocked(cmdAllocMW, asBytes(&r), asBytes(&uverbsAllocMW{PDHandle: pd.handle, MWType: mwType2})); err != nil {
		return nil, fmt.Errorf("rdma: %s: alloc MW: %w", c.Device.Name, err)
	} else {
		mw.handle, mw.RKey = r.MWHandle, r.RKey
	}
	c.mws[mw] = struct{}{}
	return mw, nil
}

// MWBind is what an OpBindMW work request does; MW.BindWR fills it in.
type MWBind struct {
	MWRKey uint32 // the window's key before the bind
	RKey   uint32 // its key after the bind (the same but for the low byte)
	MRLKey uint32 // the region the window opens onto
	Addr   uint64 // the window's first byte, inside the region
	Length uint64
	Access Access // AccessRemoteRead and/or AccessRemoteWrite
	// The window and region as libibverbs names them (struct ibv_mw * and struct ibv_mr *); plain
	// addresses, not Go pointers, so that posting a bind leaks nothing to the heap.
	mwLib, mrLib uintptr
}

// BindWR returns a work request that binds the window to length bytes at addr of mr (which
// needs AccessMWBind, and AccessLocalWrite for a writable window) with the given remote access,
// under a new key that it also stores in RKey. Post it on a QP of the window's PD: once it has
// completed, that QP's peer can use RKey until it sends with invalidate naming it.
func (mw *MW) BindWR(id uint64, mr *MR, addr, length uint64, access Access) (SendWR, error) {
	if mr.pd != mw.pd {
		return SendWR{}, errors.New("rdma: bind MW: the region belongs to another PD")
	}
	if length == 0 || addr < mr.Addr || addr+length > mr.Addr+uint64(mr.Len) {
		return SendWR{}, fmt.Errorf("rdma: bind MW: %d bytes at %#x are not inside the region", length, addr)
	}
	if access&^(AccessRemoteRead|AccessRemoteWrite) != 0 {
		return SendWR{}, fmt.Errorf("rdma: bind MW: unsupported access %#x", uint32(access))
	}
	next := mw.RKey&^0xff | (mw.RKey+1)&0xff
	wr := SendWR{ID: id, Opcode: OpBindMW, Flags: SendSignaled,
		Bind: MWBind{MWRKey: mw.RKey, RKey: next, MRLKey: mr.LKey, Addr: addr, Length: length, Access: access, mwLib: mw.lib, mrLib: mr.lib}}
	mw.RKey = next
	return wr, nil
}

// Dealloc frees the window.
func (mw *MW) Dealloc() error {
	c := mw.pd.ctx
	c.mu.Lock()
	defer c.mu.Unlock()
	if mw.dead {
		return nil
	}
	if c.lib != nil {
		if err := callInt(c.lib.c.Ops.DeallocMW, mw.lib); err != nil {
			return fmt.Errorf("rdma: dealloc MW: %w", err)
		}
	} else if !c.closed {
		if err := deviceGone(c.executeLocked(cmdDeallocMW, nil, asBytes(&uverbsHandleCmd{Handle: mw.handle}))); err != nil {
			return fmt.Errorf("rdma: dealloc MW: %w", err)
		}
	}
	mw.dead = true
	delete(c.mws, mw)
	return nil
}
