// Package datapath loads, pins and programs netslot's eBPF datapath (bpf/datapath.c).
package datapath

//go:generate go run ../dpconst/gen ../../bpf/lib/consts.h
//go:generate go tool bpf2go -tags linux,!netslot_testlayout -target bpfel -type pool_config -type slot_info -type tunnel_info -type peer_info -type vni_key -type vpc_route_key -type vpc_cidr -type slot_stats -type lease_policy -type inbound_rule -type flow -type slot_flows -type deny_key -type dhcp_lease -type hold_event datapath ../../bpf/datapath.c -- -I../../bpf/include -O2 -Wall -Werror
//
// The same datapath with a layout made for the upgrade test (its maps'
// entries shifted by a field the current layout does not have): netslotd
// built with -tags netslot_testlayout pins maps that the current one
// migrates (test/e2e TestUpgradeMigratesLiveLeases).
//go:generate go tool bpf2go -tags linux,netslot_testlayout -output-stem datapath_testlayout -target bpfel -type pool_config -type slot_info -type tunnel_info -type peer_info -type vni_key -type vpc_route_key -type vpc_cidr -type slot_stats -type lease_policy -type inbound_rule -type flow -type slot_flows -type deny_key -type dhcp_lease -type hold_event datapath ../../bpf/datapath.c -- -I../../bpf/include -O2 -Wall -Werror -DNETSLOT_TEST_LAYOUT
//go:generate go tool bpf2go -tags linux -target bpfel backstop ../../bpf/backstop.c -- -I../../bpf/include -O2 -Wall -Werror
