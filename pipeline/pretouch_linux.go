package pipeline

import (
	"errors"
	"runtime"
	"sync"
	"syscall"
	"unsafe"
)

// madvPopulateWrite is Linux's MADV_POPULATE_WRITE (5.14 and later).
const madvPopulateWrite = 23

// Pretouch has the kernel map n bytes of fresh Go heap in one call, then
// frees them for the run's own allocations to reuse: the JVM's
// AlwaysPreTouch. On the 2-core VM the targets are measured on, a page the
// process touches for the first time costs about 14 µs when it faults in
// alone, against about 4 µs when populated in bulk (1M users: 24k faults,
// a tenth of the run's CPU). It returns how many bytes were populated; an
// error means the kernel could not (older than 5.14), which costs nothing
// but the gain.
func Pretouch(n int64) (int64, error) {
	if n <= 0 {
		return 0, nil
	}
	b := make([]byte, n)
	// madvise wants page-aligned bounds (a large object starts a span of its
	// own, so its start already is).
	p, page := uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(syscall.Getpagesize())
	start, end := (p+page-1)&^(page-1), (p+uintptr(n))&^(page-1)
	// The kernel populates a range on the calling thread: a range per
	// core takes a fraction of the time (1M users: 40 ms on one core, while
	// the other had nothing to do). The calling goroutine takes the first
	// range itself. In about 1 run in 10 the two still run one after the
	// other: a trace showed the other core running the runtime's
	// background sweeper for 22 ms before the second range's goroutine.
	parts := uintptr(runtime.GOMAXPROCS(0))
	step := ((end-start)/parts + page - 1) &^ (page - 1)
	errs := make([]error, parts)
	populate := func(i uintptr) {
		lo, hi := start+i*step, min(start+(i+1)*step, end)
		if lo >= hi {
			return
		}
		if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, lo, hi-lo, madvPopulateWrite); e != 0 {
			errs[i] = e
		}
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
