package scsi

import "errors"

// CAWLock makes COMPARE AND WRITE atomic across the processes (cluster
// nodes) that serve one logical unit: the range lock orders the commands
// of this process only. A command takes it before its range lock and keeps
// it until its write completed; commands of one process may hold it
// together (the range lock orders them). cluster/cawlock implements it on
// etcd.
type CAWLock interface {
	// Acquire asks for the lock for one command. It returns a non-zero
	// token when the command may go on now. Otherwise it returns 0 and
	// calls granted exactly once, from any goroutine and possibly before
	// Acquire returns: with a token, or with an error that errors.Is
	// ErrFenced (this process lost its right to write) or ErrCAWBusy (the
	// lock was not granted within the lock's bound). A command that got a
	// token calls Release with it once.
	Acquire(granted func(token uint64, err error)) uint64
	// Valid reports whether the lock that token was granted under is still
	// held and this process may still write. It runs right before the
	// command's write reaches the device, so it must be cheap and must not
	// allocate.
	Valid(token uint64) bool
	// Release ends the command that was granted token.
	Release(token uint64)
	// Close gives the lock up: no command may hold it then.
	Close() error
}

// ErrCAWBusy is the error a CAWLock grants with when it could not be
// taken within its bound: another node held it that long, or the store
// did not answer. The command ends with BUSY status, which initiators
// retry after a delay on the same path.
var ErrCAWBusy = errors.New("compare and write: the cluster lock was not granted in time")

// cawLockFailed is the result of a COMPARE AND WRITE refused by its
// CAWLock: NOT READY, LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN
// UNAVAILABLE STATE when this node may not write (multipath retries on
// another path), else BUSY.
func cawLockFailed(err error) result {
	if errors.Is(err, ErrFenced) {
		return fail(fencedSense)
	}
	return result{status: StatusBusy}
}

// lockCluster takes the cluster lock of a COMPARE AND WRITE, then its
// range lock, then starts it.
func (io *ioCtx) lockCluster(l CAWLock) result {
	tok := l.Acquire(io.cawGrant)
	if tok == 0 {
		return pending
	}
	io.cawToken = tok
	return io.lockAndRun(io.lba, io.left, true, cawStart)
}

// cawGranted is the cluster lock continuation of a COMPARE AND WRITE.
func (io *ioCtx) cawGranted(tok uint64, err error) {
	io.inline = false // the lock's goroutine, not the submitter's
	if err != nil {
		io.finish(cawLockFailed(err))
		return
	}
	io.cawToken = tok
	io.lockAndRun(io.lba, io.left, true, cawStart)
}

// cawHeld reports whether a COMPARE AND WRITE may write: without a cluster
// lock always, else while the lock it was granted is still held.
func (io *ioCtx) cawHeld() bool {
	return io.cawToken == 0 || io.d.cfg.CAWLock.Valid(io.cawToken)
}

// releaseCAW gives back the cluster lock of a finished COMPARE AND WRITE.
func (io *ioCtx) releaseCAW() {
	if io.cawToken != 0 {
		io.d.cfg.CAWLock.Release(io.cawToken)
		io.cawToken = 0
	}
}
