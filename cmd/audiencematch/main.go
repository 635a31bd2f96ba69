// Command audiencematch exports consented phone numbers as keyed identifiers
// for the parent ad platform, following MATCHING.md (contract v1).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"audiencematch/hashing"
	"audiencematch/internal/suggest"
	"audiencematch/pipeline/errkind"
)

// Version is the tool version recorded in manifests; set at build time with
// -ldflags "-X main.Version=…".
var Version = "0.1.0"

// Exit codes, from sysexits.h, so that cron wrappers and schedulers can tell
// "retry later" from "fix the configuration".
const (
	exitOK       = 0
	exitFailure  = 1
	exitUsage    = 64
	exitData     = 65
	exitNoInput  = 66
	exitIOErr    = 74
	exitTempFail = 75
	exitRefused  = 77
	exitConfig   = 78
)

const exitCodesHelp = `Exit codes:
  0   success (also: this exact run was already published)
  64  usage: bad flag, unknown scheme, unkeyed scheme without --allow-unkeyed, a
      consent flag looser than the registry's policy
  65  bad data: malformed rows over --max-reject-rate, the drop guard (the snapshot
      shrinks past max_drop_percent, or an input has no rows; see --allow-drop), or
      published files that do not match the audit log; nothing published
  66  an input file is missing or unreadable
  74  I/O error: the disk is full, read-only or failing; free space or fix the mount
      and run again (a run already recorded stays committed)
  75  temporary failure: retrying later may help
  77  destination refused: not in the registry, a third party, not registered for the
      purpose, or unkeyed without allow_unkeyed; nothing read, nothing written
      (oprf evaluate: a request over the destination's oprf_max_evaluations)
  78  configuration: missing column, key file too open or too short, bad config file
  1   anything else (a bug: please report it)`

// exitCode is the one place errors become exit codes.
func exitCode(err error) int {
	switch {
	case err == nil:
		return exitOK
	// A full or read-only disk is the machine's state, not a bug nor bad
	// input: the operator frees space or fixes the mount and runs again.
	case isIOErr(err):
		return exitIOErr
	case errors.Is(err, errkind.ErrUsage):
		return exitUsage
	// A temporary failure first: a source's read error may arrive wrapped in
	// "input unreadable", and a retry is what the scheduler should do.
	case errors.Is(err, errkind.ErrTempFail), errors.Is(err, context.Canceled):
		return exitTempFail
	case errors.Is(err, errkind.ErrData):
		return exitData
	case errors.Is(err, errkind.ErrNoInput):
		return exitNoInput
	case errors.Is(err, errkind.ErrRejected):
		return exitRefused
	case errors.Is(err, errkind.ErrConfig),
		errors.Is(err, hashing.ErrKeyPermissions), errors.Is(err, hashing.ErrKeyShort),
		errors.Is(err, hashing.ErrKeyFormat), errors.Is(err, hashing.ErrNoKey):
		return exitConfig
	}
	return exitFailure
}

// globalOptions are the flags every command shares.
type globalOptions struct {
	logLevel  string
	logFormat string
}

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	g := &globalOptions{}
	root := &cobra.Command{
		Use:   "audiencematch",
		Short: "Export consented phone numbers as keyed identifiers for the parent ad platform",
		Long: `audiencematch is a nightly batch job. It reads users and their consent history,
keeps only users with valid, specific, unwithdrawn consent for the purpose as of a
cutoff, normalizes their phone numbers with libphonenumber, turns them into keyed
per-destination identifiers (HMAC-SHA256 with HKDF-derived keys) and publishes a
Parquet dataset atomically, with a manifest whose counts reconcile every input row.
The contract is MATCHING.md (contract v1).

Quick start, in an empty directory (each line works when copied alone):

  audiencematch keys init --state demo/state
  audiencematch destinations init --state demo/state --delivery demo/out --min-policy-version 3 --max-consent-age 395d
  audiencematch fixtures --users 10000 --out demo/in
  audiencematch run --plan --users demo/in/users.csv --consent demo/in/consent_events.csv --destination meta-ads --state demo/state --as-of 2026-11-01T00:00:00Z
  audiencematch run --users demo/in/users.csv --consent demo/in/consent_events.csv --destination meta-ads --state demo/state --as-of 2026-11-01T00:00:00Z --summary
  audiencematch audit verify --state demo/state

The registry's consent policy (destinations init asks for it) is the data protection
officer's decision; a run's flags may only tighten it. From a clone, scripts/demo.sh
does the same on 100,000 users.

` + exitCodesHelp,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       Version,
		// An unknown command is a usage error (64), not a bug.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return nil
			}
			hint := "see audiencematch --help"
			if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
				hint = "did you mean " + strings.Join(s, " or ") + "?"
			}
			return fmt.Errorf("%w: unknown command %q: %s", errkind.ErrUsage, args[0], hint)
		},
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	root.SuggestionsMinimumDistance = 2
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.logLevel, "log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().StringVar(&g.logFormat, "log-format", "auto", "log format: auto (text on a terminal, JSON otherwise), text, json")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%w: %w%s", errkind.ErrUsage, err, flagHint(cmd, err))
	})
	root.AddCommand(newRunCommand(g), newCommitCommand(g), newFixturesCommand(g), newKeysCommand(), newAuditCommand(), newDestinationsCommand(), newOPRFCommand(g), newPruneCommand(g))
	return root
}

var unknownFlagRE = regexp.MustCompile(`^unknown flag: --([^\s=]+)`)

// flagHint is " (did you mean --X?)" for an unknown flag near one of the
// command's, or "".
func flagHint(cmd *cobra.Command, err error) string {
	m := unknownFlagRE.FindStringSubmatch(err.Error())
	if m == nil {
		return ""
	}
	if c := suggest.Closest(m[1], flagNames(cmd)); c != "" {
		return " (did you mean --" + c + "?)"
	}
	return ""
}

// flagNames are the names of the flags cmd accepts, hidden ones too.
func flagNames(cmd *cobra.Command) []string {
	var names []string
	cmd.Flags().VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })
	cmd.InheritedFlags().VisitAll(func(f *pflag.Flag) { names = append(names, f.Name) })
	return names
}

// logger builds the slog logger the flags ask for, writing to w.
func (g *globalOptions) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(g.logLevel)); err != nil {
		return nil, fmt.Errorf("%w: --log-level %q: use debug, info, warn or error", errkind.ErrUsage, g.logLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	format := g.logFormat
	if format == "auto" {
		format = "json"
		if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			format = "text"
		}
	}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("%w: --log-format %q: use auto, text or json", errkind.ErrUsage, g.logFormat)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := newRootCommand(os.Stdout, os.Stderr)
	err := root.ExecuteContext(ctx)
	printError(os.Stderr, err)
	os.Exit(exitCode(err))
}

// reportedError is an error its command has already told the user about
// (a run's log line, a --json document): main exits with its code without
// printing it a second time.
type reportedError struct{ err error }

func (e reportedError) Error() string { return e.err.Error() }
func (e reportedError) Unwrap() error { return e.err }

// reported marks err as already told; nil stays nil.
func reported(err error) error {
	if err == nil {
		return nil
	}
	return reportedError{err}
}

// printError prints err on one line prefixed "audiencematch: ", unless its
// command has already reported it.
func printError(w io.Writer, err error) {
	var r reportedError
	if err == nil || errors.As(err, &r) {
		return
	}
	fmt.Fprintf(w, "audiencematch: %v\n", err)
}

// isIOErr reports whether err comes from a full, read-only or failing disk.
func isIOErr(err error) bool {
	for _, e := range []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EIO} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}
