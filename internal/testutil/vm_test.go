package testutil

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/netslot/netslot/internal/testenv"
)

var (
	nsSeq   atomic.Int32
	nsSweep sync.Once
)

// testNetns creates a namespace named tqvm<pid><letter> and removes it (and
// with it every device in it) when t ends, failed or not.
func testNetns(t *testing.T) (name, path string) {
	t.Helper()
	nsSweep.Do(sweepNetns)
	name = fmt.Sprintf("tqvm%d%c", os.Getpid(), 'a'+nsSeq.Add(1)%26)
	runIP(t, "netns", "add", name)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	return name, "/run/netns/" + name
}

// sweepNetns removes the namespaces of test processes that are gone: one
// killed by -timeout runs no Cleanup (its guests die with it, Pdeathsig).
func sweepNetns() {
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		var pid int
		var c rune
		if n, _ := fmt.Sscanf(e.Name(), "tqvm%d%c", &pid, &c); n != 2 || pid == os.Getpid() {
			continue
		}
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			continue
		}
		exec.Command("ip", "netns", "del", e.Name()).Run()
	}
}

func runIP(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// TestVMPing boots a guest on a tap and pings the namespace side of it.
func TestVMPing(t *testing.T) {
	testenv.RequireRoot(t)
	GuestImage(t)
	ns, nsPath := testNetns(t)
	runIP(t, "-n", ns, "tuntap", "add", "dev", "tap0", "mode", "tap")
	runIP(t, "-n", ns, "addr", "add", "198.18.10.1/30", "dev", "tap0")
	runIP(t, "-n", ns, "link", "set", "tap0", "up")

	vm := StartVM(t, VMConfig{Netns: nsPath, Tap: "tap0", MAC: "52:54:00:12:10:02", Script: `
ip link set eth0 up
ip addr add 198.18.10.2/30 dev eth0
ping -c 3 -W 5 198.18.10.1
`})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, st, err := vm.Wait(ctx)
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	t.Logf("boot to script: %v", vm.BootTime())
	if st != 0 || !strings.Contains(out, "3 packets transmitted, 3 packets received") {
		t.Fatalf("guest script exit %d, want 0 with 3 of 3 pings answered:\n%s", st, out)
	}
}

// Scripts of TestVMGeneve. Each guest tunnels 10.42.0.0/24 over geneve
// VNI 4242 to the other's underlay address. Guest 2 waits for one UDP
// datagram on 5000 and sends it back to guest 1's port 5001; guest 1 pings
// guest 2 through the tunnel, then sends the datagram until the answer
// comes. Busybox nc has no UDP mode: nc.openbsd does the UDP.
const (
	geneveGuest1 = `
ip link set eth0 up
ip addr add 198.18.20.1/24 dev eth0
ip link add gnv0 type geneve id 4242 remote 198.18.20.2
ip addr add 10.42.0.1/24 dev gnv0
ip link set gnv0 up
nc.openbsd -u -l -W 1 5001 >/tmp/reply &
i=0
until ping -c 1 -W 1 10.42.0.2 >/dev/null; do
  i=$((i+1)); [ $i -lt 90 ] || { echo "TUNNEL-DOWN"; exit 10; }
done
ping -c 3 10.42.0.2 || exit 11
i=0
until [ -s /tmp/reply ]; do
  [ $((i % 10)) -ne 0 ] || echo "netslot-udp-hello" | nc.openbsd -u -q 0 10.42.0.2 5000
  i=$((i+1)); [ $i -lt 100 ] || { echo "NO-UDP-REPLY"; exit 12; }
  sleep 0.2
done
echo "UDP-REPLY $(cat /tmp/reply)"
ip -s link show gnv0
ip neigh show dev gnv0
`
	geneveGuest2 = `
ip link set eth0 up
ip addr add 198.18.20.2/24 dev eth0
ip link add gnv0 type geneve id 4242 remote 198.18.20.1
ip addr add 10.42.0.2/24 dev gnv0
ip link set gnv0 up
timeout 150 nc.openbsd -u -l -W 1 5000 >/tmp/got || exit 20
echo "UDP-GOT $(cat /tmp/got)"
echo "$(cat /tmp/got) back from 10.42.0.2" | nc.openbsd -u -q 0 10.42.0.1 5001
sleep 1
`
)

// TestVMGeneve boots two guests on taps of one bridge and has them talk
// through a geneve tunnel, while tshark on the bridge decodes the tunnel.
func TestVMGeneve(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("tshark"); err != nil {
		t.Skip("needs tshark")
	}
	GuestImage(t)
	ns, nsPath := testNetns(t)
	runIP(t, "-n", ns, "link", "add", "br0", "type", "bridge")
	runIP(t, "-n", ns, "link", "set", "br0", "up")
	for _, tap := range []string{"tap1", "tap2"} {
		runIP(t, "-n", ns, "tuntap", "add", "dev", tap, "mode", "tap")
		runIP(t, "-n", ns, "link", "set", tap, "master", "br0", "up")
	}

	pcap := filepath.Join(t.TempDir(), "br0.pcapng")
	stopCapture := startCapture(t, ns, "br0", pcap)

	vm1 := StartVM(t, VMConfig{Netns: nsPath, Tap: "tap1", MAC: "52:54:00:12:20:01", Script: geneveGuest1})
	vm2 := StartVM(t, VMConfig{Netns: nsPath, Tap: "tap2", MAC: "52:54:00:12:20:02", Script: geneveGuest2})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	out1, st1, err1 := vm1.Wait(ctx)
	out2, st2, err2 := vm2.Wait(ctx)
	t.Logf("boot to script: guest 1 %v, guest 2 %v", vm1.BootTime(), vm2.BootTime())
	if err1 != nil || err2 != nil || st1 != 0 || st2 != 0 {
		t.Fatalf("guest 1: exit %d, %v\n%s\nguest 2: exit %d, %v\n%s", st1, err1, out1, st2, err2, out2)
	}
	if !strings.Contains(out1, "3 packets transmitted, 3 packets received") {
		t.Errorf("guest 1 did not ping guest 2 through the tunnel:\n%s", out1)
	}
	if !strings.Contains(out2, "UDP-GOT netslot-udp-hello") {
		t.Errorf("guest 2 did not get the datagram:\n%s", out2)
	}
	if !strings.Contains(out1, "UDP-REPLY netslot-udp-hello back from 10.42.0.2") {
		t.Errorf("guest 1 did not get the answer:\n%s", out1)
	}
	if testing.Verbose() {
		t.Logf("guest 1:\n%s", out1)
	}

	stopCapture()
	fields, err := exec.Command("tshark", "-n", "-r", pcap, "-Y", "geneve", "-T", "fields",
		"-e", "geneve.vni", "-e", "ip.src", "-e", "ip.dst", "-e", "eth.src", "-e", "eth.dst",
		"-e", "udp.dstport", "-e", "frame.protocols").Output()
	if err != nil {
		t.Fatalf("tshark -r: %v", err)
	}
	var icmp, udp int
	inner := map[string]int{} // the inner protocols, for the log
	for _, l := range strings.Split(strings.TrimSpace(string(fields)), "\n") {
		f := strings.Split(l, "\t")
		if len(f) < 7 {
			continue
		}
		_, in, _ := strings.Cut(f[6], "geneve:")
		inner[in]++
		if vni, err := strconv.ParseUint(f[0], 0, 32); err != nil || vni != 4242 { // tshark shows it in hex
			t.Errorf("geneve frame with VNI %s, want 4242: %s", f[0], l)
			continue
		}
		fwd := f[1] == "198.18.20.1,10.42.0.1" && f[2] == "198.18.20.2,10.42.0.2"
		switch {
		case fwd && strings.HasSuffix(in, ":ip:icmp:data"):
			icmp++
		case fwd && strings.Contains(in, ":ip:udp:") && f[5] == "6081,5000":
			udp++
		}
	}
	t.Logf("geneve frames on br0 by inner protocols: %v", inner)
	if icmp == 0 || udp == 0 {
		t.Errorf("tshark decoded %d ICMP and %d UDP frames from 10.42.0.1 to 10.42.0.2 in VNI 4242, want both:\n%s", icmp, udp, fields)
	}
}

// startCapture runs tshark on dev of namespace ns into file until the returned
// function is called (or t ends).
func startCapture(t *testing.T, ns, dev, file string) (stop func()) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", ns, "tshark", "-n", "-q", "-i", dev, "-w", file)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("tshark: %v", err)
	}
	done := make(chan struct{})
	ready := make(chan struct{})
	isReady := ready
	var log strings.Builder
	go func() {
		defer close(done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			log.WriteString(sc.Text() + "\n")
			if ready != nil && strings.Contains(sc.Text(), "Capturing on") {
				close(ready)
				ready = nil
			}
		}
		cmd.Wait()
	}()
	select {
	case <-isReady:
	case <-done:
		t.Fatalf("tshark exited: %s", log.String())
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatalf("tshark did not start capturing: %s", log.String())
	}
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cmd.Process.Signal(os.Interrupt)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}
