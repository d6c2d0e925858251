package links

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The DHCP answerer's filter on tap0: one classic tc filter, on a clsact
// qdisc's ingress. A tcx attachment would cost an RCU grace period per
// slot (about 11 ms here, 45 s for 4,000 slots); adding the qdisc and the
// filter costs about 60 us.
const (
	tapFilterHandle = 1
	tapFilterPrio   = 1
	tapFilterName   = "netslot_dhcp"
)

func clsact(index int) *netlink.GenericQdisc {
	return &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
}

// AttachTapProgram makes tap0 (ifindex index in h's namespace) run the
// program progFD at tc ingress, in place of whatever ran there: a
// restarted netslotd puts its own program in every slot, without a gap
// (the filter is replaced in one step). With progFD < 0, the filter is
// removed (netslotd --dhcp=false).
func AttachTapProgram(h *netlink.Handle, index, progFD int) error {
	if progFD < 0 {
		err := h.QdiscDel(clsact(index))
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("remove tap0's clsact qdisc: %w", err)
		}
		return nil
	}
	if err := h.QdiscAdd(clsact(index)); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add tap0's clsact qdisc: %w", err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: index, Parent: netlink.HANDLE_MIN_INGRESS,
			Handle: tapFilterHandle, Priority: tapFilterPrio, Protocol: unix.ETH_P_ALL,
		},
		Fd: progFD, Name: tapFilterName, DirectAction: true,
	}
	if err := h.FilterReplace(f); err != nil {
		return fmt.Errorf("attach the dhcp program to tap0: %w", err)
	}
	return nil
}
