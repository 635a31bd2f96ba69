package pipeline

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/tlog"

	"audiencematch/consent/audit"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/manifest"
	"audiencematch/pipeline/statedir"
)

// The consent snapshot is the digest of the run's consent decisions:
// SHA-256 of the concatenated, sorted SHA-256 digests of each well-formed
// user row's line (see joinWorker.snapshotLine). Sorting makes it
// independent of row order, and hashing lines first keeps 32 bytes per row.
// Anyone holding the inputs can recompute it, e.g. with sha256sum and sort.
// snapshotOf computes it from the join's buckets.

// treeBuilder computes the Merkle tree heads of the run's identifiers and
// of its evidence rows, for the record, bucket by bucket. A leaf of the
// identifier tree is the identifier's bytes as the Parquet file holds them:
// raw for hmac-sha256, text otherwise.
// The leaves' hashes are computed with the bucket, by the worker that
// resolves it (leafHashes); the builder adds them in order.
type treeBuilder struct {
	ids, evidence audit.TreeRoot
}

func (t *treeBuilder) add(rb *resolvedBucket) {
	for _, h := range rb.idLeaves {
		t.ids.AppendLeafHash(h)
	}
	for _, h := range rb.evLeaves {
		t.evidence.AppendLeafHash(h)
	}
}

// leafHashes hashes the bucket's leaves of both trees: each exported
// identifier, and each of its evidence rows, in order.
func (rb *resolvedBucket) leafHashes() {
	rb.idLeaves, rb.evLeaves = rb.idLeaves[:0], rb.evLeaves[:0]
	for _, e := range rb.export {
		rb.leaf = append(rb.leaf[:0], e.id...)
		rb.idLeaves = append(rb.idLeaves, tlog.RecordHash(rb.leaf))
		for j, hi := range e.holders {
			h := &rb.holders[hi]
			rb.leaf = audit.AppendEvidenceLeaf(rb.leaf[:0], e.eid, h.userID, h.eventID, j == 0)
			rb.evLeaves = append(rb.evLeaves, tlog.RecordHash(rb.leaf))
		}
	}
}

// buildRecord prepares the run_committed record; it is kept privately with
// the run and appended to the log once the run is published.
func (r *run) buildRecord(manifestSum string) (*audit.Record, error) {
	m := r.m
	rec := &audit.Record{
		Version: audit.RecordVersion, Time: time.Now().UTC().Format(time.RFC3339Nano), // Append re-stamps the time
		Type: audit.TypeRunCommitted, RunID: m.RunID, ToolVersion: m.ToolVersion, ConfigDigest: m.ConfigDigest,
		Destination: m.Destination, Scheme: m.Scheme, KeyID: m.KeyID, AsOf: m.AsOf, Purpose: m.Purpose,
		Authorization: r.cfg.authorization,
		Policy: &audit.Policy{MinPolicyVersion: m.Policy.MinPolicyVersion, MaxConsentAgeSeconds: m.Policy.MaxConsentAgeSeconds,
			MaxRejectRate: m.Policy.MaxRejectRate},
		ConsentSnapshot: r.snapshot,
		Counts: &audit.Counts{UserRows: m.Users.Rows, Exported: m.Users.Exported, Excluded: m.Users.Excluded,
			EventRows: m.ConsentEvents.Rows, Events: m.ConsentEvents.ByClass},
		// Relative to the delivery root, so that the state and the
		// delivered files can be checked wherever they are copied.
		Published: PublishedRel(m.Destination, r.cfg.Rules.AsOf, m.RunID),
		Manifest:  &audit.File{Path: "manifest.json", SHA256: manifestSum},
		IDs:       r.idTree, Evidence: r.evidenceTree,
		PreviousRunID: m.PreviousRunID,
		Backfill:      m.Backfill, AllowDrop: r.cfg.AllowDrop,
	}
	for _, in := range m.Inputs {
		rec.Inputs = append(rec.Inputs, audit.Input{Table: in.Table, SHA256: in.SHA256, Rows: in.Rows})
	}
	rec.Files = auditFiles(m.Files)
	if m.Adds != nil {
		rec.Adds, rec.Removes = auditFiles(m.Adds.Files), auditFiles(m.Removes.Files)
		rec.RemovesScheme, rec.RemovesKeyID = m.Removes.Scheme, m.Removes.KeyID
	}
	return rec, rec.Validate()
}

func auditFiles(files []manifest.OutputFile) []audit.File {
	out := make([]audit.File, len(files))
	for i, f := range files {
		out[i] = audit.File{Path: f.Path, SHA256: f.SHA256, Rows: f.Rows}
	}
	return out
}

// commitRecord appends the prepared record of a published run, unless the
// log already has it: a run that crashed between publishing and appending
// gets its record from the next attempt.
func (r *run) commitRecord(runDir string) error {
	if r.cfg.AuditSigner == nil {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(runDir, "record.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("run %s is published but its prepared audit record is missing from %s", r.m.RunID, runDir)
	}
	if err != nil {
		return err
	}
	var rec audit.Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return fmt.Errorf("prepared audit record: %w", err)
	}
	l, err := audit.OpenForAppend(statedir.Audit(r.cfg.State))
	if err != nil {
		return fmt.Errorf("%w: audit log: %w", errkind.ErrConfig, err)
	}
	if l.Committed(rec.RunID) >= 0 {
		return nil
	}
	if err := l.Append(&rec, r.cfg.AuditSigner, time.Now()); err != nil {
		return fmt.Errorf("append audit record: %w", err)
	}
	return nil
}

// AppendEvent appends a run_failed or destination_refused record. A failure
// to record is returned, not hidden: the operator must know the log is behind.
func AppendEvent(cfg *Config, typ, reason string) error {
	if cfg.AuditSigner == nil {
		return nil
	}
	l, err := audit.OpenForAppend(statedir.Audit(cfg.State))
	if err != nil {
		return err
	}
	rec := &audit.Record{Type: typ, ToolVersion: cfg.ToolVersion, Destination: cfg.Destination,
		Scheme: string(cfg.Scheme), KeyID: cfg.KeyID(), Purpose: cfg.Rules.Purpose, Reason: oneLine(reason)}
	if !cfg.Rules.AsOf.IsZero() {
		rec.AsOf = cfg.Rules.AsOf.UTC().Format(time.RFC3339Nano)
	}
	if ValidDestination(cfg.Destination) {
		rec.ConfigDigest = cfg.Digest()
	} else {
		rec.Destination = "invalid"
	}
	return l.Append(rec, cfg.AuditSigner, time.Now())
}

// oneLine makes an error message a record's reason: whatever bytes it holds
// (it should hold none of an input's, but a record outlives any mistake),
// the record is valid UTF-8 in canonical form, so every reader accepts it.
func oneLine(s string) string {
	return audit.SanitizeReason(strings.TrimSpace(s))
}
