package iscsi_test

import (
	"fmt"
	"testing"

	"github.com/iserd/iserd/iscsi"
	"github.com/iserd/iserd/iscsi/initiator"
)

// TestWriteReadBack writes through every combination of immediate,
// unsolicited and solicited data and reads the data back.
func TestWriteReadBack(t *testing.T) {
	cases := []struct {
		name string
		// targetMRDSL, when set, is the target's MaxRecvDataSegmentLength.
		targetMRDSL uint32
		keys        []iscsi.KV
		size        int
		// wantImm, wantUnsol, wantR2Ts describe how the data must travel.
		wantImm, wantUnsol, wantR2Ts int
	}{
		{"immediate only", 0, kv("ImmediateData", "Yes", "InitialR2T", "Yes"), 4096, 4096, 0, 0},
		{"immediate then R2T", 0, kv("ImmediateData", "Yes", "InitialR2T", "Yes", "FirstBurstLength", "8192"), 64 << 10, 8192, 0, 1},
		{"R2T only", 0, kv("ImmediateData", "No", "InitialR2T", "Yes"), 64 << 10, 0, 0, 1},
		{"unsolicited Data-Out only", 8192, kv("ImmediateData", "No", "InitialR2T", "No", "FirstBurstLength", "65536"), 64 << 10, 0, 8, 0},
		{"immediate and unsolicited then R2T", 8192, kv("ImmediateData", "Yes", "InitialR2T", "No",
			"FirstBurstLength", "32768"), 64 << 10, 8192, 3, 1},
		{"small bursts many R2Ts", 0, kv("ImmediateData", "No", "InitialR2T", "Yes", "MaxBurstLength", "4096",
			"FirstBurstLength", "4096", "MaxOutstandingR2T", "1"), 64 << 10, 0, 0, 16},
		{"outstanding R2Ts", 0, kv("ImmediateData", "No", "InitialR2T", "Yes", "MaxBurstLength", "8192",
			"FirstBurstLength", "512", "MaxOutstandingR2T", "4"), 256 << 10, 0, 0, 32},
		{"one big burst", 0, kv("ImmediateData", "No", "InitialR2T", "Yes", "MaxBurstLength", "1048576"), 1 << 20, 0, 0, 1},
		{"unsolicited burst then R2Ts", 0, kv("ImmediateData", "No", "InitialR2T", "No", "FirstBurstLength", "512",
			"MaxBurstLength", "65536"), 1<<20 + 512, 0, 1, 16},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, func(o *iscsi.Options) {
				if tc.targetMRDSL != 0 {
					o.Limits.MaxRecvDataSegmentLength = tc.targetMRDSL
				}
			})
			c := e.login(t, tc.keys...)
			lba := uint64(i) * 4096
			data := pattern(tc.size, byte(i+1))
			w := writeBlocks(t, c, lba, data)
			if w.ImmediateBytes != tc.wantImm || w.UnsolicitedPDUs != tc.wantUnsol || w.R2Ts != tc.wantR2Ts {
				t.Errorf("write traveled as %d immediate bytes, %d unsolicited PDUs, %d R2Ts; want %d, %d, %d (params %+v)",
					w.ImmediateBytes, w.UnsolicitedPDUs, w.R2Ts, tc.wantImm, tc.wantUnsol, tc.wantR2Ts, c.Params())
			}
			if p := c.Params(); w.MaxR2TLength > p.MaxBurstLength || w.MaxDataOutSegment > int(p.MaxXmitDataSegmentLength) {
				t.Errorf("R2T of %d bytes or Data-Out of %d bytes beyond the negotiated %+v", w.MaxR2TLength, w.MaxDataOutSegment, p)
			}
			r := readBlocks(t, c, lba, tc.size)
			checkSame(t, "read-back", r.Data, data)
		})
	}
}

// TestDataInSplit reads 1 MiB with small receive segments and bursts and
// checks how the Data-In PDUs were cut.
func TestDataInSplit(t *testing.T) {
	e := newEnv(t, nil)
	const size = 1 << 20
	cases := []struct {
		mrdsl, burst int
	}{
		{512, 262144},
		{512, 4096},
		{8192, 65536},
		{262144, 1 << 20},
	}
	seed := e.login(t)
	data := pattern(size, 0x5a)
	writeBlocks(t, seed, 0, data)
	for _, tc := range cases {
		t.Run(fmt.Sprintf("mrdsl %d burst %d", tc.mrdsl, tc.burst), func(t *testing.T) {
			c := e.login(t, kv("MaxRecvDataSegmentLength", fmt.Sprint(tc.mrdsl), "MaxBurstLength", fmt.Sprint(tc.burst))...)
			r := readBlocks(t, c, 0, size)
			checkSame(t, "read", r.Data, data)
			if r.MaxDataInSegment > tc.mrdsl {
				t.Errorf("Data-In segment of %d bytes beyond MaxRecvDataSegmentLength %d", r.MaxDataInSegment, tc.mrdsl)
			}
			if want := size / tc.mrdsl; r.DataInPDUs != want {
				t.Errorf("%d Data-In PDUs, want %d", r.DataInPDUs, want)
			}
			if want := size / tc.burst; r.Bursts != want {
				t.Errorf("%d Data-In sequences (F bits), want %d", r.Bursts, want)
			}
			if !r.StatusInDataIn {
				t.Error("GOOD status was not collapsed into the last Data-In")
			}
		})
	}
}

// TestResiduals checks overflow and underflow for reads and writes whose
// expected length differs from what the CDB transfers.
func TestResiduals(t *testing.T) {
	e := newEnv(t, nil)
	c := e.login(t)
	cases := []struct {
		name        string
		cmd         initiator.Command
		wantOver    bool
		wantUnder   bool
		wantResid   uint32
		wantDataLen int
	}{
		{"read exact", initiator.Command{CDB: initiator.Read16(0, 8), ReadLen: 4096}, false, false, 0, 4096},
		{"read overflow", initiator.Command{CDB: initiator.Read16(0, 8), ReadLen: 1024}, true, false, 3072, 1024},
		{"read underflow", initiator.Command{CDB: initiator.Read16(0, 2), ReadLen: 4096}, false, true, 3072, 1024},
		{"write overflow", initiator.Command{CDB: initiator.Write16(100, 8), DataOut: pattern(2048, 1)}, true, false, 2048, 0},
		{"write underflow", initiator.Command{CDB: initiator.Write16(100, 2), DataOut: pattern(4096, 1)}, false, true, 3072, 0},
		{"no data expected", initiator.Command{CDB: initiator.Read16(0, 4)}, true, false, 2048, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := c.Do(ctxT(t), &tc.cmd)
			if err != nil {
				t.Fatal(err)
			}
			if r.Overflow != tc.wantOver || r.Underflow != tc.wantUnder || r.Residual != tc.wantResid {
				t.Errorf("O=%v U=%v residual %d (status 0x%02x sense %x); want O=%v U=%v residual %d",
					r.Overflow, r.Underflow, r.Residual, r.Status, r.Sense, tc.wantOver, tc.wantUnder, tc.wantResid)
			}
			if len(r.Data) != tc.wantDataLen {
				t.Errorf("%d bytes of Data-In, want %d", len(r.Data), tc.wantDataLen)
			}
		})
	}
}
