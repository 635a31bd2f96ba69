package pipeline

import (
	"slices"
	"testing"
)

func TestChunked(t *testing.T) {
	for _, n := range []int{0, 1, chunkLen - 1, chunkLen, 3*chunkLen + 7} {
		var c, o chunked[int]
		var want []int
		for i := range n {
			c.add(i)
			want = append(want, i)
		}
		o.add(-1)
		c.take(&o, []int{-2, -3})
		want = append(want, -1, -2, -3)
		c.add(-4) // after a taken slice: a new chunk, the slice untouched
		want = append(want, -4)
		if o.n != 0 || c.n != len(want) {
			t.Fatalf("n=%d: c.n=%d o.n=%d, want %d and 0", n, c.n, o.n, len(want))
		}
		for _, r := range [][2]int{{0, n}, {n / 3, n - n/5}, {chunkLen - 2, chunkLen + 2}} {
			if r[1] > n || r[0] > r[1] {
				continue
			}
			if got := c.appendRange([]int{100}, r[0], r[1]); !slices.Equal(got, append([]int{100}, want[r[0]:r[1]]...)) {
				t.Fatalf("n=%d: appendRange(%d, %d) = %v... (%d)", n, r[0], r[1], got[:min(len(got), 10)], len(got))
			}
		}
		got := c.moveTo([]int{100})
		if !slices.Equal(got, append([]int{100}, want...)) || c.n != 0 {
			t.Fatalf("n=%d: moveTo = %v (c.n=%d)", n, got[:min(len(got), 10)], c.n)
		}
	}
}
