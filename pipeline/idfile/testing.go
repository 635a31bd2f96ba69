package idfile

import "testing"

// SetEvidenceBatch sets the most evidence rows handed to one Write (a
// multiple of evidenceChunk) until t ends: tests check that the evidence's
// bytes do not depend on it.
func SetEvidenceBatch(t testing.TB, n int) {
	old := evidenceBatch
	evidenceBatch = n
	t.Cleanup(func() { evidenceBatch = old })
}
