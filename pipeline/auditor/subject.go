package auditor

import (
	"cmp"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/internal/fsutil"
	"audiencematch/pipeline/delivery"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/idfile"
	"audiencematch/pipeline/statedir"
)

// SubjectQuery names a person: by phone (normalized as the runs did; keyed
// schemes need the master key) or by user id (found in the private evidence).
type SubjectQuery struct {
	Phone, Country string
	UserID         string
	Key            *hashing.Key
}

// ProofVersion is the first field of a proof (`audit subject --json`);
// CheckProof refuses any other.
const ProofVersion = "audiencematch.proof/v1"

// SubjectReport answers "what was sent about this person, and when". As
// JSON it is the proof `audit check-proof` checks with no state directory
// (docs/AUDITORS.md, "The proof").
type SubjectReport struct {
	Version    string `json:"v"`
	Checkpoint string `json:"checkpoint"` // the signed checkpoint every proof ends at, with its cosignatures
	LogSize    int64  `json:"log_size"`
	// Records are every record of the log up to the checkpoint, each the
	// canonical line (leaf i of the log's tree): a checker rebuilds the
	// root from them and sees every committed run, so none can be left out.
	Records []string      `json:"records"`
	Runs    []*SubjectRun `json:"runs"`
}

// SubjectRun is one committed run's answer.
type SubjectRun struct {
	RecordIndex int64             `json:"record_index"`
	RecordProof tlog.RecordProof  `json:"record_proof"` // the record's inclusion in the log at the checkpoint
	RunID       string            `json:"run_id"`
	Destination string            `json:"destination"`
	AsOf        string            `json:"as_of"`
	Scheme      string            `json:"scheme"`
	KeyID       string            `json:"key_id,omitempty"`
	Status      string            `json:"status"` // exported, not_exported, unknown
	Note        string            `json:"note,omitempty"`
	ID          string            `json:"id,omitempty"` // hex of the identifier's leaf bytes
	Membership  *audit.Membership `json:"membership,omitempty"`
	Evidence    []SubjectEvidence `json:"evidence,omitempty"`
}

// SubjectEvidence is an evidence row behind an exported identifier, with
// its inclusion proof in the run's evidence tree.
type SubjectEvidence struct {
	UserID  string           `json:"user_id"`
	EventID string           `json:"consent_event_id"`
	Primary bool             `json:"primary"`
	Index   int64            `json:"index"`
	Proof   tlog.RecordProof `json:"proof"`
}

// Subject answers a query over every committed run, with proofs checked
// here before they are returned.
func Subject(state string, roots delivery.Roots, verifier note.Verifier, q SubjectQuery) (*SubjectReport, error) {
	l, cp, err := audit.VerifyLog(statedir.Audit(state), verifier, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: audit log: %w", errkind.ErrData, err)
	}
	e164 := ""
	if q.UserID == "" {
		if e164, err = hashing.Normalize(q.Phone, q.Country); err != nil {
			return nil, fmt.Errorf("%w: --phone is not a valid number (%v); add --country for a national number", errkind.ErrUsage, err)
		}
	}
	rep := &SubjectReport{Version: ProofVersion, LogSize: l.Size()}
	for i := range l.Size() {
		rep.Records = append(rep.Records, string(l.Line(i)))
	}
	cpBytes, _, err := readCheckpoint(state)
	if err != nil {
		return nil, err
	}
	rep.Checkpoint = string(cpBytes)
	var root tlog.Hash
	copy(root[:], cp.Hash)
	known := map[string][]byte{} // destination/key_id -> identifier seen for this user
	for i, rec := range l.Records() {
		if rec.Type != audit.TypeRunCommitted {
			continue
		}
		sr := &SubjectRun{RecordIndex: int64(i), RunID: rec.RunID, Destination: rec.Destination, AsOf: rec.AsOf, Scheme: rec.Scheme, KeyID: rec.KeyID}
		if sr.RecordProof, err = l.ProveRecord(int64(i), l.Size()); err != nil {
			return nil, err
		}
		if err := tlog.CheckRecord(sr.RecordProof, l.Size(), root, int64(i), tlog.RecordHash(l.Line(int64(i)))); err != nil {
			return nil, fmt.Errorf("record %d inclusion: %w", i, err)
		}
		rep.Runs = append(rep.Runs, sr)
		scheme, err := hashing.ParseScheme(rec.Scheme)
		if err != nil {
			return nil, err
		}
		evidencePath := statedir.Evidence(state, rec.RunID)
		if _, err := os.Stat(evidencePath); errors.Is(err, fs.ErrNotExist) {
			sr.Status, sr.Note = "unknown", "the run's private evidence was removed (retention): what it sent about anyone can no longer be proved"
			continue
		}
		var leaf []byte
		if q.UserID == "" {
			if leaf, sr.Note = subjectID(rec, scheme, e164, q.Key); leaf == nil {
				sr.Status = "unknown"
				continue
			}
		} else {
			if leaf, err = evidenceUserLeaf(evidencePath, scheme, q.UserID); err != nil {
				return nil, fmt.Errorf("run %s evidence: %w", rec.RunID, err)
			}
			group := rec.Destination + "/" + rec.KeyID
			if leaf == nil {
				leaf = known[group]
			}
			if leaf == nil {
				sr.Status, sr.Note = "unknown", "the user is not in this run's evidence, and no run of this destination and key exported them; give --phone to prove absence"
				continue
			}
			known[group] = leaf
		}
		sr.ID = hex.EncodeToString(leaf)
		dir, err := roots.RunDir(rec)
		if err != nil {
			return nil, err
		}
		if sr.Membership, err = proveMembership(state, rec, dir, scheme, leaf); err != nil {
			return nil, err
		}
		sr.Status = "not_exported"
		if sr.Membership.Present {
			sr.Status = "exported"
			if sr.Evidence, err = evidenceFor(evidencePath, rec, scheme, leaf); err != nil {
				return nil, err
			}
		}
	}
	return rep, nil
}

// proveMembership proves leaf present in or absent from a run's published
// identifiers, streamed (a run's tree is not held), and checks the proof
// against the run's record.
func proveMembership(state string, rec *audit.Record, dir string, scheme hashing.Scheme, leaf []byte) (*audit.Membership, error) {
	mp := audit.NewMembershipProver(rec.IDs.Size, leaf)
	if _, err := os.Stat(dir); errors.Is(err, fs.ErrNotExist) {
		// Pruned: the identifiers sent are the evidence's primary rows,
		// checked against the record's identifier tree as they are read.
		it, _, err := idfile.SentIDs(state, dir, rec, scheme)
		if err != nil {
			return nil, err
		}
		defer it.Close()
		for {
			id, ok, err := it.Next()
			if err != nil {
				return nil, fmt.Errorf("run %s: %w", rec.RunID, err)
			}
			if !ok {
				break
			}
			if err := mp.Add([]byte(id)); err != nil {
				return nil, fmt.Errorf("run %s evidence: %w", rec.RunID, err)
			}
		}
	}
	for _, f := range rec.Files {
		if _, err := os.Stat(dir); err != nil {
			break
		}
		path := filepath.Join(dir, filepath.FromSlash(f.Path))
		var addErr error
		err := idfile.EachPublishedID(path, scheme, func(_ int64, id []byte) bool {
			addErr = mp.Add(id)
			return addErr == nil
		})
		if err = cmp.Or(err, addErr); err != nil {
			return nil, fmt.Errorf("run %s: %s: %w", rec.RunID, path, err)
		}
	}
	m, err := mp.Finish()
	if err == nil {
		var root tlog.Hash
		if root, err = audit.ParseHash(rec.IDs.Root); err == nil {
			err = m.Check(leaf, rec.IDs.Size, root)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("run %s: the published identifiers do not match the log (%v); run audit verify", rec.RunID, err)
	}
	return m, nil
}

// evidenceUserLeaf is the identifier (as the tree's leaf) of the first
// evidence row of userID, or nil if the run has none.
func evidenceUserLeaf(path string, scheme hashing.Scheme, userID string) ([]byte, error) {
	er, err := idfile.OpenEvidence(path)
	if err != nil {
		return nil, err
	}
	defer er.Close()
	for {
		e, err := er.Next()
		if err == io.EOF {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		if e.UserID == userID {
			return idfile.LeafOfEvidenceID(scheme, e.ID), nil
		}
	}
}

// subjectID is the identifier a run would have sent for e164.
func subjectID(rec *audit.Record, scheme hashing.Scheme, e164 string, given *hashing.Key) ([]byte, string) {
	var key hashing.DestKey
	if scheme.Keyed() {
		if given == nil {
			return nil, "keyed scheme: give the master key (--key) to compute this run's identifier"
		}
		var err error
		if key, err = given.ForScheme(scheme, rec.Destination); err != nil {
			return nil, err.Error()
		}
		if kid := scheme.KeyID(key); kid != rec.KeyID {
			return nil, fmt.Sprintf("this run used key_id %s, the given key's is %s (rotated key)", rec.KeyID, kid)
		}
	}
	h, err := hashing.NewHasher(scheme, key)
	if err != nil {
		return nil, err.Error()
	}
	return h.AppendID(nil, e164), ""
}

// evidenceFor returns the evidence rows of leaf with their inclusion
// proofs, streaming the run's evidence once: each row of leaf is marked
// before it is appended, and only its proof's hashes are kept.
func evidenceFor(path string, rec *audit.Record, scheme hashing.Scheme, leaf []byte) ([]SubjectEvidence, error) {
	root, err := audit.ParseHash(rec.Evidence.Root)
	if err != nil {
		return nil, err
	}
	er, err := idfile.OpenEvidence(path)
	if err != nil {
		return nil, fmt.Errorf("run %s evidence: %w", rec.RunID, err)
	}
	defer er.Close()
	p := audit.NewProver(rec.Evidence.Size)
	var out []SubjectEvidence
	want := idfile.EvidenceID(scheme.Binary(), string(leaf))
	var b []byte
	for i := int64(0); ; i++ {
		e, err := er.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("run %s evidence: %w", rec.RunID, err)
		}
		if e.ID == want {
			if err := p.Mark(); err != nil {
				return nil, fmt.Errorf("run %s: evidence does not match the log (%v); run audit verify", rec.RunID, err)
			}
			out = append(out, SubjectEvidence{UserID: e.UserID, EventID: e.EventID, Primary: e.Primary, Index: i})
		}
		b = audit.AppendEvidenceLeaf(b[:0], e.ID, e.UserID, e.EventID, e.Primary)
		p.Append(b)
	}
	for k := range out {
		e := &out[k]
		var err error
		if e.Proof, err = p.Prove(e.Index); err == nil {
			err = tlog.CheckRecord(e.Proof, rec.Evidence.Size, root, e.Index, tlog.RecordHash(audit.EvidenceLeaf(want, e.UserID, e.EventID, e.Primary)))
		}
		if err != nil {
			return nil, fmt.Errorf("run %s: evidence does not match the log (%v); run audit verify", rec.RunID, err)
		}
	}
	return out, nil
}

func readCheckpoint(state string) ([]byte, string, error) {
	path := filepath.Join(statedir.Audit(state), audit.CheckpointFile)
	sum, b, err := fsutil.ReadFileSHA256(path)
	return b, sum, err
}
