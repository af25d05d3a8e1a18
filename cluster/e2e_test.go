package cluster

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/iserd/iserd/internal/etcdtest"
	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/internal/targettest"
	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
	"github.com/iserd/iserd/scsi"
)

// Outcomes an initiator sees in TestFencedNode.
const (
	statusGood  = 0x00
	statusCheck = 0x02
	keyNotReady = 0x02
	keyUA       = 0x06
)

// TestFencedNode runs a node's target through the iSCSI engine: while etcd
// is away the fenced node answers WRITE and READ (its own port group is
// then unavailable) with NOT READY, LOGICAL UNIT NOT ACCESSIBLE, TARGET
// PORT IN UNAVAILABLE STATE, which makes dm-multipath use another path;
// when etcd returns, both work again after an ASYMMETRIC ACCESS STATE
// CHANGED unit attention.
func TestFencedNode(t *testing.T) {
	const target = "iqn.2026-12.org.iserd.test:cluster"
	s := etcdtest.Start(t)
	n := startNode(t, s, "a", 1, nil)
	polltest.Until(t, 10*time.Second, "node allowed", n.Allowed)
	srv := targettest.NewServer(t, iscsi.DefaultOptions())
	st := scsi.NewTarget(target)
	targettest.AddDisk(t, st, 0, 1<<20, scsi.DiskConfig{BlockSize: targettest.BlockSize, Fence: n})
	if err := srv.AddTarget(&iscsi.Target{Name: target, SCSI: st}); err != nil {
		t.Fatal(err)
	}
	apply := func() {
		if err := st.SetPortGroups(n.PortGroups(target)); err != nil {
			t.Errorf("set port groups: %v", err)
		}
	}
	n.OnChange(apply)
	apply()
	addr := targettest.Listen(t, srv, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	c, err := initiator.Dial(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Login(initiator.LoginOptions{InitiatorName: "iqn.2026-12.org.iserd.test:host", TargetName: target}); err != nil {
		t.Fatal(err)
	}
	block := bytes.Repeat([]byte{0xa5}, targettest.BlockSize)
	write := &initiator.Command{CDB: initiator.Write16(8, 1), DataOut: block}
	read := &initiator.Command{CDB: initiator.Read16(8, 1), ReadLen: targettest.BlockSize}
	do := func(what string, cmd *initiator.Command, wantKey byte) *initiator.Response {
		t.Helper()
		for range 3 { // unit attentions first
			r, err := c.Do(ctx, cmd)
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			if r.Status == statusCheck && len(r.Sense) > 13 && r.Sense[2]&0x0f == keyUA {
				continue
			}
			if wantKey == 0 && r.Status == statusGood {
				return r
			}
			if wantKey != 0 && r.Status == statusCheck && len(r.Sense) > 13 && r.Sense[2]&0x0f == wantKey &&
				r.Sense[12] == 0x04 && r.Sense[13] == 0x0c {
				return r
			}
			t.Fatalf("%s: status %#x sense % x", what, r.Status, r.Sense)
		}
		t.Fatalf("%s: unit attentions do not end", what)
		return nil
	}
	do("WRITE while allowed", write, 0)

	s.Stop()
	polltest.Until(t, testTTL, "the node's own group unavailable", func() bool {
		gs := st.PortGroups()
		return !n.Allowed() && len(gs) == 1 && gs[0].State == scsi.Unavailable
	})
	do("WRITE while fenced", write, keyNotReady)
	do("READ while fenced", read, keyNotReady)

	s.Restart()
	polltest.Until(t, 10*time.Second, "the node allowed again", func() bool {
		gs := st.PortGroups()
		return n.Allowed() && len(gs) == 1 && gs[0].State == scsi.ActiveOptimized
	})
	do("WRITE after etcd returned", write, 0)
	if r := do("READ after etcd returned", read, 0); !bytes.Equal(r.Data, block) {
		t.Fatal("read back different data")
	}
}
