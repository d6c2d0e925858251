package cli

import (
	"context"
	"fmt"
	"slices"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/client"
)

// latencies summarises samples.
type latencies []time.Duration

func (l latencies) pct(p float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	i := int(float64(len(s)-1) * p)
	return s[i]
}

// benchCmd measures a running daemon through its API. The lab benchmarks
// (boot, datapath, attach, orderings) are netslot-bench's.
func benchCmd(f *clientFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure a running daemon through its API (the lab benchmarks are netslot-bench's)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(benchAPICmd(f))
	return cmd
}

func benchAPICmd(f *clientFlags) *cobra.Command {
	var n int
	var allow []string
	var vpc bool
	cmd := &cobra.Command{
		Use:   "api",
		Short: "Measure acquire and release latency through the API of a running daemon",
		Long: `api acquires and releases a slot n times, one after the other, and prints
latency percentiles as seen by this client (connection set up beforehand).
It needs one free slot and leaves the pool as it found it.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client.Dial(f.socket)
			if err != nil {
				return err
			}
			defer c.Close()
			ctx := cmd.Context()
			if _, err := c.Status(ctx); err != nil {
				return err
			}
			var acq, rel latencies
			for i := 0; i < n; i++ {
				rctx, cancel := context.WithTimeout(ctx, f.timeout)
				t0 := time.Now()
				req := &netslotv1.AcquireRequest{EgressAllow: allow}
				if vpc {
					// A documentation-range VTEP: nothing is sent while the
					// slot is only acquired and released.
					req.Vpc = &netslotv1.VpcAttachment{Vni: 4242, RemoteVtep: "198.18.255.254", VpcIp: "10.254.0.5",
						VpcCidrs: []string{"10.254.0.0/16"}}
				}
				s, err := c.Acquire(rctx, req)
				t1 := time.Now()
				if err != nil {
					cancel()
					return err
				}
				err = c.Release(rctx, s.Id, s.GetLease().GetLeaseId())
				t2 := time.Now()
				cancel()
				if err != nil {
					return err
				}
				acq, rel = append(acq, t1.Sub(t0)), append(rel, t2.Sub(t1))
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(w, "op\tn\tp50\tp90\tp99\tmax\t")
			for _, r := range []struct {
				name string
				l    latencies
			}{{"acquire", acq}, {"release (scrub)", rel}} {
				fmt.Fprintf(w, "%s\t%d\t%s\t%s\t%s\t%s\t\n", r.name, len(r.l),
					r.l.pct(.5).Round(time.Microsecond), r.l.pct(.9).Round(time.Microsecond),
					r.l.pct(.99).Round(time.Microsecond), r.l.pct(1).Round(time.Microsecond))
			}
			return w.Flush()
		},
	}
	cmd.Flags().IntVarP(&n, "count", "n", 1000, "acquire/release cycles")
	cmd.Flags().StringArrayVar(&allow, "allow", nil, "acquire with this egress allow-list entry (repeatable)")
	cmd.Flags().BoolVar(&vpc, "vpc", false, "acquire with a VPC attachment (the flip from the dummy VNI)")
	return cmd
}
