//go:build linux

package rdma

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"sync"
	"syscall"
	"unsafe"

	"github.com/ebitengine/purego"
	"golang.org/x/sys/unix"
)

// The libibverbs provider drives any device rdma-core has a user-space provider for (mlx5,
// bnxt_re, irdma, efa, siw, rxe...): libibverbs.so.1 is loaded at run time with purego, without
// cgo. Objects are created through libibverbs' exported functions; the data path (post send,
// post receive, poll, arm) calls the function pointers the provider installed in the context's
// ops table, as the inline functions of verbs.h do. Everything C keeps a pointer to (work
// requests, SGEs, completions, attribute blocks) lives in mmap'd memory (cmem).

// LibibverbsName is the library the libibverbs provider loads (dlopen's search rules apply).
var LibibverbsName = "libibverbs.so.1"

// libibverbsPackages names what to install when libibverbs or a device's provider is missing.
const libibverbsPackages = "install libibverbs1 and ibverbs-providers (rdma-core)"

// ErrNoLibibverbs is wrapped in the errors of the libibverbs provider when the library cannot
// be loaded.
var ErrNoLibibverbs = errors.New("rdma: libibverbs cannot be loaded")

// ibvLib holds the libibverbs functions the provider calls by name.
type ibvLib struct {
	getDeviceList, freeDeviceList, openDevice, closeDevice     uintptr
	queryDevice, queryPort, allocPD, deallocPD, regMR, deregMR uintptr
	createCompChannel, destroyCompChannel                      uintptr
	createCQ, destroyCQ, ackCQEvents                           uintptr
	createQP, modifyQP, destroyQP, ackAsyncEvent               uintptr
	errnoLocation                                              uintptr // libc's
}

var (
	libOnce sync.Once
	libVal  *ibvLib
	libErr  error
)

// loadLibibverbs loads the library once per process.
func loadLibibverbs() (*ibvLib, error) {
	libOnce.Do(func() { libVal, libErr = openLibibverbs(LibibverbsName) })
	return libVal, libErr
}

// LibibverbsStatus reports whether the libibverbs provider can be used: nil, or an error
// wrapping ErrNoLibibverbs that says why and what to install.
func LibibverbsStatus() error {
	_, err := loadLibibverbs()
	return err
}

func openLibibverbs(name string) (*ibvLib, error) {
	h, err := purego.Dlopen(name, purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		return nil, fmt.Errorf("%w: %v (%s)", ErrNoLibibverbs, err, libibverbsPackages)
	}
	libc, err := purego.Dlopen("libc.so.6", purego.RTLD_NOW|purego.RTLD_LOCAL)
	if err != nil {
		return nil, fmt.Errorf("%w: libc: %v", ErrNoLibibverbs, err)
	}
	l := &ibvLib{}
	syms := []struct {
		handle uintptr
		name   string
		fn     *uintptr
	}{
		{h, "ibv_get_device_list", &l.getDeviceList}, {h, "ibv_free_device_list", &l.freeDeviceList},
		{h, "ibv_open_device", &l.openDevice}, {h, "ibv_close_device", &l.closeDevice},
		{h, "ibv_query_device", &l.queryDevice}, {h, "ibv_query_port", &l.queryPort},
		{h, "ibv_alloc_pd", &l.allocPD}, {h, "ibv_dealloc_pd", &l.deallocPD},
		{h, "ibv_reg_mr", &l.regMR}, {h, "ibv_dereg_mr", &l.deregMR},
		{h, "ibv_create_comp_channel", &l.createCompChannel}, {h, "ibv_destroy_comp_channel", &l.destroyCompChannel},
		{h, "ibv_create_cq", &l.createCQ}, {h, "ibv_destroy_cq", &l.destroyCQ}, {h, "ibv_ack_cq_events", &l.ackCQEvents},
		{h, "ibv_create_qp", &l.createQP}, {h, "ibv_modify_qp", &l.modifyQP}, {h, "ibv_destroy_qp", &l.destroyQP},
		{h, "ibv_ack_async_event", &l.ackAsyncEvent},
		{libc, "__errno_location", &l.errnoLocation},
	}
	for _, s := range syms {
		if *s.fn, err = purego.Dlsym(s.handle, s.name); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", ErrNoLibibverbs, name, err)
		}
	}
	return l, nil
}

// cptr turns an address C gave us into a pointer (C memory: the garbage collector ignores it).
func cptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

// call calls a C function; the result is the C return value. Like purego.SyscallN, it keeps
// Go memory whose address is converted to uintptr in its arguments on the heap and alive for the
// call (a slice of arguments passed on with ... costs no allocation).
//
//go:uintptrescapes
func call(fn uintptr, args ...uintptr) uintptr {
	r, _, _ := purego.SyscallN(fn, args...)
	return r
}

// callErrno calls a C function that returns 0 (an int) or a pointer, and errno on failure: the
// thread is locked so that errno is read on the thread that called.
//
//go:uintptrescapes
func (l *ibvLib) callErrno(fn uintptr, args ...uintptr) (uintptr, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	r := call(fn, args...)
	if r != 0 {
		return r, nil
	}
	e := *(*int32)(cptr(call(l.errnoLocation)))
	if e == 0 {
		return 0, errors.New("failed without errno")
	}
	return 0, syscall.Errno(e)
}

// callInt calls a C function that returns 0 or an errno value (as the verbs do).
//
//go:uintptrescapes
func callInt(fn uintptr, args ...uintptr) error {
	if r := int32(call(fn, args...)); r != 0 {
		if r < 0 {
			r = -r
		}
		return syscall.Errno(r)
	}
	return nil
}

// cstring reads a NUL-terminated string from a fixed array.
func cstring(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// ibvCtx is a device opened through libibverbs.
type ibvCtx struct {
	lib *ibvLib
	ctx uintptr     // struct ibv_context *
	c   *ibvContext // its fields

	mu      sync.Mutex // guards the attribute blocks
	mem     *cmem
	qpInit  *ibvQPInitAttr
	qpAttr  *ibvQPAttr
	devAttr *ibvDeviceAttr
	port    *ibvPortAttr
	count   *int32
	asyncEv *ibvAsyncEvent // used by the async event reader only
}

// findDevice returns the libibverbs device called name (nil when the list has none) from a list
// the caller frees.
func (l *ibvLib) deviceList(count *int32) (list uintptr, n int, err error) {
	list, err = l.callErrno(l.getDeviceList, uintptr(unsafe.Pointer(count)))
	if err != nil {
		return 0, 0, fmt.Errorf("rdma: ibv_get_device_list: %w", err)
	}
	return list, int(*count), nil
}

func deviceAt(list uintptr, i int) uintptr {
	return *(*uintptr)(unsafe.Add(cptr(list), i*int(unsafe.Sizeof(uintptr(0)))))
}

// libibverbsHas reports whether libibverbs lists the device called name, i.e. has a user-space
// provider for it.
func libibverbsHas(name string) (bool, error) {
	l, err := loadLibibverbs()
	if err != nil {
		return false, err
	}
	var count int32
	list, n, err := l.deviceList(&count)
	if errors.Is(err, syscall.ENOSYS) {
		return false, nil // no uverbs support in the kernel: libibverbs lists nothing
	}
	if err != nil {
		return false, err
	}
	defer call(l.freeDeviceList, list)
	for i := range n {
		if cstring((*ibvDevice)(cptr(deviceAt(list, i))).Name[:]) == name {
			return true, nil
		}
	}
	return false, nil
}

// openIbv opens dev through libibverbs.
func openIbv(dev *Device) (*ibvCtx, error) {
	l, err := loadLibibverbs()
	if err != nil {
		return nil, err
	}
	mem, err := newCmem(cmemSize[ibvQPInitAttr](1) + cmemSize[ibvQPAttr](1) + cmemSize[ibvDeviceAttr](1) +
		cmemSize[ibvPortAttr](1) + cmemSize[int32](1) + cmemSize[ibvAsyncEvent](1))
	if err != nil {
		return nil, err
	}
	ic := &ibvCtx{lib: l, mem: mem, qpInit: &takeN[ibvQPInitAttr](mem, 1)[0], qpAttr: &takeN[ibvQPAttr](mem, 1)[0],
		devAttr: &takeN[ibvDeviceAttr](mem, 1)[0], port: &takeN[ibvPortAttr](mem, 1)[0],
		count: &takeN[int32](mem, 1)[0], asyncEv: &takeN[ibvAsyncEvent](mem, 1)[0]}
	list, n, err := l.deviceList(ic.count)
	if err != nil {
		mem.free()
		return nil, err
	}
	defer call(l.freeDeviceList, list)
	for i := range n {
		d := deviceAt(list, i)
		if cstring((*ibvDevice)(cptr(d)).Name[:]) != dev.Name {
			continue
		}
		if ic.ctx, err = l.callErrno(l.openDevice, d); err != nil {
			mem.free()
			return nil, fmt.Errorf("rdma: ibv_open_device %s: %w", dev.Name, err)
		}
		ic.c = (*ibvContext)(cptr(ic.ctx))
		return ic, nil
	}
	mem.free()
	return nil, fmt.Errorf("rdma: libibverbs has no user-space provider for device %s (driver %s): %s",
		dev.Name, dev.driverName(), libibverbsPackages)
}

func (ic *ibvCtx) close() error {
	err := callInt(ic.lib.closeDevice, ic.ctx)
	return errors.Join(err, ic.mem.free())
}

// dupFD duplicates a descriptor libibverbs owns, so that Go can own (and close) its copy.
func dupFD(fd int32, what string) (int, error) {
	n, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("rdma: dup %s fd: %w", what, err)
	}
	return n, nil
}

func (ic *ibvCtx) queryDevice() (DeviceAttr, error) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	*ic.devAttr = ibvDeviceAttr{}
	if err := callInt(ic.lib.queryDevice, ic.ctx, uintptr(unsafe.Pointer(ic.devAttr))); err != nil {
		return DeviceAttr{}, fmt.Errorf("ibv_query_device: %w", err)
	}
	r := ic.devAttr
	var guid [8]byte
	*(*uint64)(unsafe.Pointer(&guid[0])) = r.NodeGUID
	var fw uint64
	fmt.Sscanf(cstring(r.FWVer[:]), "%d", &fw)
	return DeviceAttr{
		FWVer: fw, NodeGUID: beUint64(guid[:]), MaxMRSize: r.MaxMRSize, VendorID: r.VendorID,
		VendorPartID: r.VendorPartID, MaxQP: int(r.MaxQP), MaxQPWR: int(r.MaxQPWR), MaxSGE: int(r.MaxSGE),
		MaxCQ: int(r.MaxCQ), MaxCQE: int(r.MaxCQE), MaxMR: int(r.MaxMR), MaxPD: int(r.MaxPD),
		MaxQPRdAtom: int(r.MaxQPRdAtom), MaxQPInitRdAtom: int(r.MaxQPInitRdAtom), PhysPortCnt: int(r.PhysPortCnt),
	}, nil
}

func beUint64(b []byte) uint64 {
	var v uint64
	for _, x := range b[:8] {
		v = v<<8 | uint64(x)
	}
	return v
}

func (ic *ibvCtx) queryPort(port int) (PortAttr, error) {
	ic.mu.Lock()
	defer ic.mu.Unlock()
	*ic.port = ibvPortAttr{}
	if err := callInt(ic.lib.queryPort, ic.ctx, uintptr(port), uintptr(unsafe.Pointer(ic.port))); err != nil {
		return PortAttr{}, fmt.Errorf("ibv_query_port: %w", err)
	}
	r := ic.port
	return PortAttr{State: PortState(r.State), MaxMTU: MTU(r.MaxMTU), ActiveMTU: MTU(r.ActiveMTU),
		GIDTblLen: int(r.GIDTblLen), MaxMsgSz: r.MaxMsgSz, LinkLayer: r.LinkLayer}, nil
}

// ackAsync acknowledges an async event read from the (duplicated) async fd, as
// ibv_ack_async_event does after ibv_get_async_event: libibverbs' destroy functions wait until
// every event the kernel reported for an object was acknowledged. Only the reader calls it.
func (ic *ibvCtx) ackAsync(element uint64, typ uint32) {
	*ic.asyncEv = ibvAsyncEvent{Element: uintptr(element), EventType: typ}
	call(ic.lib.ackAsyncEvent, uintptr(unsafe.Pointer(ic.asyncEv)))
}

// qpAttrFrom fills the attribute block for ibv_modify_qp; ic.mu must be held.
func (ic *ibvCtx) qpAttrFrom(a *QPAttr) *ibvQPAttr {
	ah := func(h *AHAttr) ibvAHAttr {
		r := ibvAHAttr{GRH: ibvGlobalRoute{DGID: h.DGID, FlowLabel: h.FlowLabel, SGIDIndex: h.SGIDIndex,
			HopLimit: h.HopLimit, TrafficClass: h.TrafficClass}, DLID: h.DLID, SL: h.SL,
			SrcPathBits: h.SrcPathBits, StaticRate: h.StaticRate, PortNum: h.PortNum}
		if h.IsGlobal {
			r.IsGlobal = 1
		}
		return r
	}
	*ic.qpAttr = ibvQPAttr{QPState: uint32(a.State), CurQPState: uint32(a.CurState), PathMTU: uint32(a.PathMTU),
		QKey: a.QKey, RQPSN: a.RQPSN, SQPSN: a.SQPSN, DestQPNum: a.DestQPNum, QPAccessFlags: uint32(a.AccessFlags),
		AHAttr: ah(&a.AH), PkeyIndex: a.PkeyIndex, MaxRdAtomic: a.MaxRdAtomic, MaxDestRdAtomic: a.MaxDestRdAtomic,
		MinRNRTimer: a.MinRNRTimer, PortNum: a.PortNum, Timeout: a.Timeout, RetryCnt: a.RetryCnt, RNRRetry: a.RNRRetry}
	return ic.qpAttr
}
