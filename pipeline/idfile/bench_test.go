package idfile

import (
	"audiencematch/hashing"
	"crypto/rand"
	"path/filepath"
	"slices"
	"testing"
)

const benchIDs = 500000

func randomIDs(n int) []string {
	ids := make([]string, n)
	b := make([]byte, 32)
	for i := range ids {
		rand.Read(b)
		ids[i] = string(b)
	}
	slices.Sort(ids)
	return ids
}

// BenchmarkWriteParts is the Parquet writer on 500k sorted identifiers.
func BenchmarkWriteParts(b *testing.B) {
	ids := randomIDs(benchIDs)
	cfg := Layout{RowsPerFile: DefaultRowsPerFile, RowsPerGroup: DefaultRowsPerGroup, ToolVersion: "bench"}
	for b.Loop() {
		w, err := NewPartWriter(filepath.Join(b.TempDir(), "out"), nil, cfg, hashing.HMACSHA256, "0011223344556677")
		if err != nil {
			b.Fatal(err)
		}
		for _, id := range ids {
			if err := w.Add(id); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchIDs)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}

// BenchmarkPublishedIter is the delta's reading of the previous run's
// 500k identifiers.
func BenchmarkPublishedIter(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "out")
	cfg := Layout{RowsPerFile: DefaultRowsPerFile, RowsPerGroup: DefaultRowsPerGroup, ToolVersion: "bench"}
	writeIDs(b, dir, cfg, hashing.HMACSHA256, randomIDs(benchIDs))
	for b.Loop() {
		it := NewPublishedIter([]string{filepath.Join(dir, "part-00000.parquet")}, hashing.HMACSHA256)
		n := 0
		for {
			_, ok, err := it.Next()
			if err != nil {
				b.Fatal(err)
			}
			if !ok {
				break
			}
			n++
		}
		if n != benchIDs {
			b.Fatalf("%d ids", n)
		}
	}
	b.ReportMetric(float64(benchIDs)*float64(b.N)/b.Elapsed().Seconds(), "ids/s")
}
