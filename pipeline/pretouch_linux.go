package pipeline

import (
	"errors"
	"runtime"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Pretouch has the kernel map n bytes of fresh Go heap in one call
// (madvise MADV_POPULATE_WRITE, Linux 5.14 and later), then frees them for
// the run's own allocations to reuse: the JVM's AlwaysPreTouch. On virtual
// machines where a page's first touch faults expensively, populating in
// bulk costs a fraction of faulting page by page (docs/PERFORMANCE.md has
// the figures). It returns how many bytes were populated; an error means
// the kernel could not, which costs nothing but the gain.
func Pretouch(n int64) (int64, error) {
	if n <= 0 {
		return 0, nil
	}
	b := make([]byte, n)
	// madvise wants page-aligned bounds (a large object starts a span of its
	// own, so its start already is).
	p, page := uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(unix.Getpagesize())
	start, end := (p+page-1)&^(page-1), (p+uintptr(n))&^(page-1)
	// The kernel populates a range on the calling thread, so each core
	// takes a share; the calling goroutine takes the first itself.
	parts := uintptr(runtime.GOMAXPROCS(0))
	step := ((end-start)/parts + page - 1) &^ (page - 1)
	errs := make([]error, parts)
	populate := func(i uintptr) {
		lo, hi := start+i*step, min(start+(i+1)*step, end)
		if lo >= hi {
			return
		}
		errs[i] = unix.Madvise(b[lo-p:hi-p], unix.MADV_POPULATE_WRITE)
	}
	var wg sync.WaitGroup
	for i := uintptr(1); i < parts; i++ {
		wg.Go(func() { populate(i) })
	}
	populate(0)
	wg.Wait()
	err := errors.Join(errs...)
	runtime.KeepAlive(b)
	runtime.GC() // the span goes back to the heap, its pages kept
	if err != nil {
		return 0, err
	}
	return int64(end - start), nil
}
