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

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	netslotv1 "github.com/netslot/netslot/api/netslot/v1"
	"github.com/netslot/netslot/internal/daemon"
	"github.com/netslot/netslot/internal/datapath"
	"github.com/netslot/netslot/internal/slot"
)

// Version is reported by Status.
var Version = "dev"

// maxRequestBytes bounds one request: the largest valid acquire (256 CIDRs
// in each list) is far smaller.
const maxRequestBytes = 64 << 10

// maxStreams bounds the calls one connection has in flight.
const maxStreams = 256

// Server implements netslot.v1.SlotService.
type Server struct {
	netslotv1.UnimplementedSlotServiceServer
	d *daemon.Daemon
}

// New wraps d.
func New(d *daemon.Daemon) *Server { return &Server{d: d} }

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
	return g
}

func (s *Server) Acquire(ctx context.Context, req *netslotv1.AcquireRequest) (*netslotv1.AcquireResponse, error) {
	ar, err := parseAcquire(req)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	info, err := s.d.Acquire(ar)
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
	ar.Owner = req.GetOwner()
	return ar, nil
}

func (s *Server) Release(ctx context.Context, req *netslotv1.ReleaseRequest) (*netslotv1.ReleaseResponse, error) {
	var err error
	switch {
	case req.GetForce() && req.GetLeaseId() != "":
		return nil, status.Error(codes.InvalidArgument, "a forced release names no lease: give lease_id or force, not both")
	case req.GetForce():
		err = s.d.ForceRelease(req.GetId())
	default:
		err = s.d.Release(req.GetId(), req.GetLeaseId())
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
	infos := s.d.List()
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
			Repaired: uint32(p.Repaired), SlotsPerSecond: p.Rate, EtaSeconds: p.ETA,
			ElapsedSeconds: p.Elapsed, MsPerSlotFirstTenth: p.FirstTenthMs, MsPerSlotLastTenth: p.LastTenthMs,
		},
		Version:           Version,
		RootRules:         uint32(st.RootRules),
		UnderlayIp:        addrString(st.UnderlayIP),
		UnattributedDrops: st.UnattributedDrops,
		EgressDeny:        prefixStrings(s.d.DenySet()),
		UplinkState:       st.Health.Uplink,
		Forwarding:        st.Health.Forwarding,
		Problems:          st.Health.Problems,
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
	if l := info.Lease; l != nil {
		m.Lease = &netslotv1.Lease{LeaseId: l.ID, Owner: l.Owner, AcquiredUnixNano: l.AcquiredNs,
			EgressAllow: prefixStrings(l.Egress.Allow), EgressDenyAll: l.Egress.DenyAll}
		for _, r := range l.Inbound {
			m.Lease.Inbound = append(m.Lease.Inbound, inboundMsg(r))
		}
		if a := l.VPC; a != nil {
			v := &netslotv1.VpcAttachment{Vni: a.VNI, RemoteVtep: a.RemoteVTEP.String(), VpcIp: a.VPCIP.String(),
				VpcCidrs: prefixStrings(a.VPCCIDRs)}
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
		}
	}
	return m
}

func prefixStrings(ps []netip.Prefix) []string {
	if len(ps) == 0 {
		return nil
	}
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
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

func toStatus(err error) error {
	code := codes.Internal
	switch {
	case errors.Is(err, daemon.ErrUnknownID):
		code = codes.NotFound
	case errors.Is(err, daemon.ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, daemon.ErrNotLeased), errors.Is(err, daemon.ErrInUse), errors.Is(err, daemon.ErrNoUplink):
		code = codes.FailedPrecondition
	case errors.Is(err, daemon.ErrInProgress):
		code = codes.Aborted
	case errors.Is(err, daemon.ErrExhausted):
		code = codes.ResourceExhausted
	case errors.Is(err, datapath.ErrConflict):
		code = codes.AlreadyExists
	}
	return status.Error(code, err.Error())
}
