package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"golang.org/x/mod/sumdb/note"

	"audiencematch/consent/audit"
	"audiencematch/pipeline/destinations"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/retention"
	"audiencematch/pipeline/statedir"
)

// PruneConfig is what `audiencematch prune` needs.
type PruneConfig struct {
	State    string
	Registry *destinations.Registry
	// Destination limits the prune to one destination; empty: all.
	Destination   string
	Now           time.Time
	DryRun        bool
	ToolVersion   string
	AuditSigner   note.Signer
	AuditVerifier note.Verifier
	LockWait      time.Duration
	Log           *slog.Logger
}

// Prune enforces the registry's retention_days under the run lock, with the
// audit log recovered first (package retention says what it removes and
// what it keeps).
func Prune(ctx context.Context, c PruneConfig) ([]retention.Removal, error) {
	if c.Registry == nil || c.AuditSigner == nil || c.AuditVerifier == nil {
		return nil, fmt.Errorf("%w: prune needs the registry and the audit log's keys", errkind.ErrConfig)
	}
	if err := ensureStateDirs(c.State); err != nil {
		return nil, err
	}
	lock, err := acquireLock(ctx, c.State, c.Now, c.LockWait)
	if err != nil {
		return nil, err
	}
	defer lock.Release()
	if err := audit.Recover(statedir.Audit(c.State), c.AuditSigner, c.AuditVerifier); err != nil {
		return nil, fmt.Errorf("%w: audit log: %w", errkind.ErrConfig, err)
	}
	return prune(ctx, c)
}

// prune is Prune under the lock, for Prune and the end of a run.
func prune(ctx context.Context, c PruneConfig) ([]retention.Removal, error) {
	l, err := audit.OpenForAppend(statedir.Audit(c.State))
	if err != nil {
		return nil, fmt.Errorf("%w: audit log: %w", errkind.ErrConfig, err)
	}
	rms, err := retention.Prune(ctx, l, retention.Options{State: c.State, Registry: c.Registry, Destination: c.Destination,
		Now: c.Now, DryRun: c.DryRun, ToolVersion: c.ToolVersion, Signer: c.AuditSigner})
	if c.Log != nil {
		for _, rm := range rms {
			c.Log.Info("pruned what retention expired", "destination", rm.Destination, "retention_days", rm.RetentionDays,
				"runs", len(rm.Runs), "failed_runs", len(rm.Failed), "dry_run", c.DryRun)
		}
	}
	return rms, err
}
