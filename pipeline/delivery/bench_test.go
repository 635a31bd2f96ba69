package delivery_test

import (
	"crypto/rand"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/internal/objstore"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/idfile"
)

// BenchmarkPublish publishes a run of random hmac-sha256 identifiers
// (AUDIENCEMATCH_BENCH_IDS, default 200,000; the figure in PERFORMANCE.md
// is for 10,000,000) to a file:// root and, when scripts/s3.sh's server is
// up (AUDIENCEMATCH_TEST_S3_URL), to S3: the staged parts and manifest
// written create-only with their SHA-256, then _SUCCESS.
func BenchmarkPublish(b *testing.B) {
	n := 200000
	if s := os.Getenv("AUDIENCEMATCH_BENCH_IDS"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil {
			b.Fatal(err)
		}
	}
	staged, digests, size := stageRun(b, n)
	roots := map[string]string{"file": "file://" + b.TempDir()}
	if u := os.Getenv("AUDIENCEMATCH_TEST_S3_URL"); u != "" {
		roots["s3"] = objstore.Join(u, fmt.Sprintf("bench%d", time.Now().UnixNano()))
	} else {
		b.Log("AUDIENCEMATCH_TEST_S3_URL is not set: S3 skipped (eval \"$(scripts/s3.sh start)\")")
	}
	for _, name := range []string{"file", "s3"} {
		root, ok := roots[name]
		if !ok {
			continue
		}
		b.Run(name, func(b *testing.B) {
			_, isLocal := objstore.LocalPath(root)
			i, at := 0, time.Now().UnixNano() // every publish a new run
			for b.Loop() {
				b.StopTimer()
				// A local publish renames the staged directory away: give it a copy.
				src := staged
				if isLocal {
					src = filepath.Join(b.TempDir(), "publish")
					os.Mkdir(src, 0o700)
					if err := fsutil.CopyDir(staged, src); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				already, err := delivery.Publish(b.Context(), root, fmt.Sprintf("meta-ads/dt=2026-11-01/run=%d-%d", at, i), src, 0o750, digests)
				if err != nil || already {
					b.Fatalf("publish: already %v, %v", already, err)
				}
				i++
			}
			b.ReportMetric(float64(n)*float64(b.N)/b.Elapsed().Seconds(), "ids/s")
			b.ReportMetric(float64(size)*float64(b.N)/b.Elapsed().Seconds()/(1<<20), "MiB/s")
		})
	}
}

// stageRun writes n sorted random identifiers as a run's snapshot parts
// and a manifest, and returns the directory, each file's digest and the
// bytes in all.
func stageRun(b *testing.B, n int) (string, map[string]string, int64) {
	dir := filepath.Join(b.TempDir(), "publish")
	ids := make([]string, n)
	buf := make([]byte, 32*n)
	rand.Read(buf)
	for i := range ids {
		ids[i] = string(buf[32*i : 32*i+32])
	}
	slices.Sort(ids)
	w, err := idfile.NewPartWriter(filepath.Join(dir, delivery.SnapshotDir), nil,
		idfile.Layout{RowsPerFile: idfile.DefaultRowsPerFile, RowsPerGroup: idfile.DefaultRowsPerGroup, ToolVersion: "bench"}, hashing.HMACSHA256, "")
	if err != nil {
		b.Fatal(err)
	}
	for _, id := range ids {
		if err := w.Add(id); err != nil {
			b.Fatal(err)
		}
	}
	files, err := w.Close()
	if err != nil {
		b.Fatal(err)
	}
	digests := map[string]string{}
	size := int64(0)
	for _, f := range files {
		digests[delivery.SnapshotDir+"/"+f.Path] = f.SHA256
		size += f.Bytes
	}
	manifest := []byte(`{"version":"bench"}` + "\n")
	if err := os.WriteFile(filepath.Join(dir, "manifest.json"), manifest, 0o644); err != nil {
		b.Fatal(err)
	}
	sum, err := fsutil.SHA256File(filepath.Join(dir, "manifest.json"))
	if err != nil {
		b.Fatal(err)
	}
	digests["manifest.json"] = sum
	return dir, digests, size
}
