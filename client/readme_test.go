package client_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// readmeProgram is the program the README shows: Example's body (run by
// go test against a real daemon) as a main, on the default socket.
func readmeProgram(t *testing.T) string {
	t.Helper()
	src, err := os.ReadFile("example_test.go")
	if err != nil {
		t.Fatal(err)
	}
	s := string(src)
	start := strings.Index(s, "func Example() {\n")
	end := strings.Index(s, "\t// Output:")
	if start < 0 || end < start {
		t.Fatal("no Example with an Output in example_test.go")
	}
	body := strings.ReplaceAll(s[start+len("func Example() {\n"):end], "client.Dial(socket)", "client.Dial(client.DefaultSocket)")
	return `package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strings"
	"time"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/client"
)

func main() {
` + strings.TrimRight(body, "\n") + "\n}\n"
}

// The README's Go program is Example's, word for word, and it builds.
func TestReadmeProgramIsTheExample(t *testing.T) {
	want := readmeProgram(t)
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	blocks := strings.Split(string(readme), "```go\n")
	if len(blocks) != 2 {
		t.Fatalf("README has %d Go blocks, want 1", len(blocks)-1)
	}
	got, _, _ := strings.Cut(blocks[1], "```")
	if got != want {
		t.Fatalf("the README's Go program differs from Example's; it should read:\n%s", want)
	}
	// Inside the module, so that it builds against this tree.
	dir, err := os.MkdirTemp(".", ".readme-program-")
	if errors.Is(err, os.ErrPermission) {
		t.Skipf("the README's program is not built: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(want), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("go", "build", "-buildvcs=false", "-o", os.DevNull, "./"+dir).CombinedOutput(); err != nil {
		t.Fatalf("the README's program does not build: %v\n%s", err, out)
	}
}
