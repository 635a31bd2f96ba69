// Package statedir is the layout of the job's private state directory,
// which holds everything that must outlive a run and never be published:
//
//	STATE/keys/            the master key and the audit log's keys (owner-only)
//	STATE/audit/           the audit log: records.jsonl and its signed checkpoint
//	STATE/runs/<run id>/   each run's evidence.parquet, rejects.csv, manifest.json, record.json
//	STATE/failed/<run id>/ a run over its reject rate: its rejects.csv and manifest.json
//	STATE/staging/         a run's work in progress, removed by the next run
//	STATE/shards/          the shards of a sharded run until their commit
//	STATE/idcache/         oprf-ristretto255 identifiers already evaluated (package idcache)
//	STATE/destinations.yaml  the destination registry (by default)
//
// Every directory is created owner-only: the evidence and the rejects hold
// user ids and raw input rows.
package statedir

import "path/filepath"

// Audit is the audit log's directory.
func Audit(state string) string { return filepath.Join(state, "audit") }

// Keys is where `keys init` puts the master key and the log's keys.
func Keys(state string) string { return filepath.Join(state, "keys") }

// Run is where a run's private files are kept once it is published.
func Run(state, runID string) string { return filepath.Join(state, "runs", runID) }

// Evidence is a run's private evidence file.
func Evidence(state, runID string) string {
	return filepath.Join(Run(state, runID), "evidence.parquet")
}
