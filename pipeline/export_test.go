package pipeline

import "testing"

// setUntilEnd sets *p to v until t ends.
func setUntilEnd[T any](t testing.TB, p *T, v T) {
	old := *p
	*p = v
	t.Cleanup(func() { *p = old })
}

// SetSpillThresholds makes cfg's run split the partitions and buckets
// larger than splitBytes (1: every one that holds anything) and group its
// spills from groupFrom bytes of input (0: always, math.MaxInt64: never).
func SetSpillThresholds(cfg *Config, splitBytes, groupFrom int64) {
	cfg.spills = &spillThresholds{splitBytes: splitBytes, groupFrom: groupFrom}
}
