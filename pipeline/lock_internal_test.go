package pipeline

import (
	"audiencematch/pipeline/errkind"
	"context"
	"errors"
	"testing"
	"time"
)

// TestLockWait: with a wait, a second holder gets the lock once the first
// releases it; without one (or when the wait runs out) it fails at once
// with a temporary failure.
func TestLockWait(t *testing.T) {
	state := t.TempDir()
	ctx := context.Background()
	first, err := acquireLock(ctx, state, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acquireLock(ctx, state, time.Now(), 0); !errors.Is(err, errkind.ErrTempFail) {
		t.Fatalf("second lock without a wait: %v", err)
	}
	if _, err := acquireLock(ctx, state, time.Now(), 300*time.Millisecond); !errors.Is(err, errkind.ErrTempFail) {
		t.Fatalf("second lock after its wait ran out: %v", err)
	}
	got := make(chan error, 1)
	go func() {
		l, err := acquireLock(ctx, state, time.Now(), time.Minute)
		if err == nil {
			l.Release()
		}
		got <- err
	}()
	first.Release()
	if err := <-got; err != nil {
		t.Fatalf("waiting lock after the release: %v", err)
	}
}
