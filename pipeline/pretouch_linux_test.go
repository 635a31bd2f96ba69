package pipeline_test

import (
	"errors"
	"runtime"
	"runtime/debug"
	"syscall"
	"testing"

	"audiencematch/pipeline"
)

// TestPretouch checks that Pretouch has the kernel populate the memory (the
// process's minor faults grow by its pages, counted as the kernel maps
// them) and that the memory stays with the heap for reuse rather than going
// back to the system.
func TestPretouch(t *testing.T) {
	const n = 32 << 20
	debug.FreeOSMemory() // whatever the heap keeps idle faults in again when reused
	var before syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &before); err != nil {
		t.Fatal(err)
	}
	got, err := pipeline.Pretouch(n)
	if errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSYS) {
		t.Skipf("the kernel has no MADV_POPULATE_WRITE: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	var after syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &after); err != nil {
		t.Fatal(err)
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	page := int64(syscall.Getpagesize())
	if got < n-2*page || got > n {
		t.Errorf("populated %d bytes, want about %d", got, n)
	}
	if faults := after.Minflt - before.Minflt; faults < got/page/2 {
		t.Errorf("%d minor faults while populating %d pages: the memory was not populated", faults, got/page)
	}
	if kept := int64(ms.HeapIdle - ms.HeapReleased); kept < got/2 {
		t.Errorf("the heap keeps %d idle bytes not released after pretouching %d", kept, got)
	}
	if got, err := pipeline.Pretouch(0); got != 0 || err != nil {
		t.Errorf("Pretouch(0) = %d, %v; want 0, nil", got, err)
	}
}
