package pipeline

import (
	"audiencematch/pipeline/errkind"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// ensureStateDirs creates the private state layout, owner-only.
func ensureStateDirs(state string) error {
	for _, d := range []string{"", "staging", "runs"} {
		p := filepath.Join(state, d)
		if err := os.MkdirAll(p, 0o700); err != nil {
			return fmt.Errorf("%w: create state directory %q: %w", errkind.ErrConfig, p, err)
		}
	}
	return nil
}

// usage is the process's CPU time so far and its minor page faults: on a
// virtual machine, the first touch of a page of memory is costly enough to
// show in a stage's time.
func usage() (cpu time.Duration, minorFaults int64) {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0, 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), ru.Minflt
}
