package pipeline

import "testing"

// setUntilEnd sets *p to v until t ends.
func setUntilEnd[T any](t testing.TB, p *T, v T) {
	old := *p
	*p = v
	t.Cleanup(func() { *p = old })
}

// SetCSVBlockSize makes CSV blocks n bytes long for the rest of the test.
func SetCSVBlockSize(t testing.TB, n int) { setUntilEnd(t, &csvBlockSize, n) }

// SetSplitBytes sets the size above which partitions and buckets are split
// (1: every one that holds anything) until t ends.
func SetSplitBytes(t testing.TB, n int64) { setUntilEnd(t, &splitBytes, n) }

// SetGroupSpillsFrom sets the input size from which a run groups its
// spills (0: always, math.MaxInt64: never) until t ends.
func SetGroupSpillsFrom(t testing.TB, n int64) { setUntilEnd(t, &groupSpillsFrom, n) }
