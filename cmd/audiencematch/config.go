package main

import (
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"audiencematch/pipeline"
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
		return fmt.Errorf("%w: config file: %w", pipeline.ErrConfig, err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(b, &values); err != nil {
		return fmt.Errorf("%w: config file %q: %w", pipeline.ErrConfig, path, err)
	}
	keys := make([]string, 0, len(values))
	for k := range values {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		f := cmd.Flags().Lookup(k)
		if f == nil || k == "config" {
			return fmt.Errorf("%w: config file %q: unknown key %q (keys are the flag names of %q)", pipeline.ErrConfig, path, k, cmd.CommandPath())
		}
		if f.Changed {
			continue
		}
		if err := setFlag(f, values[k]); err != nil {
			return fmt.Errorf("%w: config file %q: key %q: %w", pipeline.ErrConfig, path, k, err)
		}
	}
	return nil
}

func setFlag(f *pflag.Flag, v any) error {
	switch v := v.(type) {
	case nil:
		return nil
	case []any:
		parts := make([]string, len(v))
		for i, p := range v {
			parts[i] = fmt.Sprint(p)
		}
		return f.Value.Set(strings.Join(parts, ","))
	case map[string]any:
		return fmt.Errorf("a map is not a flag value")
	default:
		return f.Value.Set(fmt.Sprint(v))
	}
}
