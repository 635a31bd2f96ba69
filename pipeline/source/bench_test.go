package source_test

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	pq "github.com/parquet-go/parquet-go"

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

// benchPartUsers is the audience of the parts benchmarks: small by
// default, AUDIENCEMATCH_BENCH_USERS for the figures in PERFORMANCE.md
// (10000000).
func benchPartUsers(b *testing.B) int {
	if s := os.Getenv("AUDIENCEMATCH_BENCH_USERS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			b.Fatal(err)
		}
		return n
	}
	return 200000
}

// benchUserParts writes the users table of n fixture users as one
// Parquet file and as the same rows in 64 parts under key=value
// directories, and returns both.
func benchUserParts(b *testing.B, n int) (file, dir string) {
	b.Helper()
	st, err := fixtures.WriteFiles(b.TempDir(), fixtures.Options{Users: n, Seed: 1, Format: "parquet"})
	if err != nil {
		b.Fatal(err)
	}
	t, err := source.OpenTable(st.UsersPath, source.UserColumns)
	if err != nil {
		b.Fatal(err)
	}
	defer t.Close()
	type user struct {
		UserID  string `parquet:"user_id"`
		Phone   string `parquet:"phone"`
		Country string `parquet:"country"`
	}
	dir = b.TempDir()
	const parts = 64
	per := (n + parts - 1) / parts
	var w *pq.GenericWriter[user]
	var f *os.File
	closePart := func() {
		if w != nil {
			if err := errors.Join(w.Close(), f.Close()); err != nil {
				b.Fatal(err)
			}
		}
	}
	for i := 0; ; i++ {
		row, err := t.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		if i%per == 0 {
			closePart()
			p := filepath.Join(dir, fmt.Sprintf("region=r%d", i/per%4), fmt.Sprintf("part-%05d.parquet", i/per))
			os.MkdirAll(filepath.Dir(p), 0o700)
			if f, err = os.Create(p); err != nil {
				b.Fatal(err)
			}
			w = pq.NewGenericWriter[user](f, pq.MaxRowsPerRowGroup(64<<10), pq.Compression(&pq.Zstd))
		}
		if _, err := w.Write([]user{{row.Fields[0], row.Fields[1], row.Fields[2]}}); err != nil {
			b.Fatal(err)
		}
	}
	closePart()
	return st.UsersPath, dir
}

// BenchmarkReadUserParts reads the users table from one Parquet file and
// from the same users in 64 parts, on every core as a run does (parsing
// aside): a directory of parts should cost what one file does per row.
func BenchmarkReadUserParts(b *testing.B) {
	file, dir := benchUserParts(b, benchPartUsers(b))
	for _, c := range []struct{ name, spec string }{{"one-file", file}, {"64-parts", dir}} {
		b.Run(c.name, func(b *testing.B) {
			var rows atomic.Int64
			for b.Loop() {
				t, err := source.FileSource{Users: c.spec, Consent: c.spec}.Open(b.Context(), source.TableUsers, source.UserColumns)
				if err != nil {
					b.Fatal(err)
				}
				br := source.Batches(t)
				var wg sync.WaitGroup
				for range runtime.GOMAXPROCS(0) {
					wg.Go(func() {
						var bt source.Batch
						for br.NextBatch(&bt) == nil {
							rows.Add(int64(len(bt.Rows)))
							br.Release(&bt)
						}
					})
				}
				wg.Wait()
				t.Close()
			}
			b.ReportMetric(float64(rows.Load())/b.Elapsed().Seconds(), "rows/s")
		})
	}
}
