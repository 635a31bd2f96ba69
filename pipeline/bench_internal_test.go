package pipeline

import (
	"encoding/binary"
	"fmt"
	"path/filepath"
	"testing"

	"audiencematch/consent"
	"audiencematch/hashing"
	"audiencematch/pipeline/spill"
)

const benchIDs = 500000

// spillHolders spills n holders into a new spill of parts buckets, as the
// join does: holder i has number +447400 and six digits of what of(i)
// gives first, and its status; user id u<i>, event id e, line i+2.
func spillHolders(tb testing.TB, parts, n int, of func(i int) (int, consent.Status)) (*spill.Spill, *idBucketer) {
	tb.Helper()
	k, _ := hashing.DeriveDestKey(hashing.TestKey(tb), "meta-ads")
	h, _ := hashing.NewHasher(hashing.HMACSHA256, k)
	s, err := spill.New(filepath.Join(tb.TempDir(), "ids.spill"), parts, spill.Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { s.Close() })
	w, bk := s.Writer(), newIDBucketer(hashing.HMACSHA256, parts)
	for i := range n {
		number, status := of(i)
		id := h.AppendID(nil, fmt.Sprintf("+447400%06d", number))
		p := bk.of(id)
		buf := spill.AppendStr(spill.AppendStr(spill.AppendStr(w.Buf(p), string(id)), fmt.Sprintf("u%d", i)), "e")
		w.Put(p, binary.AppendUvarint(append(buf, byte(status)), uint64(i+2)))
	}
	if err := w.Flush(); err != nil {
		tb.Fatal(err)
	}
	return s, bk
}

// BenchmarkResolve is the write stage's reading of the join's buckets:
// 500k spilled holders (a tenth of them sharing a number, one in fifty
// withdrawn) loaded, sorted and put through the shared-number rule.
func BenchmarkResolve(b *testing.B) {
	s, bk := spillHolders(b, spillParts, benchIDs, func(i int) (int, consent.Status) {
		n, status := i, consent.Valid
		if i%10 == 0 {
			n = i / 2
		}
		if i%50 == 0 {
			status = consent.Withdrawn
		}
		return n, status
	})
	exported := int64(0)
	for b.Loop() {
		exported = 0
		err := eachResolved(b.Context(), []*spill.Spill{s}, spillParts, 2, true, bk, b.TempDir(), defaultSpillThresholds.splitBytes, func(rb *resolvedBucket, release func()) error {
			exported += rb.counts.exported
			release()
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	if exported == 0 {
		b.Fatal("nothing exported")
	}
	b.ReportMetric(float64(benchIDs)*float64(b.N)/b.Elapsed().Seconds(), "holders/s")
}
