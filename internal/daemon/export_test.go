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

// CheckHostVeths runs one check of the host veths (checkHostVeths).
func (d *Daemon) CheckHostVeths() { d.checkHostVeths() }

// CheckHost runs one check of the host (checkHost).
func (d *Daemon) CheckHost(full bool) { d.checkHost(full) }

// VethCheckEvery bounds how often the host veths are checked.
const VethCheckEvery = vethCheckEvery
