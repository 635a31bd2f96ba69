package main

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"audiencematch/pipeline/destinations"
	"audiencematch/pipeline/errkind"
)

// DestinationsOptions are the flags of `audiencematch destinations`.
type DestinationsOptions struct {
	State string
	File  string
	JSON  bool
}

// AddFlags registers the options' flags.
func (o *DestinationsOptions) AddFlags(cmd *cobra.Command) {
	cmd.Flags().StringVar(&o.State, "state", "", "state directory; the registry defaults to STATE/destinations.yaml")
	cmd.Flags().StringVar(&o.File, "destinations", "", "the registry file (default: STATE/destinations.yaml)")
}

func (o *DestinationsOptions) load() (*destinations.Registry, error) {
	path, err := registryPath(o.File, o.State)
	if err != nil {
		return nil, err
	}
	r, err := destinations.Load(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errkind.ErrConfig, err)
	}
	return r, nil
}

func registryPath(file, state string) (string, error) {
	if file != "" {
		return file, nil
	}
	if state == "" {
		return "", fmt.Errorf("%w: give --destinations FILE or --state DIR", errkind.ErrUsage)
	}
	return filepath.Join(state, "destinations.yaml"), nil
}

func newDestinationsCommand() *cobra.Command {
	d := &cobra.Command{
		Use:   "destinations",
		Short: "Show and check the destination registry (the allowlist and GDPR Art. 30 list of recipients)",
		Long: `The registry (YAML, default STATE/destinations.yaml) lists every recipient a run may
send to: id, name, organization, relationship (parent, affiliate, processor,
third_party), purposes, lawful_basis, scheme, allow_unkeyed, delivery (a local
directory), retention_days, and optionally key_file. A run refuses (exit 77) a
destination not in it, a third party, one not registered for the run's purpose,
or an unkeyed scheme without allow_unkeyed.`,
	}
	o := &DestinationsOptions{}
	list := &cobra.Command{
		Use:   "list",
		Short: "Print the registry as a table (or --json)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := o.load()
			if err != nil {
				return err
			}
			if o.JSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(r.Destinations)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tORGANIZATION\tRELATIONSHIP\tPURPOSES\tLAWFUL BASIS\tSCHEME\tDELIVERY\tRETENTION")
			for _, d := range r.Destinations {
				scheme := d.Scheme
				if d.AllowUnkeyed {
					scheme += " (unkeyed allowed)"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%dd\n", d.ID, d.Name, d.Organization, d.Relationship,
					strings.Join(d.Purposes, ","), d.LawfulBasis, scheme, d.Delivery, d.RetentionDays)
			}
			return tw.Flush()
		},
	}
	o.AddFlags(list)
	list.Flags().BoolVar(&o.JSON, "json", false, "print JSON")
	co := &DestinationsOptions{}
	check := &cobra.Command{
		Use:   "check",
		Short: "Validate the registry: every problem is listed; exit 78 if there is one",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := co.load()
			if err != nil {
				return err
			}
			for _, w := range r.Warnings() {
				fmt.Fprintln(cmd.ErrOrStderr(), "warning:", w)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %d destinations in %s\n", len(r.Destinations), r.Path)
			return nil
		},
	}
	co.AddFlags(check)
	d.AddCommand(list, check)
	return d
}
