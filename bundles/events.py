"""What a device says happened: the kinds of the events it reports, and of its own history.

The agent queues events (`agent/event_queue.py`) and delivers them in check-ins and USB
reports; the manager records them, moves deployments with them and shows them. Both sides
name a kind by these constants, so a kind has one spelling.

Two spellings of "rolled back", on purpose: an event kind follows the API's rule (KIND_RE:
`rolled_back`), while the device's history (`history.json`, `satchel-agent history`) and a
channel's state (`bundles/channels.py`) write theirs with '-' (`rolled-back`). Both are in
files and answers already out there, so neither changes.
"""

from __future__ import annotations

import re

KIND_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")  # what the manager accepts as an event kind
MAX_REASON_CHARS = 2000  # characters of an event's reason the manager keeps (the agent trims)

# --- event kinds ------------------------------------------------------------------------------
# One install, in order (`agent/sync/install_events.py`): its steps, then exactly one outcome.
DOWNLOADED = "downloaded"  # the bundle reached the device (LAN download or USB copy)
VERIFIED = "verified"
SMOKE_TEST = "smoke_test"  # passed or not, with every figure measured
ACTIVATED = "activated"
INSTALL_REFUSED = "install_refused"  # not acceptable here (trust, expiry, compatibility, sequence)
INSTALL_FAILED = "install_failed"  # acceptable, but it did not make it (smoke test, disk, lock)
# The inference server (`agent/server/`).
SERVING = "serving"  # a release was swapped in and serves
ROLLED_BACK = "rolled_back"  # a health breach, a crash loop or a technician rolled a channel back
ROLLBACK_FAILED = "rollback_failed"  # a breach was seen but the rollback did not happen
LOAD_FAILED = "load_failed"  # an active release could not be loaded into its runtime
# A release with variants (`agent/variants/`): figures in the event's details.
VARIANT_SWITCHED = "variant_switched"  # the device's state chose another variant (from, to, why)
VARIANT_DISABLED = "variant_disabled"  # a variant breached the health policy on this device
# Staged activation (`agent/staging/`): a release with a shadow stage or a ramp in its signed
# policy ends its install with `shadow_started` (not `activated`); then, as the device judges
# it on field requests: `shadow_passed` or `shadow_failed`, one `ramp_step` per step reached,
# `ramp_failed` or `ramp_completed`, and `activated` once it really serves every request.
# Figures in the event's figures, the reason on failures.
SHADOW_STARTED = "shadow_started"
SHADOW_PASSED = "shadow_passed"
SHADOW_FAILED = "shadow_failed"
RAMP_STEP = "ramp_step"
RAMP_FAILED = "ramp_failed"
RAMP_COMPLETED = "ramp_completed"
# The rest.
HEALTH = "health"  # one channel's inference figures over a period (`agent/health/samples.py`)
TRUST_UPDATED = "trust_updated"  # the device walked its trust root forward
TRUST_UPDATE_REFUSED = "trust_update_refused"  # the manager's next trust root was refused
TRUST_UPDATE_FAILED = "trust_update_failed"  # the manager's trust root could not be fetched
EVENTS_DROPPED = "events_dropped"  # the queue was full: how many of the oldest events went

# --- the device's history (history.json) -----------------------------------------------------
HISTORY_ACTIVATED = "activated"
HISTORY_REFUSED = "refused"
HISTORY_SMOKE_TEST_FAILED = "smoke-test-failed"
HISTORY_ROLLED_BACK = "rolled-back"
HISTORY_UNDONE = "undone"  # an interrupted install or rollback that recovery took back
HISTORY_STAGED = "staged"  # a release entered its shadow stage or ramp (not active yet)
