"""USB sneakernet, manager side: write a stick for sites with no network, read its reports.

Export writes the trust root (with its rotation history), the bundles and a plan signed with
a signing key of the trust root (layout in `bundles.plan`). The plan is built in a short
database transaction; the files are copied afterwards, outside it, into a temporary
directory on the stick and then renamed into place, the plan last: an export that fails
half-way leaves the stick as it was.

Import verifies each device report against that device's registered public key and records
it with the same service function as a LAN check-in, one transaction per report; a report
already imported is skipped, so importing a stick twice records nothing twice.

Both read and write the stick through `bundles.stickfs`: never through a link.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import stat
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles import plan as stick
from satchel.bundles.errors import BundleError
from satchel.bundles.keys import PublicKey, SigningKey
from satchel.bundles.stickfs import StickDir, StickLinkError
from satchel.manager.checkin.parse import parse_report
from satchel.manager.checkin.record import USB, record
from satchel.manager.db import Database
from satchel.manager.errors import (
    ConflictError,
    InvalidRequestError,
    ReportRefusedError,
    UsageError,
)
from satchel.manager.models import DeploymentTarget, Device, UsbReport
from satchel.manager.services import deployments, trust
from satchel.manager.store import BundleStore

COPY_CHUNK_BYTES = 4 * 1024 * 1024  # bytes copied per step onto the stick
EXPORT_TEMP = ".satchel-export.tmp"  # where an export is written on the stick before its rename
REPLACED_DIR = "replaced"  # in EXPORT_TEMP: files an export replaced, until its plan is in


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


def _refuse_links(disk: StickDir) -> None:
    """Refuse a stick with a link where the export writes. Raises StickLinkError, OSError."""
    disk.refuse_links(stick.PLAN_FILE)
    disk.refuse_links(stick.ROOT_FILE)
    disk.refuse_links(stick.ROOTS_DIR, depth=1)
    disk.refuse_links(stick.BUNDLES_DIR, depth=1)
    disk.refuse_links(stick.REPORTS_DIR)


def _holds(disk: StickDir, rel: str, data: bytes) -> bool:
    return disk.is_file(rel) and disk.read_bytes(rel, len(data)) == data


def _write_into(
    disk: StickDir, temp: str, contents: StickContents, store: BundleStore,
    keys: list[SigningKey],
) -> tuple[list[str], int]:
    """Write into `temp` on the stick what the stick lacks. Returns the paths written, in the
    order they go into place (bundles, trust roots, reports/, the plan last), and the number
    of bundles already there. Raises NotFoundError, StickLinkError, OSError."""
    written: list[str] = []
    present = 0
    for sha in contents.bundles:
        source, rel = store.require(sha), stick.bundle_file(sha)
        there = disk.lstat(rel)
        if (there is not None and stat.S_ISREG(there.st_mode)
                and there.st_size == source.stat().st_size):
            present += 1
            continue
        with open(source, "rb") as src, disk.writer(f"{temp}/{rel}") as out:
            shutil.copyfileobj(src, out, COPY_CHUNK_BYTES)
        written.append(rel)
    documents = [(stick.root_file(v), doc) for v, doc in contents.roots]
    for rel, doc in [*documents, (stick.ROOT_FILE, contents.roots[-1][1])]:
        if not _holds(disk, rel, doc):
            disk.write_bytes(f"{temp}/{rel}", doc)
            written.append(rel)
    if disk.lstat(stick.REPORTS_DIR) is None:
        disk.make_dirs(f"{temp}/{stick.REPORTS_DIR}")
        written.append(stick.REPORTS_DIR)
    disk.write_bytes(f"{temp}/{stick.PLAN_FILE}", stick.sign_plan(contents.plan, keys))
    return [*written, stick.PLAN_FILE], present


def _first_missing(disk: StickDir, rel: str) -> str | None:
    """`rel`, or the first directory on its way, that the stick lacks; None if it has `rel`."""
    parts = rel.split("/")
    return next((p for p in ("/".join(parts[: i + 1]) for i in range(len(parts)))
                 if disk.lstat(p) is None), None)


def _move_into_place(disk: StickDir, temp: str, written: list[str]) -> None:
    """Rename what `_write_into` wrote into place; the plan, last, is the commit point. A
    failure before it puts back what was there. Raises StickLinkError, OSError."""
    backup = f"{temp}/{REPLACED_DIR}"
    done: list[tuple[str, bool]] = []  # (path moved in, an older one went to the backup)
    try:
        for rel in written[:-1]:
            if disk.lstat(f"{temp}/{rel}") is None:
                continue  # went into place with its directory
            target = _first_missing(disk, rel)
            if target is None:  # replaces an older file, kept until the plan is in
                disk.rename(rel, f"{backup}/{rel}")
                done.append((rel, True))
                target = rel
            else:  # the file, or a whole directory the stick lacks
                done.append((target, False))
            disk.rename(f"{temp}/{target}", target)
        disk.rename(f"{temp}/{written[-1]}", written[-1])
    except BaseException:
        for rel, replaced in reversed(done):
            with contextlib.suppress(OSError, StickLinkError):
                disk.remove(rel)
                if replaced:
                    disk.rename(f"{backup}/{rel}", rel)
        raise


def write_stick(
    dest: Path, contents: StickContents, store: BundleStore, keys: list[SigningKey]
) -> ExportResult:
    """Write trust roots, bundles, the signed plan and an empty reports/ directory: first
    into a temporary directory on the stick, then renamed into place with the plan last, so
    an export that fails leaves the stick as it was. Nothing is written through a link.

    Raises NotFoundError (a bundle file is missing from the store), UsageError (the stick
    cannot be written), StickLinkError (a path the export writes is a link).
    """
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with StickDir(dest) as disk:
            _refuse_links(disk)
            disk.remove(EXPORT_TEMP)  # left by an export cut short (stick pulled out)
            try:
                written, present = _write_into(disk, EXPORT_TEMP, contents, store, keys)
                _move_into_place(disk, EXPORT_TEMP, written)
            finally:
                with contextlib.suppress(OSError):
                    disk.remove(EXPORT_TEMP)
    except OSError as e:
        raise UsageError(f"cannot write to {dest}: {e.strerror}") from e
    bundles_written = sum(1 for rel in written if rel.startswith(f"{stick.BUNDLES_DIR}/"))
    return ExportResult(contents.plan, bundles_written, present)


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


def find_reports(disk: StickDir, max_reports: int) -> list[str]:
    """Report files on the stick (reports/<device>/<report>.json), as paths relative to it,
    sorted. Raises StickLinkError (anything under reports/ is a link: nothing is imported
    from the stick), UsageError (too many), OSError."""
    found: list[str] = []
    for device in disk.entries(stick.REPORTS_DIR):
        if not device.is_dir or device.name.startswith("."):
            continue
        where = f"{stick.REPORTS_DIR}/{device.name}"
        found += [f"{where}/{f.name}" for f in disk.entries(where)
                  if f.is_file and f.name.endswith(".json") and not f.name.startswith(".")]
        if len(found) > max_reports:
            raise UsageError(f"{disk.path} holds more than {max_reports} reports")
    return sorted(found)


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
        parsed = parse_report(report.checkin, device.id, max_events)
    except InvalidRequestError as e:
        raise ReportRefusedError(str(e)) from e
    parsed = dataclasses.replace(parsed, sent_at=parsed.sent_at or report.created)
    record(session, device.id, parsed, USB, now)
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
    """Record every device report on the stick; refusals are collected, not raised. Nothing
    is read through a link: a link anywhere under reports/ refuses the whole stick before
    anything is recorded.

    Raises UsageError when `path` is not a readable directory, StickLinkError.
    """
    result = ImportResult()
    try:
        disk = StickDir(path)
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from e
    with disk:
        try:
            found = find_reports(disk, max_reports)
        except OSError as e:
            raise UsageError(f"cannot read the reports on {path}: {e.strerror}") from e
        for rel in found:
            try:
                data = disk.read_bytes(rel, max_bytes)
                if len(data) > max_bytes:
                    raise ReportRefusedError(f"larger than {max_bytes} bytes")
                new = _record_file(db, rel, data, now, max_events)
            except ReportRefusedError as e:
                result.refused.append((rel, str(e)))
                continue
            except sa.exc.IntegrityError:
                new = False  # imported at the same moment by another process
            except OSError as e:
                result.refused.append((rel, f"cannot read: {e.strerror or e}"))
                continue
            (result.imported if new else result.duplicates).append(rel)
    return result
