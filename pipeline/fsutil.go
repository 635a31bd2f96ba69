package pipeline

import (
	"audiencematch/pipeline/errkind"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"sync"
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

// hashingFile is a new file whose SHA-256 and size are computed as it is written.
type hashingFile struct {
	f     *os.File
	h     hash.Hash
	n     int64
	err   error
	later *syncer // if set, Close leaves the sync (and the close) to it
}

func createHashing(path string, perm os.FileMode) (*hashingFile, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return nil, err
	}
	return &hashingFile{f: f, h: sha256.New()}, nil
}

func (w *hashingFile) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Close syncs and closes the file; it returns the first error of either.
// With a syncer, it hands the file over to be synced and closed later.
func (w *hashingFile) Close() error {
	if w.later != nil {
		w.later.hold(w.f)
		return nil
	}
	if err := w.f.Sync(); err != nil {
		w.f.Close()
		return err
	}
	return w.f.Close()
}

// syncer holds written files until their data must be durable: the last
// files a run writes are synced while the leak guard reads them, rather
// than one after the other before it.
type syncer struct {
	mu    sync.Mutex
	files []*os.File
}

func (s *syncer) hold(f *os.File) {
	s.mu.Lock()
	s.files = append(s.files, f)
	s.mu.Unlock()
}

// start syncs and closes the files held, side by side; the channel has the
// first error once they all are done.
func (s *syncer) start() <-chan error {
	s.mu.Lock()
	files := s.files
	s.files = nil
	s.mu.Unlock()
	done := make(chan error, 1)
	go func() {
		errs := make([]error, len(files))
		var wg sync.WaitGroup
		for i, f := range files {
			wg.Go(func() {
				errs[i] = f.Sync()
				if err := f.Close(); errs[i] == nil {
					errs[i] = err
				}
			})
		}
		wg.Wait()
		done <- errors.Join(errs...)
	}()
	return done
}

// discard closes the files held without syncing them: the run failed.
func (s *syncer) discard() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.files {
		f.Close()
	}
	s.files = nil
}

func (w *hashingFile) Sum() string { return hex.EncodeToString(w.h.Sum(nil)) }

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
