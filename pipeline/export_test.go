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
