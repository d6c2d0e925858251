// Command netslotd pre-creates a host's network slots and vends them.
package main

import (
	"os"

	"github.com/netslot/netslot/internal/cli"
)

func main() { os.Exit(cli.Main(cli.Netslotd())) }
