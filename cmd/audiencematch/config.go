package main

import (
	"fmt"
	"net/url"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"audiencematch/internal/suggest"
	"audiencematch/pipeline/errkind"
)

// applyConfigFile sets every flag that the YAML file at path names and the
// command line did not: flags win. Keys are the flag names ("as-of",
// "max-consent-age", ...); an unknown key is an error, so that a typo in a
// cron config does not silently fall back to a default.
func applyConfigFile(cmd *cobra.Command, path string) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%w: config file: %w", errkind.ErrConfig, err)
	}
	// Nodes, not values: YAML would turn 2026-11-01T00:00:00Z into a time and
	// 0700 into a number; flags want the text as written.
	var values map[string]yaml.Node
	if err := yaml.Unmarshal(b, &values); err != nil {
		return fmt.Errorf("%w: config file %q: %w", errkind.ErrConfig, path, err)
	}
	if k := secretKey(values); k != "" {
		if err := ownerOnly(path); err != nil {
			return fmt.Errorf("%w: config file %q holds a secret (the password in %q): %w", errkind.ErrConfig, path, k, err)
		}
	}
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f := cmd.Flags().Lookup(k)
		if f == nil || k == "config" {
			var names []string
			for _, n := range flagNames(cmd) {
				if n != "config" && n != "help" {
					names = append(names, n)
				}
			}
			hint := suggest.Hint(k, names)
			if hint == "" {
				hint = fmt.Sprintf(" (keys are the flag names of %q)", cmd.CommandPath())
			}
			return fmt.Errorf("%w: config file %q: unknown key %q%s", errkind.ErrConfig, path, k, hint)
		}
		if f.Changed {
			continue
		}
		n := values[k]
		if err := setFlag(f, &n); err != nil {
			return fmt.Errorf("%w: config file %q: key %q: %w", errkind.ErrConfig, path, k, err)
		}
	}
	return nil
}

func setFlag(f *pflag.Flag, n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return nil
		}
		return f.Value.Set(n.Value)
	case yaml.SequenceNode:
		parts := make([]string, len(n.Content))
		for i, c := range n.Content {
			if c.Kind != yaml.ScalarNode {
				return fmt.Errorf("line %d: a list of plain values is expected", c.Line)
			}
			parts[i] = c.Value
		}
		return f.Value.Set(strings.Join(parts, ","))
	}
	return fmt.Errorf("line %d: a plain value is expected", n.Line)
}

// secretKey names the config key that holds a secret: a database URL with
// a password, in URL or keyword form; "" when none does.
func secretKey(values map[string]yaml.Node) string {
	n, ok := values["source"]
	if !ok || n.Kind != yaml.ScalarNode {
		return ""
	}
	if u, err := url.Parse(n.Value); err == nil && u.User != nil {
		if _, set := u.User.Password(); set {
			return "source"
		}
	}
	if strings.Contains(strings.ToLower(n.Value), "password=") {
		return "source"
	}
	return ""
}

// ownerOnly refuses a file that its group or others may read or write, as
// ssh refuses such a private key: a secret in it is no longer one.
func ownerOnly(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("it is accessible by group or others (mode %04o); fix with: chmod 600 %s, or keep the password in $PGPASSWORD", perm, path)
	}
	return nil
}
