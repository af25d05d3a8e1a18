package bdev

import (
	"cmp"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Buffer size classes of a Pool: powers of two from MinBufSize to MaxBufSize.
const (
	MinBufSize = 4 << 10
	MaxBufSize = 16 << 20
	numClasses = 13 // 4 KiB .. 16 MiB
	// DefaultRegionSize is the size of one mapped region.
	DefaultRegionSize = 16 << 20
	// DefaultPoolMax caps the memory a Pool maps by default.
	DefaultPoolMax = 1 << 30
)

// Errors returned by Pool.
var (
	// ErrPoolExhausted means the pool reached its configured maximum.
	ErrPoolExhausted = errors.New("buffer pool exhausted")
	// ErrBufSize means a buffer of that size cannot come from the pool.
	ErrBufSize = errors.New("buffer size outside the pool's classes")
)

// PoolOptions configure NewPool.
type PoolOptions struct {
	// RegionSize is the size of each mapping; a power of two of at least
	// MaxBufSize (default DefaultRegionSize).
	RegionSize int
	// Max caps the bytes mapped in total (default DefaultPoolMax).
	Max int64
}

// Pool hands out page-aligned buffers carved from large anonymous mappings
// ("regions"). Each region serves one size class. Regions are mapped on
// demand and kept until Close, so their addresses stay valid for devices
// that register them once: io_uring fixed buffers, RDMA memory regions.
// Get and Put are lock-free and allocate nothing; only mapping a new region
// takes a lock.
type Pool struct {
	regionSize int
	regions    []atomic.Pointer[region] // by region index; fixed length
	spans      atomic.Pointer[[]span]   // region address ranges, sorted by base
	classes    [numClasses]freeList

	mu      sync.Mutex // growth, hooks
	nextReg int
	hooks   map[int]func(int, []byte)
	nextID  int
	closed  atomic.Bool
}

// Buf is one buffer of a Pool, owned by whoever got it until Put.
type Buf struct {
	pool   *Pool
	data   []byte // the whole class-sized slot
	n      int
	id     uint32 // region<<16 | slot
	next   atomic.Uint32
	inPool atomic.Bool
}

type region struct {
	mem  []byte
	bufs []Buf
}

type span struct {
	base, end uintptr
	index     int
}

// freeList is a lock-free stack of buffer ids. The head packs a change
// counter above the id so a stale compare-and-swap cannot succeed (ABA).
type freeList struct {
	_    cacheLine
	head atomic.Uint64 // counter<<32 | (id+1); id+1 == 0 means empty
}

// NewPool returns an empty pool; memory is mapped as buffers are needed.
func NewPool(o PoolOptions) (*Pool, error) {
	if o.RegionSize == 0 {
		o.RegionSize = DefaultRegionSize
	}
	if o.Max == 0 {
		o.Max = DefaultPoolMax
	}
	if o.RegionSize < MaxBufSize || o.RegionSize&(o.RegionSize-1) != 0 || o.RegionSize/MinBufSize > 1<<16 {
		return nil, fmt.Errorf("buffer pool: region size %d is not a power of two in [%d, %d]", o.RegionSize, MaxBufSize, MinBufSize<<16)
	}
	if o.Max < int64(o.RegionSize) {
		return nil, fmt.Errorf("buffer pool: maximum %d is below one region (%d bytes)", o.Max, o.RegionSize)
	}
	p := &Pool{
		regionSize: o.RegionSize,
		regions:    make([]atomic.Pointer[region], o.Max/int64(o.RegionSize)),
		hooks:      map[int]func(int, []byte){},
	}
	p.spans.Store(&[]span{})
	return p, nil
}

// MaxRegions is how many regions the pool can ever map; region indexes
// passed to OnRegion hooks and returned by Region are below it.
func (p *Pool) MaxRegions() int { return len(p.regions) }

func classOf(n int) int {
	if n <= MinBufSize {
		return 0
	}
	return bits.Len(uint(n-1)) - 12
}

// Get returns a buffer of n bytes (Bytes has length n; its capacity is the
// size class, a power of two from 4 KiB). It maps a new region when the
// class is empty and fails with ErrPoolExhausted at the configured maximum.
func (p *Pool) Get(n int) (*Buf, error) {
	if n <= 0 || n > MaxBufSize {
		return nil, fmt.Errorf("buffer pool get %d bytes: %w", n, ErrBufSize)
	}
	if p.closed.Load() {
		return nil, errors.New("buffer pool get: pool closed")
	}
	c := classOf(n)
	b := p.pop(c)
	if b == nil {
		var err error
		if b, err = p.grow(c); err != nil {
			return nil, err
		}
	}
	b.inPool.Store(false)
	b.n = n
	return b, nil
}

// Put returns b to the pool. Returning a buffer twice, or to another pool,
// is an error and leaves the pool unchanged.
func (p *Pool) Put(b *Buf) error {
	if b == nil || b.pool != p {
		return errors.New("buffer pool put: buffer does not belong to this pool")
	}
	if !b.inPool.CompareAndSwap(false, true) {
		return errors.New("buffer pool put: buffer returned twice")
	}
	p.push(classOf(cap(b.data)), b)
	return nil
}

// Bytes is the buffer's memory: length as requested from Get, capacity the
// whole size class. It stays valid until Put.
func (b *Buf) Bytes() []byte { return b.data[:b.n] }

// Region is the index of the region holding b, as given to OnRegion hooks.
func (b *Buf) Region() int { return int(b.id >> 16) }

func (p *Pool) buf(id uint32) *Buf {
	return &p.regions[id>>16].Load().bufs[id&0xffff]
}

func (p *Pool) pop(c int) *Buf {
	l := &p.classes[c]
	for {
		h := l.head.Load()
		if uint32(h) == 0 {
			return nil
		}
		b := p.buf(uint32(h) - 1)
		if l.head.CompareAndSwap(h, (h>>32+1)<<32|uint64(b.next.Load())) {
			return b
		}
	}
}

func (p *Pool) push(c int, b *Buf) {
	l := &p.classes[c]
	for {
		h := l.head.Load()
		b.next.Store(uint32(h))
		if l.head.CompareAndSwap(h, (h>>32+1)<<32|uint64(b.id+1)) {
			return
		}
	}
}

// grow maps a region for class c, keeps one buffer for the caller and
// frees the rest.
func (p *Pool) grow(c int) (*Buf, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if b := p.pop(c); b != nil { // another goroutine grew it meanwhile
		return b, nil
	}
	if p.nextReg == len(p.regions) {
		return nil, fmt.Errorf("buffer pool get %d-byte buffer: %w (%d regions of %d bytes)", MinBufSize<<c, ErrPoolExhausted, len(p.regions), p.regionSize)
	}
	mem, err := unix.Mmap(-1, 0, p.regionSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		return nil, fmt.Errorf("buffer pool: map %d-byte region: %w", p.regionSize, err)
	}
	idx := p.nextReg
	p.nextReg++
	size := MinBufSize << c
	r := &region{mem: mem, bufs: make([]Buf, p.regionSize/size)}
	for i := range r.bufs {
		b := &r.bufs[i]
		b.pool, b.id = p, uint32(idx<<16|i)
		b.data = mem[i*size : (i+1)*size : (i+1)*size]
		b.inPool.Store(true)
	}
	p.regions[idx].Store(r)
	base := uintptr(unsafe.Pointer(&mem[0]))
	spans := append(slices.Clone(*p.spans.Load()), span{base: base, end: base + uintptr(len(mem)), index: idx})
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.base, b.base) })
	p.spans.Store(&spans)
	for _, h := range p.hooks {
		h(idx, mem)
	}
	for i := len(r.bufs) - 1; i > 0; i-- {
		p.push(c, &r.bufs[i])
	}
	return &r.bufs[0], nil
}

// Index reports which region holds the memory of b (any slice of a pool
// buffer, not only what Bytes returned), so a device can address it as a
// registered buffer. It does not allocate.
func (p *Pool) Index(b []byte) (int, bool) {
	if len(b) == 0 {
		return 0, false
	}
	start := uintptr(unsafe.Pointer(&b[0]))
	spans := *p.spans.Load()
	lo, hi := 0, len(spans)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if spans[m].end <= start {
			lo = m + 1
		} else {
			hi = m
		}
	}
	if lo < len(spans) && spans[lo].base <= start && start+uintptr(len(b)) <= spans[lo].end {
		return spans[lo].index, true
	}
	return 0, false
}

// OnRegion calls fn for every region mapped so far and then for each new
// one, before any of its buffers is handed out: an io_uring registers it
// as a fixed buffer, an RDMA device as a memory region. fn must not call
// back into the pool's OnRegion or Close. cancel stops further calls.
func (p *Pool) OnRegion(fn func(index int, mem []byte)) (cancel func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.nextReg {
		fn(i, p.regions[i].Load().mem)
	}
	id := p.nextID
	p.nextID++
	p.hooks[id] = fn
	return func() {
		p.mu.Lock()
		delete(p.hooks, id)
		p.mu.Unlock()
	}
}

// Close unmaps every region. All buffers must have been returned and every
// device or RDMA registration using the regions released first.
func (p *Pool) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Load() {
		return nil
	}
	out := 0
	for i := range p.nextReg {
		bufs := p.regions[i].Load().bufs
		for j := range bufs {
			if !bufs[j].inPool.Load() {
				out++
			}
		}
	}
	if out > 0 {
		return fmt.Errorf("buffer pool close: %d buffers still in use", out)
	}
	p.closed.Store(true)
	var errs []error
	for i := range p.nextReg {
		if err := unix.Munmap(p.regions[i].Load().mem); err != nil {
			errs = append(errs, fmt.Errorf("buffer pool: unmap region %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}
