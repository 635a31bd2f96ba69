package source

import "testing"

// SetCSVBlockSize makes CSV blocks n bytes long until t ends: tiny blocks
// cut a file into many, so that tests see rows straddle blocks and batches
// finish out of order.
func SetCSVBlockSize(t testing.TB, n int) {
	t.Helper()
	old := csvBlockSize
	csvBlockSize = n
	t.Cleanup(func() { csvBlockSize = old })
}
