package initiator

import (
	"net"
	"sync"
)

// Gate is a connection whose reads wait while it is held: an initiator
// that stops reading for a while, to test a target's back-pressure and
// what it holds meanwhile. Use it as the net.Conn of New.
type Gate struct {
	net.Conn
	mu   sync.Mutex
	open chan struct{} // closed on Release; nil when not held
}

// NewGate wraps nc; reads pass through until Hold.
func NewGate(nc net.Conn) *Gate { return &Gate{Conn: nc} }

// Read waits while the gate is held, then reads from the connection.
func (g *Gate) Read(p []byte) (int, error) {
	g.mu.Lock()
	open := g.open
	g.mu.Unlock()
	if open != nil {
		<-open
	}
	return g.Conn.Read(p)
}

// Hold makes reads wait until Release.
func (g *Gate) Hold() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open == nil {
		g.open = make(chan struct{})
	}
}

// Release lets reads go on; it does nothing when the gate is not held.
func (g *Gate) Release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.open != nil {
		close(g.open)
		g.open = nil
	}
}

// Close releases the gate and closes the connection.
func (g *Gate) Close() error {
	g.Release()
	return g.Conn.Close()
}
