package oprfx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/pipeline"
	"audiencematch/pipeline/destinations"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/statedir"
)

// BudgetWindow is the rolling window of oprf_max_evaluations.
const BudgetWindow = 24 * time.Hour

// EvaluateConfig is what the exporter's side of the exchange needs.
type EvaluateConfig struct {
	Destination       string
	Key               hashing.DestKey // skS (hashing.Key.ForScheme)
	Registry          *destinations.Registry
	State             string
	Request, Response string
	ToolVersion       string
	AuditSigner       note.Signer
	AuditVerifier     note.Verifier
	LockWait          time.Duration
	Log               *slog.Logger     // nil: discard
	Now               func() time.Time // nil: time.Now
}

// EvaluateResult describes an answered request.
type EvaluateResult struct {
	Elements                      int64
	RequestSHA256, ResponseSHA256 string
	KeyID                         string
	// Used is what the destination had been answered in the window
	// before this request; Budget its oprf_max_evaluations.
	Used, Budget int64
}

// Evaluate answers the request file with the response file (package
// documentation), or refuses it.
func Evaluate(ctx context.Context, cfg EvaluateConfig) (*EvaluateResult, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.AuditSigner == nil || cfg.AuditVerifier == nil {
		return nil, fmt.Errorf("%w: oprf evaluate records every request in the audit log: it needs the log's keys", errkind.ErrConfig)
	}
	d, err := evaluationDestination(cfg.Registry, cfg.Destination)
	if err != nil {
		return nil, err
	}
	srv, err := hashing.NewOPRFServer(cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	res := &EvaluateResult{KeyID: srv.KeyID(), Budget: d.EvaluationBudget()}
	release, err := pipeline.LockState(ctx, cfg.State, cfg.LockWait)
	if err != nil {
		return nil, err
	}
	defer release()
	dir := statedir.Audit(cfg.State)
	if err := audit.Recover(dir, cfg.AuditSigner, cfg.AuditVerifier); err != nil {
		return nil, fmt.Errorf("%w: audit log: %w", errkind.ErrConfig, err)
	}
	l, err := audit.OpenForAppend(dir)
	if err != nil {
		return nil, fmt.Errorf("%w: audit log: %w", errkind.ErrConfig, err)
	}
	now := cfg.Now()
	rec := &audit.Record{Type: audit.TypeOPRFEvaluated, ToolVersion: cfg.ToolVersion, Destination: cfg.Destination,
		Scheme: string(hashing.OPRFRistretto255), KeyID: res.KeyID}
	refuse := func(kind error, reason string) error {
		rec.Reason = audit.SanitizeReason(reason)
		cfg.Log.Warn("oprf evaluation refused", "destination", cfg.Destination, "elements", rec.Elements, "reason", rec.Reason)
		if aerr := l.Append(rec, cfg.AuditSigner, now); aerr != nil {
			return fmt.Errorf("%w: %s (and the refusal could not be recorded in the audit log: %v)", kind, reason, aerr)
		}
		return fmt.Errorf("%w: %s", kind, reason)
	}
	if rec.RequestSHA256, err = fsutil.SHA256File(cfg.Request); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("%w: request %s: %w", errkind.ErrNoInput, cfg.Request, err)
		}
		return nil, err
	}
	elems, err := readElements(cfg.Request, ColBlinded)
	if err != nil {
		return nil, refuse(errkind.ErrData, fmt.Sprintf("request %s: %v", filepath.Base(cfg.Request), err))
	}
	rec.Elements, res.Elements, res.RequestSHA256 = int64(len(elems)), int64(len(elems)), rec.RequestSHA256
	if len(elems) == 0 {
		return nil, refuse(errkind.ErrData, "the request holds no element")
	}
	res.Used = usedInWindow(l, cfg.Destination, now)
	if res.Budget == 0 {
		return nil, refuse(errkind.ErrRejected, fmt.Sprintf("destination %q has no oprf_max_evaluations in the registry %s: set one to allow evaluations", cfg.Destination, cfg.Registry.Path))
	}
	if res.Used+res.Elements > res.Budget {
		return nil, refuse(errkind.ErrRejected, fmt.Sprintf("a request of %d elements would exceed oprf_max_evaluations %d for %q: %d answered in the %v before it; nothing evaluated",
			res.Elements, res.Budget, cfg.Destination, res.Used, BudgetWindow))
	}
	evaluated := make([]responseRow, len(elems))
	err = parallelChunks(ctx, len(elems), func(lo, hi int) error {
		in := make([][]byte, hi-lo)
		for i := range in {
			in[i] = elems[lo+i][:]
		}
		out, err := srv.BlindEvaluate(in)
		var ee *hashing.ElementError
		if errors.As(err, &ee) {
			ee.Index += lo
			return ee
		}
		if err != nil {
			return err
		}
		for i, e := range out {
			evaluated[lo+i].Evaluated = [32]byte(e)
		}
		return nil
	})
	var ee *hashing.ElementError
	if errors.As(err, &ee) {
		return nil, refuse(errkind.ErrData, fmt.Sprintf("request row %d: %v (RFC 9497 section 3.3.1); nothing evaluated: send SerializeElement of each blinded element", ee.Index+1, ee.Err))
	}
	if err != nil {
		return nil, err
	}
	// The response takes its name only once its record is in the log: a
	// response the log does not count must not exist.
	tmp := cfg.Response + ".partial"
	defer os.Remove(tmp)
	if err := writeParquet(tmp, 0o644, evaluated); err != nil {
		return nil, fmt.Errorf("write response: %w", err)
	}
	if rec.ResponseSHA256, err = fsutil.SHA256File(tmp); err != nil {
		return nil, err
	}
	res.ResponseSHA256 = rec.ResponseSHA256
	if err := l.Append(rec, cfg.AuditSigner, now); err != nil {
		return nil, fmt.Errorf("%w: record the evaluation in the audit log: %w; no response written", errkind.ErrConfig, err)
	}
	if err := os.Rename(tmp, cfg.Response); err != nil {
		return nil, err
	}
	if err := fsutil.SyncDir(filepath.Dir(cfg.Response)); err != nil {
		return nil, err
	}
	cfg.Log.Info("oprf request answered", "destination", cfg.Destination, "key_id", res.KeyID, "elements", res.Elements,
		"used_in_window", res.Used+res.Elements, "budget", res.Budget)
	return res, nil
}

// evaluationDestination is the registry's oprf-ristretto255 destination
// id, refused as a run to it would be when it is not one.
func evaluationDestination(r *destinations.Registry, id string) (*destinations.Destination, error) {
	if r == nil {
		return nil, fmt.Errorf("%w: no destination registry: nothing is evaluated without one", errkind.ErrConfig)
	}
	d := r.Lookup(id)
	switch {
	case d == nil:
		return nil, fmt.Errorf("%w: destination %q is not in the registry %s", errkind.ErrRejected, id, r.Path)
	case d.Relationship == destinations.ThirdParty:
		return nil, fmt.Errorf("%w: destination %q belongs to a third party (%s): nothing goes to third parties", errkind.ErrRejected, id, d.Organization)
	case d.Scheme != string(hashing.OPRFRistretto255):
		return nil, fmt.Errorf("%w: destination %q has scheme %s: only %s destinations send blinded numbers", errkind.ErrUsage, id, d.Scheme, hashing.OPRFRistretto255)
	}
	return d, nil
}

// usedInWindow is how many elements were answered for destination in the
// BudgetWindow before now (refusals answered none).
func usedInWindow(l *audit.Log, destination string, now time.Time) int64 {
	var n int64
	from := now.Add(-BudgetWindow)
	for _, r := range l.Records() {
		if r.Type != audit.TypeOPRFEvaluated || r.Destination != destination || r.Reason != "" {
			continue
		}
		t, err := time.Parse(time.RFC3339Nano, r.Time)
		if err != nil || t.After(from) {
			// A time that cannot be read counts: doubt spends budget.
			n += r.Elements
		}
	}
	return n
}

// parallelChunks runs fn over [0, n) in chunks on every core.
func parallelChunks(ctx context.Context, n int, fn func(lo, hi int) error) error {
	// Chunks small enough that every core gets several, large enough that
	// a chunk's allocations do not matter.
	chunk := max(256, min(4096, n/(8*runtime.GOMAXPROCS(0))))
	chunks := (n + chunk - 1) / chunk
	return parallel(ctx, chunks, func(c int) error {
		return fn(c*chunk, min((c+1)*chunk, n))
	})
}
