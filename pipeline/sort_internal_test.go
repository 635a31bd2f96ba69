package pipeline

import (
	"cmp"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestParallelSort: the same order as slices.SortFunc under a total order,
// for any size and worker count.
func TestParallelSort(t *testing.T) {
	type kv struct{ k, v int }
	rng := rand.New(rand.NewPCG(1, 2))
	for _, n := range []int{0, 1, 5, 1 << 16, 1<<16 + 7, 300_001} {
		for _, w := range []int{1, 2, 3, 8} {
			s := make([]kv, n)
			for i := range s {
				s[i] = kv{rng.IntN(n/3 + 1), i}
			}
			total := func(a, b kv) int { return cmp.Or(cmp.Compare(a.k, b.k), cmp.Compare(a.v, b.v)) }
			want := slices.Clone(s)
			slices.SortFunc(want, total)
			parallelSort(s, w, total)
			if !slices.Equal(s, want) {
				t.Fatalf("n=%d workers=%d: not sorted", n, w)
			}
		}
	}
}
