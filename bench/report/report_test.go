package report

import (
	"bytes"
	"encoding/xml"
	"io"
	"math"
	"strings"
	"testing"
)

const sampleText = `# comment
host	mem/randread-4k-qd32	iserd	60000	IOPS	10.5	100	200	300
host	mem/randread-4k-qd32	tgt	30000	IOPS	20
host	mem/randread-4k-qd32	iserd	66000	IOPS	11.5	120	240	-
host	mem/randread-4k-qd32	tgt	20000	IOPS	22
host	mem/randread-4k-qd32	iserd	62000	IOPS	12.5	110	220	330

vm	tcp/randread-4k-qd16	lio	5000	IOPS	-
vm	tcp/randread-4k-qd16	iserd	4000	IOPS	-
vm	tcp/randread-4k-qd16	tgt	2000	IOPS	-
vm	iser/read-128k-qd8	iserd	300	MB/s	-
`

func TestParseSamples(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		n       int
		wantErr string
	}{
		{name: "good", in: sampleText, n: 9},
		{name: "empty", in: "", n: 0},
		{name: "five fields", in: "host\tc\tt\t1\tIOPS\n", wantErr: "5 tab-separated fields"},
		{name: "spaces", in: "host c t 1 IOPS -\n", wantErr: "1 tab-separated fields"},
		{name: "bad value", in: "host\tc\tt\tx\tIOPS\t-\n", wantErr: "value \"x\""},
		{name: "negative value", in: "host\tc\tt\t-3\tIOPS\t-\n", wantErr: "value \"-3\""},
		{name: "NaN value", in: "host\tc\tt\tNaN\tIOPS\t-\n", wantErr: "value \"NaN\""},
		{name: "bad cpu", in: "host\tc\tt\t1\tIOPS\tabc\n", wantErr: "CPU per I/O: \"abc\""},
		{name: "empty target", in: "host\tc\t\t1\tIOPS\t-\n", wantErr: "field 3 is empty"},
		{name: "seven fields", in: "host\tc\tt\t1\tIOPS\t-\t5\n", wantErr: "7 tab-separated fields"},
		{name: "bad latency", in: "host\tc\tt\t1\tIOPS\t-\t5\tx\t7\n", wantErr: "p99 latency: \"x\""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := ParseSamples(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("ParseSamples: %v, want an error containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || len(s) != tc.n {
				t.Fatalf("ParseSamples: %d samples, %v; want %d", len(s), err, tc.n)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	samples, err := ParseSamples(strings.NewReader(sampleText))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := Summarize(samples)
	if err != nil {
		t.Fatal(err)
	}
	nan := math.NaN()
	none := [3]float64{nan, nan, nan}
	want := []Row{
		{Section: "host", Case: "mem/randread-4k-qd32", Target: "iserd", Unit: "IOPS", Runs: 3, Min: 60000, Median: 62000, Max: 66000, Ratio: 62000.0 / 25000, CPU: 11.5,
			Latency: [3]float64{110, 220, 315}},
		{Section: "host", Case: "mem/randread-4k-qd32", Target: "tgt", Unit: "IOPS", Runs: 2, Min: 20000, Median: 25000, Max: 30000, Ratio: 25000.0 / 62000, CPU: 21, Latency: none},
		{Section: "vm", Case: "tcp/randread-4k-qd16", Target: "lio", Unit: "IOPS", Runs: 1, Min: 5000, Median: 5000, Max: 5000, Ratio: 5000.0 / 4000, CPU: nan, Latency: none},
		{Section: "vm", Case: "tcp/randread-4k-qd16", Target: "iserd", Unit: "IOPS", Runs: 1, Min: 4000, Median: 4000, Max: 4000, Ratio: 0.8, CPU: nan, Latency: none},
		{Section: "vm", Case: "tcp/randread-4k-qd16", Target: "tgt", Unit: "IOPS", Runs: 1, Min: 2000, Median: 2000, Max: 2000, Ratio: 0.4, CPU: nan, Latency: none},
		{Section: "vm", Case: "iser/read-128k-qd8", Target: "iserd", Unit: "MB/s", Runs: 1, Min: 300, Median: 300, Max: 300, Ratio: nan, CPU: nan, Latency: none},
	}
	if len(rows) != len(want) {
		t.Fatalf("%d rows, want %d: %+v", len(rows), len(want), rows)
	}
	same := func(a, b float64) bool { return a == b || math.IsNaN(a) && math.IsNaN(b) || math.Abs(a-b) < 1e-9 }
	for i, w := range want {
		g := rows[i]
		if g.Section != w.Section || g.Case != w.Case || g.Target != w.Target || g.Unit != w.Unit || g.Runs != w.Runs ||
			g.Min != w.Min || g.Median != w.Median || g.Max != w.Max || !same(g.Ratio, w.Ratio) || !same(g.CPU, w.CPU) ||
			!same(g.Latency[0], w.Latency[0]) || !same(g.Latency[1], w.Latency[1]) || !same(g.Latency[2], w.Latency[2]) {
			t.Errorf("row %d = %+v, want %+v", i, g, w)
		}
	}
	if _, err := Summarize([]Sample{{Section: "h", Case: "c", Target: "a", Unit: "IOPS"}, {Section: "h", Case: "c", Target: "b", Unit: "MB/s"}}); err == nil {
		t.Error("Summarize accepted one case in two units")
	}
}

func TestWriters(t *testing.T) {
	samples, err := ParseSamples(strings.NewReader(sampleText))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := Summarize(samples)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		write func(io.Writer) error
		want  []string
	}{
		{name: "table", write: func(w io.Writer) error { return WriteTable(w, rows) }, want: []string{
			"ratio_to_best_peer", "mem/randread-4k-qd32  iserd      3  60000   62000  66000  IOPS                2.48           11.5   110.0   220.0    315.0\n",
			"iser/read-128k-qd8    iserd      1    300     300    300  MB/s                   -              -       -       -        -\n",
			"p999_us\nhost "}},
		{name: "tsv", write: func(w io.Writer) error { return WriteTSV(w, rows) }, want: []string{
			"section\tcase\ttarget\truns\tmin\tmedian\tmax\tunit\tratio_to_best_peer\tcpu_us_per_io\tp50_us\tp99_us\tp999_us\n",
			"host\tmem/randread-4k-qd32\tiserd\t3\t60000\t62000\t66000\tIOPS\t2.48\t11.5\t110.0\t220.0\t315.0\n",
			"host\tmem/randread-4k-qd32\ttgt\t2\t20000\t25000\t30000\tIOPS\t0.40\t21.0\t-\t-\t-\n",
			"vm\ttcp/randread-4k-qd16\tlio\t1\t5000\t5000\t5000\tIOPS\t1.25\t-\t-\t-\t-\n"}},
		{name: "svg", write: func(w io.Writer) error { return WriteSVG(w, "a <b> & c", rows) }, want: []string{
			"a &lt;b&gt; &amp; c", "62000  x2.48  11.5 µs CPU/IO  latency p50/p99/p99.9 110/220/315 µs", "vm iser/read-128k-qd8 (MB/s, median of 1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := tc.write(&buf); err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(buf.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, buf.String())
				}
			}
		})
	}
}

// TestSVGWellFormed parses the chart as XML and counts one bar per row.
func TestSVGWellFormed(t *testing.T) {
	samples, _ := ParseSamples(strings.NewReader(sampleText))
	rows, _ := Summarize(samples)
	var buf bytes.Buffer
	if err := WriteSVG(&buf, "chart", rows); err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(&buf)
	rects := 0
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("chart is not well-formed XML: %v", err)
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "rect" {
			rects++
		}
	}
	if rects != len(rows)+1 { // +1: the background
		t.Errorf("%d rects, want %d bars and a background", rects, len(rows))
	}
}
