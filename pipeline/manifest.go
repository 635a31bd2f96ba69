package pipeline

import (
	"encoding/json"
	"fmt"
	"time"

	"audiencematch/consent"
)

// ManifestVersion is the first field of every manifest; readers reject
// versions they do not know.
const ManifestVersion = "audiencematch.manifest/v1"

// Exclusion reasons for user rows, besides the consent outcomes
// (no_consent, withdrawn, expired, stale_policy, consent_unreadable).
// ReasonSharedNumberWithdrawn counts the valid holders of a number another
// holder blocks: withdrawn, or unreadable, which MATCHING.md section 2
// (amendment 1) treats as a withdraw.
const (
	ReasonInvalidPhone          = "invalid_phone"
	ReasonSharedNumberWithdrawn = "shared_number_withdrawn"
	ReasonDuplicateNumber       = "duplicate_number"
	ReasonMalformedRow          = "malformed_row"
)

// UserReasons lists every exclusion reason of a user row.
var UserReasons = []string{"no_consent", "withdrawn", "expired", "stale_policy", consent.ConsentUnreadable.String(),
	ReasonInvalidPhone, ReasonSharedNumberWithdrawn, ReasonDuplicateNumber, ReasonMalformedRow}

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

func newManifest(c *Config) *Manifest {
	m := &Manifest{
		Version:     ManifestVersion,
		ToolVersion: c.ToolVersion,
		Destination: c.Destination,
		AsOf:        c.Rules.AsOf.UTC().Format(time.RFC3339Nano),
		Purpose:     c.Rules.Purpose,
		Policy: PolicyRules{
			MinPolicyVersion:     c.Rules.MinPolicyVersion,
			MaxConsentAgeSeconds: int64(c.Rules.MaxAge / time.Second),
			MaxRejectRate:        c.MaxRejectRate,
		},
		Scheme:        string(c.Scheme),
		KeyID:         c.KeyID(),
		ConfigDigest:  c.Digest(),
		Users:         UserCounts{Excluded: map[string]int64{}},
		ConsentEvents: EventCounts{ByClass: map[string]int64{}},
		Rejects:       RejectSummary{Users: map[string]int64{}, ConsentEvents: map[string]int64{}},
		Backfill:      c.Backfill,
	}
	for _, r := range UserReasons {
		m.Users.Excluded[r] = 0
	}
	for _, n := range consent.EventClassNames {
		m.ConsentEvents.ByClass[n] = 0
	}
	return m
}

func (u *UserCounts) exclude(reason string) { u.Excluded[reason]++ }

func (m *Manifest) addInput(table, name, digest string, rows int64) {
	m.Inputs = append(m.Inputs, InputFile{Table: table, Name: name, SHA256: digest, Rows: rows})
}

func (m *Manifest) addReject(table, reason string) {
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
	if ur != m.Users.Excluded[ReasonMalformedRow] || er != m.ConsentEvents.ByClass["malformed"] {
		return fmt.Errorf("internal error: rejects (%d users, %d events) differ from malformed counts", ur, er)
	}
	return nil
}

// RejectRates are the fractions of malformed rows in each table.
func (m *Manifest) RejectRates() (users, events float64) {
	if m.Users.Rows > 0 {
		users = float64(m.Users.Excluded[ReasonMalformedRow]) / float64(m.Users.Rows)
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
	if m.Version != ManifestVersion {
		return nil, fmt.Errorf("manifest version %q: this tool reads %q", m.Version, ManifestVersion)
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
