package leakguard

import "testing"

// SmallPasses makes every guard take an exact pass per group that holds
// hashes and index as few raw bytes at once as it can, until t ends, so
// that a test goes through the passes and batches a large run takes. Tests
// that call it must not run in parallel with other guards' checks.
func SmallPasses(t testing.TB) {
	t.Helper()
	pass, raw := guardPassBytes, guardRawBytes
	guardPassBytes, guardRawBytes = 1, 1
	t.Cleanup(func() { guardPassBytes, guardRawBytes = pass, raw })
}
