package bdev

import (
	"sync"
	"sync/atomic"
)

const memChunk = 1 << 20

// Memory is a thin Device held in RAM: 1 MiB chunks are allocated on first
// write and released by unmap. Requests complete before Submit returns.
type Memory struct {
	mu     sync.RWMutex
	chunks map[int64][]byte
	size   atomic.Int64
}

// NewMemory returns an empty (all zeroes) memory device of size bytes.
func NewMemory(size int64) *Memory {
	m := &Memory{chunks: make(map[int64][]byte)}
	m.size.Store(size)
	return m
}

// Size reports the capacity in bytes.
func (m *Memory) Size() int64 { return m.size.Load() }

// Resize changes the capacity; data beyond a smaller size is dropped.
func (m *Memory) Resize(size int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for c := range m.chunks {
		if c*memChunk >= size {
			delete(m.chunks, c)
		}
	}
	m.size.Store(size)
	return nil
}

// Submit performs r and calls r.Done before returning.
func (m *Memory) Submit(r *Request) {
	r.Err = nil
	if r.Op != OpFlush {
		r.Err = checkRange(r.Offset, r.length(), m.Size())
	}
	if r.Err == nil {
		switch r.Op {
		case OpRead:
			m.read(r.Buf, r.Offset)
		case OpWrite:
			m.write(r.Buf, r.Offset)
		case OpUnmap:
			m.unmap(r.Offset, r.Length)
		}
	}
	r.Done(r)
}

func (m *Memory) read(buf []byte, off int64) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	for len(buf) > 0 {
		c, o := off/memChunk, off%memChunk
		n := min(int64(len(buf)), memChunk-o)
		if ch := m.chunks[c]; ch != nil {
			copy(buf[:n], ch[o:])
		} else {
			clear(buf[:n])
		}
		buf, off = buf[n:], off+n
	}
}

func (m *Memory) write(buf []byte, off int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for len(buf) > 0 {
		c, o := off/memChunk, off%memChunk
		n := min(int64(len(buf)), memChunk-o)
		ch := m.chunks[c]
		if ch == nil {
			ch = make([]byte, memChunk)
			m.chunks[c] = ch
		}
		copy(ch[o:], buf[:n])
		buf, off = buf[n:], off+n
	}
}

func (m *Memory) unmap(off, n int64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n > 0 {
		c, o := off/memChunk, off%memChunk
		l := min(n, memChunk-o)
		if ch := m.chunks[c]; ch != nil {
			if o == 0 && l == memChunk {
				delete(m.chunks, c)
			} else {
				clear(ch[o : o+l])
			}
		}
		off, n = off+l, n-l
	}
}

// Mapped reports whether the chunk holding off has been written.
func (m *Memory) Mapped(off, length int64) (bool, int64, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	mapped := m.chunks[off/memChunk] != nil
	n := int64(0)
	for n < length {
		c := (off + n) / memChunk
		if (m.chunks[c] != nil) != mapped {
			break
		}
		n += memChunk - (off+n)%memChunk
	}
	return mapped, min(n, length), nil
}

// Close releases the memory.
func (m *Memory) Close() error {
	m.mu.Lock()
	m.chunks = nil
	m.mu.Unlock()
	return nil
}
