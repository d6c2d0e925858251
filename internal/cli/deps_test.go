package cli

import (
	"os/exec"
	"strings"
	"testing"
)

// The product's binaries link none of the harness: no lab, bench, test
// helper, CNI or plotting code (netslot-bench has those).
func TestProductBinariesLinkNoHarness(t *testing.T) {
	harness := []string{
		"github.com/netslot/netslot/internal/bench", "github.com/netslot/netslot/internal/benchcmd",
		"github.com/netslot/netslot/internal/lab", "github.com/netslot/netslot/internal/testutil",
		"gonum.org/", "github.com/containernetworking/", "github.com/google/gopacket",
	}
	for _, cmd := range []string{"../../cmd/netslot", "../../cmd/netslotd"} {
		out, err := exec.Command("go", "list", "-buildvcs=false", "-deps", cmd).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", cmd, err, out)
		}
		for _, dep := range strings.Fields(string(out)) {
			for _, h := range harness {
				if strings.HasPrefix(dep, h) && (dep == h || strings.HasSuffix(h, "/") || strings.HasPrefix(dep, h+"/")) {
					t.Errorf("%s links %s", cmd, dep)
				}
			}
		}
	}
	out, err := exec.Command("go", "list", "-buildvcs=false", "-deps", "../../cmd/netslot-bench").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "github.com/netslot/netslot/internal/bench\n") {
		t.Errorf("netslot-bench does not link the bench (the check would miss a rename): %v", err)
	}
}
