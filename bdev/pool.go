package bdev

import (
	"cmp"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"time"
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
	// DefaultTrimInterval is how often a Pool gives idle regions back to the
	// system by default: a region none of whose buffers was taken during one
	// whole interval, and none of which is out, is unmapped.
	DefaultTrimInterval = 30 * time.Second
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
	// TrimInterval is how often idle regions are unmapped (default
	// DefaultTrimInterval; negative: never).
	TrimInterval time.Duration
}

// Pool hands out page-aligned buffers carved from large anonymous mappings
// ("regions"). Each region serves one size class at a time. Regions are
// mapped on demand; devices register each one once (io_uring fixed buffers,
// RDMA memory regions) through OnRegion hooks.
//
// No class can starve the others: when the pool is at its maximum and a
// class has no free buffer, a region of another class whose buffers are
// all free is carved anew for it (same memory, so registrations stay). A
// region that stayed wholly free and untouched for a whole TrimInterval is
// unmapped (hooks see it go first), so memory taken by a burst returns to
// the system.
//
// Get and Put are lock-free and allocate nothing; only mapping, carving
// and trimming regions take a lock.
type Pool struct {
	regionSize int
	regions    []atomic.Pointer[region] // by region index; fixed length
	spans      atomic.Pointer[[]span]   // mapped regions' address ranges, sorted by base
	classes    [numClasses]freeList

	mu      sync.Mutex // mapping, carving, trimming, hooks
	nextReg int        // regions[:nextReg] have been used at least once
	unused  []int      // indexes below nextReg whose region is unmapped
	hooks   map[int]func(int, []byte)
	nextID  int
	closed  atomic.Bool
	stop    chan struct{} // closed by Close: the trimmer ends
}

// Buf is one buffer of a Pool, owned by whoever got it until Put.
type Buf struct {
	pool   *Pool
	reg    *region
	data   []byte // the whole class-sized slot
	n      int
	id     uint32 // region<<16 | slot
	next   atomic.Uint32
	inPool atomic.Bool
}

type region struct {
	mem   []byte
	bufs  []Buf
	class int
	out   atomic.Int32 // buffers handed out and not yet returned
	used  atomic.Bool  // a buffer was taken since the last trim pass
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
	if o.TrimInterval == 0 {
		o.TrimInterval = DefaultTrimInterval
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
		stop:       make(chan struct{}),
	}
	p.spans.Store(&[]span{})
	if o.TrimInterval > 0 {
		go p.trimmer(o.TrimInterval)
	}
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
	b.reg.out.Add(1)
	if !b.reg.used.Load() {
		b.reg.used.Store(true)
	}
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
	b.reg.out.Add(-1)
	p.push(b.reg.class, b)
	return nil
}

// Bytes is the buffer's memory: length as requested from Get, capacity the
// whole size class. It stays valid until Put.
func (b *Buf) Bytes() []byte { return b.data[:b.n] }

// Region is the index of the region holding b, as given to OnRegion hooks.
func (b *Buf) Region() int { return int(b.id >> 16) }

// buf returns the buffer with that id, or nil when the id is stale: a
// pop that read the head before its region was carved anew (its
// compare-and-swap then fails, since the head has changed since).
func (p *Pool) buf(id uint32) *Buf {
	bufs := p.regions[id>>16].Load().bufs
	if int(id&0xffff) >= len(bufs) {
		return nil
	}
	return &bufs[id&0xffff]
}

func (p *Pool) pop(c int) *Buf {
	l := &p.classes[c]
	for {
		h := l.head.Load()
		if uint32(h) == 0 {
			return nil
		}
		b := p.buf(uint32(h) - 1)
		if b == nil {
			continue
		}
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

// grow finds room for class c: a new region while the pool is below its
// maximum, else a wholly free region of another class carved anew. It
// keeps one buffer for the caller and frees the rest.
func (p *Pool) grow(c int) (*Buf, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if b := p.pop(c); b != nil { // another goroutine grew it meanwhile
		return b, nil
	}
	if idx, ok := p.freeIndex(); ok {
		mem, err := unix.Mmap(-1, 0, p.regionSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
		if err != nil {
			p.unused = append(p.unused, idx)
			return nil, fmt.Errorf("buffer pool: map %d-byte region: %w", p.regionSize, err)
		}
		r := p.carve(idx, mem, c)
		p.addSpan(idx, mem)
		for _, h := range p.hooks {
			h(idx, mem)
		}
		return p.freeAllBut(r), nil
	}
	for i := range p.nextReg {
		r := p.regions[i].Load()
		if r.mem == nil || r.class == c || !p.take(r) {
			continue
		}
		return p.freeAllBut(p.carve(i, r.mem, c)), nil
	}
	return nil, fmt.Errorf("buffer pool get %d-byte buffer: %w (%d regions of %d bytes, none wholly free)",
		MinBufSize<<c, ErrPoolExhausted, len(p.regions), p.regionSize)
}

// freeIndex picks the index for a new mapping. Called with mu held.
func (p *Pool) freeIndex() (int, bool) {
	if n := len(p.unused); n > 0 {
		idx := p.unused[n-1]
		p.unused = p.unused[:n-1]
		return idx, true
	}
	if p.nextReg == len(p.regions) {
		return 0, false
	}
	p.nextReg++
	return p.nextReg - 1, true
}

// carve makes mem region idx, cut into buffers of class c, all marked
// free but not yet on the free list. Called with mu held.
func (p *Pool) carve(idx int, mem []byte, c int) *region {
	size := MinBufSize << c
	r := &region{mem: mem, bufs: make([]Buf, p.regionSize/size), class: c}
	for i := range r.bufs {
		b := &r.bufs[i]
		b.pool, b.reg, b.id = p, r, uint32(idx<<16|i)
		b.data = mem[i*size : (i+1)*size : (i+1)*size]
		b.inPool.Store(true)
	}
	r.used.Store(true)
	p.regions[idx].Store(r)
	return r
}

// freeAllBut puts every buffer of a freshly carved region on its class's
// free list but the first, which it returns.
func (p *Pool) freeAllBut(r *region) *Buf {
	for i := len(r.bufs) - 1; i > 0; i-- {
		p.push(r.class, &r.bufs[i])
	}
	return &r.bufs[0]
}

// take removes every buffer of region r from its class's free list, and
// reports whether it got them all (none is out). When it did not, the list
// is as before. Called with mu held; other goroutines may Get and Put
// meanwhile: a buffer of r that one of them holds keeps r.
func (p *Pool) take(r *region) bool {
	if r.out.Load() != 0 {
		return false
	}
	var popped []*Buf
	mine := 0
	for b := p.pop(r.class); b != nil; b = p.pop(r.class) {
		popped = append(popped, b)
		if b.reg == r {
			mine++
		}
	}
	all := mine == len(r.bufs)
	for i := len(popped) - 1; i >= 0; i-- {
		if b := popped[i]; !all || b.reg != r {
			p.push(r.class, b)
		}
	}
	return all
}

// addSpan records a mapped region's address range for Index.
func (p *Pool) addSpan(idx int, mem []byte) {
	base := uintptr(unsafe.Pointer(&mem[0]))
	spans := append(slices.Clone(*p.spans.Load()), span{base: base, end: base + uintptr(len(mem)), index: idx})
	slices.SortFunc(spans, func(a, b span) int { return cmp.Compare(a.base, b.base) })
	p.spans.Store(&spans)
}

// trimmer unmaps idle regions every interval until Close.
func (p *Pool) trimmer(interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			return
		case <-t.C:
			p.Trim()
		}
	}
}

// Trim unmaps every region that has no buffer out and none taken since
// the previous Trim, and reports how many it unmapped; the others are
// marked unused until their next Get. OnRegion hooks see each region go
// (a nil mem) before it is unmapped.
func (p *Pool) Trim() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed.Load() {
		return 0
	}
	n := 0
	for i := range p.nextReg {
		r := p.regions[i].Load()
		if r.mem == nil {
			continue
		}
		if r.used.Swap(false) || !p.take(r) {
			continue
		}
		for _, h := range p.hooks {
			h(i, nil)
		}
		spans := slices.DeleteFunc(slices.Clone(*p.spans.Load()), func(s span) bool { return s.index == i })
		p.spans.Store(&spans)
		unix.Munmap(r.mem) // cannot fail for a whole mapping of ours
		// Stale pops may still read r's buffers: keep them, without memory.
		p.regions[i].Store(&region{bufs: r.bufs, class: r.class})
		p.unused = append(p.unused, i)
		n++
	}
	return n
}

// Outstanding reports the buffers handed out by Get and not yet Put, and
// the bytes of their size classes.
func (p *Pool) Outstanding() (bufs int, bytes int64) {
	p.mu.Lock()
	n := p.nextReg
	p.mu.Unlock()
	for i := range n {
		r := p.regions[i].Load()
		if r == nil || len(r.bufs) == 0 {
			continue
		}
		out := int(r.out.Load())
		bufs += out
		bytes += int64(out) * int64(len(r.bufs[0].data))
	}
	return bufs, bytes
}

// Limit is the most memory the pool maps (PoolOptions.Max, rounded down to
// whole regions).
func (p *Pool) Limit() int64 { return int64(len(p.regions)) * int64(p.regionSize) }

// Mapped reports the bytes the pool has mapped now.
func (p *Pool) Mapped() int64 {
	return int64(len(*p.spans.Load())) * int64(p.regionSize)
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

// OnRegion calls fn for every region mapped now and then for each new
// one, before any of its buffers is handed out: an io_uring registers it
// as a fixed buffer, an RDMA device as a memory region. When Trim unmaps a
// region, fn is called with its index and a nil mem first: the device
// drops its registration. fn must not call back into the pool's OnRegion,
// Trim or Close. cancel stops further calls.
func (p *Pool) OnRegion(fn func(index int, mem []byte)) (cancel func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.nextReg {
		if mem := p.regions[i].Load().mem; mem != nil {
			fn(i, mem)
		}
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
		out += int(p.regions[i].Load().out.Load())
	}
	if out > 0 {
		return fmt.Errorf("buffer pool close: %d buffers still in use", out)
	}
	p.closed.Store(true)
	close(p.stop)
	var errs []error
	for i := range p.nextReg {
		mem := p.regions[i].Load().mem
		if mem == nil {
			continue
		}
		if err := unix.Munmap(mem); err != nil {
			errs = append(errs, fmt.Errorf("buffer pool: unmap region %d: %w", i, err))
		}
	}
	return errors.Join(errs...)
}
