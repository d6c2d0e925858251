package testutil

import (
	"bufio"
	"bytes"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Tshark is a capture decoded by tshark, Wireshark's dissectors: an
// independent check of what netslot's datapath puts on the wire.
type Tshark struct {
	cmd  *exec.Cmd
	out  bytes.Buffer
	done chan struct{}
	once sync.Once
}

// StartTshark captures on iface inside the namespace netnsName with a
// capture filter and prints fields (tab-separated, one packet per line).
// It returns once tshark is capturing.
func StartTshark(tb testing.TB, netnsName, iface, filter string, fields ...string) *Tshark {
	tb.Helper()
	if _, err := exec.LookPath("tshark"); err != nil {
		tb.Fatalf("tshark is not installed (scripts/deps.sh installs it): %v", err)
	}
	args := []string{"netns", "exec", netnsName, "tshark", "-n", "-l", "-i", iface, "-f", filter, "-T", "fields", "-E", "separator=/t"}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	ts := &Tshark{cmd: exec.Command("ip", args...), done: make(chan struct{})}
	ts.cmd.Stdout = &ts.out
	stderr, err := ts.cmd.StderrPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := ts.cmd.Start(); err != nil {
		tb.Fatalf("start tshark: %v", err)
	}
	tb.Cleanup(func() { ts.Stop() })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stderr)
		signalled := false
		for sc.Scan() {
			if !signalled && strings.Contains(sc.Text(), "Capturing on") {
				close(ready)
				signalled = true
			}
		}
		if !signalled {
			close(ready)
		}
		ts.cmd.Wait()
		close(ts.done)
	}()
	select {
	case <-ready:
	case <-time.After(30 * time.Second):
		tb.Fatal("tshark did not start capturing")
	}
	return ts
}

// Stop ends the capture and returns the decoded lines.
func (ts *Tshark) Stop() []string {
	ts.once.Do(func() {
		// Let the last packets through the dissectors before stopping.
		time.Sleep(500 * time.Millisecond)
		ts.cmd.Process.Signal(syscall.SIGINT)
		select {
		case <-ts.done:
		case <-time.After(10 * time.Second):
			ts.cmd.Process.Kill()
			<-ts.done
		}
	})
	var lines []string
	for _, l := range strings.Split(ts.out.String(), "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	return lines
}
