package pipeline

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
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
			return fmt.Errorf("%w: create state directory %q: %w", ErrConfig, p, err)
		}
	}
	return nil
}

// hashingFile is a new file whose SHA-256 and size are computed as it is written.
type hashingFile struct {
	f   *os.File
	h   hash.Hash
	n   int64
	err error
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
func (w *hashingFile) Close() error {
	if err := w.f.Sync(); err != nil {
		w.f.Close()
		return err
	}
	return w.f.Close()
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
