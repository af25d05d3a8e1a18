package prstore_test

import (
	"fmt"
	"testing"

	"github.com/iserd/iserd/internal/etcdtest"
	"github.com/iserd/iserd/internal/polltest"
	"github.com/iserd/iserd/scsi"
)

// release6 is the CDB of RELEASE (6).
var release6 = []byte{0x17, 0, 0, 0, 0, 0}

// TestSCSI2AcrossNodes: a RESERVE (6) through node A is enforced on node B
// as soon as it completed (a write and a RESERVE from another initiator
// through B conflict), and each way SPC-2 ends it, done on either node,
// frees B: RELEASE from the holder, the holder's I_T nexus loss, a
// LOGICAL UNIT RESET through B, and A's node leaving the unit (closed) or
// dying (its lease expires).
func TestSCSI2AcrossNodes(t *testing.T) {
	etcd := etcdtest.Start(t)
	tests := []struct {
		name string
		end  func(t *testing.T, a, b *node, a1, b1 *scsi.Nexus)
		wait bool // B is free only once A's lease expired
	}{
		{"RELEASE on A", func(t *testing.T, a, b *node, a1, b1 *scsi.Nexus) {
			if c := a.exec(a1, release6, nil); c.Status != scsi.StatusGood {
				t.Fatalf("RELEASE (6) from the holder: %#x", c.Status)
			}
		}, false},
		{"logout on A", func(t *testing.T, a, b *node, a1, b1 *scsi.Nexus) { a.tgt.RemoveNexus(a1) }, false},
		{"logical unit reset on B", func(t *testing.T, a, b *node, a1, b1 *scsi.Nexus) {
			if err := b.tgt.LogicalUnitReset(b1, 0); err != nil {
				t.Fatalf("LOGICAL UNIT RESET: %v", err)
			}
			b.drainUA(b1)
			a.expectUA(a1, ascBusDeviceReset)
		}, false},
		{"A closes the unit", func(t *testing.T, a, b *node, a1, b1 *scsi.Nexus) {
			if err := a.disk.Close(); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"A dies", func(t *testing.T, a, b *node, a1, b1 *scsi.Nexus) {
			a.stopKA()
			a.client.Close() // nothing of A reaches etcd any more
		}, true},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cluster := fmt.Sprintf("scsi2-%d", i)
			a, b := newNode(t, etcd, cluster, "a", 1), newNode(t, etcd, cluster, "b", 2)
			a1, b1 := a.nexus(1, "iqn.a", 1), b.nexus(1, "iqn.b", 2)
			if c := a.exec(a1, reserve6, nil); c.Status != scsi.StatusGood {
				t.Fatalf("RESERVE (6) on A: %#x", c.Status)
			}
			if c := b.write(b1, 0); c.Status != scsi.StatusReservationConflict {
				t.Fatalf("write through B under A's reservation: %#x", c.Status)
			}
			if c := b.exec(b1, reserve6, nil); c.Status != scsi.StatusReservationConflict {
				t.Fatalf("RESERVE (6) through B under A's reservation: %#x", c.Status)
			}
			if c := b.exec(b1, release6, nil); c.Status != scsi.StatusGood {
				t.Fatalf("RELEASE (6) through B of A's reservation: %#x", c.Status)
			}
			if c := b.write(b1, 0); c.Status != scsi.StatusReservationConflict {
				t.Fatalf("write through B after its RELEASE of A's reservation: %#x", c.Status)
			}
			if c := a.write(a1, 0); c.Status != scsi.StatusGood {
				t.Fatalf("write from the holder: %#x", c.Status)
			}
			tt.end(t, a, b, a1, b1)
			if tt.wait {
				polltest.Wait(t, "B to be free", func() bool { return b.write(b1, 0).Status == scsi.StatusGood })
			} else if c := b.write(b1, 0); c.Status != scsi.StatusGood {
				t.Fatalf("write through B once the reservation ended: %#x", c.Status)
			}
			if c := b.exec(b1, reserve6, nil); c.Status != scsi.StatusGood {
				t.Fatalf("RESERVE (6) through B once A's ended: %#x", c.Status)
			}
		})
	}
}
