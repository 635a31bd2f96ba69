package fsutil

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"hash"
	"io"
	"os"
	"sync"
)

// SHA256File is the lowercase hex SHA-256 of a file's content, read in
// pieces, so that memory does not grow with the file: the digest the
// manifest and the audit log record for every published file and input.
func SHA256File(path string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// HashingFile is a new file whose SHA-256 and size are computed as it is
// written, so that a published file is never read back to be digested.
type HashingFile struct {
	f     *os.File
	h     hash.Hash
	n     int64
	Later *Syncer // if set, Close leaves the sync (and the close) to it
}

// CreateHashing creates path, which must not exist, with perm.
func CreateHashing(path string, perm os.FileMode) (*HashingFile, error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return nil, err
	}
	return &HashingFile{f: f, h: sha256.New()}, nil
}

func (w *HashingFile) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.h.Write(p[:n])
	w.n += int64(n)
	return n, err
}

// Close syncs and closes the file; it returns the first error of either.
// With a Syncer, it hands the file over to be synced and closed later.
func (w *HashingFile) Close() error {
	if w.Later != nil {
		w.Later.hold(w.f)
		return nil
	}
	if err := w.f.Sync(); err != nil {
		w.f.Close()
		return err
	}
	return w.f.Close()
}

// Sum is the hex SHA-256 of what was written.
func (w *HashingFile) Sum() string { return hex.EncodeToString(w.h.Sum(nil)) }

// Size is how many bytes were written.
func (w *HashingFile) Size() int64 { return w.n }

// Syncer holds written files until their data must be durable: the last
// files a run writes are synced while the leak guard reads them, rather
// than one after the other before it.
type Syncer struct {
	mu    sync.Mutex
	files []*os.File
}

func (s *Syncer) hold(f *os.File) {
	s.mu.Lock()
	s.files = append(s.files, f)
	s.mu.Unlock()
}

// Start syncs and closes the files held, side by side; the channel has the
// first error once they all are done.
func (s *Syncer) Start() <-chan error {
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

// Discard closes the files held without syncing them: the run failed.
func (s *Syncer) Discard() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, f := range s.files {
		f.Close()
	}
	s.files = nil
}

// ReadFileSHA256 reads a small file (a manifest, a shard's index) and
// returns its content with its hex SHA-256, for a caller that checks the
// digest before it parses the bytes.
func ReadFileSHA256(path string) (string, []byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", nil, err
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:]), b, nil
}
