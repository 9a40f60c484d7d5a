"""What a device's dashboard state is (worst first): `rolled_back` (its newest install outcome
on some channel, within the attention window, is a rollback), `failing` (a failed install or
smoke test, a failed rollback or load, or its health breaking the active bundle's health
policy), `not_seen` (no check-in or USB report for longer than its transport's threshold),
`never_seen` (enrolled or registered, never reported), `updating` (a channel on probation),
else `ok`. The first three need attention.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from satchel.bundles import events
from satchel.manager.services.deployments.states import FAILURE_EVENTS

# device states, worst first
ROLLED_BACK, FAILING, NOT_SEEN = "rolled_back", "failing", "not_seen"
NEVER_SEEN, UPDATING, OK = "never_seen", "updating", "ok"
DEVICE_STATES = (ROLLED_BACK, FAILING, NOT_SEEN, NEVER_SEEN, UPDATING, OK)
ATTENTION = (ROLLED_BACK, FAILING, NOT_SEEN)
STATE_LABELS = {
    ROLLED_BACK: "Rolled back",
    FAILING: "Failing",
    NOT_SEEN: "Not seen recently",
    NEVER_SEEN: "Never reported",
    UPDATING: "On probation",
    OK: "OK",
}
RANK = {s: i for i, s in enumerate(DEVICE_STATES)}

# the device event kinds that say how an install or a release ended
OUTCOME_EVENTS = (
    events.ACTIVATED,
    events.SMOKE_TEST,
    events.ROLLBACK_FAILED,
    events.LOAD_FAILED,
    *FAILURE_EVENTS,
)
FAILING_EVENTS = {
    events.ROLLBACK_FAILED, events.LOAD_FAILED, *FAILURE_EVENTS
} - {events.ROLLED_BACK}


@dataclass(frozen=True)
class Thresholds:
    """When a device needs attention."""

    lan_stale_s: float  # seconds without a check-in before a LAN device is "not seen"
    usb_stale_s: float  # seconds without a USB report before a USB-only device is "not seen"
    attention_window_s: float  # seconds a rollback or failure keeps a device flagged


@dataclass(frozen=True)
class DeviceRow:
    """One device as the fleet overview shows it."""

    device_id: str
    device_class: str
    tags: tuple[str, ...]
    state: str  # one of DEVICE_STATES
    why: str  # what needs attention, one line; "" when nothing does
    last_seen_at: datetime | None
    last_via: str | None  # "lan" | "usb" | None
    lan: bool  # holds a LAN credential (enrolled) rather than being USB-only
    usb_report_at: datetime | None  # device time of its newest imported USB report
    usb_imported_at: datetime | None  # when that report was imported
    releases: tuple[tuple[str, str | None], ...]  # (channel, active version)

    @property
    def state_label(self) -> str:
        return STATE_LABELS[self.state]

    @property
    def needs_attention(self) -> bool:
        return self.state in ATTENTION
