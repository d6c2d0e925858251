// Command netslot-bench builds its own lab and measures netslot against
// the design it replaces and the CNI plugins (see internal/benchcmd).
package main

import (
	"os"

	"github.com/netslot/netslot/internal/benchcmd"
	"github.com/netslot/netslot/internal/cli"
)

func main() { os.Exit(cli.Main(benchcmd.Command())) }
