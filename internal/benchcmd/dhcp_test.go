package benchcmd

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/netslot/netslot/internal/lab"
	"github.com/netslot/netslot/internal/testenv"
)

// leftovers lists what the dhcp bench of this process could leave behind:
// namespaces, nftables tables, pins and locks of its prefix, and dnsmasq
// processes started from its directories.
func leftovers(t *testing.T) []string {
	t.Helper()
	prefix := fmt.Sprintf("nd%c%c", 'a'+os.Getpid()%26, 'a'+os.Getpid()/26%26)
	var left []string
	ents, _ := os.ReadDir("/run/netns")
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			left = append(left, "namespace "+e.Name())
		}
	}
	out, err := exec.Command("nft", "list", "tables").CombinedOutput()
	if err != nil {
		t.Fatalf("nft list tables: %v: %s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 3 && strings.HasPrefix(f[2], prefix) {
			left = append(left, l)
		}
	}
	for _, p := range []string{"/sys/fs/bpf/netslot/" + prefix, "/run/netslot/" + prefix + ".lock"} {
		if _, err := os.Stat(p); err == nil {
			left = append(left, p)
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	mark := lab.DnsmasqDirPrefix + fmt.Sprint(os.Getpid()) + "-"
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(mark)) {
			left = append(left, "process "+p+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return left
}

// netslot-bench dhcp at a quick size runs end to end (a pool, dnsmasq
// with its defaults and with --no-ping), prints its three tables and
// leaves nothing behind. No timing is asserted: this machine is shared.
func TestBenchDHCPQuick(t *testing.T) {
	testenv.RequireRoot(t)
	if _, err := exec.LookPath("dnsmasq"); err != nil {
		t.Skip("dnsmasq not installed (scripts/deps.sh installs it)")
	}
	if left := leftovers(t); len(left) > 0 {
		t.Fatalf("before the bench: %v", left)
	}
	cmd := Command()
	var out, log bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&log)
	cmd.SetArgs([]string{"dhcp", "--slots", "3", "--rounds", "5", "--boot-rounds", "1"})
	err := cmd.Execute()
	t.Log(out.String())
	if err != nil {
		t.Fatalf("%v\n%s", err, log.String())
	}
	for _, want := range []string{
		"| system | exchange | first p50 | first p99 | first max | steady p50 | steady p99 | steady max | unanswered |",
		"| netslot (eBPF on tap0) | DISCOVER -> OFFER |", "| netslot (eBPF on tap0) | REQUEST -> ACK |",
		"| dnsmasq, defaults (address probe) | DISCOVER -> OFFER |", "| dnsmasq --no-ping | REQUEST -> ACK |",
		"Target, netslot p99 <= 50.0 us per exchange, the first exchange included",
		"| netslot (eBPF on tap0): the dhcp map's entry | 80 B |",
		"| netslot (eBPF on tap0): process | none |", "| dnsmasq --no-ping: process | private ",
		"| netslot (eBPF on tap0) | a 3-slot pool boots in ", "| dnsmasq --no-ping | 3 instances started",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	// Every exchange answered: netslot's and both dnsmasq's.
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.Contains(l, "DISCOVER -> OFFER |") && !strings.HasSuffix(l, "| 0 |") {
			t.Errorf("unanswered exchanges: %s", l)
		}
	}
	if left := leftovers(t); len(left) > 0 {
		t.Errorf("the bench left: %v", left)
	}
}
