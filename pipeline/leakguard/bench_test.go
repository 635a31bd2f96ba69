package leakguard

import (
	"crypto/rand"
	"fmt"
	"path/filepath"
	"slices"
	"testing"

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

// BenchmarkLeakGuard is the guard over 500k identifiers, with 1.5M input
// values registered (a million-user run's phones, E.164s and user ids), of
// which 300 are as long as an identifier (junk phones in the fixtures are),
// so that every id is looked up among the exact hashes.
func BenchmarkLeakGuard(b *testing.B) {
	dir := filepath.Join(b.TempDir(), "out")
	cfg := &guardCfg{Scheme: hashing.HMACSHA256}
	writeRunIDs(b, dir, cfg, randomIDs(benchIDs))
	e := cfg.expect()
	g := New(1, b.TempDir(), Options{})
	for i := 0; i < benchIDs; i++ {
		g.Add(fmt.Sprintf("acct-%09d", i))
		g.Add(fmt.Sprintf("+44 7400 %06d", i))
		g.Add(fmt.Sprintf("+447400%06d", i))
	}
	for i := range 300 {
		g.Add(fmt.Sprintf("+44 7400 %06d ext. %011d", i, i)) // 32 bytes
	}
	b.ResetTimer()
	for b.Loop() {
		if err := g.Check(dir, e, hashing.HMACSHA256); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(benchIDs)*float64(b.N)/b.Elapsed().Seconds(), "ids/s")
}
