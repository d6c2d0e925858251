package dpconst

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
)

// The committed header is what this package generates: the C side sees the
// same constants as the Go side.
func TestHeaderIsCurrent(t *testing.T) {
	got, err := os.ReadFile("../../bpf/lib/consts.h")
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != Header() {
		t.Fatal("bpf/lib/consts.h is stale: run make generate and commit it")
	}
}

// Drop reasons keep their numbers: the released list is a prefix of the
// current one, and grows with it (append to both).
func TestDropReasonsAreAppendOnly(t *testing.T) {
	b, err := os.ReadFile("testdata/drop_reasons.txt")
	if err != nil {
		t.Fatal(err)
	}
	released := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(released) != len(DropReasons) {
		t.Errorf("testdata/drop_reasons.txt has %d reasons, DropReasons %d: append the new ones to it", len(released), len(DropReasons))
	}
	for i, line := range released {
		if i >= len(DropReasons) {
			t.Fatalf("reason %q removed: reasons are append-only", line)
		}
		if want := fmt.Sprintf("%d %s", i, DropReasons[i].Name); line != want {
			t.Errorf("reason %d is %q, was %q: reasons are append-only, never renamed or moved", i, DropReasons[i].Name, line)
		}
	}
	name := regexp.MustCompile(`^[a-z][a-z0-9_]*$`)
	seen := map[string]bool{}
	for _, r := range DropReasons {
		if !name.MatchString(r.Name) || seen[r.Name] || r.Doc == "" || strings.Contains(r.Doc, "*/") {
			t.Errorf("drop reason %+v: want a unique snake_case name and a one-line doc", r)
		}
		seen[r.Name] = true
	}
}

func TestEncapOverhead(t *testing.T) {
	// IPv4 (20) + UDP (8) + Geneve (8) + Ethernet (14); C asserts the same
	// against the kernel's structures.
	if EncapOverhead != 50 {
		t.Errorf("EncapOverhead = %d", EncapOverhead)
	}
}
