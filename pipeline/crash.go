package pipeline

import (
	"os"
	"syscall"
)

// CrashEnv names a stage at which the process kills itself with SIGKILL, as
// a machine failure would: a test hook for the crash-safety tests. Stages:
// consent, users, normalize, numbers, identifiers, write, staged, evidence,
// published, committed.
const CrashEnv = "AUDIENCEMATCH_TEST_CRASH_AT"

func crashPoint(stage string) error {
	if os.Getenv(CrashEnv) == stage {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
	return nil
}
