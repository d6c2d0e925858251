package benchcmd

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/slot"
)

// labCmd gathers the lab tools the demo and the benchmarks use: a test
// fabric behind an uplink, a guest with a real network stack on a slot's
// tap, and a userspace VPC host behind a VTEP. Traffic only ever goes to
// namespaces they create.
func labCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:    "lab",
		Short:  "Test networks for demos and benchmarks (a fabric, a guest, a VPC host)",
		Hidden: true,
	}
	cmd.AddCommand(labFabricCmd(), labGuestCmd(), labVTEPCmd())
	return cmd
}

func labFabricCmd() *cobra.Command {
	var tag, slotCIDR string
	var remove bool
	var block uint8
	cmd := &cobra.Command{
		Use:   "fabric",
		Short: "Create (or --remove) a fabric namespace f<tag> behind the uplink veth u<tag>",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f := lab.FabricNamed(tag)
			if remove {
				f.Remove()
				return nil
			}
			p, err := netip.ParsePrefix(slotCIDR)
			if err != nil {
				return fmt.Errorf("invalid --slot-cidr: %w", err)
			}
			if f, err = lab.NewFabricAt(tag, block, p); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "uplink %s, underlay %s, gateway %s, vtep %s, outside host %s (namespace %s)\n",
				f.Uplink, f.Underlay, f.Gateway, f.VTEP, f.Outside, f.Name)
			return nil
		},
	}
	cmd.Flags().StringVar(&tag, "tag", "demo", "names the namespace (f<tag>) and the uplink (u<tag>)")
	cmd.Flags().StringVar(&slotCIDR, "slot-cidr", slot.DefaultSlotCIDR.String(), "slot addresses the fabric routes back to the uplink")
	cmd.Flags().BoolVar(&remove, "remove", false, "remove the fabric instead")
	cmd.Flags().Uint8Var(&block, "block", 0, fmt.Sprintf("the fabric's ranges: 198.18.B.0/24 and 198.19.B+1.0/24 (tests use 0, make demo %d)", lab.DemoBlock))
	return cmd
}

func waitSignal() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGINT, syscall.SIGTERM)
	<-ch
}

func labGuestCmd() *cobra.Command {
	var tag, netnsPath string
	var bare bool
	cmd := &cobra.Command{
		Use:   "guest",
		Short: "Wire a guest namespace g<tag> (a real network stack) to tap0 of a slot until interrupted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if netnsPath == "" {
				return errors.New("--netns is required (the slot's netns path)")
			}
			newGuest := lab.NewGuestNS
			if bare {
				newGuest = lab.NewBareGuestNS
			}
			g, err := newGuest(tag, netnsPath, slot.DefaultConfig("x", 1))
			if err != nil {
				return err
			}
			defer g.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "guest namespace %s on %s's tap0; run programs with: ip netns exec %s ...\n", g.Name, netnsPath, g.Name)
			waitSignal()
			return nil
		},
	}
	cmd.Flags().StringVar(&tag, "tag", "demo", "names the guest namespace (g<tag>)")
	cmd.Flags().StringVar(&netnsPath, "netns", "", "the slot's namespace (netns of acquire)")
	cmd.Flags().BoolVar(&bare, "bare", false, "no address and no route: the guest configures itself (a DHCP client)")
	return cmd
}

func labVTEPCmd() *cobra.Command {
	var tag, ip string
	var vni uint32
	cmd := &cobra.Command{
		Use:   "vtep",
		Short: "Run a VPC host behind the fabric's VTEP (Geneve, userspace) until interrupted",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := netip.ParseAddr(ip)
			if err != nil {
				return fmt.Errorf("invalid --ip: %w", err)
			}
			f := lab.FabricNamed(tag)
			v, err := lab.StartVTEP(f, vni, a, net.HardwareAddr{0x02, 0x76, 0x70, 0x63, 0, 1})
			if err != nil {
				return err
			}
			defer v.Close()
			fmt.Fprintf(cmd.OutOrStdout(), "VPC host %s on vni %d behind VTEP %s\n", a, vni, f.VTEP)
			waitSignal()
			return nil
		},
	}
	cmd.Flags().StringVar(&tag, "tag", "demo", "the fabric's tag")
	cmd.Flags().StringVar(&ip, "ip", "10.9.0.1", "the VPC host's address")
	cmd.Flags().Uint32Var(&vni, "vni", 4242, "the VPC's VNI")
	return cmd
}
