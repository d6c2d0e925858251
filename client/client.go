// Package client is the Go client of netslotd. Other services embed it to
// acquire and release network slots:
//
//	c, err := client.Dial("/run/netslot/netslot.sock")
//	s, err := c.Acquire(ctx, &netslotv1.AcquireRequest{})
//	// start the VM in s.Netns on s.Tap with s.GuestMac ...
//	err = c.Release(ctx, s.Id, s.Lease.LeaseId)
package client

import (
	"context"
	"fmt"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
)

// DefaultSocket is where netslotd listens unless told otherwise.
const DefaultSocket = "/run/netslot/netslot.sock"

// Client talks to one netslotd.
type Client struct {
	conn *grpc.ClientConn
	api  netslotv1.SlotServiceClient
}

// Dial connects to the daemon's unix socket. The connection is made lazily;
// errors surface on the first call.
func Dial(socket string) (*Client, error) {
	conn, err := grpc.NewClient("passthrough:///netslotd",
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20)),
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", socket, err)
	}
	return &Client{conn: conn, api: netslotv1.NewSlotServiceClient(conn)}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// API is the raw generated client, for callers that want every field.
func (c *Client) API() netslotv1.SlotServiceClient { return c.api }

// Acquire leases a slot.
func (c *Client) Acquire(ctx context.Context, req *netslotv1.AcquireRequest) (*netslotv1.Slot, error) {
	resp, err := c.api.Acquire(ctx, req)
	if err != nil {
		return nil, err
	}
	return resp.GetSlot(), nil
}

// Release scrubs slot id and returns it to the pool if it is still held
// by leaseID (from the Acquire answer: Slot.Lease.LeaseId): a late or
// repeated release never frees a later tenant's slot. While the VM still
// holds the slot's tap, it is refused (FAILED_PRECONDITION) and changes
// nothing.
func (c *Client) Release(ctx context.Context, id, leaseID string) error {
	_, err := c.api.Release(ctx, &netslotv1.ReleaseRequest{Id: id, LeaseId: leaseID})
	return err
}

// ForceRelease releases slot id whatever lease holds it, for an operator
// cleaning up by hand; the daemon logs it. Never retry it from a VM
// launcher: by the time a retry arrives, the slot may be the next
// tenant's.
func (c *Client) ForceRelease(ctx context.Context, id string) error {
	_, err := c.api.Release(ctx, &netslotv1.ReleaseRequest{Id: id, Force: true})
	return err
}

// Get describes one slot.
func (c *Client) Get(ctx context.Context, id string) (*netslotv1.Slot, error) {
	return c.api.Get(ctx, &netslotv1.GetRequest{Id: id})
}

// List describes every slot.
func (c *Client) List(ctx context.Context) ([]*netslotv1.Slot, error) {
	resp, err := c.api.List(ctx, &netslotv1.ListRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetSlots(), nil
}

// Status reports the pool's state.
func (c *Client) Status(ctx context.Context) (*netslotv1.StatusResponse, error) {
	return c.api.Status(ctx, &netslotv1.StatusRequest{})
}
