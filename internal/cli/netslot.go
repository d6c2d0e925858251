// Package cli holds the command lines of netslot (the client) and netslotd
// (the daemon); cmd/ mains only call them.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/client"
	"github.com/netslot/netslot/internal/pool"
	"github.com/netslot/netslot/internal/slot"
)

type clientFlags struct {
	socket  string
	output  string
	timeout time.Duration
}

var jsonOpts = protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true}

// Netslot returns the netslot command.
func Netslot() *cobra.Command {
	f := &clientFlags{}
	root := &cobra.Command{
		Use:           "netslot",
		Short:         "Acquire and release network slots from netslotd",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVar(&f.socket, "socket", client.DefaultSocket, "netslotd's unix socket")
	root.PersistentFlags().StringVarP(&f.output, "output", "o", "table", "output format: table or json; acquire and show also take firecracker (the PUT /network-interfaces body, the boot arguments and the jailer's --netns, --uid and --gid)")
	root.PersistentFlags().DurationVar(&f.timeout, "timeout", 10*time.Second, "deadline of each request (acquire --wait and release --lease try again until it)")
	root.AddCommand(statusCmd(f), acquireCmd(f), releaseCmd(f), listCmd(f), showCmd(f), benchCmd(f))
	return root
}

// Main runs cmd and turns its error into a message and an exit code.
func Main(cmd *cobra.Command) int {
	if err := cmd.Execute(); err != nil {
		msg := err.Error()
		var ce *client.Error
		switch {
		case errors.As(err, &ce) && ce.Reason != "":
			msg = fmt.Sprintf("%s (%s, %s)", ce.Message, strings.ToLower(ce.Code.String()), ce.Reason)
		case errors.As(err, &ce):
			msg = fmt.Sprintf("%s (%s)", ce.Message, strings.ToLower(ce.Code.String()))
		}
		fmt.Fprintf(os.Stderr, "%s: error: %s\n", cmd.Name(), msg)
		return 1
	}
	return 0
}

func (f *clientFlags) run(cmd *cobra.Command, fn func(ctx context.Context, c *client.Client) error) error {
	switch {
	case f.output == "firecracker" && cmd.Name() != "acquire" && cmd.Name() != "show":
		return fmt.Errorf("-o firecracker is for acquire and show")
	case f.output != "table" && f.output != "json" && f.output != "firecracker":
		return fmt.Errorf("unknown output format %q: want table, json or firecracker", f.output)
	}
	// A command line fails at once when the daemon is not there; a
	// launcher's client waits for it to come back.
	c, err := client.Dial(f.socket, client.WithFailFast())
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(cmd.Context(), f.timeout)
	defer cancel()
	return fn(ctx, c)
}

func writeJSON(w io.Writer, m proto.Message) error {
	b, err := jsonOpts.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func statusCmd(f *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Show the pool's size, occupancy and boot progress",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return f.run(cmd, func(ctx context.Context, c *client.Client) error {
				st, err := c.Status(ctx)
				if err != nil {
					return err
				}
				return printStatus(cmd.OutOrStdout(), f.output, st)
			})
		},
	}
}

// printStatus writes st as a table, or as JSON with format "json".
func printStatus(out io.Writer, format string, st *netslotv1.StatusResponse) error {
	if format == "json" {
		return writeJSON(out, st)
	}
	w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	b := st.GetBoot()
	fmt.Fprintf(w, "prefix\t%s\nslots\t%d\nfree\t%d\nleased\t%d\nready\t%t\n", st.Prefix, st.Total, st.Free, st.Leased, st.Ready)
	if st.Draining {
		fmt.Fprintf(w, "draining\ttrue (stopping: no slot is vended; releases are served)\n")
	}
	if st.Damaged > 0 {
		fmt.Fprintf(w, "damaged\t%d (found broken: leased ones are rebuilt at release, free ones out of the pool until rebuilt; see list)\n", st.Damaged)
	}
	if st.Orphaned > 0 {
		fmt.Fprintf(w, "orphaned\t%d (no lease, a VM holds the tap: out of the pool until it lets go)\n", st.Orphaned)
	}
	if st.Ready {
		fmt.Fprintf(w, "boot\t%.2fs (created %d, adopted %d, repaired %d; ms per slot: first tenth %.3f, last tenth %.3f)\n", st.BootSeconds, b.Created, b.Adopted, b.Repaired, b.MsPerSlotFirstTenth, b.MsPerSlotLastTenth)
	} else {
		fmt.Fprintf(w, "boot\t%d/%d ready, %.0f slots/s, eta %.1fs\n", b.Ready, st.Total, b.SlotsPerSecond, b.EtaSeconds)
	}
	uplink := st.Uplink
	if uplink == "" {
		uplink = "(none: slot traffic stays on the host)"
	}
	if st.UplinkState != "" {
		uplink += fmt.Sprintf(" (%s for %s)", st.UplinkState, time.Duration(st.UplinkStateSeconds*float64(time.Second)).Round(time.Second))
	}
	fmt.Fprintf(w, "slot cidr\t%s\nuplink\t%s\n", st.SlotCidr, uplink)
	if !st.Forwarding {
		fmt.Fprintf(w, "forwarding\tOFF on host veths that could not be set back (see problem)\n")
	}
	for _, p := range st.Problems {
		fmt.Fprintf(w, "problem\t%s\n", p)
	}
	if st.UnderlayIp != "" {
		fmt.Fprintf(w, "underlay ip\t%s\n", st.UnderlayIp)
	}
	fmt.Fprintf(w, "egress deny\t%s\n", strings.Join(st.EgressDeny, " "))
	fmt.Fprintf(w, "root rules\t%d\nunattributed drops\t%s\nversion\t%s\n", st.RootRules, formatDrops(st.UnattributedDrops), st.Version)
	return w.Flush()
}

func acquireCmd(f *clientFlags) *cobra.Command {
	var (
		vni                 uint32
		vtep, vpcIP, owner  string
		peerMAC             string
		vpcCIDRs, allowList []string
		inbound             []string
		denyAll, wait       bool
		key                 string
		dns                 []string
		hostname            string
		tapUID, tapGID      uint32
	)
	cmd := &cobra.Command{
		Use:   "acquire",
		Short: "Lease a free slot (fails at once if none is free, unless --wait)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req := &netslotv1.AcquireRequest{EgressAllow: allowList, EgressDenyAll: denyAll, Owner: owner, RequestKey: key, Wait: wait, Dns: dns, Hostname: hostname}
			switch uid, gid := cmd.Flags().Changed("tap-uid"), cmd.Flags().Changed("tap-gid"); {
			case uid && gid:
				req.TapOwner = &netslotv1.TapOwner{Uid: tapUID, Gid: tapGID}
			case uid || gid:
				return fmt.Errorf("--tap-uid and --tap-gid go together: give both (the jailer's --uid and --gid)")
			}
			rules, err := slot.ParseInboundSpecs(inbound)
			if err != nil {
				return err
			}
			for _, r := range rules {
				m := &netslotv1.InboundRule{Protocol: slot.ProtoName(r.Proto), Port: uint32(r.PortLo), PortEnd: uint32(r.PortHi)}
				if r.Src.Bits() != 0 {
					m.SourceCidr = r.Src.String()
				}
				req.Inbound = append(req.Inbound, m)
			}
			vpcSet := cmd.Flags().Changed("vni") || vtep != "" || vpcIP != "" || len(vpcCIDRs) > 0 || peerMAC != ""
			if vpcSet {
				req.Vpc = &netslotv1.VpcAttachment{Vni: vni, RemoteVtep: vtep, VpcIp: vpcIP, VpcCidrs: vpcCIDRs, PeerMac: peerMAC}
			}
			return f.run(cmd, func(ctx context.Context, c *client.Client) error {
				s, err := c.Acquire(ctx, req)
				if err != nil {
					return err
				}
				return printSlot(cmd.OutOrStdout(), f.output, s)
			})
		},
	}
	fl := cmd.Flags()
	fl.Uint32Var(&vni, "vni", 0, "Geneve VNI of the VPC (1-15728639; higher ones are the dummy VNIs of pooled slots)")
	fl.StringVar(&peerMAC, "peer-mac", "", "MAC of the VPC side (gateway or remote geneve device); empty: learned by ARP through the tunnel")
	fl.StringVar(&vtep, "vtep", "", "IPv4 address of the VPC's remote tunnel endpoint")
	fl.StringVar(&vpcIP, "vpc-ip", "", "the guest's IPv4 address inside the VPC")
	fl.StringArrayVar(&vpcCIDRs, "vpc-cidr", nil, "a CIDR of the VPC (repeatable)")
	fl.StringArrayVar(&allowList, "allow", nil, "an IPv4 CIDR the guest may send to (repeatable; none: anywhere but the pool's deny set)")
	fl.BoolVar(&denyAll, "deny-all", false, "the guest may send nowhere")
	fl.StringArrayVar(&inbound, "inbound", nil, "open the guest to new traffic: PROTO/PORT[-PORT][,CIDR] or icmp[,CIDR] (repeatable; none: only replies to its own flows come in)")
	fl.StringVar(&owner, "owner", "", "label stored with the lease, for example the VM's id")
	fl.StringVar(&key, "key", "", "idempotency key: while its lease lives, an acquire with the same key returns that lease")
	fl.BoolVar(&wait, "wait", false, "wait for a slot until --timeout: the pool empty, the daemon booting, draining or restarting (tried again, with --key safely after an unknown outcome)")
	fl.StringSliceVar(&dns, "dns", nil, "the guest's DNS servers for this lease, IPv4 (comma-separated or repeated, at most 3; default: netslotd --dns)")
	fl.StringVar(&hostname, "hostname", "", "the guest's hostname in its DHCP answers (letters, digits, '-' and '.', at most 63 bytes)")
	fl.Uint32Var(&tapUID, "tap-uid", 0, "give the slot's tap to this user, the one the VMM runs as (the jailer's --uid; with --tap-gid; not 0): it attaches without CAP_NET_ADMIN (default: the tap is root's)")
	fl.Uint32Var(&tapGID, "tap-gid", 0, "give the slot's tap to this group (the jailer's --gid; with --tap-uid; not 0): the --tap-uid user attaches only with this group among its groups")
	return cmd
}

func releaseCmd(f *clientFlags) *cobra.Command {
	var leaseID string
	cmd := &cobra.Command{
		Use:   "release ID",
		Short: "Scrub a leased slot and return it to the pool",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return f.run(cmd, func(ctx context.Context, c *client.Client) error {
				release := func() error { return c.Release(ctx, args[0], leaseID) }
				if leaseID == "" {
					// By hand: whatever lease holds it (logged by the daemon).
					release = func() error { return c.ForceRelease(ctx, args[0]) }
				}
				if err := release(); err != nil {
					return err
				}
				if f.output == "json" {
					fmt.Fprintf(cmd.OutOrStdout(), "{\"id\":%q,\"released\":true}\n", args[0])
				} else {
					fmt.Fprintf(cmd.OutOrStdout(), "released %s\n", args[0])
				}
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&leaseID, "lease", "", "release only if the slot is still held by this lease id (from acquire), tried again until --timeout if the outcome is unknown; without it the release is forced, once: whatever lease holds the slot")
	return cmd
}

func showCmd(f *clientFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: "Describe one slot",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return f.run(cmd, func(ctx context.Context, c *client.Client) error {
				s, err := c.Get(ctx, args[0])
				if err != nil {
					return err
				}
				return printSlot(cmd.OutOrStdout(), f.output, s)
			})
		},
	}
}

func listCmd(f *clientFlags) *cobra.Command {
	var state, owner, key string
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List slots",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if state != "" {
				if _, err := pool.ParseState(state); err != nil {
					return err
				}
			}
			return f.run(cmd, func(ctx context.Context, c *client.Client) error {
				slots, err := c.List(ctx, &netslotv1.ListRequest{State: state, Owner: owner, RequestKey: key})
				if err != nil {
					return err
				}
				out := cmd.OutOrStdout()
				if f.output == "json" {
					raw := make([]json.RawMessage, len(slots))
					for i, s := range slots {
						if raw[i], err = jsonOpts.Marshal(s); err != nil {
							return err
						}
					}
					b, err := json.Marshal(raw)
					if err != nil {
						return err
					}
					_, err = fmt.Fprintf(out, "%s\n", b)
					return err
				}
				w := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(w, "ID\tSTATE\tSLOT IP\tHOST VETH\tOWNER")
				for _, s := range slots {
					st := s.State
					if s.Damaged != "" {
						st += " (damaged)"
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\n", s.Id, st, s.SlotIp, s.HostVeth, s.GetLease().GetOwner())
				}
				return w.Flush()
			})
		},
	}
	cmd.Flags().StringVar(&state, "state", "", "only slots in this state (free, leased, releasing, acquiring, pending)")
	cmd.Flags().StringVar(&owner, "owner", "", "only slots leased with this owner")
	cmd.Flags().StringVar(&key, "key", "", "only the slot leased with this request key")
	return cmd
}

// firecrackerConfig is what a Firecracker launcher needs from a slot, ready
// to use unchanged: the body of PUT /network-interfaces/{iface_id}, the
// kernel arguments that configure the guest with no DHCP (appended to its
// boot_args), and the jailer's --netns (and --uid and --gid when the lease
// gave the tap to them).
type firecrackerConfig struct {
	NetworkInterface struct {
		IfaceID     string `json:"iface_id"`
		HostDevName string `json:"host_dev_name"`
		GuestMAC    string `json:"guest_mac"`
	} `json:"network_interface"`
	BootArgs string   `json:"boot_args"`
	MTU      uint32   `json:"mtu"`
	DNS      []string `json:"dns"`
	Netns    string   `json:"jailer_netns"`
	// The jailer's --uid and --gid: the tap's owner, when the lease gave
	// it one (acquire --tap-uid, --tap-gid).
	UID     *uint32 `json:"jailer_uid,omitempty"`
	GID     *uint32 `json:"jailer_gid,omitempty"`
	SlotID  string  `json:"slot_id"`
	LeaseID string  `json:"lease_id,omitempty"`
}

func printFirecracker(w io.Writer, s *netslotv1.Slot) error {
	var c firecrackerConfig
	fc := s.GetFirecracker()
	c.NetworkInterface.IfaceID, c.NetworkInterface.HostDevName, c.NetworkInterface.GuestMAC = fc.GetIfaceId(), fc.GetHostDevName(), fc.GetGuestMac()
	c.BootArgs, c.MTU, c.DNS, c.Netns, c.SlotID, c.LeaseID = s.BootArgs, s.Mtu, s.Dns, s.Netns, s.Id, s.GetLease().GetLeaseId()
	if c.DNS == nil {
		c.DNS = []string{}
	}
	if o := s.GetLease().GetTapOwner(); o != nil {
		c.UID, c.GID = &o.Uid, &o.Gid
	}
	b, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func printSlot(w io.Writer, format string, s *netslotv1.Slot) error {
	if format == "json" {
		return writeJSON(w, s)
	}
	if s == nil {
		return errors.New("empty answer")
	}
	if format == "firecracker" {
		return printFirecracker(w, s)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "id\t%s\nstate\t%s\nnetns\t%s\ntap\t%s\nguest ip\t%s/%d\ngateway\t%s\nguest mac\t%s\nslot ip\t%s\nhost veth\t%s\n",
		s.Id, s.State, s.Netns, s.Tap, s.GuestIp, s.GuestPrefixLen, s.GatewayIp, s.GuestMac, s.SlotIp, s.HostVeth)
	if s.Damaged != "" {
		fmt.Fprintf(tw, "damaged\t%s\n", s.Damaged)
	}
	fc := s.GetFirecracker()
	fmt.Fprintf(tw, "firecracker\tiface_id=%s host_dev_name=%s guest_mac=%s\n", fc.GetIfaceId(), fc.GetHostDevName(), fc.GetGuestMac())
	fmt.Fprintf(tw, "mtu\t%d\n", s.Mtu)
	if len(s.Dns) > 0 {
		fmt.Fprintf(tw, "dns\t%s\n", strings.Join(s.Dns, ", "))
	}
	fmt.Fprintf(tw, "boot args\t%s\n", s.BootArgs)
	if l := s.GetLease(); l != nil {
		fmt.Fprintf(tw, "lease id\t%s\n", l.LeaseId)
		if l.Hostname != "" {
			fmt.Fprintf(tw, "hostname\t%s\n", l.Hostname)
		}
		if l.RequestKey != "" {
			fmt.Fprintf(tw, "request key\t%s\n", l.RequestKey)
		}
		if l.Owner != "" {
			fmt.Fprintf(tw, "owner\t%s\n", l.Owner)
		}
		if o := l.GetTapOwner(); o != nil {
			fmt.Fprintf(tw, "tap owner\tuid=%d gid=%d\n", o.Uid, o.Gid)
		}
		fmt.Fprintf(tw, "acquired\t%s\n", time.Unix(0, l.AcquiredUnixNano).UTC().Format(time.RFC3339Nano))
		switch {
		case l.EgressDenyAll:
			fmt.Fprintf(tw, "egress\tdenied everywhere\n")
		case len(l.EgressAllow) > 0:
			fmt.Fprintf(tw, "egress allow\t%s\n", strings.Join(l.EgressAllow, ", "))
		}
		if len(l.Inbound) > 0 {
			rules := make([]string, len(l.Inbound))
			for k, r := range l.Inbound {
				rules[k] = inboundSpec(r)
			}
			fmt.Fprintf(tw, "inbound\t%s\n", strings.Join(rules, " "))
		}
		if v := l.GetVpc(); v != nil {
			fmt.Fprintf(tw, "vpc\tvni=%d vtep=%s vpc_ip=%s cidrs=%s\n", v.Vni, v.RemoteVtep, v.VpcIp, strings.Join(v.VpcCidrs, ","))
			if v.PeerMac != "" {
				fmt.Fprintf(tw, "vpc peer mac\t%s\n", v.PeerMac)
			}
		}
	}
	if dp := s.GetDatapath(); dp != nil {
		kind := "attached"
		if dp.DummyVni {
			kind = "dummy, not attached"
		}
		fmt.Fprintf(tw, "vni\t%d (%s)\nvpc mac\t%s\n", dp.Vni, kind, dp.VpcMac)
		fmt.Fprintf(tw, "tx (guest to uplink)\t%d packets, %d bytes, %d encapsulated\n", dp.TxPackets, dp.TxBytes, dp.EncapPackets)
		fmt.Fprintf(tw, "rx (uplink to guest)\t%d packets, %d bytes, %d decapsulated\n", dp.RxPackets, dp.RxBytes, dp.DecapPackets)
		fmt.Fprintf(tw, "arp through tunnel\t%d replies sent, %d requests sent\n", dp.ArpReplies, dp.ArpRequests)
		if dp.DhcpReplies > 0 {
			fmt.Fprintf(tw, "dhcp\t%d answers sent\n", dp.DhcpReplies)
		}
		if n := dp.Drops["dhcp_declined"]; n > 0 {
			// One address per slot: nothing else to offer (docs/design.md).
			fmt.Fprintf(tw, "dhcp declined\t%d DECLINE from the guest: it found %s in use on its link\n", n, s.GuestIp)
		}
		if dp.IcmpFragNeeded > 0 {
			fmt.Fprintf(tw, "path mtu\t%d ICMP fragmentation needed sent\n", dp.IcmpFragNeeded)
		}
		if dp.HeldDropped > 0 {
			fmt.Fprintf(tw, "held frames\t%d dropped before the vpc peer was learned\n", dp.HeldDropped)
		}
		fmt.Fprintf(tw, "drops\t%s\n", formatDrops(dp.Drops))
	}
	return tw.Flush()
}

// inboundSpec writes an inbound rule as --inbound reads it.
func inboundSpec(r *netslotv1.InboundRule) string {
	s := r.Protocol
	if r.Port != 0 {
		s += fmt.Sprintf("/%d", r.Port)
		if r.PortEnd != 0 && r.PortEnd != r.Port {
			s += fmt.Sprintf("-%d", r.PortEnd)
		}
	}
	if r.SourceCidr != "" {
		s += "," + r.SourceCidr
	}
	return s
}

// formatDrops prints drop counters sorted by reason ("none" if empty).
func formatDrops(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}
