package audit

import (
	"encoding/binary"
	"testing"

	"golang.org/x/mod/sumdb/tlog"
)

// benchLeaves is the leaf hashes of n distinct leaves, computed once: the
// pipeline hashes leaves in its workers and only appends them in order.
func benchLeaves(n int) []tlog.Hash {
	out := make([]tlog.Hash, n)
	var b [8]byte
	for i := range out {
		binary.BigEndian.PutUint64(b[:], uint64(i))
		out[i] = tlog.RecordHash(b[:])
	}
	return out
}

// BenchmarkTreeRootAppendLeafHash is the cost per exported identifier and
// evidence row of a run: 1M leaves folded into a root.
func BenchmarkTreeRootAppendLeafHash(b *testing.B) {
	leaves := benchLeaves(1 << 20)
	b.ReportAllocs()
	for b.Loop() {
		var t TreeRoot
		for _, h := range leaves {
			t.AppendLeafHash(h)
		}
		if t.Summary().Size != int64(len(leaves)) {
			b.Fatal("wrong size")
		}
	}
	b.ReportMetric(float64(b.N)*float64(len(leaves))/b.Elapsed().Seconds(), "leaves/s")
}

// BenchmarkProverAppendLeafHash is `audit subject` streaming a run's 1M
// evidence rows to prove two of them.
func BenchmarkProverAppendLeafHash(b *testing.B) {
	leaves := benchLeaves(1 << 20)
	n := int64(len(leaves))
	b.ReportAllocs()
	for b.Loop() {
		p := NewProver(n)
		for i, h := range leaves {
			if i == 1234 || i == 765432 {
				if err := p.Mark(); err != nil {
					b.Fatal(err)
				}
			}
			p.AppendLeafHash(h)
		}
		if _, err := p.Prove(765432); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)*float64(n)/b.Elapsed().Seconds(), "leaves/s")
}
