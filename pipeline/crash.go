package pipeline

import (
	"os"
	"syscall"

	"audiencematch/pipeline/delivery"
)

// CrashEnv names a stage at which the process kills itself with SIGKILL, as
// a machine failure would: a test hook for the crash-safety tests. Stages:
// consent, users, normalize, numbers, identifiers, write, staged, evidence,
// uploading (after a publish to an object store writes its first object),
// published, committed.
const CrashEnv = "AUDIENCEMATCH_TEST_CRASH_AT"

func crashPoint(stage string) error {
	if os.Getenv(CrashEnv) == stage {
		syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // the signal is on its way
	}
	return nil
}

// A publish to an object store has no single moment of truth: the crash
// tests also kill it after its first object ("uploading").
func init() {
	if os.Getenv(CrashEnv) == "uploading" {
		delivery.SetUploadHook(func(string) error { return crashPoint("uploading") })
	}
}
