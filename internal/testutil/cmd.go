package testutil

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// dumpInterrupted is what iproute2 prints (on stderr, with exit status 0)
// when the kernel marked one of its dumps interrupted: the list it printed
// may lack entries or hold stale ones.
const dumpInterrupted = "Dump was interrupted"

// Exec runs a command in the named namespace ("": the test's own) and
// returns its output, stdout then stderr, failing tb if it fails. A dump
// that iproute2 reports as interrupted is run again until it comes back
// whole, as links.Links does for netlink dumps.
func Exec(tb testing.TB, ns string, args ...string) string {
	tb.Helper()
	if ns != "" {
		args = append([]string{"ip", "netns", "exec", ns}, args...)
	}
	const attempts = 50
	for range attempts {
		var stdout, stderr bytes.Buffer
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			tb.Fatalf("%v: %v\n%s%s", args, err, stdout.String(), stderr.String())
		}
		if !strings.Contains(stderr.String(), dumpInterrupted) {
			return stdout.String() + stderr.String()
		}
	}
	tb.Fatalf("%v: dump interrupted %d times in a row", args, attempts)
	return ""
}
