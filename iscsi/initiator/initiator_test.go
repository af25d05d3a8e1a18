package initiator

import (
	"bytes"
	"net"
	"slices"
	"testing"

	"github.com/iserd/iserd/iscsi"
)

func TestCDBs(t *testing.T) {
	cases := []struct {
		name string
		cdb  []byte
		want []byte
	}{
		{"READ(16)", Read16(0x0102030405060708, 0x0a0b0c0d),
			[]byte{0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b, 0x0c, 0x0d, 0, 0}},
		{"WRITE(16)", Write16(1, 8), []byte{0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0}},
	}
	for _, tc := range cases {
		if !bytes.Equal(tc.cdb, tc.want) {
			t.Errorf("%s: %x, want %x", tc.name, tc.cdb, tc.want)
		}
	}
}

func TestParseList(t *testing.T) {
	cases := []struct {
		name    string
		data    string
		want    []iscsi.KV
		wantErr bool
	}{
		{"repeated keys", "TargetName=a\x00TargetAddress=x,1\x00TargetName=b\x00TargetAddress=x,1\x00",
			[]iscsi.KV{{Key: "TargetName", Value: "a"}, {Key: "TargetAddress", Value: "x,1"},
				{Key: "TargetName", Value: "b"}, {Key: "TargetAddress", Value: "x,1"}}, false},
		{"padding", "K=v\x00\x00\x00", []iscsi.KV{{Key: "K", Value: "v"}}, false},
		{"empty", "", nil, false},
		{"no equals sign", "K=v\x00junk\x00", nil, true},
	}
	for _, tc := range cases {
		got, err := parseList([]byte(tc.data))
		if (err != nil) != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, %v; want %v (error %v)", tc.name, got, err, tc.want, tc.wantErr)
		}
	}
}

// TestEncodeFraming checks padding and the digests around a data segment.
func TestEncodeFraming(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	c := New(a)
	cases := []struct {
		name         string
		hdr, dataDig bool
		data         []byte
		wantLen      int
	}{
		{"no digests, padded", false, false, []byte("abcde"), 48 + 8},
		{"header digest", true, false, nil, 48 + 4},
		{"data digest, no data", false, true, nil, 48},
		{"both digests, padded", true, true, []byte("abcde"), 48 + 4 + 8 + 4},
	}
	for _, tc := range cases {
		c.hdrDigest, c.dataDigest = tc.hdr, tc.dataDig
		p := &PDU{Data: tc.data}
		p.BHS[0] = byte(iscsi.OpNOPOut)
		f, err := c.Encode(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(f) != tc.wantLen {
			t.Errorf("%s: %d bytes, want %d", tc.name, len(f), tc.wantLen)
			continue
		}
		if got := (*iscsi.BHS)(f[:48]).DataLen(); got != len(tc.data) {
			t.Errorf("%s: DataSegmentLength %d, want %d", tc.name, got, len(tc.data))
		}
		// Reading the frame back checks both digests.
		go a.Write(f)
		r := New(b)
		r.hdrDigest, r.dataDigest = tc.hdr, tc.dataDig
		got, err := r.readPDU()
		if err != nil {
			t.Fatalf("%s: read back: %v", tc.name, err)
		}
		if !bytes.Equal(got.Data, tc.data) {
			t.Errorf("%s: data %q, want %q", tc.name, got.Data, tc.data)
		}
	}
}
