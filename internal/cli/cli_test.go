package cli

import (
	"slices"
	"strings"
	"testing"
)

func TestLongFlags(t *testing.T) {
	cases := []struct{ in, want string }{
		{"-config /etc/iserd.yaml", "--config /etc/iserd.yaml"},
		{"--config x", "--config x"},
		{"-open=false -max-sessions 4", "--open=false --max-sessions 4"},
		{"-h -v", "-h -v"},
		{"--secret-file -", "--secret-file -"},
		{"-wait 10s -1", "--wait 10s -1"},
		{"lun add t 0 -- -path", "lun add t 0 -- -path"},
		{"-x=1", "-x=1"},
	}
	for _, c := range cases {
		if got := strings.Join(LongFlags(strings.Fields(c.in)), " "); got != c.want {
			t.Errorf("LongFlags(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	in := []string{"-json"}
	LongFlags(in)
	if !slices.Equal(in, []string{"-json"}) {
		t.Error("LongFlags changed its argument")
	}
}

func TestVersion(t *testing.T) {
	v := Version()
	for _, want := range []string{"revision", "built with go"} {
		if !strings.Contains(v, want) {
			t.Errorf("Version() = %q lacks %q", v, want)
		}
	}
}
