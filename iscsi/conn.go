package iscsi

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// conn is one iSCSI connection over a Transport. Its
// reader goroutine runs login and then handles every request in order; its
// writer goroutine owns StatSN and sends whatever is queued.
type conn struct {
	srv   *Server
	tr    Transport
	mover DataMover // set when the transport moves task data itself (iSER)
	log   *zap.Logger
	sess  *Session
	cid   uint16
	tpgt  uint16 // the portal group the connection came in through

	loginHost   string // remote IP address, counted in the server's login limits
	maxRecvData int    // the longest data segment the target declared it takes

	// written by the reader during login only, then read-only
	params Params

	// writer queue
	wmu      sync.Mutex
	wq       []outItem
	wspare   []outItem
	wsig     chan struct{}
	wstopped bool        // the writer has exited: nothing more is sent
	wowner   bool        // a goroutine is sending the queue (see writer)
	whandoff bool        // the reader left a partly written batch to the writer
	wclose   bool        // the handed-off batch ends in outClose
	whalf    bool        // the handed-off batch ends in outShutdown
	wdefer   atomic.Bool // the reader has more PDUs at hand: it wakes the writer once it runs dry
	rxTime   monoTime    // reader: when the current burst of PDUs was taken in
	sent     []*task     // writer: tasks to release once the batch is flushed
	wbhs     BHS         // writer: scratch header
	statSN   uint32      // writer-owned after login

	ctlQueued  atomic.Int64  // bytes queued by send (see PeerLimits.QueuedControl)
	ctlFree    chan struct{} // signalled when ctlQueued falls to the limit
	ignored    uint64        // reader: commands dropped outside the CmdSN window
	received   atomic.Uint64 // PDUs received: the pinger watches it move
	nopPending atomic.Uint32
	async      asyncState // Asynchronous Messages not yet acknowledged
	nopTTT     atomic.Uint32

	closeOnce sync.Once
	closing   chan struct{} // closed when the connection must end
	draining  atomic.Bool   // shutdown: finish in-flight commands, take no new ones
	done      chan struct{} // closed when serve has returned
	textCont  *textContinuation
	tttSeq    uint32 // reader-owned target transfer tag counter
}

func newConn(s *Server, tr Transport) *conn {
	c := &conn{srv: s, tr: tr, wsig: make(chan struct{}, 1), ctlFree: make(chan struct{}, 1),
		closing: make(chan struct{}), done: make(chan struct{}), params: DefaultParams()}
	c.mover, _ = tr.(DataMover)
	c.log = s.log.With(zap.String("remote", tr.RemoteAddr().String()))
	return c
}

// close ends the connection at once: reader and writer stop.
func (c *conn) close() {
	c.closeOnce.Do(func() {
		close(c.closing)
		c.tr.Close()
	})
}

// shutdown asks the connection to end gracefully: in-flight commands
// complete and are answered, then the connection closes.
func (c *conn) shutdown() {
	c.draining.Store(true)
	c.tr.SetReadDeadline(time.Now()) // wake the reader
}

func (c *conn) serve() {
	defer close(c.done)
	defer c.close()
	c.tr.SetDeadline(time.Now().Add(c.srv.opts.LoginTimeout))
	err := c.login()
	c.srv.loginEnded(c)
	if err != nil {
		var le *LoginError
		if !errors.As(err, &le) { // refusals were logged with their reason already
			c.logEnd("login ended", err)
		}
		if c.sess != nil {
			c.teardown() // the session was made, but the final answer or iSER's switch failed
		}
		return
	}
	c.tr.SetDeadline(time.Time{})
	c.maxRecvData = int(c.params.MaxRecvDataSegmentLength)
	if c.params.RDMAExtensions {
		c.maxRecvData = int(c.params.TargetRecvDataSegmentLength)
	}
	writerDone := make(chan struct{})
	go func() { c.writer(); close(writerDone) }()
	go c.pinger()
	err = c.readLoop()
	c.teardown()
	c.logEnd("connection closed", err)
	c.close()
	<-writerDone
}

func (c *conn) logEnd(msg string, err error) {
	switch {
	case err == nil, errors.Is(err, io.EOF), errors.Is(err, net.ErrClosed):
		c.log.Info(msg)
	default:
		c.log.Warn(msg, zap.Error(err))
	}
}

// pinger sends a NOP-In when the initiator has been silent for NopInterval
// and closes the connection when no answer comes within NopTimeout.
func (c *conn) pinger() {
	iv := c.srv.opts.NopInterval
	if iv <= 0 {
		return
	}
	t := time.NewTicker(iv / 2)
	defer t.Stop()
	var sentAt time.Time
	last, seen := time.Now(), c.received.Load() // when traffic was last seen
	for {
		select {
		case <-c.closing:
			return
		case now := <-t.C:
			if n := c.received.Load(); n != seen {
				last, seen = now, n
			}
			if c.nopPending.Load() != 0 {
				if last.After(sentAt) {
					continue // traffic is flowing; the answer may still come
				}
				if now.Sub(sentAt) > c.srv.opts.NopTimeout {
					c.log.Warn("initiator did not answer NOP-In ping: closing connection",
						zap.Duration("waited", now.Sub(sentAt)))
					c.close()
					return
				}
				continue
			}
			if now.Sub(last) >= iv {
				sentAt = now
				c.sendPing()
			}
		}
	}
}
