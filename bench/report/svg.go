package report

import (
	"bufio"
	"fmt"
	"html"
	"io"
	"math"
)

// Chart geometry in SVG user units.
const (
	chartWidth = 1020
	labelWidth = 260 // case and target names left of the bars
	barArea    = 480 // the best median's bar spans this much
	barHeight  = 14
	rowGap     = 4
	caseGap    = 22 // room for the case heading
)

// palette colours targets in order of first appearance.
var palette = []string{"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"}

// WriteSVG draws one horizontal bar per row: the median, scaled to the
// largest maximum of its case, with a whisker from minimum to maximum and
// the figure and ratio to the best peer beside it.
func WriteSVG(w io.Writer, title string, rows []Row) error {
	colour := map[string]string{}
	for _, r := range rows {
		if _, ok := colour[r.Target]; !ok {
			colour[r.Target] = palette[len(colour)%len(palette)]
		}
	}
	height := 40
	for i, r := range rows {
		if i == 0 || r.Section != rows[i-1].Section || r.Case != rows[i-1].Case {
			height += caseGap
		}
		height += barHeight + rowGap
	}
	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", chartWidth, height+10)
	fmt.Fprintf(bw, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(bw, `<text x="10" y="24" font-size="16" font-weight="bold">%s</text>`+"\n", html.EscapeString(title))
	y := 40
	scale := 0.0
	for i, r := range rows {
		if i == 0 || r.Section != rows[i-1].Section || r.Case != rows[i-1].Case {
			y += caseGap
			fmt.Fprintf(bw, `<text x="10" y="%d" font-weight="bold">%s %s (%s, median of %d; whisker: min-max)</text>`+"\n",
				y-6, html.EscapeString(r.Section), html.EscapeString(r.Case), html.EscapeString(r.Unit), r.Runs)
			scale = caseMax(rows, i)
		}
		x0 := float64(labelWidth)
		px := func(v float64) float64 {
			if scale <= 0 {
				return x0
			}
			return x0 + v/scale*barArea
		}
		fmt.Fprintf(bw, `<text x="%d" y="%d">%s</text>`+"\n", 30, y+barHeight-3, html.EscapeString(r.Target))
		fmt.Fprintf(bw, `<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>`+"\n", x0, y, px(r.Median)-x0, barHeight, colour[r.Target])
		mid := y + barHeight/2
		fmt.Fprintf(bw, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="black"/>`+"\n", px(r.Min), mid, px(r.Max), mid)
		for _, v := range []float64{r.Min, r.Max} {
			fmt.Fprintf(bw, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="black"/>`+"\n", px(v), y+2, px(v), y+barHeight-2)
		}
		label := num(r.Median)
		if !math.IsNaN(r.Ratio) {
			label += fmt.Sprintf("  x%.2f", r.Ratio)
		}
		if !math.IsNaN(r.CPU) {
			label += fmt.Sprintf("  %.1f µs CPU/IO", r.CPU)
		}
		if !math.IsNaN(r.Latency[0]) {
			label += fmt.Sprintf("  latency p50/p99/p99.9 %s/%s/%s µs", fixed(r.Latency[0], 0), fixed(r.Latency[1], 0), fixed(r.Latency[2], 0))
		}
		fmt.Fprintf(bw, `<text x="%.1f" y="%d">%s</text>`+"\n", px(max(r.Max, r.Median))+6, y+barHeight-3, html.EscapeString(label))
		y += barHeight + rowGap
	}
	fmt.Fprintln(bw, "</svg>")
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write chart: %w", err)
	}
	return nil
}

// caseMax is the largest maximum among the rows of the case starting at i.
func caseMax(rows []Row, i int) float64 {
	m := 0.0
	for _, r := range rows[i:] {
		if r.Section != rows[i].Section || r.Case != rows[i].Case {
			break
		}
		m = max(m, r.Max)
	}
	return m
}
