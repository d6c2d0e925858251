// Package server exposes a daemon over gRPC on a unix socket.
package server

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthgrpc "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/pool"
	"github.com/netslot/netslot/internal/slot"
)

// Version is reported by Status.
var Version = "dev"

// maxRequestBytes bounds one request: the largest valid acquire (256 CIDRs
// in each list) is far smaller.
const maxRequestBytes = 64 << 10

// maxStreams bounds the calls one connection has in flight.
const maxStreams = 256

// Server implements netslot.v1.SlotService, and grpc.health.v1.Health for
// it (service "netslot.v1.SlotService", and "" for the server): SERVING once the pool is ready, NOT_SERVING while it boots and once
// it drains.
type Server struct {
	netslotv1.UnimplementedSlotServiceServer
	d      *daemon.Daemon
	health *health.Server
}

// New wraps d.
func New(d *daemon.Daemon) *Server {
	s := &Server{d: d, health: health.NewServer()}
	s.setHealth(healthgrpc.HealthCheckResponse_NOT_SERVING)
	d.WhenReady(func() {
		if !d.Draining() {
			s.setHealth(healthgrpc.HealthCheckResponse_SERVING)
		}
	})
	return s
}

func (s *Server) setHealth(st healthgrpc.HealthCheckResponse_ServingStatus) {
	s.health.SetServingStatus("", st)
	s.health.SetServingStatus(netslotv1.SlotService_ServiceDesc.ServiceName, st)
}

// Drain has the daemon vend no more slots and the health service report
// NOT_SERVING for good: for a daemon about to stop. Releases are served
// until it does.
func (s *Server) Drain() {
	s.d.Drain()
	s.health.Shutdown()
}

// CheckSocketFree fails if another process serves path; a stale socket
// file is removed.
func CheckSocketFree(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	c, err := net.DialTimeout("unix", path, 200*time.Millisecond)
	if err == nil {
		c.Close()
		return fmt.Errorf("socket %s is served by another process: %w", path, daemon.ErrBusy)
	}
	return nil
}

// Listen creates the unix socket with mode 0600 (no window where it is
// wider: the umask is tightened while binding).
func Listen(path string) (net.Listener, error) {
	if err := CheckSocketFree(path); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	old := umask(0o177)
	ln, err := net.Listen("unix", path)
	umask(old)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod socket: %w", err)
	}
	return ln, nil
}

// GRPC returns a gRPC server with the service registered.
func (s *Server) GRPC() *grpc.Server {
	g := grpc.NewServer(
		grpc.MaxRecvMsgSize(maxRequestBytes),
		// A peer that connects and does not speak HTTP/2 is dropped
		// after this long; one that stays idle, after MaxConnectionIdle.
		grpc.ConnectionTimeout(5*time.Second),
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionIdle: 10 * time.Minute}),
		grpc.MaxConcurrentStreams(maxStreams),
		// Stop returns only when handlers are done: the daemon closes its
		// store and sockets right after.
		grpc.WaitForHandlers(true),
	)
	netslotv1.RegisterSlotServiceServer(g, s)
	healthgrpc.RegisterHealthServer(g, s.health)
	return g
}

func (s *Server) Acquire(ctx context.Context, req *netslotv1.AcquireRequest) (*netslotv1.AcquireResponse, error) {
	ar, err := parseAcquire(req)
	if err != nil {
		return nil, toStatus(fmt.Errorf("%w: %w", daemon.ErrInvalid, err))
	}
	info, err := s.d.Acquire(ctx, ar)
	if err != nil {
		return nil, toStatus(err)
	}
	return &netslotv1.AcquireResponse{Slot: s.slotMsg(info)}, nil
}

func parseAcquire(req *netslotv1.AcquireRequest) (daemon.AcquireRequest, error) {
	var ar daemon.AcquireRequest
	var err error
	if v := req.GetVpc(); v != nil {
		if ar.VPC, err = slot.ParseAttachment(v.GetVni(), v.GetRemoteVtep(), v.GetVpcIp(), v.GetVpcCidrs()); err != nil {
			return ar, err
		}
		if ar.VPC.PeerMAC, err = slot.ParsePeerMAC(v.GetPeerMac()); err != nil {
			return ar, err
		}
	}
	if ar.Egress.Allow, err = slot.ParseCIDRs("egress cidr", req.GetEgressAllow()); err != nil {
		return ar, err
	}
	ar.Egress.DenyAll = req.GetEgressDenyAll()
	if ar.Egress.DenyAll && len(ar.Egress.Allow) > 0 {
		return ar, fmt.Errorf("egress_deny_all with an egress allow-list: choose one")
	}
	for _, r := range req.GetInbound() {
		ir, err := slot.ParseInbound(r.GetProtocol(), r.GetPort(), r.GetPortEnd(), r.GetSourceCidr())
		if err != nil {
			return ar, err
		}
		ar.Inbound = append(ar.Inbound, ir)
	}
	if err := slot.CheckInbound(ar.Inbound); err != nil {
		return ar, err
	}
	if err := slot.ValidateOwner(req.GetOwner()); err != nil {
		return ar, err
	}
	if err := slot.ValidateKey(req.GetRequestKey()); err != nil {
		return ar, err
	}
	if ar.DNS, err = slot.ParseDNS(req.GetDns()); err != nil {
		return ar, err
	}
	if err := slot.CheckHostname(req.GetHostname()); err != nil {
		return ar, err
	}
	if o := req.GetTapOwner(); o != nil {
		ar.TapOwner = &slot.TapOwner{UID: o.GetUid(), GID: o.GetGid()}
		if err := slot.ValidateTapOwner(*ar.TapOwner); err != nil {
			return ar, err
		}
	}
	ar.Owner, ar.Key, ar.Wait, ar.Hostname = req.GetOwner(), req.GetRequestKey(), req.GetWait(), req.GetHostname()
	return ar, nil
}

func (s *Server) Release(ctx context.Context, req *netslotv1.ReleaseRequest) (*netslotv1.ReleaseResponse, error) {
	var err error
	switch {
	case req.GetForce() && req.GetLeaseId() != "":
		return nil, toStatus(fmt.Errorf("%w: a forced release names no lease: give lease_id or force, not both", daemon.ErrInvalid))
	case req.GetForce():
		err = s.d.ForceReleaseContext(ctx, req.GetId())
	default:
		err = s.d.ReleaseContext(ctx, req.GetId(), req.GetLeaseId())
	}
	if err != nil {
		return nil, toStatus(err)
	}
	return &netslotv1.ReleaseResponse{}, nil
}

func (s *Server) Get(ctx context.Context, req *netslotv1.GetRequest) (*netslotv1.Slot, error) {
	info, err := s.d.Get(req.GetId())
	if err != nil {
		return nil, toStatus(err)
	}
	return s.slotMsg(info), nil
}

func (s *Server) List(ctx context.Context, req *netslotv1.ListRequest) (*netslotv1.ListResponse, error) {
	f := daemon.ListFilter{Owner: req.GetOwner(), Key: req.GetRequestKey()}
	if name := req.GetState(); name != "" {
		st, err := pool.ParseState(name)
		if err != nil {
			return nil, toStatus(fmt.Errorf("%w: %w", daemon.ErrInvalid, err))
		}
		f.State = &st
	}
	infos := s.d.List(f)
	out := &netslotv1.ListResponse{Slots: make([]*netslotv1.Slot, len(infos))}
	for i, info := range infos {
		out.Slots[i] = s.slotMsg(info)
	}
	return out, nil
}

func (s *Server) Status(ctx context.Context, req *netslotv1.StatusRequest) (*netslotv1.StatusResponse, error) {
	st := s.d.Status()
	cfg := s.d.Config()
	p := st.Progress
	resp := &netslotv1.StatusResponse{
		Total: uint32(st.Total), Free: uint32(st.Free), Leased: uint32(st.Leased), Orphaned: uint32(st.Orphaned),
		Damaged: uint32(st.Damaged),
		Ready:   p.Done, BootSeconds: p.BootSeconds,
		Prefix: cfg.Prefix, SlotCidr: cfg.SlotCIDR.String(), Uplink: st.Uplink,
		Boot: &netslotv1.BootProgress{
			Ready: uint32(p.Ready), Created: uint32(p.Created), Adopted: uint32(p.Adopted),
			Repaired: uint32(p.Repaired), SlotsPerSecond: p.SlotsPerSecond, EtaSeconds: p.ETASeconds,
			ElapsedSeconds: p.ElapsedSeconds, MsPerSlotFirstTenth: p.FirstTenthMs, MsPerSlotLastTenth: p.LastTenthMs,
		},
		Version:           Version,
		RootRules:         uint32(st.RootRules),
		UnderlayIp:        addrString(st.UnderlayIP),
		UnattributedDrops: st.UnattributedDrops,
		EgressDeny:        strs(s.d.DenySet()),
		UplinkState:       st.Health.Uplink,
		Forwarding:        st.Health.Forwarding,
		Problems:          st.Health.Problems,
		Draining:          st.Draining,
	}
	if !st.Health.UplinkSince.IsZero() {
		resp.UplinkStateSeconds = time.Since(st.Health.UplinkSince).Seconds()
	}
	return resp, nil
}

func (s *Server) slotMsg(info daemon.SlotInfo) *netslotv1.Slot {
	c := s.d.Config()
	m := &netslotv1.Slot{
		Id: info.ID, Index: uint32(info.Index), State: info.State.String(),
		Netns: c.NetnsPath(info.Index), Tap: slot.TapName,
		GuestIp: c.GuestIP().String(), GatewayIp: c.GatewayIP().String(),
		GuestPrefixLen: uint32(c.GuestCIDR.Bits()), GuestMac: c.GuestMAC.String(),
		SlotIp: c.SlotIP(info.Index).String(), HostVeth: c.HostVeth(info.Index),
		Firecracker: &netslotv1.FirecrackerInterface{
			IfaceId: slot.IfaceID, HostDevName: slot.TapName, GuestMac: c.GuestMAC.String(),
		},
		Damaged: info.Damaged,
	}
	mtu, dns, bootArgs := s.d.GuestConfig(info.Lease)
	m.Mtu, m.Dns, m.BootArgs = uint32(mtu), strs(dns), bootArgs
	if l := info.Lease; l != nil {
		m.Lease = &netslotv1.Lease{LeaseId: l.ID, Owner: l.Owner, RequestKey: l.Key, AcquiredUnixNano: l.AcquiredNs, Dns: strs(l.DNS), Hostname: l.Hostname,
			EgressAllow: strs(l.Egress.Allow), EgressDenyAll: l.Egress.DenyAll}
		for _, r := range l.Inbound {
			m.Lease.Inbound = append(m.Lease.Inbound, inboundMsg(r))
		}
		if o := l.TapOwner; o != nil {
			m.Lease.TapOwner = &netslotv1.TapOwner{Uid: o.UID, Gid: o.GID}
		}
		if a := l.VPC; a != nil {
			v := &netslotv1.VpcAttachment{Vni: a.VNI, RemoteVtep: a.RemoteVTEP.String(), VpcIp: a.VPCIP.String(),
				VpcCidrs: strs(a.VPCCIDRs)}
			if a.PeerMAC != nil {
				v.PeerMac = a.PeerMAC.String()
			}
			m.Lease.Vpc = v
		}
	}
	if dp := info.Datapath; dp != nil {
		m.Datapath = &netslotv1.Datapath{
			Vni: dp.VNI, DummyVni: dp.Dummy, VpcMac: dp.VPCMAC,
			TxPackets: dp.TxPackets, TxBytes: dp.TxBytes, RxPackets: dp.RxPackets, RxBytes: dp.RxBytes,
			EncapPackets: dp.EncapPackets, DecapPackets: dp.DecapPackets,
			ArpReplies: dp.ARPReplies, ArpRequests: dp.ARPRequests, Drops: dp.Drops,
			IcmpFragNeeded: dp.ICMPFragNeeded, DhcpReplies: dp.DHCPReplies, HeldDropped: dp.HeldDropped,
		}
	}
	return m
}

// strs formats xs (nil for none).
func strs[T fmt.Stringer](xs []T) []string {
	if len(xs) == 0 {
		return nil
	}
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = x.String()
	}
	return out
}

func inboundMsg(r slot.InboundRule) *netslotv1.InboundRule {
	m := &netslotv1.InboundRule{Protocol: slot.ProtoName(r.Proto), Port: uint32(r.PortLo)}
	if r.PortHi != r.PortLo {
		m.PortEnd = uint32(r.PortHi)
	}
	if r.Src.Bits() != 0 {
		m.SourceCidr = r.Src.String()
	}
	return m
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// toStatus maps a daemon error to its status code and a
// google.rpc.ErrorInfo detail with its stable reason (see
// netslotv1.Reason*).
func toStatus(err error) error {
	code, reason := classify(err)
	st := status.New(code, err.Error())
	if withInfo, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: reason, Domain: netslotv1.ErrorDomain}); derr == nil {
		st = withInfo
	}
	return st.Err()
}

// reasons maps the daemon's errors to a status code and a reason, the
// first that err wraps winning.
var reasons = []struct {
	err    error
	code   codes.Code
	reason string
}{
	{daemon.ErrUnknownID, codes.NotFound, netslotv1.ReasonUnknownSlot},
	{daemon.ErrKeyReused, codes.InvalidArgument, netslotv1.ReasonKeyReused},
	{daemon.ErrInvalid, codes.InvalidArgument, netslotv1.ReasonInvalid},
	{daemon.ErrLeaseMismatch, codes.FailedPrecondition, netslotv1.ReasonLeaseMismatch},
	{daemon.ErrNotLeased, codes.FailedPrecondition, netslotv1.ReasonNotLeased},
	{daemon.ErrInUse, codes.FailedPrecondition, netslotv1.ReasonTapInUse},
	{daemon.ErrNoUplink, codes.FailedPrecondition, netslotv1.ReasonNoUplink},
	{daemon.ErrInProgress, codes.Aborted, netslotv1.ReasonInProgress},
	{daemon.ErrExhausted, codes.ResourceExhausted, netslotv1.ReasonPoolEmpty},
	{daemon.ErrNotReady, codes.Unavailable, netslotv1.ReasonNotReady},
	{daemon.ErrDraining, codes.Unavailable, netslotv1.ReasonDraining},
	{daemon.ErrConflict, codes.AlreadyExists, netslotv1.ReasonConflict},
}

func classify(err error) (codes.Code, string) {
	if errors.Is(err, daemon.ErrDeadline) {
		if errors.Is(err, context.Canceled) {
			return codes.Canceled, netslotv1.ReasonDeadline
		}
		return codes.DeadlineExceeded, netslotv1.ReasonDeadline
	}
	for _, r := range reasons {
		if errors.Is(err, r.err) {
			return r.code, r.reason
		}
	}
	return codes.Internal, netslotv1.ReasonInternal
}
