package pipeline

// chunked is an append-only sequence kept in fixed-size chunks. Appending
// never copies what is already there, whereas growing one large slice
// copies it at every doubling, and touching that much fresh memory can cost
// more than the work itself (it does on a virtual machine whose host maps
// pages lazily: 10x, measured, for 3M appends).
type chunked[T any] struct {
	chunks [][]T
	n      int
}

const chunkLen = 1 << 14

func (c *chunked[T]) add(v T) {
	if k := len(c.chunks); k == 0 || len(c.chunks[k-1]) == cap(c.chunks[k-1]) {
		c.chunks = append(c.chunks, make([]T, 0, chunkLen))
	}
	last := &c.chunks[len(c.chunks)-1]
	*last = append(*last, v)
	c.n++
}

// at returns element i (chunks are full but the last, when only add fills c).
func (c *chunked[T]) at(i int) *T { return &c.chunks[i/chunkLen][i%chunkLen] }

// appendRange appends elements [lo, hi) to dst (chunks are full but the
// last, when only add fills c).
func (c *chunked[T]) appendRange(dst []T, lo, hi int) []T {
	for lo < hi {
		ch := c.chunks[lo/chunkLen]
		end := min(hi-lo+lo%chunkLen, len(ch))
		dst = append(dst, ch[lo%chunkLen:end]...)
		lo += end - lo%chunkLen
	}
	return dst
}

// moveTo appends the elements to dst, growing it once, and empties c.
func (c *chunked[T]) moveTo(dst []T) []T {
	if c.n == 0 {
		return dst
	}
	if cap(dst)-len(dst) < c.n {
		grown := make([]T, len(dst), len(dst)+c.n)
		copy(grown, dst)
		dst = grown
	}
	for _, ch := range c.chunks {
		dst = append(dst, ch...)
	}
	*c = chunked[T]{}
	return dst
}

// take moves o's elements, then s's, to the end of c without copying them.
func (c *chunked[T]) take(o *chunked[T], s []T) {
	c.chunks = append(c.chunks, o.chunks...)
	c.n += o.n
	*o = chunked[T]{}
	if len(s) > 0 {
		c.chunks = append(c.chunks, s[:len(s):len(s)])
		c.n += len(s)
	}
}
