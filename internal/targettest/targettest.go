// Package targettest builds iSCSI servers for tests: an iscsi.Server with a
// buffer pool of its own and targets whose logical units live in memory.
package targettest

import (
	"context"
	"net"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/scsi"
)

// BlockSize is the logical block size of the memory logical units.
const BlockSize = 512

// NewServer returns a server with opts, a buffer pool of its own and no
// targets. At cleanup the server shuts down and the pool is closed, which
// fails the test when a buffer is still out.
func NewServer(t testing.TB, opts iscsi.Options) *iscsi.Server {
	t.Helper()
	pool, err := bdev.NewPool(bdev.PoolOptions{})
	if err != nil {
		t.Fatalf("buffer pool: %v", err)
	}
	opts.Pool = pool
	srv, err := iscsi.NewServer(zap.NewNop(), opts)
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("shutdown: %v", err)
		}
		if err := pool.Close(); err != nil {
			t.Errorf("close buffer pool: %v", err)
		}
	})
	return srv
}

// AddTarget adds a target named name with a thin memory LUN 0 of size
// bytes and returns its SCSI side.
func AddTarget(t testing.TB, srv *iscsi.Server, name string, size int64) *scsi.Target {
	t.Helper()
	st := scsi.NewTarget(name)
	AddLUN(t, st, 0, size)
	if err := srv.AddTarget(&iscsi.Target{Name: name, SCSI: st}); err != nil {
		t.Fatalf("add target: %v", err)
	}
	return st
}

// AddLUN attaches a thin memory logical unit of size bytes at lun.
func AddLUN(t testing.TB, st *scsi.Target, lun uint64, size int64) {
	t.Helper()
	AddDisk(t, st, lun, size, scsi.DiskConfig{BlockSize: BlockSize, Thin: true})
}

// AddDisk attaches a memory logical unit of size bytes configured by cfg
// at lun.
func AddDisk(t testing.TB, st *scsi.Target, lun uint64, size int64, cfg scsi.DiskConfig) {
	t.Helper()
	disk, err := scsi.NewDisk(bdev.NewMemory(size), cfg)
	if err != nil {
		t.Fatalf("new disk: %v", err)
	}
	if err := st.AddLUN(lun, disk); err != nil {
		t.Fatalf("add LUN %d: %v", lun, err)
	}
}

// Listen serves srv over TCP on a loopback port whose portal group tag is
// tpgt, until cleanup, and returns the address.
func Listen(t testing.TB, srv *iscsi.Server, tpgt uint16) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv.AddPortal(iscsi.Portal{Addr: l.Addr().String(), TPGT: tpgt})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	return l.Addr().String()
}
