// Package manifest is the run's manifest: the JSON file published beside
// every run (manifest.json) and kept privately with it, which reconciles
// every input row and names every published file with its SHA-256 and row
// count. It holds counts and digests, never personal data.
//
// The format is versioned by its first field, "version"
// ("audiencematch.manifest/v1"); ReadManifest rejects any other. Its
// invariants, checked by Reconcile before a run publishes and again by
// audit verify:
//
//	users.rows          = users.exported + Σ users.excluded
//	users.exported      = total_rows = Σ files[].rows
//	consent_events.rows = Σ consent_events.by_class
//	Σ rejects.users     = users.excluded["malformed_row"]
//	Σ rejects.consent_events = consent_events.by_class["malformed"]
//	total_rows          = previous_total_rows + adds.rows − removes.rows
//	                      (after a key or scheme change: adds = the snapshot,
//	                      removes = the previous snapshot)
package manifest

import (
	"encoding/json"
	"fmt"

	"audiencematch/consent"
)

// Version is the first field of every manifest; readers reject versions
// they do not know.
const Version = "audiencematch.manifest/v1"

// New returns a manifest whose counts are zero for every exclusion reason
// and event class, so that each appears in the file even when nothing fell
// in it.
func New() *Manifest {
	m := &Manifest{
		Version:       Version,
		Users:         UserCounts{Excluded: map[string]int64{}},
		ConsentEvents: EventCounts{ByClass: map[string]int64{}},
		Rejects:       RejectSummary{Users: map[string]int64{}, ConsentEvents: map[string]int64{}},
	}
	for _, r := range consent.ExclusionReasons {
		m.Users.Excluded[r] = 0
	}
	for _, n := range consent.EventClassNames {
		m.ConsentEvents.ByClass[n] = 0
	}
	return m
}

// Manifest describes one published run. It is published next to the data
// and kept under <state>; it holds counts and digests, never personal data.
type Manifest struct {
	Version       string        `json:"version"`
	RunID         string        `json:"run_id"`
	ToolVersion   string        `json:"tool_version"`
	Destination   string        `json:"destination"`
	AsOf          string        `json:"as_of"`
	Purpose       string        `json:"purpose"`
	Policy        PolicyRules   `json:"policy"`
	Scheme        string        `json:"scheme"`
	KeyID         string        `json:"key_id,omitempty"`
	ConfigDigest  string        `json:"config_digest"`
	Inputs        []InputFile   `json:"inputs"`
	Files         []OutputFile  `json:"files"`
	TotalRows     int64         `json:"total_rows"`
	Users         UserCounts    `json:"users"`
	ConsentEvents EventCounts   `json:"consent_events"`
	Rejects       RejectSummary `json:"rejects"`
	// Deltas against the previous committed run of the destination; absent
	// on a first run.
	PreviousRunID     string    `json:"previous_run_id,omitempty"`
	PreviousTotalRows int64     `json:"previous_total_rows,omitempty"`
	Adds              *DeltaSet `json:"adds,omitempty"`
	Removes           *DeltaSet `json:"removes,omitempty"`
	// Backfill marks a run for a cutoff earlier than the destination's
	// latest: a snapshot without deltas, not part of the delivery chain
	// (consumers applying deltas skip it).
	Backfill bool `json:"backfill,omitempty"`
}

// PolicyRules are the consent rules of the run.
type PolicyRules struct {
	MinPolicyVersion     int64   `json:"min_policy_version"`
	MaxConsentAgeSeconds int64   `json:"max_consent_age_seconds,omitempty"`
	MaxRejectRate        float64 `json:"max_reject_rate"`
}

// InputFile is one input table.
type InputFile struct {
	Table  string `json:"table"`
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
	Rows   int64  `json:"rows"`
	// Parts are the files of a table given as a directory, a glob or an
	// object prefix, in the order read, each with its SHA-256; SHA256 is
	// then the digest of their digests. Absent for a single file.
	Parts []InputPart `json:"parts,omitempty"`
}

// InputPart is one file of an input table given in parts.
type InputPart struct {
	Name   string `json:"name"`
	SHA256 string `json:"sha256"`
}

// OutputFile is one published Parquet file.
type OutputFile struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
	Rows   int64  `json:"rows"`
	Bytes  int64  `json:"bytes"`
}

// UserCounts reconciles the users table: Rows = Exported + sum(Excluded).
type UserCounts struct {
	Rows     int64            `json:"rows"`
	Exported int64            `json:"exported"`
	Excluded map[string]int64 `json:"excluded"`
}

// EventCounts reconciles consent_events: Rows = sum(ByClass).
type EventCounts struct {
	Rows    int64            `json:"rows"`
	ByClass map[string]int64 `json:"by_class"`
}

// RejectSummary counts malformed rows by table and reason.
type RejectSummary struct {
	Users         map[string]int64 `json:"users"`
	ConsentEvents map[string]int64 `json:"consent_events"`
}

// AddInput lists an input table read by the run.
func (m *Manifest) AddInput(table, name, digest string, rows int64, parts ...InputPart) {
	m.Inputs = append(m.Inputs, InputFile{Table: table, Name: name, SHA256: digest, Rows: rows, Parts: parts})
}

// AddReject counts a malformed row of table.
func (m *Manifest) AddReject(table, reason string) {
	if table == "users" {
		m.Rejects.Users[reason]++
	} else {
		m.Rejects.ConsentEvents[reason]++
	}
}

// Reconcile checks that every row is accounted for exactly once. A failure
// is a bug, and the run must not publish.
func (m *Manifest) Reconcile() error {
	sum := m.Users.Exported
	for _, n := range m.Users.Excluded {
		sum += n
	}
	if sum != m.Users.Rows {
		return fmt.Errorf("internal error: users do not reconcile: %d rows, %d exported + excluded", m.Users.Rows, sum)
	}
	if m.Users.Exported != m.TotalRows {
		return fmt.Errorf("internal error: %d users exported but %d identifiers written", m.Users.Exported, m.TotalRows)
	}
	var files int64
	for _, f := range m.Files {
		files += f.Rows
	}
	if files != m.TotalRows {
		return fmt.Errorf("internal error: files hold %d rows, total_rows is %d", files, m.TotalRows)
	}
	if err := m.reconcileDeltas(); err != nil {
		return err
	}
	var ev int64
	for _, n := range m.ConsentEvents.ByClass {
		ev += n
	}
	if ev != m.ConsentEvents.Rows {
		return fmt.Errorf("internal error: consent events do not reconcile: %d rows, %d classified", m.ConsentEvents.Rows, ev)
	}
	var ur, er int64
	for _, n := range m.Rejects.Users {
		ur += n
	}
	for _, n := range m.Rejects.ConsentEvents {
		er += n
	}
	if ur != m.Users.Excluded[consent.ReasonMalformedRow] || er != m.ConsentEvents.ByClass["malformed"] {
		return fmt.Errorf("internal error: rejects (%d users, %d events) differ from malformed counts", ur, er)
	}
	return nil
}

// RejectRates are the fractions of malformed rows in each table.
func (m *Manifest) RejectRates() (users, events float64) {
	if m.Users.Rows > 0 {
		users = float64(m.Users.Excluded[consent.ReasonMalformedRow]) / float64(m.Users.Rows)
	}
	if m.ConsentEvents.Rows > 0 {
		events = float64(m.ConsentEvents.ByClass["malformed"]) / float64(m.ConsentEvents.Rows)
	}
	return users, events
}

// ReadManifest parses a manifest, rejecting unknown versions.
func ReadManifest(b []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("parse manifest: %w", err)
	}
	if m.Version != Version {
		return nil, fmt.Errorf("manifest version %q: this tool reads %q", m.Version, Version)
	}
	return &m, nil
}

func (m *Manifest) reconcileDeltas() error {
	if (m.Adds == nil) != (m.Removes == nil) || (m.Adds != nil) != (m.PreviousRunID != "") {
		return fmt.Errorf("internal error: adds, removes and previous_run_id must come together")
	}
	if m.Adds == nil {
		return nil
	}
	for _, d := range []*DeltaSet{m.Adds, m.Removes} {
		var rows int64
		for _, f := range d.Files {
			rows += f.Rows
		}
		if rows != d.Rows {
			return fmt.Errorf("internal error: delta files hold %d rows, the manifest says %d", rows, d.Rows)
		}
	}
	if m.Removes.KeyID == m.KeyID && m.Removes.Scheme == m.Scheme {
		if m.TotalRows != m.PreviousTotalRows+m.Adds.Rows-m.Removes.Rows {
			return fmt.Errorf("internal error: %d rows != previous %d + adds %d - removes %d", m.TotalRows, m.PreviousTotalRows, m.Adds.Rows, m.Removes.Rows)
		}
	} else if m.Adds.Rows != m.TotalRows || m.Removes.Rows != m.PreviousTotalRows {
		return fmt.Errorf("internal error: after a key change adds must be the whole snapshot and removes the whole previous run")
	}
	return nil
}

// DeltaSet is a run's adds or removes: identifiers new since the previous
// committed run of the destination, or identifiers that run sent and that
// are no longer eligible. Removes carry the scheme and key_id they were sent
// under, which after a key rotation are the old ones.
type DeltaSet struct {
	Files  []OutputFile `json:"files"`
	Rows   int64        `json:"rows"`
	Scheme string       `json:"scheme"`
	KeyID  string       `json:"key_id,omitempty"`
}
