package main

import (
	"audiencematch/pipeline/errkind"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"
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
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f := cmd.Flags().Lookup(k)
		if f == nil || k == "config" {
			return fmt.Errorf("%w: config file %q: unknown key %q (keys are the flag names of %q)", errkind.ErrConfig, path, k, cmd.CommandPath())
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
