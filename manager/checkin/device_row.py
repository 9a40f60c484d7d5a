"""Which report's state a device row keeps, and when the device was last seen: stated once.

Reports can arrive out of order (a USB stick imported after later LAN check-ins, a retried
request): a report's state (status, health, versions) replaces the recorded one unless the
device sent it before the state already recorded (`state_applies`); a report that carries no
device time always applies. The device was last seen at the report's time, never later than
the manager's clock, and only if that is newer than the sighting recorded (`seen_is_newer`).

Both rules are SQL, evaluated by the database on the row itself: by the full path's locking
SELECT (record.py), which reads them as flags, and by the fast path's UPDATE (fast.py), which
applies them, so the two paths cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import sqlalchemy as sa

from satchel.manager.models import Device, UTCDateTime

DEVICES = cast(sa.Table, Device.__table__)
SEEN = sa.bindparam("seen", type_=UTCDateTime())  # the state's time, `Sighting.seen`
_UNORDERED = sa.bindparam("unordered", type_=sa.Boolean)  # the report carries no device time


@dataclass(frozen=True)
class Sighting:
    """When a check-in happened: by the device's clock when it says, else the manager's."""

    sent_at: datetime | None
    now: datetime

    @property
    def seen(self) -> datetime:
        return self.sent_at or self.now

    @property
    def seen_capped(self) -> datetime:
        """`seen`, never in the manager's future: what last_seen_at records."""
        return min(self.seen, self.now)

    def params(self) -> dict[str, Any]:
        """The values of the parameters `state_applies` and `seen_is_newer` bind."""
        return {"seen": self.seen, "unordered": self.sent_at is None}


def state_applies() -> sa.ColumnElement[bool]:
    """The report's state replaces the recorded one."""
    d = DEVICES.c
    return sa.or_(d.state_at.is_(None), _UNORDERED, d.state_at <= SEEN)


def seen_is_newer() -> sa.ColumnElement[bool]:
    """The report is the newest sighting of the device."""
    d = DEVICES.c
    return sa.or_(d.last_seen_at.is_(None), d.last_seen_at < SEEN)
