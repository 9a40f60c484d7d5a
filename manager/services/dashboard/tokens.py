"""The tokens page: enrollment tokens with their status, and how many tokens are usable."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.manager.models import EnrollmentToken
from satchel.manager.services import tokens

UNUSED, USED, EXPIRED = "unused", "used", "expired"


@dataclass(frozen=True)
class EnrollmentTokenRow:
    id: int
    device_class: str | None
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None
    device_id: str | None
    status: str  # UNUSED | USED | EXPIRED


def enrollment_tokens(session: so.Session, now: datetime, limit: int) -> list[EnrollmentTokenRow]:
    """Enrollment tokens, newest first."""
    rows = session.scalars(
        sa.select(EnrollmentToken).order_by(EnrollmentToken.id.desc()).limit(limit)
    )
    out = []
    for t in rows:
        status = USED if t.used_at else EXPIRED if now >= t.expires_at else UNUSED
        out.append(
            EnrollmentTokenRow(
                t.id, t.device_class, t.created_at, t.expires_at, t.used_at, t.device_id, status
            )
        )
    return out


def token_counts(session: so.Session, now: datetime) -> dict[str, int]:
    """How many admin tokens are valid and enrollment tokens still usable."""
    valid_admin = tokens.count_valid_admin_tokens(session, now)
    usable = session.scalar(
        sa.select(sa.func.count())
        .select_from(EnrollmentToken)
        .where(EnrollmentToken.used_at.is_(None), EnrollmentToken.expires_at > now)
    )
    return {"admin_valid": valid_admin, "enroll_usable": usable or 0}
