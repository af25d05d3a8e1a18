// Command benchreport summarises the samples bench/run.sh collected: it
// prints a table (min/median/max per case and target, ratio to the best
// peer, CPU time per I/O), writes the same as TSV and draws an SVG chart.
//
//	benchreport -in bench/results/samples.tsv -tsv bench/results/latest.tsv -svg bench/results/latest.svg
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/iserd/iserd/bench/report"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("benchreport", flag.ContinueOnError)
	in := fs.String("in", "", "samples file: section, case, target, value, unit, cpu µs/IO, tab-separated (required)")
	tsv := fs.String("tsv", "", "write the summary here as TSV")
	svg := fs.String("svg", "", "draw the summary here as SVG")
	title := fs.String("title", "iserd benchmark", "chart title")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *in == "" || fs.NArg() > 0 {
		return fmt.Errorf("usage: benchreport -in SAMPLES [-tsv FILE] [-svg FILE] [-title TEXT]")
	}
	f, err := os.Open(*in)
	if err != nil {
		return fmt.Errorf("open samples: %w", err)
	}
	defer f.Close()
	samples, err := report.ParseSamples(f)
	if err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	rows, err := report.Summarize(samples)
	if err != nil {
		return fmt.Errorf("%s: %w", *in, err)
	}
	if err := report.WriteTable(os.Stdout, rows); err != nil {
		return err
	}
	if *tsv != "" {
		if err := writeFile(*tsv, func(f *os.File) error { return report.WriteTSV(f, rows) }); err != nil {
			return err
		}
	}
	if *svg != "" {
		if err := writeFile(*svg, func(f *os.File) error { return report.WriteSVG(f, *title, rows) }); err != nil {
			return err
		}
	}
	return nil
}

// writeFile creates path and fills it with write.
func writeFile(path string, write func(*os.File) error) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	if err := write(f); err != nil {
		f.Close()
		return fmt.Errorf("%s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", path, err)
	}
	return nil
}
