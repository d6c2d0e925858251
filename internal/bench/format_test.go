package bench

import "testing"

func TestRatio(t *testing.T) {
	for f, want := range map[float64]string{1: "1x", 1.88: "1.88x", 44.5: "44.5x", 929.4: "929x", 1242.2: "1,242x", 215090: "215,090x"} {
		if got := ratio(f); got != want {
			t.Errorf("ratio(%v) = %q, want %q", f, got, want)
		}
	}
}

func TestUntouchedTable(t *testing.T) {
	for listing, want := range map[string]bool{
		"-P FORWARD ACCEPT\n":                           true,
		"-P PREROUTING ACCEPT\n-P POSTROUTING ACCEPT\n": true,
		"-P FORWARD DROP\n":                             false,
		"-P FORWARD ACCEPT\n-N MINE\n":                  false,
		"-P FORWARD ACCEPT\n-A FORWARD -j ACCEPT\n":     false,
	} {
		if got := untouchedTable(listing); got != want {
			t.Errorf("untouchedTable(%q) = %t, want %t", listing, got, want)
		}
	}
}
