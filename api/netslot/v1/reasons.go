package netslotv1

// ErrorDomain is the domain of the google.rpc.ErrorInfo detail that every
// error of netslotd carries.
const ErrorDomain = "netslot.dev"

// The reasons of netslotd's errors (google.rpc.ErrorInfo.reason). They are
// stable: a reason is never renamed or given another meaning, and new
// ones are only added. Each is listed with the status code it comes with
// and what a caller does about it.
const (
	// ReasonPoolEmpty (RESOURCE_EXHAUSTED): no free slot; retry later, or
	// acquire with wait.
	ReasonPoolEmpty = "POOL_EMPTY"
	// ReasonNotReady (UNAVAILABLE): the daemon is booting its pool;
	// retry, or acquire with wait. A release answers it when its deadline
	// passed before the booting daemon adopted the slot (a release waits
	// for that): nothing changed; retry it with the same lease id.
	ReasonNotReady = "NOT_READY"
	// ReasonDraining (UNAVAILABLE): the daemon is stopping and vends no
	// slot; retry (a restarted daemon serves again) or go elsewhere.
	ReasonDraining = "DRAINING"
	// ReasonInvalid (INVALID_ARGUMENT): the request is wrong; do not
	// retry it as is.
	ReasonInvalid = "INVALID_ARGUMENT"
	// ReasonKeyReused (INVALID_ARGUMENT): the request_key names a live
	// lease made by a different request.
	ReasonKeyReused = "KEY_REUSED"
	// ReasonUnknownSlot (NOT_FOUND): no slot has this id.
	ReasonUnknownSlot = "UNKNOWN_SLOT"
	// ReasonNotLeased (FAILED_PRECONDITION): the slot is free and the
	// release named no lease it ended.
	ReasonNotLeased = "NOT_LEASED"
	// ReasonLeaseMismatch (FAILED_PRECONDITION): the slot is held by
	// another lease than the one named; nothing was changed.
	ReasonLeaseMismatch = "LEASE_MISMATCH"
	// ReasonTapInUse (FAILED_PRECONDITION): a VMM still holds the slot's
	// tap; stop the VM, then retry the release.
	ReasonTapInUse = "TAP_IN_USE"
	// ReasonInProgress (ABORTED): the slot is being acquired or released
	// by another call; retry.
	ReasonInProgress = "IN_PROGRESS"
	// ReasonNoUplink (FAILED_PRECONDITION): the request needs an uplink
	// (a VPC) and this pool has none.
	ReasonNoUplink = "NO_UPLINK"
	// ReasonConflict (ALREADY_EXISTS): the VPC attachment clashes with
	// another lease's (same VNI and VPC address).
	ReasonConflict = "CONFLICT"
	// ReasonDeadline (DEADLINE_EXCEEDED or CANCELLED): the call's deadline
	// passed or it was cancelled before its lease was committed: nothing
	// was leased.
	ReasonDeadline = "DEADLINE"
	// ReasonInternal (INTERNAL): a kernel or store operation failed; the
	// message says which, and that a slot stays leased when the store
	// could not forget a failed acquire's lease (rare: release it).
	ReasonInternal = "INTERNAL"
)
