"""A LAN check-in: on the fast path when only health and the clock moved, else on the full one.

A malformed body is refused only after the credential was checked, so a stranger learns
nothing about what the manager accepts.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from satchel.manager.checkin.answer import CheckinResult
from satchel.manager.checkin.device_row import Sighting
from satchel.manager.checkin.fast import record_unchanged
from satchel.manager.checkin.parse import parse_report
from satchel.manager.checkin.record import authenticated_row, record_with_token
from satchel.manager.db import Database
from satchel.manager.errors import InvalidRequestError


def checkin_lan(
    db: Database,
    token: str,
    device_id: str,
    body: Any,
    now: datetime,
    max_events: int,
    fast: bool = True,
) -> CheckinResult:
    """Authenticate a device credential and record its LAN check-in `body`: on the fast path
    when it applies (and `fast`), else in one full transaction.

    Raises AuthError, ForbiddenError, then InvalidRequestError for a malformed body;
    DiskFullError when the database has no space left (nothing of the check-in is recorded
    then: the device sends it again).
    """
    try:
        report = parse_report(body, device_id, max_events)
    except InvalidRequestError:
        db.run(lambda s: authenticated_row(s, token, device_id, Sighting(None, now)))
        raise
    if fast:
        result = record_unchanged(db, token, device_id, report, now)
        if result is not None:
            return result
    return db.run(lambda s: record_with_token(s, token, device_id, report, now))


def try_fast_checkin(
    db: Database, token: str, device_id: str, body: Any, now: datetime, max_events: int
) -> CheckinResult | None:
    """Record a LAN check-in on the fast path if it applies; None when it needs the full path
    (`checkin_lan`), which then also gives every refusal its answer, a database out of space
    included. Raises only on another database failure."""
    try:
        report = parse_report(body, device_id, max_events)
    except InvalidRequestError:
        return None
    return record_unchanged(db, token, device_id, report, now)
