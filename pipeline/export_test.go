package pipeline

import "testing"

// setUntilEnd sets *p to v until t ends.
func setUntilEnd[T any](t testing.TB, p *T, v T) {
	old := *p
	*p = v
	t.Cleanup(func() { *p = old })
}

// SetSplitBytes sets the size above which partitions and buckets are split
// (1: every one that holds anything) until t ends.
func SetSplitBytes(t testing.TB, n int64) { setUntilEnd(t, &splitBytes, n) }

// SetGroupSpillsFrom sets the input size from which a run groups its
// spills (0: always, math.MaxInt64: never) until t ends.
func SetGroupSpillsFrom(t testing.TB, n int64) { setUntilEnd(t, &groupSpillsFrom, n) }

// SetEvidenceBatch sets the most evidence rows handed to one Write (a
// multiple of 64) until t ends.
func SetEvidenceBatch(t testing.TB, n int) { setUntilEnd(t, &evidenceBatch, n) }
