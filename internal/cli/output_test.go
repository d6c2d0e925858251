package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
)

func TestStatusOutput(t *testing.T) {
	st := &netslotv1.StatusResponse{
		Prefix: "nslot", Total: 4000, Free: 3990, Leased: 10, Ready: true, BootSeconds: 6.5, Damaged: 1, Draining: true,
		Boot:     &netslotv1.BootProgress{Created: 4000, MsPerSlotFirstTenth: 1.5, MsPerSlotLastTenth: 1.6},
		SlotCidr: "100.64.0.0/16", Uplink: "eth1", UplinkState: "down", UplinkStateSeconds: 12,
		Forwarding: false, Problems: []string{"uplink eth1 is down"}, EgressDeny: []string{"169.254.0.0/16"},
		RootRules: 5, UnattributedDrops: map[string]uint64{"unknown_vni": 3}, Version: "v1",
	}
	var b bytes.Buffer
	if err := printStatus(&b, "table", st); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"prefix              nslot\n", "leased              10\n", "draining            true",
		"damaged             1 (", "boot                6.50s (created 4000",
		"uplink              eth1 (down for 12s)\n", "forwarding          OFF", "problem             uplink eth1 is down\n",
		"egress deny         169.254.0.0/16\n", "root rules          5\n", "unattributed drops  unknown_vni=3",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("status table lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := printStatus(&b, "json", st); err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(b.Bytes(), &got); err != nil || got["draining"] != true || got["leased"] != float64(10) || got["uplink_state"] != "down" {
		t.Errorf("status json: %v, %s", err, b.String())
	}
}

func TestSlotOutput(t *testing.T) {
	s := &netslotv1.Slot{
		Id: "nslot-3", Index: 3, State: "leased", Netns: "/run/netns/nslot-3", Tap: "tap0", GuestIp: "172.16.0.2",
		GatewayIp: "172.16.0.1", GuestPrefixLen: 30, GuestMac: "06:00:ac:10:00:02", SlotIp: "100.64.0.4", HostVeth: "nslot3",
		Firecracker: &netslotv1.FirecrackerInterface{IfaceId: "eth0", HostDevName: "tap0", GuestMac: "06:00:ac:10:00:02"},
		Lease:       &netslotv1.Lease{LeaseId: "abc", Owner: "vm-1", RequestKey: "vm-1-boot"},
		Datapath: &netslotv1.Datapath{Vni: 0xF00003, DummyVni: true, TxPackets: 7, ArpRequests: 1, DhcpReplies: 3,
			Drops: map[string]uint64{"inbound_unsolicited": 2, "dhcp_declined": 1}, HeldDropped: 3},
		Damaged: "host veth nslot3 deleted", Mtu: 1450, Dns: []string{"198.18.0.53"},
		BootArgs: "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off:198.18.0.53",
	}
	var b bytes.Buffer
	if err := printSlot(&b, "table", s); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"nslot-3", "leased", "/run/netns/nslot-3", "172.16.0.2", "100.64.0.4",
		"lease id", "abc", "request key", "vm-1-boot", "owner", "vm-1", "host veth nslot3 deleted", "inbound_unsolicited=2",
		"held frames           3 dropped before the vpc peer was learned\n",
		"dhcp                  3 answers sent\n", "dhcp declined         1 DECLINE from the guest: it found 172.16.0.2 in use on its link\n",
		"mtu                   1450\n", "dns                   198.18.0.53\n", "boot args             ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off:198.18.0.53\n"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("slot table lacks %q:\n%s", want, b.String())
		}
	}
	b.Reset()
	if err := printSlot(&b, "json", s); err != nil {
		t.Fatal(err)
	}
	var got struct {
		ID    string `json:"id"`
		Lease struct {
			RequestKey string `json:"request_key"`
		} `json:"lease"`
		Firecracker struct {
			HostDevName string `json:"host_dev_name"`
		} `json:"firecracker"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil || got.ID != "nslot-3" || got.Lease.RequestKey != "vm-1-boot" || got.Firecracker.HostDevName != "tap0" {
		t.Errorf("slot json: %+v, %v: %s", got, err, b.String())
	}
}

// -o firecracker prints what a Firecracker launcher passes on unchanged.
func TestFirecrackerOutput(t *testing.T) {
	s := &netslotv1.Slot{Id: "nslot-3", Netns: "/run/netns/nslot-3", Mtu: 1500, BootArgs: "ip=172.16.0.2::172.16.0.1:255.255.255.252::eth0:off",
		Firecracker: &netslotv1.FirecrackerInterface{IfaceId: "eth0", HostDevName: "tap0", GuestMac: "06:00:ac:10:00:02"},
		Lease:       &netslotv1.Lease{LeaseId: "abc"}}
	var b bytes.Buffer
	if err := printSlot(&b, "firecracker", s); err != nil {
		t.Fatal(err)
	}
	var got struct {
		NetworkInterface map[string]string `json:"network_interface"`
		BootArgs         string            `json:"boot_args"`
		JailerNetns      string            `json:"jailer_netns"`
		LeaseID          string            `json:"lease_id"`
		DNS              []string          `json:"dns"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%v: %s", err, b.String())
	}
	want := map[string]string{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}
	if len(got.NetworkInterface) != 3 || got.NetworkInterface["iface_id"] != want["iface_id"] || got.NetworkInterface["host_dev_name"] != want["host_dev_name"] ||
		got.NetworkInterface["guest_mac"] != want["guest_mac"] || got.BootArgs != s.BootArgs || got.JailerNetns != s.Netns || got.LeaseID != "abc" || got.DNS == nil {
		t.Errorf("firecracker output: %s", b.String())
	}
}
