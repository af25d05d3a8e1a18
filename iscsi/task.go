package iscsi

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/qos"
	"github.com/iserd/iserd/scsi"
)

// task is one SCSI command in flight on a connection.
type task struct {
	c        *conn
	itt      uint32
	lunField uint64 // the LUN field as received
	cmdSN    uint32
	immed    bool // sent as an immediate command (no CmdSN slot)
	read     bool
	write    bool
	edtl     uint32 // expected data transfer length
	cdb      [260]byte

	// The initiator's buffers, for a transport that moves data by RDMA.
	readBuf, writeBuf RemoteBuffer

	cmd  scsi.Command
	buf  []byte    // data-out collected, or data-in buffer
	pbuf *bdev.Buf // the pool buffer behind buf

	// Data-Out collection.
	received    uint32 // bytes of data-out received
	unsolEnd    uint32 // end of the unsolicited data the initiator may send
	unsolDataSN uint32 // next DataSN expected in the unsolicited sequence
	nextOffset  uint32 // first byte not yet asked for by an R2T
	r2ts        []r2tRange
	r2tSN       uint32
	corrupt     bool // a Data-Out failed its digest: answer CRC error, do not execute

	// Data-In sequencing, used by the writer.
	dataSN uint32

	putting  bool // a DataMover holds the data buffer until DataDone
	fetching bool // a DataMover is fetching write data (under the session lock)
	start    monoTime
	lun      *sessionCounters // the LUN's counters, nil for an unknown LUN
	aborted  atomic.Bool
	abortWG  *sync.WaitGroup // signalled when an aborted task has finished
	executed atomic.Bool     // answered or handed to the SCSI layer: no Data-Out or abort ends it again
	answered bool            // its response is queued (Session.answered counts it)

	senseBuf [2 + scsi.SenseSize]byte
	qe       qos.Entry // its way through the session's rate limiters
}

// r2tRange is one outstanding R2T.
type r2tRange struct {
	ttt      uint32
	sn       uint32
	offset   uint32
	length   uint32
	received uint32
	dataSN   uint32 // next DataSN expected in this sequence
}

var taskPool = sync.Pool{New: func() any { return new(task) }}

func getTask(c *conn) *task {
	t := taskPool.Get().(*task)
	t.c = c
	t.cmd.Done = scsiDone
	if t.cmd.Ctx == nil {
		t.cmd.Ctx = t
		t.qe.Owner = t
	}
	return t
}

// release returns the task and its buffer to their pools.
func (t *task) release() {
	if t.pbuf != nil {
		t.c.srv.pool.Put(t.pbuf)
	}
	r2ts := t.r2ts[:0]
	ctx := t.cmd.Ctx
	*t = task{}
	t.r2ts = r2ts
	t.cmd.Ctx = ctx
	t.qe.Owner = ctx
	taskPool.Put(t)
}

// dataIn is the data to return to the initiator.
func (t *task) dataIn() []byte {
	if !t.read || t.cmd.Status != scsi.StatusGood && t.cmd.Status != scsi.StatusConditionMet {
		return nil
	}
	return t.cmd.DataIn[:t.cmd.InLen]
}

// residual returns the residual count and the O/U flag bits (RFC 7143
// 11.4.5) from what the command wanted against what the initiator expected.
func (t *task) residual() (uint32, byte) {
	if t.cmd.Status != scsi.StatusGood && t.cmd.Status != scsi.StatusConditionMet {
		return 0, 0
	}
	want := uint32(t.cmd.Wanted)
	switch {
	case want > t.edtl:
		return want - t.edtl, 0x04
	case want < t.edtl:
		return t.edtl - want, 0x02
	}
	return 0, 0
}

// scsiDone is every Command's completion callback: it queues the response.
func scsiDone(cmd *scsi.Command) {
	t := cmd.Ctx.(*task)
	t.answered = true
	t.c.sess.answered.Add(1)
	t.c.enqueue(outItem{kind: outResponse, task: t})
}

// taskSent runs on the writer once a task's response is out (or will never
// be): the task leaves the session and, for a non-immediate command, the
// CmdSN window opens by one.
func (c *conn) taskSent(t *task, now monoTime) {
	s := c.sess
	if t.answered {
		s.answered.Add(-1)
	}
	s.stats.record(t, now)
	if t.lun != nil {
		t.lun.record(t, now)
	}
	s.mu.Lock()
	if s.tasks[t.itt] == t {
		delete(s.tasks, t.itt)
	}
	wg := t.abortWG
	s.mu.Unlock()
	if !t.immed {
		s.openWindow()
	}
	if wg != nil {
		wg.Done()
	}
	t.release()
}

// monoTime is a reading of the monotonic clock: the time since clockBase.
// Reading it (monoNow) costs one clock call where time.Now costs two (wall
// and monotonic), which shows per command in an emulated VM, where each
// call took about 8 us.
type monoTime time.Duration

var clockBase = time.Now()

func monoNow() monoTime { return monoTime(time.Since(clockBase)) }
