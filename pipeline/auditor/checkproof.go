package auditor

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"audiencematch/consent/audit"
	"audiencematch/consent/audit/witness"
	"audiencematch/hashing"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/idfile"
)

// CheckProofOptions are what the holder of a proof brings to CheckProof.
type CheckProofOptions struct {
	// Trusted is a checkpoint of the log saved earlier (nil: none): the
	// proof's checkpoint must be it or extend it.
	Trusted []byte
	// Witnesses whose cosignatures, at least MinWitnesses of them, the
	// proof's checkpoint must carry.
	Witnesses    []*witness.CosignatureVerifier
	MinWitnesses int
	// Now is the time a run's retention is measured against, for an
	// "unknown" answer; zero: time.Now().
	Now time.Time
}

// ProofSummary is what a proof that checks says, run by run.
type ProofSummary struct {
	LogSize   int64
	Root      string
	Cosigned  map[string]uint64
	Runs      []ProofRun
	Committed int
}

// ProofRun is one run's checked answer.
type ProofRun struct {
	RecordIndex               int64
	RunID, Destination, AsOf  string
	Status                    string
	EvidenceRows              int
	Note                      string
	Authorization             *audit.Authorization
	Scheme, KeyID, Identifier string
}

// CheckProof checks a proof printed by `audit subject --json` with nothing
// but the log's verifier key: the checkpoint's signature (and the required
// witnesses' cosignatures), that the records rebuild its root, that every
// committed run of the log is answered, in log order, each record's
// inclusion proof, and each answer's proof against the run's record: the
// identifier's inclusion and its evidence rows for "exported", the
// identifier's absence (two adjacent neighbours, or the first or last
// leaf) for "not_exported". The error names the first thing that does not
// hold; it wraps errkind.ErrData.
func CheckProof(b []byte, verifier note.Verifier, opts CheckProofOptions) (*ProofSummary, error) {
	s, err := checkProof(b, verifier, opts)
	if err != nil {
		return nil, fmt.Errorf("%w: check-proof: %w", errkind.ErrData, err)
	}
	return s, nil
}

func checkProof(b []byte, verifier note.Verifier, opts CheckProofOptions) (*ProofSummary, error) {
	var head struct {
		Version string `json:"v"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("not a proof: %w", err)
	}
	if head.Version != ProofVersion {
		return nil, fmt.Errorf("proof version %q: this tool reads %q", head.Version, ProofVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var p SubjectReport
	if err := dec.Decode(&p); err != nil {
		return nil, fmt.Errorf("not a proof: %w", err)
	}
	cp, err := audit.ParseCheckpoint([]byte(p.Checkpoint), verifier)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	sum := &ProofSummary{LogSize: int64(cp.Size), Root: hex.EncodeToString(cp.Hash)}
	wrep := &VerifyReport{Checkpoint: []byte(p.Checkpoint)}
	if err := checkWitnesses(wrep, verifier, VerifyOptions{Witnesses: opts.Witnesses, MinWitnesses: opts.MinWitnesses}); err != nil {
		return nil, err
	}
	sum.Cosigned = wrep.Cosigned
	var root tlog.Hash
	copy(root[:], cp.Hash)

	// The records rebuild the checkpoint's root.
	if p.LogSize != int64(cp.Size) || int64(len(p.Records)) != p.LogSize {
		return nil, fmt.Errorf("the proof holds %d records and says the log has %d, the checkpoint covers %d", len(p.Records), p.LogSize, cp.Size)
	}
	var tree audit.MerkleTree
	recs := make([]*audit.Record, len(p.Records))
	for i, line := range p.Records {
		if err := tree.Append([]byte(line)); err != nil {
			return nil, err
		}
		if recs[i], err = audit.ParseRecord([]byte(line)); err != nil {
			return nil, fmt.Errorf("record %d: %w", i, err)
		}
	}
	if got, _ := tree.Root(tree.Size()); got != root {
		return nil, fmt.Errorf("the proof's records have the root %x, the signed checkpoint %x: a record was changed, added or left out", got[:], cp.Hash)
	}
	if opts.Trusted != nil {
		if err := checkTrusted(opts.Trusted, verifier, &tree, cp.Size, root); err != nil {
			return nil, err
		}
	}

	// Every committed run, once, in log order.
	var committed []int64
	for i, r := range recs {
		if r.Type == audit.TypeRunCommitted {
			committed = append(committed, int64(i))
		}
	}
	sum.Committed = len(committed)
	for k, idx := range committed {
		if k >= len(p.Runs) || p.Runs[k] == nil || p.Runs[k].RecordIndex != idx {
			return nil, fmt.Errorf("the log's committed run at record %d (run %s) is not answered in its place: a run was left out, or the answers were reordered", idx, recs[idx].RunID)
		}
	}
	if len(p.Runs) != len(committed) {
		return nil, fmt.Errorf("the proof answers %d runs, the log has %d committed", len(p.Runs), len(committed))
	}
	if opts.Now.IsZero() {
		opts.Now = time.Now()
	}
	prunedBy := pruneRecords(recs)
	// A proof is about one number: every answer under the same destination,
	// scheme and key must be about the same identifier, or the answers of
	// two people could be spliced into one proof.
	sameKey := map[string]*SubjectRun{}
	for _, sr := range p.Runs {
		rec := recs[sr.RecordIndex]
		pr, err := checkRun(sr, rec, []byte(p.Records[sr.RecordIndex]), cp.Size, root)
		if err != nil {
			return nil, fmt.Errorf("record %d, run %s: %w", sr.RecordIndex, rec.RunID, err)
		}
		if sr.Status == "unknown" {
			// "unknown" is an answer only where the log itself shows why no
			// proof can be given: the run was pruned (its evidence removed
			// under retention). Anywhere else it would hide an answer the
			// operator could have proved.
			why, err := pruneReason(rec, sr.RecordIndex, prunedBy, VerifyOptions{Now: opts.Now})
			if err != nil {
				return nil, fmt.Errorf("record %d, run %s: answered \"unknown\", but the log does not show the run pruned (%v): the proof says nothing about this run; ask for one made with the phone number and a key covering every run", sr.RecordIndex, rec.RunID, err)
			}
			pr.Note = "the run's evidence is gone: " + why
		} else {
			group := rec.Destination + "\x00" + rec.Scheme + "\x00" + rec.KeyID
			if first, ok := sameKey[group]; ok && !strings.EqualFold(first.ID, sr.ID) {
				return nil, fmt.Errorf("record %d, run %s: answers for identifier %s, but record %d (run %s) of the same destination, scheme and key for %s: a proof is about one number", sr.RecordIndex, rec.RunID, sr.ID, first.RecordIndex, first.RunID, first.ID)
			} else if !ok {
				sameKey[group] = sr
			}
		}
		sum.Runs = append(sum.Runs, pr)
	}
	return sum, nil
}

// checkTrusted checks that the tree of size n and root extends the trusted
// checkpoint, by a consistency proof computed from the proof's records.
func checkTrusted(trusted []byte, verifier note.Verifier, tree *audit.MerkleTree, n uint64, root tlog.Hash) error {
	old, err := audit.ParseCheckpoint(trusted, verifier)
	if err != nil {
		return fmt.Errorf("trusted checkpoint: %w", err)
	}
	switch {
	case old.Size > n:
		return fmt.Errorf("rollback: the proof's checkpoint covers %d records, but you saved a checkpoint of %d", n, old.Size)
	case old.Size == n && !bytes.Equal(old.Hash, root[:]):
		return fmt.Errorf("fork: the proof's checkpoint and the one you saved both cover %d records, with different roots", n)
	}
	proof, err := tlog.ProveTree(int64(n), int64(old.Size), tree)
	if err != nil {
		return err
	}
	if err := tlog.CheckTree(proof, int64(n), root, int64(old.Size), tlog.Hash(old.Hash)); err != nil {
		return fmt.Errorf("history rewritten: the proof's log is not an extension of the checkpoint you saved (%v)", err)
	}
	return nil
}

// checkRun checks one run's answer against its record.
func checkRun(sr *SubjectRun, rec *audit.Record, line []byte, n uint64, root tlog.Hash) (ProofRun, error) {
	pr := ProofRun{RecordIndex: sr.RecordIndex, RunID: rec.RunID, Destination: rec.Destination, AsOf: rec.AsOf,
		Status: sr.Status, Note: sr.Note, Authorization: rec.Authorization, Scheme: rec.Scheme, KeyID: rec.KeyID, Identifier: sr.ID}
	if err := tlog.CheckRecord(sr.RecordProof, int64(n), root, sr.RecordIndex, tlog.RecordHash(line)); err != nil {
		return pr, fmt.Errorf("the record's inclusion proof: %w", err)
	}
	if sr.RunID != rec.RunID || sr.Destination != rec.Destination || sr.AsOf != rec.AsOf || sr.Scheme != rec.Scheme || sr.KeyID != rec.KeyID {
		return pr, errors.New("the answer names another run, destination, cutoff, scheme or key_id than its record")
	}
	scheme, err := hashing.ParseScheme(rec.Scheme)
	if err != nil {
		return pr, err
	}
	switch sr.Status {
	case "unknown":
		if sr.Membership != nil || len(sr.Evidence) != 0 {
			return pr, errors.New(`status "unknown" with a membership proof or evidence`)
		}
		return pr, nil
	case "exported", "not_exported":
	default:
		return pr, fmt.Errorf("status %q: want exported, not_exported or unknown", sr.Status)
	}
	leaf, err := hex.DecodeString(sr.ID)
	if err != nil || !scheme.ValidID(leaf) {
		return pr, fmt.Errorf("id is not the hex of a %s identifier", scheme)
	}
	m := sr.Membership
	if m == nil {
		return pr, errors.New("no membership proof")
	}
	if m.Present != (sr.Status == "exported") {
		return pr, fmt.Errorf("status %q, but the membership proof says present=%v", sr.Status, m.Present)
	}
	idRoot, err := audit.ParseHash(rec.IDs.Root)
	if err != nil {
		return pr, err
	}
	if err := m.Check(leaf, rec.IDs.Size, idRoot); err != nil {
		return pr, fmt.Errorf("membership proof: %w", err)
	}
	if !m.Present {
		if len(sr.Evidence) != 0 {
			return pr, errors.New("evidence rows for an identifier claimed absent")
		}
		return pr, nil
	}
	if len(sr.Evidence) == 0 {
		return pr, errors.New("an exported identifier without the evidence row of its consent")
	}
	evRoot, err := audit.ParseHash(rec.Evidence.Root)
	if err != nil {
		return pr, err
	}
	eid := idfile.EvidenceID(scheme.Binary(), string(leaf))
	seen := map[int64]bool{}
	for _, e := range sr.Evidence {
		if seen[e.Index] {
			return pr, fmt.Errorf("evidence row %d given twice", e.Index)
		}
		seen[e.Index] = true
		h := tlog.RecordHash(audit.EvidenceLeaf(eid, e.UserID, e.EventID, e.Primary))
		if err := tlog.CheckRecord(e.Proof, rec.Evidence.Size, evRoot, e.Index, h); err != nil {
			return pr, fmt.Errorf("evidence row %d: %w", e.Index, err)
		}
	}
	pr.EvidenceRows = len(sr.Evidence)
	return pr, nil
}
