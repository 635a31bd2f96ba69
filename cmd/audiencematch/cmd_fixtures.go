package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"audiencematch/fixtures"
	"audiencematch/pipeline/errkind"
)

// FixturesOptions are the flags of `audiencematch fixtures`.
type FixturesOptions struct {
	Users  int
	Out    string
	Seed   uint64
	Format string
}

// AddFlags registers the options' flags.
func (o *FixturesOptions) AddFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.IntVar(&o.Users, "users", 100000, "number of users to generate")
	f.StringVar(&o.Out, "out", "", "directory to write users, consent_events and master.key into (required)")
	f.Uint64Var(&o.Seed, "seed", 1, "random seed: the same seed gives byte-identical tables")
	f.StringVar(&o.Format, "format", "csv", "table format: csv or parquet")
}

func newFixturesCommand(g *globalOptions) *cobra.Command {
	o := &FixturesOptions{}
	cmd := &cobra.Command{
		Use:   "fixtures --out DIR [--users N] [--seed S] [--format csv|parquet]",
		Short: "Generate realistic synthetic users, consent history and a master key",
		Long: `Generate deterministic synthetic inputs (MATCHING.md section 1) into --out:
users.csv and consent_events.csv (or .parquet), and master.key, a fresh random
key with mode 0600 (an existing master.key is kept).

The data is built around the cutoff ` + fixtures.DefaultAsOf.Format(time.RFC3339) + `, purpose ` + fixtures.DefaultPurpose + `,
minimum policy version 3 and maximum consent age 395d. Numbers come from 40
countries, typed every way people type them, with junk values, numbers shared by
several accounts, every consent case of section 2, events of unknown users and a
small share (under 0.2%) of malformed rows.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runFixtures(cmd, o)
		},
	}
	o.AddFlags(cmd)
	return cmd
}

func runFixtures(cmd *cobra.Command, o *FixturesOptions) error {
	if o.Out == "" {
		return fmt.Errorf("%w: --out DIR is required", errkind.ErrUsage)
	}
	if o.Users < 0 {
		return fmt.Errorf("%w: --users must be at least 0", errkind.ErrUsage)
	}
	if o.Format != "csv" && o.Format != "parquet" {
		return fmt.Errorf("%w: --format %q: use csv or parquet", errkind.ErrUsage, o.Format)
	}
	start := time.Now()
	st, err := fixtures.WriteFiles(o.Out, fixtures.Options{Users: o.Users, Seed: o.Seed, Format: o.Format})
	if err != nil {
		return fmt.Errorf("%w: write fixtures: %w", errkind.ErrConfig, err)
	}
	fmt.Fprintf(cmd.OutOrStdout(), "wrote %d users to %s and %d consent events to %s in %.1fs; master key: %s\n",
		st.Users, st.UsersPath, st.Events, st.EventsPath, time.Since(start).Seconds(), st.KeyPath)
	return nil
}
