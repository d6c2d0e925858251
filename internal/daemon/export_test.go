package daemon

// What the daemon's tests read of it, and nothing else does.

import "time"

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
func (d *Daemon) CheckHostVeths() bool { return d.checkHostVeths() }

// VethCheckEvery bounds how often the host veths are checked.
const VethCheckEvery = vethCheckEvery

// The held-frame limits (hold.go).
const (
	HoldPerSlot = holdPerSlot
	HoldFor     = holdFor
	HoldBytes   = holdBytes
)

// SetHoldAge changes how long held frames are kept: a test that fills the
// budget keeps its frames held however slowly the machine runs.
func (d *Daemon) SetHoldAge(age time.Duration) {
	d.held.mu.Lock()
	d.held.age = age
	d.held.mu.Unlock()
}

// Held is what netslotd holds: frames and their bytes.
func (d *Daemon) Held() (frames, bytes int) {
	d.held.mu.Lock()
	defer d.held.mu.Unlock()
	for f := d.held.oldest; f != nil; f = f.newer {
		frames++
	}
	return frames, d.held.bytes
}
