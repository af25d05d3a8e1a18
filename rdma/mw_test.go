//go:build linux

package rdma

import "testing"

func TestMWBindWR(t *testing.T) {
	pd, other := &PD{}, &PD{}
	mr := &MR{pd: pd, LKey: 0x99, Addr: 0x10000, Len: 0x1000}
	tests := []struct {
		name         string
		rkey         uint32 // the window's key before
		pd           *PD
		addr, length uint64
		access       Access
		wantRKey     uint32 // 0: BindWR fails
	}{
		{"whole region", 0x4500, pd, 0x10000, 0x1000, AccessRemoteRead | AccessRemoteWrite, 0x4501},
		{"key byte wraps", 0x45ff, pd, 0x10800, 16, AccessRemoteRead, 0x4500},
		{"other PD", 0x4500, other, 0x10000, 16, AccessRemoteRead, 0},
		{"before the region", 0x4500, pd, 0xfff0, 32, AccessRemoteRead, 0},
		{"past the region", 0x4500, pd, 0x10ff0, 32, AccessRemoteRead, 0},
		{"empty", 0x4500, pd, 0x10000, 0, AccessRemoteRead, 0},
		{"local access", 0x4500, pd, 0x10000, 16, AccessLocalWrite, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mw := &MW{pd: tt.pd, RKey: tt.rkey}
			wr, err := mw.BindWR(7, mr, tt.addr, tt.length, tt.access)
			if tt.wantRKey == 0 {
				if err == nil || mw.RKey != tt.rkey {
					t.Fatalf("BindWR = %v, key %#x; want an error and the key unchanged", err, mw.RKey)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			want := MWBind{MWRKey: tt.rkey, RKey: tt.wantRKey, MRLKey: 0x99, Addr: tt.addr, Length: tt.length, Access: tt.access}
			if wr.ID != 7 || wr.Opcode != OpBindMW || wr.Flags != SendSignaled || wr.Bind != want || mw.RKey != tt.wantRKey {
				t.Errorf("BindWR = %+v, key %#x; want bind %+v", wr, mw.RKey, want)
			}
		})
	}
}
