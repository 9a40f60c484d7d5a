"""USB sneakernet, manager side: write a stick for sites with no network, read its reports.

Export writes the trust root (with its rotation history), the bundles and a plan signed with
a signing key of the trust root (layout in `bundles.plan`). The plan is built in a short
database transaction; the files are copied afterwards, outside it, into a temporary
directory on the stick and then renamed into place, the plan last: an export that fails
half-way leaves the stick as it was.

Import verifies each device report against that device's registered public key and records
it with the same service function as a LAN check-in, one transaction per report; a report
already imported is skipped, so importing a stick twice records nothing twice.

The stick's files themselves (writing, renaming into place, finding reports) are
`sticks`, which knows no database; `fleet.remote` uses it with a manager's REST API.
"""

from __future__ import annotations

import dataclasses
import functools
from datetime import datetime
from pathlib import Path

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles import plan as stick
from satchel.bundles.delta_manifest import DELTA_MIN_AGENT
from satchel.bundles.errors import BundleError
from satchel.bundles.keys import PublicKey, SigningKey
from satchel.bundles.versions import at_least
from satchel.manager.checkin.parse import parse_report
from satchel.manager.checkin.record import USB, record
from satchel.manager.db import Database
from satchel.manager.errors import (
    ConflictError,
    InvalidRequestError,
    ReportRefusedError,
)
from satchel.manager.models import DeploymentTarget, Device, UsbReport
from satchel.manager.services import deployments, samples, trust
from satchel.manager.services.deltas import plan_deltas
from satchel.manager.sticks import (
    BundleFiles,
    ExportResult,
    ImportResult,
    StickContents,
    check_keys,
    find_reports,
    import_reports,
    stick_contents,
    write_stick,
)

__all__ = [
    "BundleFiles", "ExportResult", "ImportResult", "StickContents", "check_keys", "export_stick",
    "find_reports", "import_reports", "import_stick", "plan_assignments", "plan_stick",
    "record_report", "stick_contents", "write_stick",
]


def plan_assignments(
    session: so.Session, now: datetime, deployment_id: int | None = None
) -> tuple[stick.Assignment, ...]:
    """Who gets what on a stick: the devices of the released waves of the given (or every
    active) deployment that still need its bundle.

    Raises NotFoundError, ConflictError (the deployment is not active).
    """
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
                    deltas=plan_deltas(session, b.id),  # services/deltas.py
                )
            )
    return _without_deltas_for_older_agents(session, tuple(assignments))


def _without_deltas_for_older_agents(
    session: so.Session, assignments: tuple[stick.Assignment, ...]
) -> tuple[stick.Assignment, ...]:
    """The assignments, with no delta bundles at all when any device on the stick last
    reported an agent older than DELTA_MIN_AGENT: such an agent refuses a whole plan that
    lists deltas (an unexpected field), not just the delta. A device that never reported
    (registered for USB, no report imported yet) is taken to run a current agent."""
    if not any(a.deltas for a in assignments):
        return assignments
    devices = {d for a in assignments for d in a.devices}
    reported = session.scalars(
        sa.select(Device.agent_version).where(Device.id.in_(devices))
    ).all()
    if all(not v or at_least(v, DELTA_MIN_AGENT) for v in reported):
        return assignments
    return tuple(dataclasses.replace(a, deltas=()) for a in assignments)


def plan_stick(
    session: so.Session,
    keys: list[SigningKey],
    now: datetime,
    ttl_s: float,
    deployment_id: int | None = None,
) -> StickContents:
    """Work out a stick's plan (`plan_assignments`) for `keys` to sign.

    Raises NoTrustRootError, UsageError (keys cannot sign for the trust root), NotFoundError,
    ConflictError (the deployment is not active).
    """
    root = trust.current_root(session)
    check_keys(root, keys)
    assignments = plan_assignments(session, now, deployment_id)
    return stick_contents(root.version, tuple(trust.history(session)), assignments, now, ttl_s)


def export_stick(
    db: Database,
    store: BundleFiles,
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
    """Record every device report on the stick in the database (see `import_reports`).

    Raises UsageError when `path` is not a readable directory, StickLinkError.
    """

    def record_one(rel: str, data: bytes) -> bool:
        try:
            return _record_file(db, rel, data, now, max_events)
        except sa.exc.IntegrityError:
            return False  # imported at the same moment by another process

    keep, sample_bytes = db.config.max_samples_per_device, db.config.max_sample_bytes
    store = functools.partial(samples.store_from_stick, db, now, keep, sample_bytes)
    return import_reports(path, record_one, max_reports, max_bytes, store, sample_bytes)


