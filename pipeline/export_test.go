package pipeline

import "testing"

// SetCSVBlockSize makes CSV blocks n bytes long for the rest of the test.
func SetCSVBlockSize(t testing.TB, n int) {
	old := csvBlockSize
	csvBlockSize = n
	t.Cleanup(func() { csvBlockSize = old })
}
