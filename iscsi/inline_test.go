package iscsi_test

import (
	"sync/atomic"
	"testing"

	"github.com/iserd/iserd/bdev"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
	"github.com/iserd/iserd/scsi"
)

// heldDev passes requests to memory and reports each one's Inline hint on
// seen; while hold is set it keeps them until release.
type heldDev struct {
	bdev.Device
	seen    chan bool
	hold    atomic.Bool
	release chan struct{}
}

func (d *heldDev) Submit(r *bdev.Request) {
	d.seen <- r.Inline
	if d.hold.Load() {
		go func() {
			<-d.release
			d.Device.Submit(r)
		}()
		return
	}
	d.Device.Submit(r)
}

// TestInlineHint checks when a command may run to completion on the
// connection's reader (scsi.Command.Inline): when it is the only command
// in flight, whether its data came as immediate data or with an R2T, and
// not when another command is in flight already.
func TestInlineHint(t *testing.T) {
	e := newEnv(t, nil)
	const name = "iqn.2026-01.test.iserd:inline"
	dev := &heldDev{Device: bdev.NewMemory(diskSize), seen: make(chan bool, 4), release: make(chan struct{})}
	disk, err := scsi.NewDisk(dev, scsi.DiskConfig{BlockSize: blockSize})
	if err != nil {
		t.Fatal(err)
	}
	st := scsi.NewTarget(name)
	if err := st.AddLUN(0, disk); err != nil {
		t.Fatal(err)
	}
	if err := e.srv.AddTarget(&iscsi.Target{Name: name, SCSI: st}); err != nil {
		t.Fatal(err)
	}
	c := e.dial(t)
	if _, err := c.Login(initiator.LoginOptions{InitiatorName: testInitiator, TargetName: name,
		Keys: kv("ImmediateData", "Yes", "InitialR2T", "Yes")}); err != nil {
		t.Fatalf("login: %v", err)
	}
	clearUA(t, c)
	data := make([]byte, 2*blockSize)
	for _, tc := range []struct {
		name string
		cmd  initiator.Command
	}{
		{"read", initiator.Command{CDB: initiator.Read16(8, 2), ReadLen: 2 * blockSize}},
		{"write with immediate data", initiator.Command{CDB: initiator.Write16(8, 2), DataOut: data}},
		{"write with an R2T", initiator.Command{CDB: initiator.Write16(8, 2), DataOut: data, NoImmediateData: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Do(ctxT(t), &tc.cmd); err != nil {
				t.Fatal(err)
			}
			if !<-dev.seen {
				t.Error("the only command in flight did not have Inline")
			}
		})
	}
	t.Run("second in flight", func(t *testing.T) {
		dev.hold.Store(true)
		read := initiator.Command{CDB: initiator.Read16(8, 2), ReadLen: 2 * blockSize}
		first, err := c.Start(ctxT(t), &read)
		if err != nil {
			t.Fatal(err)
		}
		if !<-dev.seen {
			t.Error("the first command did not have Inline")
		}
		second, err := c.Start(ctxT(t), &read)
		if err != nil {
			t.Fatal(err)
		}
		if <-dev.seen {
			t.Error("the second command in flight had Inline")
		}
		close(dev.release)
		for _, task := range []*initiator.Task{first, second} {
			if _, err := task.Wait(ctxT(t)); err != nil {
				t.Fatal(err)
			}
		}
	})
}
