"""The states of a deployment and of each of its targets, and the device events that move a
target from one to the next."""

from __future__ import annotations

from satchel.bundles import events

# deployment states
ACTIVE, PAUSED, HALTED, ABORTED, COMPLETED = "active", "paused", "halted", "aborted", "completed"
DEPLOYMENT_STATES = (ACTIVE, PAUSED, HALTED, ABORTED, COMPLETED)
TRACKED = (ACTIVE, PAUSED, HALTED)  # device progress is still recorded in these states

# target states, in the order a healthy install goes through them
PENDING, ASSIGNED, DOWNLOADED, VERIFIED = "pending", "assigned", "downloaded", "verified"
ACTIVATED, SUCCEEDED, FAILED = "activated", "succeeded", "failed"
TARGET_STATES = (PENDING, ASSIGNED, DOWNLOADED, VERIFIED, ACTIVATED, SUCCEEDED, FAILED)
OFFERED = (ASSIGNED, DOWNLOADED, VERIFIED)  # the device is told to install

FAILURE_EVENTS = (
    events.INSTALL_FAILED, events.INSTALL_REFUSED, events.ROLLED_BACK,
    events.SHADOW_FAILED, events.RAMP_FAILED,  # refused in its shadow stage or its ramp
)
PROGRESS_EVENTS = {
    events.DOWNLOADED: DOWNLOADED, events.VERIFIED: VERIFIED, events.ACTIVATED: ACTIVATED
}
