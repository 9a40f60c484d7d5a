"""USB sticks as the manager writes them for the device tests: trust roots, bundles and a
signed plan, laid out as `satchel usb export` lays them out."""

from __future__ import annotations

import hashlib
import shutil
from datetime import timedelta
from pathlib import Path

from satchel.bundles import plan as layout
from satchel.bundles.durable import atomic_write_bytes
from satchel.bundles.keys import SigningKey
from satchel.bundles.plan import Assignment, Plan, sign_plan
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import load_root
from tests.factory.keys import Keyring


def make_stick(
    stick: Path,
    keys: Keyring,
    bundles: list[tuple[Path, str, int]],
    devices: tuple[str, ...] = ("dev-1",),
    *,
    signer: SigningKey | None = None,
    roots: list[bytes] | None = None,
    expires_in_s: float = 3600,
    plan_id: str = "plan-1",
) -> Plan:
    """Write a stick as `satchel usb export` does: roots, bundles, then the signed plan."""
    roots = roots or [keys.root_json]
    for doc in roots:
        atomic_write_bytes(with_parent_dir(stick / layout.root_file(load_root(doc).version)), doc)
    atomic_write_bytes(with_parent_dir(stick / layout.ROOT_FILE), roots[-1])
    assignments = []
    for path, version, sequence in bundles:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copyfile(path, with_parent_dir(stick / layout.bundle_file(sha)))
        assignments.append(Assignment("vision", version, sequence, sha,
                                      path.stat().st_size, devices=devices, deployment_id=4))
    now = utcnow()
    plan = Plan(plan_id, now, now + timedelta(seconds=expires_in_s), len(roots),
                tuple(assignments))
    atomic_write_bytes(stick / layout.PLAN_FILE, sign_plan(plan, [signer or keys.signing]))
    return plan


def with_parent_dir(path: Path) -> Path:
    """`path`, its parent directory created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
