// Command gen writes bpf/lib/consts.h from internal/dpconst (see go
// generate ./internal/datapath).
package main

import (
	"log"
	"os"

	"github.com/netslot/netslot/internal/dpconst"
)

func main() {
	if len(os.Args) != 2 {
		log.Fatal("usage: gen OUTPUT.h")
	}
	if err := os.WriteFile(os.Args[1], []byte(dpconst.Header()), 0o644); err != nil {
		log.Fatal(err)
	}
}
