"""Crafting USB sticks (layout in `bundles.plan`) the way `satchel usb export` writes them,
or the way an attacker with the stick in hand would rewrite them."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from satchel.bundles import plan as layout
from satchel.bundles.durable import atomic_write_bytes
from satchel.bundles.keys import SigningKey
from satchel.bundles.plan import Assignment, Plan, sign_plan
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import load_root
from tests.reliability.kit import CHANNEL, sha256_of


class Stick:
    """A directory laid out as a Satchel stick."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def file(self, rel: str) -> Path:
        out = self.path / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        return out

    def roots(self, *documents: bytes) -> None:
        """trust/roots/N.root.json for each document, trust/root.json = the last one."""
        for doc in documents:
            atomic_write_bytes(self.file(layout.root_file(load_root(doc).version)), doc)
        atomic_write_bytes(self.file(layout.ROOT_FILE), documents[-1])

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Write `data` as bundles/<sha256>.satchel (its own sha256 unless given); return the
        sha256 the file is named by."""
        sha = sha256 or sha256_of(data)
        self.file(layout.bundle_file(sha)).write_bytes(data)
        return sha

    def plan(self, assignments: list[Assignment], signers: list[SigningKey], *,
             plan_id: str = "plan-1", created: datetime | None = None,
             expires: datetime | None = None, trust_root_version: int = 1) -> Plan:
        """Write plan.json signed by `signers`; valid for an hour unless `expires` says."""
        created = created or utcnow()
        plan = Plan(plan_id, created, expires or created + timedelta(hours=1),
                    trust_root_version, tuple(assignments))
        atomic_write_bytes(self.path / layout.PLAN_FILE, sign_plan(plan, signers))
        return plan

    def reports(self) -> list[Path]:
        return sorted((self.path / layout.REPORTS_DIR).rglob("*.json"))

    def link(self, rel: str, target: Path | str, *, keep_at: Path | None = None) -> None:
        """Make `rel` a symbolic link to `target`; what was at `rel` moves to `keep_at` first
        (the attacker keeps the genuine file or directory where the link points)."""
        path = self.file(rel)
        if keep_at is not None:
            keep_at.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, keep_at)
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        path.symlink_to(target)


def assignment(version: str, sequence: int, sha256: str, size: int, *,
               devices: tuple[str, ...] = ("dev-1",), **kwargs: Any) -> Assignment:
    """One plan entry for channel `vision`, deployment 4."""
    return Assignment(CHANNEL, version, sequence, sha256, size, devices=devices,
                      deployment_id=4, **kwargs)


def assign_file(stick: Stick, data: bytes, version: str, sequence: int,
                **kwargs: Any) -> Assignment:
    """Put `data` on the stick and return the honest assignment naming it."""
    return assignment(version, sequence, stick.put(data), len(data), **kwargs)
