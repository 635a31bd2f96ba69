package pipeline

import "testing"

// SetCSVBlockSize makes CSV blocks n bytes long for the rest of the test.
func SetCSVBlockSize(t testing.TB, n int) {
	old := csvBlockSize
	csvBlockSize = n
	t.Cleanup(func() { csvBlockSize = old })
}

// SetSplitBytes sets the size above which partitions and buckets are split
// (1: every one that holds anything) until t ends.
func SetSplitBytes(t testing.TB, n int64) {
	old := splitBytes
	splitBytes = n
	t.Cleanup(func() { splitBytes = old })
}

// SetGroupSpillsFrom sets the input size from which a run groups its
// spills (0: always, math.MaxInt64: never) until t ends.
func SetGroupSpillsFrom(t testing.TB, n int64) {
	old := groupSpillsFrom
	groupSpillsFrom = n
	t.Cleanup(func() { groupSpillsFrom = old })
}

// SetEvidenceBatch sets the most evidence rows handed to one Write (a
// multiple of 64) until t ends.
func SetEvidenceBatch(t testing.TB, n int) {
	old := evidenceBatch
	evidenceBatch = n
	t.Cleanup(func() { evidenceBatch = old })
}
