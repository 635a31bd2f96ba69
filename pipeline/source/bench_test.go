package source_test

import (
	"io"
	"testing"

	"audiencematch/fixtures"
	"audiencematch/pipeline/source"
)

const benchUsers = 100000

// benchEvents writes the consent events table of 100k fixture users in
// format ("csv" or "parquet") and returns its path.
func benchEvents(b *testing.B, format string) string {
	b.Helper()
	st, err := fixtures.WriteFiles(b.TempDir(), fixtures.Options{Users: benchUsers, Seed: 1, Format: format})
	if err != nil {
		b.Fatal(err)
	}
	return st.EventsPath
}

// BenchmarkReadCSV is the CSV reader alone, on the consent events table.
func BenchmarkReadCSV(b *testing.B) { benchRead(b, benchEvents(b, "csv")) }

// BenchmarkReadParquet is the Parquet reader alone, on the same table as
// Parquet (less its rows of broken quoting).
func BenchmarkReadParquet(b *testing.B) { benchRead(b, benchEvents(b, "parquet")) }

// benchRead reads every row of the consent events table at path.
func benchRead(b *testing.B, path string) {
	var rows int64
	for b.Loop() {
		t, err := source.OpenTable(path, source.EventColumns)
		if err != nil {
			b.Fatal(err)
		}
		for {
			if _, err := t.Next(); err == io.EOF {
				break
			} else if err != nil {
				b.Fatal(err)
			}
			rows++
		}
		t.Close()
	}
	b.ReportMetric(float64(rows)/b.Elapsed().Seconds(), "rows/s")
}
