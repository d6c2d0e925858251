package daemon

// What the daemon's tests read of it, and nothing else does.

// DatapathState describes what the datapath holds for slot i in terms
// that do not depend on which slot it is (see datapath.SlotState), for
// comparing a released slot with a fresh one. Empty without an uplink.
func (d *Daemon) DatapathState(i int) (string, error) {
	if d.dp == nil {
		return "", nil
	}
	return d.dp.SlotState(i)
}
