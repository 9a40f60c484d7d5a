"""The one badge vocabulary of the dashboard: every state any page shows (a device's, a
channel's, a deployment's and its targets', an event's, a token's) to the words and the tone
of its badge. A state spelled two ways in the wire formats (`rolled_back` as an event kind and
a dashboard state, `rolled-back` as a channel state) reads the same here: "Rolled back".

Tones are the stylesheet's `.tone-*` classes; each also sets a symbol, so no badge speaks by
colour alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from satchel.bundles import channels, events
from satchel.manager.services.dashboard import states as device_states
from satchel.manager.services.dashboard import tokens
from satchel.manager.services.deployments import states as deployment

GOOD, INFO, WARN, BAD, BACK, NEUTRAL = "good", "info", "warn", "bad", "back", "neutral"


@dataclass(frozen=True)
class Badge:
    label: str
    tone: str  # GOOD | INFO | WARN | BAD | BACK | NEUTRAL


ROLLED_BACK = Badge("Rolled back", BACK)

BADGES: dict[str, Badge] = {
    # a device on the dashboard (manager/services/dashboard/states.py)
    **{
        state: Badge(label, tone)
        for state, label, tone in (
            (
                device_states.ROLLED_BACK,
                device_states.STATE_LABELS[device_states.ROLLED_BACK],
                BACK,
            ),
            (device_states.FAILING, device_states.STATE_LABELS[device_states.FAILING], BAD),
            (device_states.NOT_SEEN, device_states.STATE_LABELS[device_states.NOT_SEEN], WARN),
            (
                device_states.NEVER_SEEN,
                device_states.STATE_LABELS[device_states.NEVER_SEEN],
                NEUTRAL,
            ),
            (device_states.UPDATING, device_states.STATE_LABELS[device_states.UPDATING], INFO),
            (device_states.OK, device_states.STATE_LABELS[device_states.OK], GOOD),
        )
    },
    # a channel on the device (bundles/channels.py)
    channels.STATE_ACTIVE: Badge("Active", INFO),
    channels.STATE_ROLLED_BACK: ROLLED_BACK,
    channels.STATE_INSTALLING: Badge("Installing", INFO),
    channels.STATE_ROLLING_BACK: Badge("Rolling back", BACK),
    channels.STATE_PROBATION: Badge("On probation", INFO),
    # what a device reports (bundles/events.py)
    events.DOWNLOADED: Badge("Downloaded", INFO),
    events.VERIFIED: Badge("Verified", INFO),
    events.SMOKE_TEST: Badge("Smoke test", INFO),
    events.ACTIVATED: Badge("Activated", INFO),
    events.SERVING: Badge("Serving", INFO),
    events.ROLLED_BACK: ROLLED_BACK,
    events.INSTALL_REFUSED: Badge("Install refused", BAD),
    events.INSTALL_FAILED: Badge("Install failed", BAD),
    events.ROLLBACK_FAILED: Badge("Rollback failed", BAD),
    events.LOAD_FAILED: Badge("Load failed", BAD),
    events.TRUST_UPDATED: Badge("Trust updated", GOOD),
    events.TRUST_UPDATE_REFUSED: Badge("Trust update refused", BAD),
    events.TRUST_UPDATE_FAILED: Badge("Trust update failed", WARN),
    events.EVENTS_DROPPED: Badge("Events dropped", WARN),
    # staged activation (SPEC "Staged activation"): events, and a channel's stage
    events.SHADOW_STARTED: Badge("Shadow started", INFO),
    events.SHADOW_PASSED: Badge("Shadow passed", GOOD),
    events.SHADOW_FAILED: Badge("Refused in shadow", BAD),
    events.RAMP_STEP: Badge("Ramp step", INFO),
    events.RAMP_FAILED: Badge("Ramp failed", BAD),
    events.RAMP_COMPLETED: Badge("Ramp completed", GOOD),
    "shadow": Badge("In shadow", INFO),
    "ramp": Badge("Ramping", INFO),
    # a release's variants on a device (agent/variants) and their events
    events.VARIANT_SWITCHED: Badge("Variant switched", INFO),
    events.VARIANT_DISABLED: Badge("Variant disabled", WARN),
    "ready": Badge("Ready", GOOD),
    "dropped": Badge("Dropped", WARN),
    "disabled": Badge("Disabled", BAD),
    # a deployment and its targets (manager/services/deployments)
    deployment.PAUSED: Badge("Paused", WARN),
    deployment.HALTED: Badge("Halted", BAD),
    deployment.ABORTED: Badge("Aborted", NEUTRAL),
    deployment.COMPLETED: Badge("Completed", GOOD),
    deployment.PENDING: Badge("Waiting", NEUTRAL),
    deployment.ASSIGNED: Badge("Assigned", INFO),
    deployment.SUCCEEDED: Badge("Succeeded", GOOD),
    deployment.FAILED: Badge("Failed", BAD),
    "passed": Badge("Passed", GOOD),
    # a wave
    "current": Badge("Current", INFO),
    "released": Badge("Released", GOOD),
    "not_released": Badge("Not released", NEUTRAL),
    # tokens (manager/services/dashboard/tokens.py; admin tokens' statuses)
    tokens.UNUSED: Badge("Unused", GOOD),
    tokens.USED: Badge("Used", NEUTRAL),
    tokens.EXPIRED: Badge("Expired", NEUTRAL),
    "valid": Badge("Valid", GOOD),
    "revoked": Badge("Revoked", NEUTRAL),
}


def badge_of(state: str | None) -> Badge:
    """The badge of `state`; an unknown state reads as its words, in a neutral tone."""
    if not state:
        return Badge("-", NEUTRAL)
    found = BADGES.get(state)
    if found is not None:
        return found
    return Badge(state.replace("_", " ").replace("-", " ").capitalize(), NEUTRAL)
