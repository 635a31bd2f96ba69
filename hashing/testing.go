package hashing

import "testing"

// TestKey returns the master key of MATCHING.md's known answer: the 32 bytes
// 0x00..0x1f.
func TestKey(t testing.TB) MasterKey {
	t.Helper()
	b := make([]byte, 32)
	for i := range b {
		b[i] = byte(i)
	}
	k, err := NewMasterKey(b)
	if err != nil {
		t.Fatal(err)
	}
	return k
}
