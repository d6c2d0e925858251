package datapath

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
)

// Pins removed under a running daemon take nothing away (it holds the
// links), and Repair puts them back; an uplink deleted and made again gets
// the programs back, with the configuration of the new device.
func TestRepairPinsAndAttachments(t *testing.T) {
	e := newEnv(t, 2)
	udp := udpDgram(40000, 53)
	natOut := func() uint32 { v, _ := e.egress(guestFrame(t, e.cfg, outside, udp...), 0); return v }
	if done, err := e.dp.Repair(true); err != nil || len(done) != 0 {
		t.Fatalf("Repair of a whole datapath: %v, %v; want nothing done", done, err)
	}
	if err := os.RemoveAll(e.dp.dir); err != nil {
		t.Fatal(err)
	}
	attached := func() int {
		up, err := netlink.LinkByName("up0")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, l := range e.dp.links {
			if info, err := l.Info(); err == nil && info.TCX() != nil && int(info.TCX().Ifindex) == up.Attrs().Index {
				n++
			}
		}
		return n
	}
	if n := attached(); n != 2 {
		t.Fatalf("%d programs attached after the pins went, want 2", n)
	}
	done, err := e.dp.Repair(true)
	if err != nil || len(done) != 18 { // 15 maps, 2 links, the layout
		t.Errorf("Repair after the pins went: %v, %v", done, err)
	}
	for _, name := range []string{"tunnels", "leases", ingressPin, egressPin, layoutPin} {
		if _, err := os.Stat(filepath.Join(e.dp.dir, name)); err != nil {
			t.Errorf("pin %s not back: %v", name, err)
		}
	}
	if m, err := ebpf.LoadPinnedMap(filepath.Join(e.dp.dir, "slots"), nil); err != nil || m.FD() < 0 {
		t.Errorf("pinned slots map: %v", err)
	} else {
		m.Close()
	}

	// The uplink deleted and made again under its name.
	up, err := netlink.LinkByName("up0")
	if err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkDel(up); err != nil {
		t.Fatal(err)
	}
	if _, err := e.dp.Repair(true); err == nil {
		t.Error("Repair with the uplink gone: no error")
	}
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "up0", HardwareAddr: uplinkMAC, MTU: 9000}, PeerName: "up1"}); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"up0", "up1"} {
		l, _ := netlink.LinkByName(n)
		netlink.LinkSetUp(l)
	}
	if n := attached(); n != 0 {
		t.Fatalf("%d programs on the new uplink before Repair", n)
	}
	if done, err := e.dp.Repair(true); err != nil || len(done) != 1 {
		t.Fatalf("Repair after the uplink came back: %v, %v", done, err)
	}
	if n := attached(); n != 2 {
		t.Fatalf("%d programs on the new uplink after Repair, want 2", n)
	}
	var pc datapathPoolConfig
	if err := e.dp.objs.Config.Lookup(uint32(0), &pc); err != nil {
		t.Fatal(err)
	}
	up, _ = netlink.LinkByName("up0")
	if int(pc.UplinkIfindex) != up.Attrs().Index {
		t.Errorf("config still names ifindex %d, the uplink is %d", pc.UplinkIfindex, up.Attrs().Index)
	}
	if v := natOut(); v != verdictNext {
		t.Errorf("NAT out after the repair: verdict %d", int32(v))
	}
}
