package e2e

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/netslot/netslot/internal/firewall"
)

// rootRules counts the rules of the pool's own nftables tables in the
// root namespace and, where present, every legacy iptables rule (nftables
// tables of other jobs on the host may come and go).
func rootRules(t *testing.T, prefix string) (nft, legacy int) {
	t.Helper()
	n, err := firewall.CountRules(prefix)
	if err != nil {
		t.Fatal(err)
	}
	for _, save := range []string{"iptables-legacy-save", "ip6tables-legacy-save"} {
		out, err := exec.Command(save).Output()
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "-A ") {
				legacy++
			}
		}
	}
	return n, legacy
}

func TestRootRuleCountDoesNotDependOnPoolSize(t *testing.T) {
	_, baseLegacy := rootRules(t, "")
	var added []int
	for _, size := range []int{10, 400} {
		p := newPool(t, size)
		p.start()
		nft, legacy := rootRules(t, p.prefix)
		if legacy != baseLegacy {
			t.Fatalf("pool of %d added %d legacy iptables rules", size, legacy-baseLegacy)
		}
		added = append(added, nft)
		if st := p.status(); st.RootRules != nft {
			t.Errorf("status reports %d root rules, the pool's table has %d", st.RootRules, nft)
		}
		p.kill()
		if _, err := p.netslotd("teardown", "--prefix", p.prefix, "--state-dir", p.stateDir); err != nil {
			t.Fatal(err)
		}
		if n, _ := rootRules(t, p.prefix); n != 0 {
			t.Fatalf("teardown left %d root rules", n)
		}
	}
	if added[0] != added[1] || added[0] == 0 || added[0] > 144 {
		t.Fatalf("root rules added by pools of 10 and 400 slots: %v (want equal, non-zero, <= 144)", added)
	}
	t.Logf("root rules: %d for 10 slots, %d for 400 slots", added[0], added[1])
}
