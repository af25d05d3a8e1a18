package bdev

import (
	"errors"
	"sync"
	"testing"
	"time"
	"unsafe"
)

func newTestPool(t *testing.T, max int64) *Pool {
	t.Helper()
	p, err := NewPool(PoolOptions{Max: max})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p
}

func TestNewPoolOptions(t *testing.T) {
	for _, c := range []struct {
		name string
		o    PoolOptions
		ok   bool
	}{
		{"defaults", PoolOptions{}, true},
		{"region 32MiB", PoolOptions{RegionSize: 32 << 20}, true},
		{"region not power of two", PoolOptions{RegionSize: 24 << 20}, false},
		{"region below largest buffer", PoolOptions{RegionSize: 8 << 20}, false},
		{"region too many slots", PoolOptions{RegionSize: 1 << 30, Max: 4 << 30}, false},
		{"max below a region", PoolOptions{Max: 1 << 20}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := NewPool(c.o)
			if (err == nil) != c.ok {
				t.Fatalf("err = %v, want ok=%v", err, c.ok)
			}
			if p != nil && p.MaxRegions() < 1 {
				t.Fatalf("MaxRegions %d", p.MaxRegions())
			}
		})
	}
}

func TestPoolGetSizes(t *testing.T) {
	p := newTestPool(t, 32*DefaultRegionSize)
	for _, c := range []struct {
		n, wantCap int
		err        error
	}{
		{1, 4096, nil},
		{512, 4096, nil},
		{4096, 4096, nil},
		{4097, 8192, nil},
		{128 << 10, 128 << 10, nil},
		{1<<20 + 1, 2 << 20, nil},
		{MaxBufSize, MaxBufSize, nil},
		{0, 0, ErrBufSize},
		{-1, 0, ErrBufSize},
		{MaxBufSize + 1, 0, ErrBufSize},
	} {
		b, err := p.Get(c.n)
		if !errors.Is(err, c.err) {
			t.Errorf("Get(%d): err %v, want %v", c.n, err, c.err)
			continue
		}
		if err != nil {
			continue
		}
		data := b.Bytes()
		if len(data) != c.n || cap(data) != c.wantCap {
			t.Errorf("Get(%d): len %d cap %d, want %d/%d", c.n, len(data), cap(data), c.n, c.wantCap)
		}
		if uintptr(unsafe.Pointer(&data[0]))%4096 != 0 {
			t.Errorf("Get(%d): buffer not page aligned", c.n)
		}
		if idx, ok := p.Index(data[:cap(data)][cap(data)/2:]); !ok || idx != b.Region() {
			t.Errorf("Get(%d): Index = %d,%v, want region %d", c.n, idx, ok, b.Region())
		}
		if err := p.Put(b); err != nil {
			t.Errorf("Put: %v", err)
		}
	}
}

func TestPoolPutErrors(t *testing.T) {
	p, q := newTestPool(t, DefaultPoolMax), newTestPool(t, DefaultPoolMax)
	b, err := p.Get(100)
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Put(b); err == nil {
		t.Error("Put into a foreign pool accepted")
	}
	if err := p.Put(nil); err == nil {
		t.Error("Put(nil) accepted")
	}
	if err := p.Close(); err == nil {
		t.Error("Close with a buffer out succeeded")
	}
	if err := p.Put(b); err != nil {
		t.Fatal(err)
	}
	if err := p.Put(b); err == nil {
		t.Error("double Put accepted")
	}
	// The double Put must not have pushed b twice: two Gets differ.
	b1, _ := p.Get(100)
	b2, _ := p.Get(100)
	if b1 == b2 {
		t.Error("the same buffer handed out twice")
	}
	p.Put(b1)
	p.Put(b2)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Get(100); err == nil {
		t.Error("Get after Close succeeded")
	}
}

func TestPoolExhaustedAndHooks(t *testing.T) {
	p := newTestPool(t, 2*DefaultRegionSize)
	type call struct {
		index int
		size  int
	}
	var early, late []call
	cancelEarly := p.OnRegion(func(i int, mem []byte) { early = append(early, call{i, len(mem)}) })
	big1, err := p.Get(MaxBufSize)
	if err != nil {
		t.Fatal(err)
	}
	late = nil
	cancelLate := p.OnRegion(func(i int, mem []byte) { late = append(late, call{i, len(mem)}) })
	if len(late) != 1 || late[0] != (call{0, DefaultRegionSize}) {
		t.Fatalf("late hook saw %v, want the existing region 0", late)
	}
	cancelEarly()
	small, err := p.Get(4096)
	if err != nil {
		t.Fatal(err)
	}
	if len(early) != 1 || len(late) != 2 || late[1].index != 1 {
		t.Fatalf("hooks saw early %v late %v", early, late)
	}
	cancelLate()
	if _, err := p.Get(MaxBufSize); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("third region: err %v, want ErrPoolExhausted", err)
	}
	// Many small buffers come from the one 4 KiB region without growing.
	var held []*Buf
	for range DefaultRegionSize/4096 - 1 {
		b, err := p.Get(4096)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, b)
	}
	if _, err := p.Get(4096); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("4 KiB class over capacity: err %v", err)
	}
	for _, b := range append(held, small, big1) {
		if err := p.Put(b); err != nil {
			t.Fatal(err)
		}
	}
	if len(late) != 2 {
		t.Fatalf("cancelled hook still called: %v", late)
	}
}

func TestPoolIndexForeign(t *testing.T) {
	p := newTestPool(t, DefaultPoolMax)
	b, _ := p.Get(8192)
	defer p.Put(b)
	for _, c := range []struct {
		name string
		buf  []byte
	}{
		{"heap", make([]byte, 4096)},
		{"empty", nil},
	} {
		if _, ok := p.Index(c.buf); ok {
			t.Errorf("%s slice reported as pool memory", c.name)
		}
	}
}

func TestPoolConcurrent(t *testing.T) {
	p := newTestPool(t, 8*DefaultRegionSize)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			held := make([]*Buf, 0, 16)
			for i := range 2000 {
				b, err := p.Get(4096 << (i % 3))
				if err != nil {
					t.Error(err)
					return
				}
				// Ownership is exclusive: stamp and verify.
				b.Bytes()[0] = byte(g)
				held = append(held, b)
				if len(held) == cap(held) {
					for _, h := range held {
						if h.Bytes()[0] != byte(g) {
							t.Error("buffer shared between goroutines")
						}
						p.Put(h)
					}
					held = held[:0]
				}
			}
			for _, h := range held {
				p.Put(h)
			}
		}()
	}
	wg.Wait()
}

func TestPoolNoAllocs(t *testing.T) {
	p := newTestPool(t, DefaultPoolMax)
	b, _ := p.Get(4096) // map the region first
	p.Put(b)
	allocs := testing.AllocsPerRun(1000, func() {
		b, err := p.Get(4096)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := p.Index(b.Bytes()); !ok {
			t.Fatal("pool buffer not indexed")
		}
		p.Put(b)
	})
	if allocs != 0 {
		t.Fatalf("Get/Index/Put allocate %.1f times per run", allocs)
	}
}

// TestPoolNoClassStarves fills the pool with one class, returns it, and
// then asks for every other size: each is served from a region carved anew
// in place (same memory, so device registrations stay valid).
func TestPoolNoClassStarves(t *testing.T) {
	p, err := NewPool(PoolOptions{Max: 4 * DefaultRegionSize, TrimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var hooks int
	p.OnRegion(func(int, []byte) { hooks++ })
	var held []*Buf
	for {
		b, err := p.Get(1 << 20)
		if errors.Is(err, ErrPoolExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, b)
	}
	if len(held) != 4*DefaultRegionSize/(1<<20) {
		t.Fatalf("held %d 1 MiB buffers, want the whole pool", len(held))
	}
	if _, err := p.Get(4096); !errors.Is(err, ErrPoolExhausted) {
		t.Fatalf("4 KiB while every region is out: err %v, want ErrPoolExhausted", err)
	}
	for _, b := range held {
		p.Put(b)
	}
	for n := MinBufSize; n <= MaxBufSize; n <<= 1 {
		b, err := p.Get(n)
		if err != nil {
			t.Fatalf("Get(%d) after the 1 MiB buffers came back: %v", n, err)
		}
		p.Put(b)
	}
	if hooks != 4 {
		t.Fatalf("hooks saw %d regions, want the 4 mapped once", hooks)
	}
}

// TestPoolTrim checks that idle regions are unmapped after one untouched
// interval, that hooks see them go, and that the pool grows again after.
func TestPoolTrim(t *testing.T) {
	p, err := NewPool(PoolOptions{Max: 4 * DefaultRegionSize, TrimInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	live := map[int]bool{}
	p.OnRegion(func(i int, mem []byte) { live[i] = mem != nil })
	a, _ := p.Get(4096)
	b, _ := p.Get(1 << 20)
	c, _ := p.Get(8 << 20)
	p.Put(b)
	p.Put(c)
	if p.Mapped() != 3*DefaultRegionSize {
		t.Fatalf("mapped %d, want 3 regions", p.Mapped())
	}
	if n := p.Trim(); n != 0 {
		t.Fatalf("first Trim unmapped %d regions just used", n)
	}
	if n := p.Trim(); n != 2 {
		t.Fatalf("second Trim unmapped %d regions, want the 2 idle ones", n)
	}
	if p.Mapped() != DefaultRegionSize || live[1] || live[2] || !live[0] {
		t.Fatalf("after Trim: mapped %d, hooks %v", p.Mapped(), live)
	}
	if _, ok := p.Index(b.Bytes()); ok {
		t.Fatal("an unmapped region is still indexed")
	}
	a.Bytes()[0] = 1 // the region with a buffer out stays
	p.Put(a)
	d, err := p.Get(2 << 20)
	if err != nil {
		t.Fatal(err)
	}
	if !live[d.Region()] || p.Mapped() != 2*DefaultRegionSize {
		t.Fatalf("regrown region %d not live (%v), mapped %d", d.Region(), live, p.Mapped())
	}
	d.Bytes()[len(d.Bytes())-1] = 1
	p.Put(d)
}

// TestPoolTrimConcurrent trims and carves while goroutines get and put
// buffers of several classes (run with -race).
func TestPoolTrimConcurrent(t *testing.T) {
	p, err := NewPool(PoolOptions{Max: 4 * DefaultRegionSize, TrimInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 400 {
				b, err := p.Get(4096 << ((i + g) % 9))
				if errors.Is(err, ErrPoolExhausted) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				buf := b.Bytes()
				buf[0], buf[len(buf)-1] = byte(g), byte(g)
				if i%50 == 0 {
					p.Trim()
				}
				if buf[0] != byte(g) || buf[len(buf)-1] != byte(g) {
					t.Error("buffer shared between goroutines")
				}
				p.Put(b)
			}
		}()
	}
	wg.Wait()
}
