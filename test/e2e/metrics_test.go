package e2e

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
)

func TestMetricsOnLoopback(t *testing.T) {
	p := newPool(t, 30)
	addr := fmt.Sprintf("127.0.0.1:%d", 20000+os.Getpid()%20000)
	p.start("--metrics-addr", addr)
	s := p.acquireJSON("--allow", "198.18.5.0/24")
	if _, err := p.cli("release", s.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := p.cli("release", s.ID); err == nil {
		t.Fatal("double release accepted")
	}
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	body := string(b)
	var boot float64
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "netslot_boot_duration_seconds ") {
			fmt.Sscanf(strings.TrimPrefix(l, "netslot_boot_duration_seconds "), "%g", &boot)
		}
	}
	if boot <= 0 {
		t.Errorf("boot duration %g", boot)
	}
	for _, want := range []string{
		"netslot_slots_total 30",
		"netslot_slots_free 30",
		"netslot_slots_leased 0",
		`netslot_reconcile_actions_total{action="adopt"} 0`,
		`netslot_acquire_duration_seconds_count{kind="egress"} 1`,
		"netslot_release_duration_seconds_count 1",
		"netslot_scrub_failures_total 0",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
