package iscsi

import (
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
)

// shortTransport is a Transport whose TryFlush comes up short a given
// number of times (a full socket buffer); it records how the connection
// ends.
type shortTransport struct {
	short      int // TryFlush calls left that come up short
	closeOnce  sync.Once
	closed     chan struct{}
	halfOnce   sync.Once
	halfClosed chan struct{}
}

func newShortTransport(short int) *shortTransport {
	return &shortTransport{short: short, closed: make(chan struct{}), halfClosed: make(chan struct{})}
}

func (f *shortTransport) ReadHeader(*Header) error           { return io.EOF }
func (f *shortTransport) ReadData([]byte, int) (bool, error) { return true, nil }
func (f *shortTransport) Buffered() bool                     { return false }
func (f *shortTransport) Queue(*BHS, []byte) error           { return nil }
func (f *shortTransport) Flush() error                       { return nil }
func (f *shortTransport) SetDigests(bool, bool)              {}
func (f *shortTransport) SetDeadline(time.Time) error        { return nil }
func (f *shortTransport) SetReadDeadline(time.Time) error    { return nil }
func (f *shortTransport) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (f *shortTransport) RemoteAddr() net.Addr               { return &net.TCPAddr{} }
func (f *shortTransport) Close() error                       { f.closeOnce.Do(func() { close(f.closed) }); return nil }
func (f *shortTransport) CloseWrite() error {
	f.halfOnce.Do(func() { close(f.halfClosed) })
	return nil
}
func (f *shortTransport) TryFlush() (done bool, err error) { f.short--; return f.short < 0, nil }

// TestReaderBatchEnding sends, at the end of a reader's burst, a batch that
// ends the connection: whether the reader's write goes through or comes up
// short and the writer finishes it, the connection closes (or half-closes)
// once the batch is out.
func TestReaderBatchEnding(t *testing.T) {
	cases := []struct {
		name  string
		end   outKind
		short int // TryFlush calls that come up short
		half  bool
	}{
		{"close, whole write", outClose, 0, false},
		{"close, short write", outClose, 1, false},
		{"half-close, whole write", outShutdown, 0, true},
		{"half-close, short write", outShutdown, 1, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := newShortTransport(tc.short)
			c := newConn(&Server{log: zap.NewNop()}, tr)
			writerDone := make(chan struct{})
			go func() { c.writer(); close(writerDone) }()
			defer func() { c.close(); <-writerDone }()

			c.beginBurst()
			var b BHS
			b[0] = byte(OpNOPIn)
			c.send(&b, nil, true)
			c.enqueue(outItem{kind: tc.end})
			c.endBurst()

			want, what := tr.closed, "closed"
			if tc.half {
				want, what = tr.halfClosed, "half-closed"
			}
			select {
			case <-want:
			case <-time.After(2 * time.Second):
				t.Fatalf("connection not %s after its last batch was sent", what)
			}
		})
	}
}

// moverTransport is an iSER-like Transport: PutData holds the data until
// the transport posts it, which happens in the Queue of a later PDU when
// postInQueue is set (iSER's takeSlot posts what is pending once send
// slots run short) and otherwise at the flush; the data's completion
// comes at once.
type moverTransport struct {
	*shortTransport
	postInQueue bool
	held        DataWaiter // put, not posted yet
}

func (f *moverTransport) PutData(_ uint32, _ []byte, done DataWaiter) error {
	f.held = done
	return nil
}

func (f *moverTransport) GetData(_ uint32, _ []byte, done DataWaiter) { done.DataDone(nil) }
func (f *moverTransport) FullFeature(*Params) error                   { return nil }

func (f *moverTransport) post() {
	if w := f.held; w != nil {
		f.held = nil
		w.DataDone(nil)
	}
}

func (f *moverTransport) Queue(*BHS, []byte) error {
	if f.postInQueue {
		f.post()
	}
	return nil
}

func (f *moverTransport) TryFlush() (bool, error) {
	f.post()
	return true, nil
}

// TestMovedReadReleasedOnce answers a read whose data a DataMover moves:
// however early the transport reports the data gone, the task is
// released exactly once (each release opens the CmdSN window by one).
func TestMovedReadReleasedOnce(t *testing.T) {
	cases := []struct {
		name        string
		postInQueue bool
	}{
		{"data posted at the flush", false},
		{"data posted while the status is queued", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tr := &moverTransport{shortTransport: newShortTransport(0), postInQueue: tc.postInQueue}
			c := newConn(&Server{log: zap.NewNop()}, tr)
			s := &Session{srv: c.srv, params: DefaultParams(), tasks: map[uint32]*task{}}
			c.sess = s
			writerDone := make(chan struct{})
			go func() { c.writer(); close(writerDone) }()
			defer func() { c.close(); <-writerDone }()

			tk := getTask(c)
			tk.itt, tk.read, tk.edtl = 1, true, 512
			tk.cmd.DataIn, tk.cmd.InLen, tk.cmd.Wanted = make([]byte, 512), 512, 512
			s.tasks[tk.itt] = tk
			s.stats.inFlight.Add(1)

			c.beginBurst()
			c.enqueue(outItem{kind: outResponse, task: tk})
			c.endBurst()

			if got := s.maxCmdSN.Load(); got != 1 {
				t.Fatalf("task released %d times, want once", got)
			}
		})
	}
}
