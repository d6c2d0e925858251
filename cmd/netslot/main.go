// Command netslot is the command-line client of netslotd.
package main

import (
	"os"

	"github.com/netslot/netslot/internal/cli"
)

func main() { os.Exit(cli.Main(cli.Netslot())) }
