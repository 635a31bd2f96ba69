package pipeline

import (
	"encoding/hex"
	"fmt"
	"path/filepath"

	"github.com/parquet-go/parquet-go"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
)

// SubjectQuery names a person: by phone (normalized as the runs did; keyed
// schemes need the master key) or by user id (found in the private evidence).
type SubjectQuery struct {
	Phone, Country string
	UserID         string
	Key            *hashing.Key
}

// SubjectReport answers "what was sent about this person, and when".
type SubjectReport struct {
	Checkpoint string        `json:"checkpoint"` // the signed checkpoint every proof ends at
	LogSize    int64         `json:"log_size"`
	Runs       []*SubjectRun `json:"runs"`
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
func Subject(state string, verifier note.Verifier, q SubjectQuery) (*SubjectReport, error) {
	l, cp, err := audit.VerifyLog(AuditDir(state), verifier, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: audit log: %w", ErrData, err)
	}
	e164 := ""
	if q.UserID == "" {
		if e164, err = hashing.Normalize(q.Phone, q.Country); err != nil {
			return nil, fmt.Errorf("%w: --phone is not a valid number (%v); add --country for a national number", ErrUsage, err)
		}
	}
	rep := &SubjectReport{LogSize: l.Size()}
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
		evidence, err := parquet.ReadFile[EvidenceRow](filepath.Join(state, "runs", rec.RunID, "evidence.parquet"))
		if err != nil {
			return nil, fmt.Errorf("run %s evidence: %w", rec.RunID, err)
		}
		var leaf []byte
		if q.UserID == "" {
			if leaf, sr.Note = subjectID(rec, scheme, e164, q.Key); leaf == nil {
				sr.Status = "unknown"
				continue
			}
		} else {
			for _, e := range evidence {
				if e.UserID == q.UserID {
					leaf = evidenceLeafID(scheme, e.ID)
					break
				}
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
		var ids [][]byte
		tree := &audit.MerkleTree{}
		for _, f := range rec.Files {
			part, err := ReadPublishedIDs(filepath.Join(rec.Published, f.Path), scheme)
			if err != nil {
				return nil, fmt.Errorf("run %s: %w", rec.RunID, err)
			}
			for _, id := range part {
				if err := tree.Append(id); err != nil {
					return nil, err
				}
			}
			ids = append(ids, part...)
		}
		idRoot, err := audit.ParseHash(rec.IDs.Root)
		if err != nil {
			return nil, err
		}
		if sr.Membership, err = audit.ProveMembership(tree, ids, leaf); err != nil {
			return nil, err
		}
		if err := sr.Membership.Check(leaf, rec.IDs.Size, idRoot); err != nil {
			return nil, fmt.Errorf("run %s: the published identifiers do not match the log (%v); run audit verify", rec.RunID, err)
		}
		sr.Status = "not_exported"
		if sr.Membership.Present {
			sr.Status = "exported"
			if sr.Evidence, err = evidenceFor(evidence, rec, scheme, leaf); err != nil {
				return nil, err
			}
		}
	}
	return rep, nil
}

// subjectID is the identifier a run would have sent for e164.
func subjectID(rec *audit.Record, scheme hashing.Scheme, e164 string, given *hashing.Key) ([]byte, string) {
	var key hashing.DestKey
	if scheme.Keyed() {
		if given == nil {
			return nil, "keyed scheme: give the master key (--key) to compute this run's identifier"
		}
		var err error
		if key, err = given.For(rec.Destination); err != nil {
			return nil, err.Error()
		}
		if key.KeyID() != rec.KeyID {
			return nil, fmt.Sprintf("this run used key_id %s, the given key's is %s (rotated key)", rec.KeyID, key.KeyID())
		}
	}
	h, err := hashing.NewHasher(scheme, key)
	if err != nil {
		return nil, err.Error()
	}
	return h.AppendID(nil, e164), ""
}

func evidenceLeafID(scheme hashing.Scheme, id string) []byte {
	if scheme.Binary() {
		b, err := hex.DecodeString(id)
		if err != nil {
			return nil
		}
		return b
	}
	return []byte(id)
}

// evidenceFor returns the evidence rows of leaf with their inclusion proofs.
func evidenceFor(rows []EvidenceRow, rec *audit.Record, scheme hashing.Scheme, leaf []byte) ([]SubjectEvidence, error) {
	tree := &audit.MerkleTree{}
	for _, e := range rows {
		if err := tree.Append(audit.EvidenceLeaf(e.ID, e.UserID, e.EventID, e.Primary)); err != nil {
			return nil, err
		}
	}
	root, err := audit.ParseHash(rec.Evidence.Root)
	if err != nil {
		return nil, err
	}
	var out []SubjectEvidence
	want := evidenceID(scheme.Binary(), string(leaf))
	for i, e := range rows {
		if e.ID != want {
			continue
		}
		p, err := tree.Prove(int64(i), tree.Size())
		if err != nil {
			return nil, err
		}
		if err := tlog.CheckRecord(p, rec.Evidence.Size, root, int64(i), tlog.RecordHash(audit.EvidenceLeaf(e.ID, e.UserID, e.EventID, e.Primary))); err != nil {
			return nil, fmt.Errorf("run %s: evidence does not match the log (%v); run audit verify", rec.RunID, err)
		}
		out = append(out, SubjectEvidence{UserID: e.UserID, EventID: e.EventID, Primary: e.Primary, Index: int64(i), Proof: p})
	}
	return out, nil
}

func readCheckpoint(state string) ([]byte, string, error) {
	path := filepath.Join(AuditDir(state), audit.CheckpointFile)
	sum, b, err := sha256File(path)
	return b, sum, err
}
