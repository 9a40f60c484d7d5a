"""USB sneakernet, manager side: write a stick for sites with no network, read its reports.

Export writes the trust root (with its rotation history), the bundles and a plan signed with
a signing key of the trust root (layout in `bundles.plan`). The plan is built in a short
database transaction; the files are copied afterwards, outside it.

Import verifies each device report against that device's registered public key and records
it with the same service function as a LAN check-in, one transaction per report; a report
already imported is skipped, so importing a stick twice records nothing twice.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.orm as so

from bundles import plan as stick
from bundles.durable import atomic_write_bytes, atomic_writer, fsync_dir
from bundles.errors import BundleError
from bundles.keys import PublicKey, SigningKey
from manager.db import Database
from manager.errors import (
    ConflictError,
    InvalidRequestError,
    ReportRefusedError,
    UsageError,
)
from manager.models import DeploymentTarget, Device, UsbReport
from manager.services import checkin, deployments, trust
from manager.store import BundleStore

COPY_CHUNK_BYTES = 4 * 1024 * 1024  # bytes copied per step onto the stick


@dataclass(frozen=True)
class StickContents:
    """Everything an export writes, read from the database in one transaction."""

    plan: stick.Plan
    roots: tuple[tuple[int, bytes], ...]  # (version, root.json), oldest first
    bundles: tuple[str, ...]  # sha256 of every bundle the plan names


@dataclass(frozen=True)
class ExportResult:
    plan: stick.Plan
    bundles_written: int
    bundles_present: int  # already on the stick with the right size


def _check_keys(root_signing: tuple[str, ...], threshold: int, keys: list[SigningKey]) -> None:
    foreign = [k.keyid[:12] for k in keys if k.keyid not in root_signing]
    if foreign:
        raise UsageError(f"key {foreign[0]} is not a signing key of the manager's trust root")
    if len({k.keyid for k in keys}) < threshold:
        raise UsageError(f"the trust root needs {threshold} signing keys to sign a plan")


def plan_stick(
    session: so.Session,
    keys: list[SigningKey],
    now: datetime,
    ttl_s: float,
    deployment_id: int | None = None,
) -> StickContents:
    """Work out a stick's plan: the devices of the released waves of the given (or every
    active) deployment that still need its bundle.

    Raises NoTrustRootError, UsageError (keys cannot sign for the trust root), NotFoundError,
    ConflictError (the deployment is not active).
    """
    root = trust.current_root(session)
    _check_keys(root.signing_role.keyids, root.signing_role.threshold, keys)
    if deployment_id is not None:
        dep = deployments.get(session, deployment_id, lock=True)
        deployments.evaluate(session, dep, now)
        if dep.state != deployments.ACTIVE:
            raise ConflictError(f"deployment {dep.id} is {dep.state}; only an active one exports")
        chosen = [dep]
    else:
        chosen = deployments.list_deployments(session, deployments.ACTIVE)
    assignments = []
    for dep in sorted(chosen, key=lambda d: d.id):
        device_ids = tuple(
            session.scalars(
                sa.select(DeploymentTarget.device_id)
                .where(
                    DeploymentTarget.deployment_id == dep.id,
                    DeploymentTarget.state.in_(deployments.OFFERED),
                )
                .order_by(DeploymentTarget.device_id)
            )
        )
        if device_ids:
            b = dep.bundle
            assignments.append(
                stick.Assignment(
                    channel=b.name,
                    version=b.version,
                    sequence=b.sequence,
                    bundle_sha256=b.sha256,
                    size=b.size,
                    devices=device_ids,
                    deployment_id=dep.id,
                )
            )
    plan = stick.Plan(
        plan_id=uuid.uuid4().hex,
        created=now,
        expires=now + timedelta(seconds=ttl_s),
        trust_root_version=root.version,
        assignments=tuple(assignments),
    )
    shas = tuple(dict.fromkeys(a.bundle_sha256 for a in assignments))
    return StickContents(plan, tuple(trust.history(session)), shas)


def _copy_bundle(source: Path, target: Path) -> bool:
    """Copy a bundle onto the stick unless the same-sized file is there. True if copied."""
    if target.is_file() and target.stat().st_size == source.stat().st_size:
        return False
    with open(source, "rb") as src, atomic_writer(target) as out:
        shutil.copyfileobj(src, out, COPY_CHUNK_BYTES)
    return True


def write_stick(
    dest: Path, contents: StickContents, store: BundleStore, keys: list[SigningKey]
) -> ExportResult:
    """Write trust roots, bundles, the signed plan (last) and an empty reports/ directory.

    Raises NotFoundError (a bundle file is missing from the store), UsageError (the stick
    cannot be written).
    """
    try:
        (dest / stick.ROOTS_DIR).mkdir(parents=True, exist_ok=True)
        (dest / stick.BUNDLES_DIR).mkdir(parents=True, exist_ok=True)
        (dest / stick.REPORTS_DIR).mkdir(parents=True, exist_ok=True)
        for version, doc in contents.roots:
            atomic_write_bytes(dest / stick.root_file(version), doc)
        atomic_write_bytes(dest / stick.ROOT_FILE, contents.roots[-1][1])
        written = present = 0
        for sha in contents.bundles:
            if _copy_bundle(store.require(sha), dest / stick.bundle_file(sha)):
                written += 1
            else:
                present += 1
        atomic_write_bytes(dest / stick.PLAN_FILE, stick.sign_plan(contents.plan, keys))
        fsync_dir(dest)
    except OSError as e:
        raise UsageError(f"cannot write to {dest}: {e.strerror}") from e
    return ExportResult(contents.plan, written, present)


def export_stick(
    db: Database,
    store: BundleStore,
    dest: Path,
    keys: list[SigningKey],
    now: datetime,
    ttl_s: float,
    deployment_id: int | None = None,
) -> ExportResult:
    """Plan (one transaction), then write the stick. Raises as `plan_stick`, `write_stick`."""
    contents = db.run(lambda s: plan_stick(s, keys, now, ttl_s, deployment_id))
    return write_stick(dest, contents, store, keys)


# --- import ---------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    imported: list[str] = dataclasses.field(default_factory=list)  # report files recorded
    duplicates: list[str] = dataclasses.field(default_factory=list)  # imported before
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, why)

    def to_dict(self) -> dict[str, object]:
        return {
            "imported": self.imported,
            "duplicates": self.duplicates,
            "refused": [{"file": f, "reason": r} for f, r in self.refused],
        }


def find_reports(path: Path, max_reports: int) -> list[str]:
    """Report files on the stick, as paths relative to it, sorted. Raises UsageError."""
    reports = path / stick.REPORTS_DIR
    if not path.is_dir():
        raise UsageError(f"{path} is not a directory")
    if not reports.is_dir():
        return []
    found = sorted(
        p.relative_to(path).as_posix()
        for p in reports.glob("*/*.json")
        if p.is_file() and not p.is_symlink()
    )
    if len(found) > max_reports:
        raise UsageError(f"{path} holds more than {max_reports} reports")
    return found


def record_report(
    session: so.Session, rel: str, data: bytes, now: datetime, max_events: int
) -> bool:
    """Verify one report and record it as a USB check-in. Returns False if it was imported
    before. Raises ReportRefusedError (unknown device, bad signature, malformed)."""
    try:
        claimed = stick.read_report_unverified(data)
    except BundleError as e:
        raise ReportRefusedError(str(e)) from e
    if rel != claimed.path:
        raise ReportRefusedError(f"report file should be {claimed.path} for what it holds")
    device = session.get(Device, claimed.device_id)
    if device is None:
        raise ReportRefusedError(
            f"device {claimed.device_id} is not known here (enroll it or `satchel device add`)"
        )
    try:
        report = stick.verify_report(data, PublicKey(bytes.fromhex(device.public_key)))
    except BundleError as e:
        raise ReportRefusedError(f"not signed by device {device.id}'s key: {e}") from e
    if session.get(UsbReport, (device.id, report.report_id)) is not None:
        return False
    try:
        parsed = checkin.parse_report(report.checkin, device.id, max_events)
    except InvalidRequestError as e:
        raise ReportRefusedError(str(e)) from e
    parsed = dataclasses.replace(parsed, sent_at=parsed.sent_at or report.created)
    checkin.record(session, device.id, parsed, checkin.USB, now)
    session.add(
        UsbReport(
            device_id=device.id,
            report_id=report.report_id,
            plan_id=report.plan_id,
            created_at=report.created,
            imported_at=now,
        )
    )
    session.flush()
    return True


def _record_file(db: Database, rel: str, data: bytes, now: datetime, max_events: int) -> bool:
    return db.run(lambda s: record_report(s, rel, data, now, max_events))


def import_stick(
    db: Database, path: Path, now: datetime, max_reports: int, max_bytes: int, max_events: int
) -> ImportResult:
    """Record every device report on the stick; refusals are collected, not raised.

    Raises UsageError when `path` is not a readable directory.
    """
    result = ImportResult()
    for rel in find_reports(path, max_reports):
        file = path / rel
        try:
            if file.stat().st_size > max_bytes:
                raise ReportRefusedError(f"larger than {max_bytes} bytes")
            new = _record_file(db, rel, file.read_bytes(), now, max_events)
        except ReportRefusedError as e:
            result.refused.append((rel, str(e)))
            continue
        except sa.exc.IntegrityError:
            new = False  # imported at the same moment by another process
        except OSError as e:
            result.refused.append((rel, f"cannot read: {os.strerror(e.errno or 0)}"))
            continue
        (result.imported if new else result.duplicates).append(rel)
    return result
