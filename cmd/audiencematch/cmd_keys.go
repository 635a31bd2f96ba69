package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"audiencematch/consent/audit"
	"audiencematch/hashing"
	"audiencematch/internal/suggest"
	"audiencematch/pipeline"
	"audiencematch/pipeline/destinations"
	"audiencematch/pipeline/errkind"
	"audiencematch/pipeline/statedir"
)

// KeysOptions are the flags of `audiencematch keys init`.
type KeysOptions struct {
	State  string
	Origin string
}

// AddFlags registers the options' flags.
func (o *KeysOptions) AddFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.State, "state", "", "state directory (required)")
	cmd.Flags().StringVar(&o.Origin, "origin", audit.DefaultOrigin, "the audit log's name in its checkpoints (no spaces or '+')")
}

func newKeysCommand() *cobra.Command {
	keys := &cobra.Command{Use: "keys", Short: "Create the master key and the audit log's signing key"}
	o := &KeysOptions{}
	initCmd := &cobra.Command{
		Use:   "init --state DIR",
		Short: "Create STATE/keys/master.key and the audit log's Ed25519 signing key (mode 0600)",
		Long: `Create, under STATE/keys/ (mode 0700):

  master.key   32 random bytes as hex, mode 0600: the master key of every destination
               (run uses it when neither --key nor $` + hashing.KeyEnv + ` is given)
  audit.key    the audit log's Ed25519 note signing key, mode 0600
  audit.pub    its verifier key, printed on stdout

Give the printed verifier key to the privacy auditors: they verify the log with it
(audit verify --verifier KEY), so that a state directory cannot vouch for itself.
Existing keys are never overwritten; running init again prints the verifier key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runKeysInit(cmd, o) },
	}
	o.AddFlags(initCmd)
	keys.AddCommand(initCmd, newKeysDeriveCommand())
	return keys
}

// DeriveOptions are the flags of `audiencematch keys derive`.
type DeriveOptions struct {
	State, Key, Destination, Out, Scheme string
	Destinations                         string
}

// registered refuses a destination the registry does not hold, or holds as
// a third party: no key is made for a recipient no run may send to (a
// typo would otherwise yield a key that looks right and matches nothing).
func (o *DeriveOptions) registered() error {
	path, err := registryPath(o.Destinations, o.State)
	if err != nil {
		return fmt.Errorf("%w: keys derive checks the destination against the registry: give --state DIR or --destinations FILE", errkind.ErrUsage)
	}
	r, err := destinations.Load(path)
	if err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	d := r.Lookup(o.Destination)
	if d == nil {
		var ids []string
		for _, d := range r.Destinations {
			ids = append(ids, d.ID)
		}
		return fmt.Errorf("%w: destination %q is not in the registry %s%s", errkind.ErrRejected, o.Destination, path, suggest.Hint(o.Destination, ids))
	}
	if d.Relationship == destinations.ThirdParty {
		return fmt.Errorf("%w: destination %q belongs to a third party (%s): nothing goes to third parties", errkind.ErrRejected, o.Destination, d.Organization)
	}
	return nil
}

func newKeysDeriveCommand() *cobra.Command {
	o := &DeriveOptions{}
	cmd := &cobra.Command{
		Use:   "derive --destination ID --out FILE --state DIR [--key FILE]",
		Short: "Write one destination's key (K_dest, or its OPRF key) to a new owner-only file, for machines that export to it alone",
		Long: `Write K_dest = HKDF-SHA256(master key, "audiencematch/v1/"+destination), the
destination's own key, to a new file of mode 0600 that run, commit and
audit subject accept as --key, or as its text in $` + hashing.DestKeyEnv + `.
A machine (or every pod of a sharded job) that exports to one destination can
hold this key instead of the master key: whoever obtains it can compute that
destination's identifiers and no other's, and the master key stays with the
operator. Output under it is byte-identical to output under the master key.

The destination must be in the registry (STATE/destinations.yaml or
--destinations), and not a third party (exit 77 otherwise).
The file names its destination; a run for another destination refuses it.
Its key_id, printed on stdout, is the one that destination's runs report.
An existing file is never overwritten. Rotating the master key changes every
destination's key: derive again.

With --scheme oprf-ristretto255 the file holds the destination's OPRF private
key skS instead (MATCHING.md section 4, amendment 2): what run and oprf evaluate
need for that destination. Never give it to the destination: under that scheme
the destination holds no key.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if o.Out == "" || !pipeline.ValidDestination(o.Destination) {
				return fmt.Errorf("%w: keys derive needs --out and a valid --destination (got %q)", errkind.ErrUsage, o.Destination)
			}
			if err := o.registered(); err != nil {
				return err
			}
			k, err := loadKey(o.Key, o.State)
			if err != nil {
				return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
			}
			master, ok := k.Master()
			if !ok {
				return fmt.Errorf("%w: --key is the destination key of %q: derive needs the master key", errkind.ErrUsage, k.Destination())
			}
			scheme, err := hashing.ParseScheme(o.Scheme)
			if err != nil || !scheme.Keyed() {
				return fmt.Errorf("%w: --scheme %q: keys exist for %s and %s", errkind.ErrUsage, o.Scheme, hashing.HMACSHA256, hashing.OPRFRistretto255)
			}
			dk, err := hashing.WriteSchemeKey(o.Out, master, scheme, o.Destination)
			if err != nil {
				return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "wrote the %s key of %s to %s (mode 0600)\n", scheme, o.Destination, o.Out)
			fmt.Fprintln(cmd.OutOrStdout(), scheme.KeyID(dk))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.Destination, "destination", "", "destination id (required)")
	f.StringVar(&o.Out, "out", "", "the new key file (required; never overwritten)")
	f.StringVar(&o.Scheme, "scheme", string(hashing.HMACSHA256), "the destination's keyed scheme: hmac-sha256 (K_dest) or oprf-ristretto255 (its OPRF private key skS)")
	f.StringVar(&o.Key, "key", "", "master key file (default: $"+hashing.KeyEnv+", then STATE/keys/master.key)")
	f.StringVar(&o.State, "state", "", "state directory, for STATE/keys/master.key and STATE/destinations.yaml")
	f.StringVar(&o.Destinations, "destinations", "", "destination registry, which must hold --destination (default: STATE/destinations.yaml)")
	return cmd
}

func runKeysInit(cmd *cobra.Command, o *KeysOptions) error {
	if o.State == "" {
		return fmt.Errorf("%w: --state is required", errkind.ErrUsage)
	}
	dir := statedir.Keys(o.State)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	mk := filepath.Join(dir, "master.key")
	if _, err := os.Stat(mk); errors.Is(err, fs.ErrNotExist) {
		k, err := hashing.GenerateMasterKey()
		if err != nil {
			return err
		}
		if err := hashing.WriteMasterKey(mk, k); err != nil {
			return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "created master key %s\n", mk)
	}
	vkey, created, err := audit.InitKeys(dir, o.Origin)
	if err != nil {
		return fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	if created {
		fmt.Fprintf(cmd.ErrOrStderr(), "created audit signing key %s; give this verifier key to the auditors:\n", filepath.Join(dir, audit.SignerFile))
	}
	fmt.Fprintln(cmd.OutOrStdout(), vkey)
	return nil
}
