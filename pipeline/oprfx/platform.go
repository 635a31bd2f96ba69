package oprfx

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sync"

	"github.com/parquet-go/parquet-go"

	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/manifest"
)

// BlindResult counts what Blind did.
type BlindResult struct {
	Rows, Blinded, Invalid int64
	RequestSHA256          string
}

// Blind reads the numbers file, normalizes its phone column (with its
// optional country column) as MATCHING.md section 3 does, blinds each valid
// number and writes the request and, owner-only, the secrets.
func Blind(ctx context.Context, destination, numbers, request, secrets string) (*BlindResult, error) {
	if _, err := os.Lstat(secrets); err == nil {
		return nil, fmt.Errorf("%w: %s exists; refusing to overwrite the blinds of an earlier request (finalize it, or remove it)", errkind.ErrUsage, secrets)
	}
	t, err := readTable(numbers)
	if err != nil {
		return nil, err
	}
	phone, country := t.index(ColPhone), t.index(ColCountry)
	if phone < 0 {
		return nil, fmt.Errorf("%w: %s has no %q column", errkind.ErrConfig, numbers, ColPhone)
	}
	res := &BlindResult{Rows: int64(len(t.rows))}
	e164s := make([]string, len(t.rows))
	var rows []int64
	for i, r := range t.rows {
		c := ""
		if country >= 0 {
			c = r[country]
		}
		if e, err := hashing.Normalize(r[phone], c); err == nil {
			e164s[i] = e
			rows = append(rows, int64(i))
		}
	}
	res.Blinded, res.Invalid = int64(len(rows)), res.Rows-int64(len(rows))
	if len(rows) == 0 {
		return nil, fmt.Errorf("%w: %s holds no valid phone number", errkind.ErrData, numbers)
	}
	req := make([]requestRow, len(rows))
	sec := make([]secretRow, len(rows))
	err = parallel(ctx, len(rows), func(i int) error {
		b, err := hashing.BlindE164(e164s[rows[i]])
		if err != nil {
			return err
		}
		req[i].Blinded, sec[i] = b.Blinded, secretRow{Row: rows[i], Blind: b.Blind}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// The request takes its name after the secrets are written: a request
	// whose blinds are lost is budget spent for nothing.
	tmp := request + ".partial"
	defer os.Remove(tmp)
	if err := writeParquet(tmp, 0o644, req); err != nil {
		return nil, fmt.Errorf("write request: %w", err)
	}
	if res.RequestSHA256, err = fsutil.SHA256File(tmp); err != nil {
		return nil, err
	}
	err = writeParquet(secrets, 0o600, sec,
		parquet.KeyValueMetadata(MetaDestination, destination),
		parquet.KeyValueMetadata(MetaNumbersSHA256, t.digest),
		parquet.KeyValueMetadata(MetaRequestSHA256, res.RequestSHA256))
	if err != nil {
		return nil, fmt.Errorf("write secrets: %w", err)
	}
	if err := os.Rename(tmp, request); err != nil {
		return nil, err
	}
	return res, nil
}

// FinalizeResult counts what Finalize did.
type FinalizeResult struct{ IDs int64 }

// Finalize unblinds a response into the identifiers of the numbers the
// secrets blinded, beside the numbers file's columns.
func Finalize(ctx context.Context, destination, numbers, secrets, response, out string) (*FinalizeResult, error) {
	t, err := readTable(numbers)
	if err != nil {
		return nil, err
	}
	sec, meta, err := readSecrets(secrets)
	if err != nil {
		return nil, err
	}
	if meta[MetaNumbersSHA256] != t.digest {
		return nil, fmt.Errorf("%w: %s is not the numbers file %s was made from (its SHA-256 differs): finalize with the file blind read", errkind.ErrUsage, numbers, secrets)
	}
	if d := meta[MetaDestination]; d != destination {
		return nil, fmt.Errorf("%w: %s blinded numbers for destination %q, not %q", errkind.ErrUsage, secrets, d, destination)
	}
	ev, err := readElements(response, ColEvaluated)
	if err != nil {
		return nil, err
	}
	if len(ev) != len(sec) {
		return nil, fmt.Errorf("%w: %s has %d rows, the request had %d: not its response", errkind.ErrData, response, len(ev), len(sec))
	}
	phone, country := t.index(ColPhone), t.index(ColCountry)
	if phone < 0 {
		return nil, fmt.Errorf("%w: %s has no %q column", errkind.ErrConfig, numbers, ColPhone)
	}
	rows := make([]idsRow, len(sec))
	err = parallel(ctx, len(sec), func(i int) error {
		s := sec[i]
		if s.Row < 0 || s.Row >= int64(len(t.rows)) {
			return fmt.Errorf("%w: %s row %d names numbers row %d of %d", errkind.ErrData, secrets, i+1, s.Row, len(t.rows))
		}
		r := t.rows[s.Row]
		c := ""
		if country >= 0 {
			c = r[country]
		}
		e164, err := hashing.Normalize(r[phone], c)
		if err != nil {
			return fmt.Errorf("%w: numbers row %d no longer normalizes", errkind.ErrData, s.Row+1)
		}
		id, err := hashing.FinalizeE164(e164, s.Blind, ev[i][:])
		if err != nil {
			return fmt.Errorf("%w: %s row %d: %w", errkind.ErrData, response, i+1, err)
		}
		rows[i] = idsRow{cells: r, id: [64]byte(id)}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := writeIDs(out, t.columns, rows); err != nil {
		return nil, err
	}
	return &FinalizeResult{IDs: int64(len(rows))}, nil
}

func readSecrets(path string) ([]secretRow, map[string]string, error) {
	if _, err := hashing.ReadSecretFile(path); err != nil { // owner-only, like a key
		return nil, nil, fmt.Errorf("%w: secrets %s: %w", errkind.ErrConfig, path, err)
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, _ := f.Stat()
	pf, err := parquet.OpenFile(f, st.Size())
	if err != nil {
		return nil, nil, fmt.Errorf("%w: secrets %s: %v", errkind.ErrData, path, err)
	}
	meta := map[string]string{}
	for _, k := range []string{MetaDestination, MetaNumbersSHA256, MetaRequestSHA256} {
		meta[k], _ = pf.Lookup(k)
	}
	rd := parquet.NewGenericReader[secretRow](f)
	defer rd.Close()
	rows := make([]secretRow, rd.NumRows())
	if n, err := rd.Read(rows); int64(n) != rd.NumRows() || err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("%w: secrets %s: %d of %d rows: %v", errkind.ErrData, path, n, rd.NumRows(), err)
	}
	return rows, meta, nil
}

// MatchResult counts what Match did.
type MatchResult struct{ Rows, Matched, Published int64 }

// Match writes the rows of the ids file whose identifier is in the
// snapshot of the published run directory.
func Match(ctx context.Context, ids, runDir, out string) (*MatchResult, error) {
	cols, rows, err := readIDs(ids)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(runDir, "manifest.json"))
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not a published run directory: %w", errkind.ErrNoInput, runDir, err)
	}
	m, err := manifest.ReadManifest(b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s is not a published run directory: %w", errkind.ErrNoInput, runDir, err)
	}
	if m.Scheme != string(hashing.OPRFRistretto255) {
		return nil, fmt.Errorf("%w: %s was published under %s, not %s", errkind.ErrUsage, runDir, m.Scheme, hashing.OPRFRistretto255)
	}
	want := make(map[[64]byte][]int, len(rows))
	for i, r := range rows {
		want[r.id] = append(want[r.id], i)
	}
	keep := make([]bool, len(rows))
	res := &MatchResult{Rows: int64(len(rows))}
	for _, f := range m.Files {
		path := filepath.Join(runDir, filepath.FromSlash(f.Path))
		// A part that is not the one the manifest names would match the
		// wrong rows: check it before reading it.
		if sum, err := fsutil.SHA256File(path); err != nil || sum != f.SHA256 {
			return nil, fmt.Errorf("%w: %s is not the file the run's manifest lists (SHA-256 differs, or it cannot be read: %v)", errkind.ErrData, path, err)
		}
		err := idfile.EachPublishedID(path, hashing.OPRFRistretto255, func(_ int64, id []byte) bool {
			res.Published++
			for _, i := range want[[64]byte(id)] {
				keep[i] = true
			}
			return ctx.Err() == nil
		})
		if err != nil {
			return nil, fmt.Errorf("%w: %w", errkind.ErrData, err)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var matched []idsRow
	for i, r := range rows {
		if keep[i] {
			matched = append(matched, r)
		}
	}
	res.Matched = int64(len(matched))
	return res, writeIDs(out, cols, matched)
}

// parallel runs fn(0..n-1) on every core, stopping at the first error.
func parallel(ctx context.Context, n int, fn func(i int) error) error {
	workers := min(runtime.GOMAXPROCS(0), max(n, 1))
	errs := make([]error, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			lo, hi := n*w/workers, n*(w+1)/workers
			for i := lo; i < hi; i++ {
				if (i-lo)%1024 == 0 {
					if err := ctx.Err(); err != nil {
						errs[w] = err
						return
					}
				}
				if err := fn(i); err != nil {
					errs[w] = err
					return
				}
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
