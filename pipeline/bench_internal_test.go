package pipeline

import (
	"crypto/rand"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

	"audiencematch/consent"
	"audiencematch/hashing"
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
	cfg := &Config{RowsPerFile: DefaultRowsPerFile, RowsPerGroup: DefaultRowsPerGroup, ToolVersion: "bench"}
	for b.Loop() {
		w, err := newPartWriter(filepath.Join(b.TempDir(), "out"), cfg, hashing.HMACSHA256, "0011223344556677")
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

// BenchmarkLeakGuard is the guard over 500k identifiers, with 1.5M input
// values registered (a million-user run's phones, E.164s and user ids).
func BenchmarkLeakGuard(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "out")
	cfg := &Config{RowsPerFile: DefaultRowsPerFile, RowsPerGroup: DefaultRowsPerGroup, ToolVersion: "bench"}
	w, _ := newPartWriter(dir, cfg, hashing.HMACSHA256, "")
	for _, id := range randomIDs(benchIDs) {
		w.Add(id)
	}
	w.Close()
	g := newLeakGuard(1)
	for i := 0; i < benchIDs; i++ {
		g.Add(fmt.Sprintf("acct-%09d", i))
		g.Add(fmt.Sprintf("+44 7400 %06d", i))
		g.Add(fmt.Sprintf("+447400%06d", i))
	}
	b.ResetTimer()
	for b.Loop() {
		if err := g.Check(dir, hashing.HMACSHA256, hashing.HMACSHA256); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchIDs)*float64(b.N)/b.Elapsed().Seconds(), "ids/s")
}

// BenchmarkNumbersAndIdentifiers is the shared-number rule and HMAC over
// 500k holders (a tenth of them sharing a number).
func BenchmarkNumbersAndIdentifiers(b *testing.B) {
	k, _ := hashing.DeriveDestKey(hashing.TestKey(b), "meta-ads")
	base := make([]holder, benchIDs)
	for i := range base {
		n := i
		if i%10 == 0 {
			n = i / 2
		}
		base[i] = holder{userID: fmt.Sprintf("u%d", i), eventID: "e", e164: fmt.Sprintf("+447400%06d", n), status: consent.Valid}
		if i%50 == 0 {
			base[i].status = consent.Withdrawn
		}
	}
	for b.Loop() {
		r := &run{cfg: Config{Scheme: hashing.HMACSHA256, Key: k, Workers: 2}, m: newManifest(&Config{Scheme: hashing.HMACSHA256}), guard: newLeakGuard(1)}
		r.holders = slices.Clone(base)
		if err := r.hashIdentifiers(b.Context()); err != nil {
			b.Fatal(err)
		}
		if err := r.resolveNumbers(b.Context()); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchIDs)*float64(b.N)/b.Elapsed().Seconds(), "holders/s")
}
