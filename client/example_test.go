package client_test

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/client"
	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/server"
	"github.com/netslot/netslot/internal/slot"
	"github.com/netslot/netslot/internal/testenv"
	"github.com/netslot/netslot/internal/testutil"
)

// socket is the daemon the examples talk to: a real pool of two slots
// that TestMain starts (as root; without root only the tests run).
var socket string

func TestMain(m *testing.M) {
	flag.Parse()
	if !testenv.Privileged() {
		fmt.Println("client: examples skipped, they need a daemon (root)")
		flag.Set("test.run", "^Test")
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "netslot-client-example")
	if err != nil {
		log.Fatal(err)
	}
	cfg := slot.DefaultConfig(testutil.Prefix(), 2)
	stateDir := filepath.Join(dir, "state")
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	code := func() int {
		defer func() {
			if err := daemon.Teardown(cfg.Prefix, stateDir, time.Minute, quiet); err != nil {
				log.Print(err)
			}
			testutil.RemoveLock(cfg.Prefix)
			os.RemoveAll(dir)
		}()
		d, err := daemon.New(daemon.Options{Config: cfg, StateDir: stateDir, Logger: quiet})
		if err != nil {
			log.Print(err)
			return 1
		}
		defer d.Close()
		if err := d.Boot(context.Background()); err != nil {
			log.Print(err)
			return 1
		}
		socket = filepath.Join(dir, "netslot.sock")
		ln, err := server.Listen(socket)
		if err != nil {
			log.Print(err)
			return 1
		}
		g := server.New(d).GRPC()
		go g.Serve(ln)
		defer g.Stop()
		return m.Run()
	}()
	os.Exit(code)
}

// A VM launcher's cycle. The request key (the VM's id) makes a retry of
// an acquire whose outcome is unknown return the lease it made. With
// wait, Acquire rides out an empty pool and a daemon that boots, drains
// or restarts, trying again by itself until the deadline; Release, which
// names the lease, tries again by itself too.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(socket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	// Tried again with the same key until ctx's deadline (see Acquire).
	s, err := c.Acquire(ctx, &netslotv1.AcquireRequest{Owner: "vm-42", RequestKey: "vm-42", Wait: true})
	if err != nil {
		log.Fatal(err) // the deadline passed, or a refusal: errors.Is(err, client.ErrInvalid)...
	}
	fmt.Println("netns:", strings.Replace(s.Netns, s.Id, "<slot id>", 1), "tap:", s.Tap, "mac:", s.GuestMac)
	fmt.Println("firecracker:", s.Firecracker.IfaceId, s.Firecracker.HostDevName)

	// ... run the VM in s.Netns on s.Tap, then stop it ...

	// Tried again with the same lease id until ctx's deadline (see Release).
	err = c.Release(ctx, s.Id, s.Lease.LeaseId)
	switch {
	case errors.Is(err, client.ErrTapInUse):
		fmt.Println("the VM still holds the tap: stop it, then release again")
	case errors.Is(err, client.ErrLeaseMismatch):
		fmt.Println("the lease was ended already")
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println("released")
	}
	// Output:
	// netns: /run/netns/<slot id> tap: tap0 mac: 06:00:ac:10:00:02
	// firecracker: eth0 tap0
	// released
}

// A launcher finds its own leases (after its own restart, say) by owner,
// on the daemon's side.
func ExampleClient_List() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(socket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	s, err := c.Acquire(ctx, &netslotv1.AcquireRequest{Owner: "launcher-7", RequestKey: "vm-7"})
	if err != nil {
		log.Fatal(err)
	}
	mine, err := c.List(ctx, &netslotv1.ListRequest{Owner: "launcher-7"})
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range mine {
		fmt.Println(m.State, m.Lease.Owner, m.Lease.RequestKey)
	}
	if err := c.Release(ctx, s.Id, s.Lease.LeaseId); err != nil {
		log.Fatal(err)
	}
	// Output:
	// leased launcher-7 vm-7
}

// A launcher whose VMM runs jailed (Firecracker's jailer --uid 4242 --gid
// 4242, no capabilities) has the slot's tap given to that user and group:
// the VMM attaches to it as soon as Acquire returns, through the tun
// device node the jailer makes in its chroot (/dev/net/tun is root's
// only on many hosts). Release gives the tap back to root.
func ExampleClient_Acquire_jailer() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(socket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	s, err := c.Acquire(ctx, &netslotv1.AcquireRequest{RequestKey: "vm-9", TapOwner: &netslotv1.TapOwner{Uid: 4242, Gid: 4242}})
	if err != nil {
		log.Fatal(err)
	}
	// The jailer's --netns is the namespace's path, /run/netns/ and the
	// slot's id; its --uid and --gid are the tap's owner.
	o := s.Lease.TapOwner
	jailer := []string{"--id", "vm-9", "--netns", s.Netns, "--uid", fmt.Sprint(o.Uid), "--gid", fmt.Sprint(o.Gid)}
	fmt.Println("jailer", strings.Replace(strings.Join(jailer, " "), s.Id, "<slot id>", 1))
	// ... the jailed VMM attaches to s.Tap, runs, exits ...
	if err := c.Release(ctx, s.Id, s.Lease.LeaseId); err != nil {
		log.Fatal(err)
	}
	// A tap owner of uid or gid 0 (root's already) or -1 is refused.
	_, err = c.Acquire(ctx, &netslotv1.AcquireRequest{TapOwner: &netslotv1.TapOwner{Uid: 4242}})
	fmt.Println(errors.Is(err, client.ErrInvalid))
	// Output:
	// jailer --id vm-9 --netns /run/netns/<slot id> --uid 4242 --gid 4242
	// true
}

// Errors carry a reason a program acts on with errors.Is.
func ExampleError() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(socket)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	var held []*netslotv1.Slot
	for {
		s, err := c.Acquire(ctx, &netslotv1.AcquireRequest{})
		if errors.Is(err, client.ErrPoolEmpty) {
			fmt.Println("pool empty; retryable:", client.Retryable(err))
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		held = append(held, s)
	}
	err = c.Release(ctx, held[0].Id, "not-this-lease")
	fmt.Println("lease mismatch:", errors.Is(err, client.ErrLeaseMismatch))
	for _, s := range held {
		if err := c.Release(ctx, s.Id, s.Lease.LeaseId); err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// pool empty; retryable: true
	// lease mismatch: true
}

// One client, many goroutines: every acquire gets a slot of its own (or
// POOL_EMPTY), every release ends its lease. Run with -race in make test.
func TestOneClientManyGoroutines(t *testing.T) {
	if socket == "" {
		t.Skip("needs the examples' daemon (root)")
	}
	c, err := client.Dial(socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var mu sync.Mutex
	holders := map[string]int{}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for n := range 25 {
				s, err := c.Acquire(ctx, &netslotv1.AcquireRequest{Owner: "concurrent", RequestKey: fmt.Sprintf("g%d-%d", g, n), Wait: true})
				if err != nil {
					t.Errorf("acquire: %v", err)
					return
				}
				mu.Lock()
				holders[s.Id]++
				if holders[s.Id] > 1 {
					t.Errorf("slot %s held twice", s.Id)
				}
				mu.Unlock()
				time.Sleep(time.Millisecond) // holds the slot a while: a second holder would show
				mu.Lock()
				holders[s.Id]--
				mu.Unlock()
				if err := c.Release(ctx, s.Id, s.Lease.LeaseId); err != nil {
					t.Errorf("release: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if st, err := c.Status(ctx); err != nil || st.Leased != 0 {
		t.Errorf("after the goroutines: %v, %v", st, err)
	}
}
