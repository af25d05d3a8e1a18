// Package report turns benchmark samples into a summary: per case and
// target the minimum, median and maximum of the repeated runs, the ratio of
// the median to the best peer's, the target's CPU time per I/O and, where
// the client measured them, latency percentiles; it
// prints the summary as a table, writes it as TSV and draws it as SVG.
package report

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Sample is one run of one case against one target.
type Sample struct {
	Section string // host or vm
	Case    string // e.g. mem/randread-4k-qd32 or tcp/randwrite-4k-qd16
	Target  string // e.g. iserd, tgt, lio
	Value   float64
	Unit    string  // IOPS or MB/s: higher is better
	CPU     float64 // µs of CPU time per I/O; NaN when not measured
	// Latency is the command latency's 50th, 99th and 99.9th percentile in
	// µs; NaN when not measured.
	Latency [3]float64
}

// latencyQuantiles name the percentiles of Sample.Latency and Row.Latency.
var latencyQuantiles = [3]string{"p50", "p99", "p99.9"}

// ParseSamples reads tab-separated lines "section case target value unit
// cpu_us_per_io [p50_us p99_us p999_us]" (cpu and latencies "-" when not
// measured; lines without the latencies have none). Blank lines and lines
// starting with # are skipped.
func ParseSamples(r io.Reader) ([]Sample, error) {
	var out []Sample
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 6 && len(f) != 9 {
			return nil, fmt.Errorf("sample line %d: %d tab-separated fields, want 6 (section case target value unit cpu) or 9 (and p50 p99 p99.9): %q", n, len(f), line)
		}
		for i, v := range f[:3] {
			if v == "" {
				return nil, fmt.Errorf("sample line %d: field %d is empty", n, i+1)
			}
		}
		v, err := strconv.ParseFloat(f[3], 64)
		if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
			return nil, fmt.Errorf("sample line %d: value %q is not a non-negative number", n, f[3])
		}
		smp := Sample{Section: f[0], Case: f[1], Target: f[2], Value: v, Unit: f[4], Latency: [3]float64{math.NaN(), math.NaN(), math.NaN()}}
		if smp.CPU, err = optional(f[5]); err != nil {
			return nil, fmt.Errorf("sample line %d: CPU per I/O: %w", n, err)
		}
		for i := range len(f) - 6 {
			if smp.Latency[i], err = optional(f[6+i]); err != nil {
				return nil, fmt.Errorf("sample line %d: %s latency: %w", n, latencyQuantiles[i], err)
			}
		}
		out = append(out, smp)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read samples: %w", err)
	}
	return out, nil
}

// optional parses a non-negative number, or "-" for none (NaN).
func optional(s string) (float64, error) {
	if s == "-" {
		return math.NaN(), nil
	}
	v, err := strconv.ParseFloat(s, 64)
	if err != nil || v < 0 || math.IsInf(v, 0) || math.IsNaN(v) {
		return 0, fmt.Errorf("%q is neither a non-negative number nor -", s)
	}
	return v, nil
}

// Row summarises one target in one case.
type Row struct {
	Section, Case, Target, Unit string
	Runs                        int
	Min, Median, Max            float64
	// Ratio is Median over the best other target's median in the same
	// case; NaN when the case has no other target.
	Ratio float64
	// CPU is the median CPU time per I/O in µs; NaN when not measured.
	CPU float64
	// Latency holds the medians of the runs' latency percentiles (see
	// Sample.Latency); NaN when not measured.
	Latency [3]float64
}

// Summarize groups samples by section, case and target, in the order they
// first appear. Samples of one case must share a unit.
func Summarize(samples []Sample) ([]Row, error) {
	type key struct{ section, cas, target string }
	var order []key
	vals := map[key][]float64{}
	cpus := map[key][]float64{}
	lats := map[key]*[3][]float64{}
	units := map[[2]string]string{}
	for _, s := range samples {
		k := key{s.Section, s.Case, s.Target}
		ck := [2]string{s.Section, s.Case}
		if u, ok := units[ck]; ok && u != s.Unit {
			return nil, fmt.Errorf("case %s %s: samples in %s and in %s", s.Section, s.Case, u, s.Unit)
		}
		units[ck] = s.Unit
		if _, ok := vals[k]; !ok {
			order = append(order, k)
		}
		vals[k] = append(vals[k], s.Value)
		if !math.IsNaN(s.CPU) {
			cpus[k] = append(cpus[k], s.CPU)
		}
		if lats[k] == nil {
			lats[k] = new([3][]float64)
		}
		for i, l := range s.Latency {
			if !math.IsNaN(l) {
				lats[k][i] = append(lats[k][i], l)
			}
		}
	}
	rows := make([]Row, 0, len(order))
	for _, k := range order {
		v := slices.Clone(vals[k])
		slices.Sort(v)
		r := Row{Section: k.section, Case: k.cas, Target: k.target, Unit: units[[2]string{k.section, k.cas}],
			Runs: len(v), Min: v[0], Median: median(v), Max: v[len(v)-1], CPU: median(cpus[k]), Ratio: math.NaN()}
		for i, l := range lats[k] {
			r.Latency[i] = median(l)
		}
		rows = append(rows, r)
	}
	for i := range rows {
		best := math.NaN()
		for j, o := range rows {
			if j != i && o.Section == rows[i].Section && o.Case == rows[i].Case && !(o.Median <= best) {
				best = o.Median
			}
		}
		if best > 0 {
			rows[i].Ratio = rows[i].Median / best
		}
	}
	return rows, nil
}

// median of sorted values; NaN for none.
func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	v = slices.Clone(v)
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// columns of the table and of the TSV file.
var columns = []string{"section", "case", "target", "runs", "min", "median", "max", "unit", "ratio_to_best_peer", "cpu_us_per_io",
	"p50_us", "p99_us", "p999_us"}

// cells formats a row; "-" marks what was not measured.
func (r Row) cells() []string {
	return []string{r.Section, r.Case, r.Target, strconv.Itoa(r.Runs), num(r.Min), num(r.Median), num(r.Max), r.Unit,
		fixed(r.Ratio, 2), fixed(r.CPU, 1), fixed(r.Latency[0], 1), fixed(r.Latency[1], 1), fixed(r.Latency[2], 1)}
}

// num formats a throughput figure: no decimals from 100 up.
func num(v float64) string {
	if v >= 100 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func fixed(v float64, prec int) string {
	if math.IsNaN(v) {
		return "-"
	}
	return strconv.FormatFloat(v, 'f', prec, 64)
}

// WriteTSV writes the rows with a header line.
func WriteTSV(w io.Writer, rows []Row) error {
	bw := bufio.NewWriter(w)
	fmt.Fprintln(bw, strings.Join(columns, "\t"))
	for _, r := range rows {
		fmt.Fprintln(bw, strings.Join(r.cells(), "\t"))
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write summary: %w", err)
	}
	return nil
}

// WriteTable writes the rows as an aligned text table, numbers right-aligned.
func WriteTable(w io.Writer, rows []Row) error {
	all := [][]string{columns}
	for _, r := range rows {
		all = append(all, r.cells())
	}
	width := make([]int, len(columns))
	for _, c := range all {
		for i, s := range c {
			width[i] = max(width[i], len([]rune(s)))
		}
	}
	bw := bufio.NewWriter(w)
	for n, c := range all {
		if n > 1 && (c[0] != all[n-1][0] || c[1] != all[n-1][1]) {
			fmt.Fprintln(bw)
		}
		for i, s := range c {
			pad := strings.Repeat(" ", width[i]-len([]rune(s)))
			if i >= 3 && i != 7 {
				s = pad + s
			} else {
				s += pad
			}
			if i > 0 {
				bw.WriteString("  ")
			}
			bw.WriteString(s)
		}
		bw.WriteString("\n")
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write table: %w", err)
	}
	return nil
}
