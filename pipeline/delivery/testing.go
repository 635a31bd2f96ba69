package delivery

import "testing"

// SetAfterPut makes every publish to an object store call fn after each
// file it writes (its path in the run), until t ends; an error from fn
// stops the publish there, as a killed run would stop.
func SetAfterPut(t testing.TB, fn func(rel string) error) {
	t.Helper()
	afterPut = fn
	t.Cleanup(func() { afterPut = nil })
}
