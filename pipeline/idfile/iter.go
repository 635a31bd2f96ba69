package idfile

import (
	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/statedir"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
)

// Iter streams sorted identifiers; ok is false at the end.
type Iter interface {
	Next() (id string, ok bool, err error)
	Close() // closes what is open, if it did not reach the end
}

// SentIDs streams the identifiers of a committed run's snapshot, in order:
// from its published files under dir, checked against its record, or from
// its evidence (fromEvidence) when the files are gone.
func SentIDs(state, dir string, prev *audit.Record, scheme hashing.Scheme) (it Iter, fromEvidence bool, err error) {
	var paths []string
	missing := false
	for _, f := range prev.Files {
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		sum, err := fsutil.SHA256File(p)
		if errors.Is(err, fs.ErrNotExist) {
			missing = true
			break
		}
		if err != nil {
			return nil, false, fmt.Errorf("%w: the previous run %s is needed for removes: %w", errkind.ErrNoInput, prev.RunID, err)
		}
		if sum != f.SHA256 {
			return nil, false, fmt.Errorf("%w: previous run %s: %s does not match its audit record; run audit verify", errkind.ErrData, prev.RunID, p)
		}
		paths = append(paths, p)
	}
	if !missing {
		return NewPublishedIter(paths, scheme), false, nil
	}
	path := statedir.Evidence(state, prev.RunID)
	er, err := OpenEvidence(path)
	if err != nil {
		return nil, false, fmt.Errorf("%w: the previous run %s's output is gone and its evidence unreadable, so removes cannot be computed: %w", errkind.ErrNoInput, prev.RunID, err)
	}
	return &EvidenceIter{r: er, path: path, prev: prev, scheme: scheme}, true, nil
}

// EvidenceIter streams the identifiers a previous run sent from its
// evidence (its primary rows), in order, checking that they are strictly
// increasing, when its published parts are gone. They make its identifier
// tree, which must match its audit record: the last Next checks it before
// reporting the end, so a run never finishes on evidence that does not
// match (every delta merge reads to the end before it is closed).
type EvidenceIter struct {
	r      *EvidenceReader
	path   string
	prev   *audit.Record
	scheme hashing.Scheme
	tree   audit.TreeRoot
	last   string
	err    error
}

func (it *EvidenceIter) Next() (string, bool, error) {
	if it.err == nil {
		id, ok, err := it.next()
		if ok || err == nil {
			return id, ok, nil
		}
		it.err = err
		it.Close()
	}
	return "", false, it.err
}

func (it *EvidenceIter) next() (string, bool, error) {
	for {
		e, err := it.r.Next()
		if err == io.EOF {
			if err := audit.SameTree(it.tree.Summary(), it.prev.IDs, "previous run's identifier"); err != nil {
				return "", false, fmt.Errorf("%w: previous run %s: its evidence does not match its audit record (%v); run audit verify", errkind.ErrData, it.prev.RunID, err)
			}
			it.Close()
			return "", false, nil
		}
		if err != nil {
			return "", false, fmt.Errorf("%w: previous run %s's evidence %s: %w", errkind.ErrNoInput, it.prev.RunID, it.path, err)
		}
		if !e.Primary {
			continue
		}
		id := LeafOfEvidenceID(it.scheme, e.ID)
		if id == nil || !it.scheme.ValidID(id) {
			return "", false, fmt.Errorf("%w: previous run %s's evidence %s: an identifier does not have the shape of %s", errkind.ErrData, it.prev.RunID, it.path, it.scheme)
		}
		it.tree.Append(id)
		if it.last != "" && string(id) <= it.last {
			return "", false, fmt.Errorf("%w: previous run %s's evidence %s: its identifiers are not sorted", errkind.ErrData, it.prev.RunID, it.path)
		}
		it.last = string(id)
		return it.last, true, nil
	}
}

// Close closes the evidence file, if still open.
func (it *EvidenceIter) Close() { it.r.Close() }

// PublishedIter streams the identifiers of published parts, in order,
// checking that they are strictly increasing. An id is a substring of its
// page's values, copied once per page: one allocation per page, not per id.
type PublishedIter struct {
	paths  []string
	scheme hashing.Scheme
	r      *Pages
	vals   string   // the current page's ids, end to end
	offs   []uint32 // where they start, and the end, in a text scheme
	size   int      // of every id, in a binary scheme
	i, n   int
	last   string
}

// NewPublishedIter streams the identifiers of the parts at paths, in order.
func NewPublishedIter(paths []string, scheme hashing.Scheme) *PublishedIter {
	return &PublishedIter{paths: paths, scheme: scheme}
}

// Next returns the next identifier; ok is false at the end or on error.
// The last file is closed at the end; Close closes it before.
func (it *PublishedIter) Next() (id string, ok bool, err error) {
	for it.i == it.n {
		if err := it.fill(); err == io.EOF {
			return "", false, nil
		} else if err != nil {
			it.Close()
			return "", false, err
		}
	}
	if it.size > 0 {
		id = it.vals[it.i*it.size : (it.i+1)*it.size]
	} else {
		id = it.vals[it.offs[it.i]:it.offs[it.i+1]]
	}
	it.i++
	if it.last != "" && id <= it.last {
		it.Close()
		return "", false, fmt.Errorf("%w: previous run's identifiers are not sorted", errkind.ErrData)
	}
	it.last = id
	return id, true, nil
}

func (it *PublishedIter) fill() error {
	for {
		if it.r == nil {
			if len(it.paths) == 0 {
				return io.EOF
			}
			r, err := OpenPages(it.paths[0], it.scheme)
			if err != nil {
				return err
			}
			it.r, it.paths = r, it.paths[1:]
		}
		data, offs, err := it.r.Next()
		if err == io.EOF {
			it.Close()
			continue
		}
		if err != nil {
			return err
		}
		it.vals, it.size = string(data), it.r.size
		it.offs = append(it.offs[:0], offs...) // their page is released on the next read
		if it.i, it.n = 0, it.r.Count(data, offs); it.n > 0 {
			return nil
		}
	}
}

// Close closes the file being read, if any.
func (it *PublishedIter) Close() {
	if it.r != nil {
		it.r.Close()
		it.r = nil
	}
}
