package pipeline

import (
	"audiencematch/pipeline/errkind"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/gofrs/flock"
)

// LockFile is the run lock under the state directory. Its content names the
// holder (pid and start time) for the message a second run prints.
const LockFile = "run.lock"

// runLock holds the state directory for one run: cron, systemd or a
// scheduler may start a second run while the first is still going.
type runLock struct{ fl *flock.Flock }

func acquireLock(ctx context.Context, state string, now time.Time, wait time.Duration) (*runLock, error) {
	path := filepath.Join(state, LockFile)
	fl := flock.New(path, flock.SetPermissions(0o600))
	var ok bool
	var err error
	if wait > 0 {
		wctx, cancel := context.WithTimeout(ctx, wait)
		ok, err = fl.TryLockContext(wctx, 500*time.Millisecond)
		cancel()
		if errors.Is(err, context.DeadlineExceeded) {
			ok, err = false, nil
		}
	} else {
		ok, err = fl.TryLock()
	}
	if err != nil {
		return nil, fmt.Errorf("%w: run lock %s: %w", errkind.ErrTempFail, path, err)
	}
	if !ok {
		holder, _ := os.ReadFile(path)
		return nil, fmt.Errorf("%w: another run holds %s (%s); this run exits without doing anything", errkind.ErrTempFail, path, describeHolder(string(holder)))
	}
	// The lock is on the file, not its content: rewrite the content now.
	info := fmt.Sprintf("pid=%d started=%s\n", os.Getpid(), now.UTC().Format(time.RFC3339))
	if err := os.WriteFile(path, []byte(info), 0o600); err != nil {
		fl.Unlock()
		return nil, fmt.Errorf("run lock %s: %w", path, err)
	}
	return &runLock{fl: fl}, nil
}

func describeHolder(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return "holder unknown"
	}
	fields := strings.Fields(s)
	for _, f := range fields {
		if pid, ok := strings.CutPrefix(f, "pid="); ok {
			if _, err := strconv.Atoi(pid); err != nil {
				return "holder unknown"
			}
		}
	}
	return "held by " + strings.Join(fields, ", ")
}

func (l *runLock) Release() error { return l.fl.Unlock() }

// cleanStaging removes what a killed run left under STATE/staging, and the
// hidden ".tmp-" copies a cross-file-system publish may have left in OUT.
// It runs under the lock, so nothing else is writing there.
func cleanStaging(state, out, destination string) (int, error) {
	n := 0
	dir := filepath.Join(state, "staging")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return n, err
		}
		n++
	}
	tmps, _ := filepath.Glob(filepath.Join(out, destination, "dt=*", ".tmp-*"))
	for _, t := range tmps {
		if err := os.RemoveAll(t); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// LockState takes the run lock of the state directory for work beside runs
// that appends to the audit log (oprf evaluate): the log has one writer at
// a time. It fails at once, or after wait, with an errkind.ErrTempFail
// error when another process holds it.
func LockState(ctx context.Context, state string, wait time.Duration) (release func() error, err error) {
	if err := ensureStateDirs(state); err != nil {
		return nil, err
	}
	l, err := acquireLock(ctx, state, time.Now(), wait)
	if err != nil {
		return nil, err
	}
	return l.Release, nil
}
