package iser

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/iserd/iserd/iscsi"
)

// FuzzParseMessage feeds arbitrary received messages to the iSER header
// decoder: it must not panic, and what it accepts must be an iSCSI control
// PDU whose header, AHS and data lie inside the message, with the STags
// the header's valid bits announce and none it does not, whatever the
// header it decodes into held before.
func FuzzParseMessage(f *testing.F) {
	f.Fuzz(func(t *testing.T, msg []byte) {
		stale := iscsi.RemoteBuffer{STag: 0xdead, VA: 0xbeef, Valid: true}
		h := iscsi.Header{ReadBuf: stale, WriteBuf: stale, AHS: []byte{1}}
		off, err := parseMessage(msg, &h)
		if err != nil {
			return
		}
		if len(msg) < hdrLen+iscsi.BHSLen || msg[0]&flagOpMask != flagCtrl {
			t.Fatalf("accepted a %d-byte message with flags %#x", len(msg), msg[0])
		}
		if !bytes.Equal(h.BHS[:], msg[hdrLen:hdrLen+iscsi.BHSLen]) {
			t.Fatal("the BHS is not the message's")
		}
		if off != hdrLen+iscsi.BHSLen+h.TotalAHSLen() || len(h.AHS) != h.TotalAHSLen() || off+h.DataLen() > len(msg) {
			t.Fatalf("data at %d, %d AHS bytes (BHS: %d), %d data bytes, in a %d-byte message",
				off, len(h.AHS), h.TotalAHSLen(), h.DataLen(), len(msg))
		}
		if len(h.AHS) > 0 && &h.AHS[0] != &msg[hdrLen+iscsi.BHSLen] {
			t.Fatal("the AHS is not the message's")
		}
		for _, b := range []struct {
			name     string
			got      iscsi.RemoteBuffer
			flag     byte
			stag, va int
		}{
			{"write", h.WriteBuf, flagWSV, offWriteSTag, offWriteVA},
			{"read", h.ReadBuf, flagRSV, offReadSTag, offReadVA},
		} {
			want := iscsi.RemoteBuffer{}
			if msg[0]&b.flag != 0 {
				want = iscsi.RemoteBuffer{STag: binary.BigEndian.Uint32(msg[b.stag:]), VA: binary.BigEndian.Uint64(msg[b.va:]), Valid: true}
			}
			if b.got != want {
				t.Fatalf("%s buffer %+v, want %+v", b.name, b.got, want)
			}
		}
	})
}
