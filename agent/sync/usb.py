"""USB sneakernet, device side: `satchel-agent usb PATH` and the mount-root watcher of `run`.

With a stick (layout in `bundles.plan`): bring the trust root forward from the stick's root
history (rotation rule), verify the plan against it (a plan not signed by a threshold of
trusted signing keys, or expired, is refused and nothing changes), then for each bundle the
plan gives this device whose sequence is above the channel's active one: copy it from the
stick into STATE/usb-staging, check the copy's size and sha256 against the plan and its
manifest's channel, version and sequence against the plan's entry, and install the copy
through the installer. The stick is never read again after the copy, so a stick
pulled out mid-read leaves the device as it was. Last, a report signed by the device's own
key (identity, releases, health, every event with its id, smoke-test figures included) is
written durably onto the stick, for `satchel usb import`.

Every path on the stick is reached from its root without following a link (`bundles.stickfs`):
a stick with a link where this device would read or write (reports/ pointing at the state
directory, a bundle pointing at /dev/zero) is refused before anything is read or changed.

A device that is not enrolled over the LAN has no other way to deliver its events, so for it
the events in a report leave the queue once the report is durably on the stick; an enrolled
device keeps them until a check-in delivers them (the manager records each id once).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from satchel.agent.captures import drop_capture
from satchel.agent.config import DEFAULT_CONFIG, AgentConfig
from satchel.agent.errors import PlanRefusedError, StickBundleMismatchError, StickError
from satchel.agent.event_queue import EventQueue
from satchel.agent.install.compat import EPOCH
from satchel.agent.install.delta import delta_assignment, delta_problem
from satchel.agent.state import DeviceIdentity, DeviceState, read_json, write_json
from satchel.agent.sync.credentials import device_key, load_credentials
from satchel.agent.sync.install_events import USB, BundleOrigin, active_sequence, install_offered
from satchel.agent.sync.report import TotalsSource, checkin_body, health_summary
from satchel.agent.sync.trust_roots import accept_roots, trusted_root
from satchel.bundles import plan as stick_layout
from satchel.bundles.durable import fsync_dir
from satchel.bundles.envelope import open_envelope
from satchel.bundles.errors import BundleError, FormatError, TrustError
from satchel.bundles.events import INSTALL_FAILED
from satchel.bundles.plan import MAX_PLAN_BYTES, Assignment, Plan, Report, sign_report, verify_plan
from satchel.bundles.stickfs import StickDir, StickLinkError
from satchel.bundles.timeutil import utcnow

log = logging.getLogger(__name__)

STAGING_DIR = "usb-staging"
PLANS_FILE = "usb-plans.json"
MAX_ROOT_BYTES = 1024 * 1024  # bytes of one trust root document on a stick


@dataclass
class StickOutcome:
    """What one stick did to this device."""

    stick: Path
    plan_id: str
    trust_version: tuple[int, int]  # (before, after)
    installed: list[str] = field(default_factory=list)  # "channel version"
    skipped: list[str] = field(default_factory=list)  # not above the active sequence
    # above it but not above the anti-rollback floor: refused here earlier (judged on field
    # requests and refused, or rolled back): the same stick run again is no error
    refused: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # ("channel version", why)
    report: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "stick": str(self.stick),
            "plan_id": self.plan_id,
            "trust_root_version": {"before": self.trust_version[0],
                                   "after": self.trust_version[1]},
            "installed": self.installed,
            "skipped": self.skipped,
            "refused": self.refused,
            "failed": [{"release": r, "reason": why} for r, why in self.failed],
            "report": str(self.report) if self.report else None,
        }


# --- reading the stick ----------------------------------------------------------------------


def open_stick(stick: Path) -> StickDir:
    """The stick at `stick`, opened for reading and writing without following a link.
    Raises StickError when it is not a directory that can be opened."""
    try:
        return StickDir(stick)
    except OSError as e:
        raise StickError(f"cannot open {stick}: {e.strerror}; is the stick mounted "
                         "there?") from e


def refuse_links(disk: StickDir, device_id: str) -> None:
    """Refuse the stick, before anything is read or changed, when a path this device would
    read or write on it is a link (even one pointing inside the stick: no links, simply).
    Raises StickLinkError, StickError."""
    try:
        disk.refuse_links(stick_layout.PLAN_FILE)
        disk.refuse_links(stick_layout.ROOT_FILE)
        disk.refuse_links(stick_layout.ROOTS_DIR, depth=1)
        disk.refuse_links(stick_layout.BUNDLES_DIR, depth=1)
        disk.refuse_links(f"{stick_layout.REPORTS_DIR}/{device_id}")
        disk.refuse_links(f"{stick_layout.REPORTS_DIR}/{device_id}/samples")  # agent.captures
    except OSError as e:
        raise StickError(f"cannot read {disk.path}: {e.strerror}; was the stick pulled "
                         "out?") from e


def _read_bounded(disk: StickDir, rel: str, limit: int, what: str) -> bytes:
    """Raises StickError when the file is missing, unreadable or larger than `limit`;
    StickLinkError."""
    try:
        data = disk.read_bytes(rel, limit)
    except OSError as e:
        raise StickError(f"cannot read {what} {disk.path / rel}: {e.strerror}; was the stick "
                         "pulled out?") from e
    if len(data) > limit:
        raise StickError(f"{what} {disk.path / rel} is larger than {limit} bytes")
    return data


def stick_roots(disk: StickDir) -> dict[int, bytes]:
    """The trust root documents on the stick, by version (trust/roots/N.root.json, and
    trust/root.json). Raises StickError, StickLinkError, FormatError."""
    found: dict[int, bytes] = {}
    try:
        listed = disk.entries(stick_layout.ROOTS_DIR)
        current = disk.is_file(stick_layout.ROOT_FILE)
    except OSError as e:
        raise StickError(f"cannot read the trust roots on {disk.path}: {e.strerror}") from e
    candidates = [f"{stick_layout.ROOTS_DIR}/{e.name}" for e in listed
                  if e.is_file and e.name.endswith(".root.json") and not e.name.startswith(".")]
    if current:
        candidates.append(stick_layout.ROOT_FILE)
    for rel in candidates:
        data = _read_bounded(disk, rel, MAX_ROOT_BYTES, "trust root")
        signed, _ = open_envelope(data, f"trust root {Path(rel).name}", MAX_ROOT_BYTES)
        version = signed.get("version")
        if isinstance(version, int) and not isinstance(version, bool):
            found.setdefault(version, data)
    return found


def peek_plan_id(stick: Path) -> str | None:
    """The plan id on the stick, without verifying anything (to skip plans already done);
    None when there is no readable plan (or it is reached through a link)."""
    try:
        with open_stick(stick) as disk:
            data = _read_bounded(disk, stick_layout.PLAN_FILE, MAX_PLAN_BYTES, "plan")
        signed, _ = open_envelope(data, "USB plan", MAX_PLAN_BYTES)
    except (StickError, BundleError):
        return None
    plan_id = signed.get("plan_id")
    return plan_id if isinstance(plan_id, str) else None


def _plan_clock(identity: DeviceIdentity, state: DeviceState) -> datetime:
    """The time a plan's expiry is judged at: the clock, or on a device whose clock cannot
    be trusted the newest signed time it has seen (as the installer judges manifests)."""
    if identity.trusted_clock:
        return utcnow()
    return state.newest_signed_time() or EPOCH


def verified_plan(state_dir: Path, disk: StickDir, now: datetime | None = None) -> Plan:
    """The stick's plan, verified against the device's (already updated) trust root.
    Raises PlanRefusedError, StickError, StickLinkError."""
    state = DeviceState(state_dir)
    data = _read_bounded(disk, stick_layout.PLAN_FILE, MAX_PLAN_BYTES, "plan")
    try:
        return verify_plan(data, trusted_root(state_dir),
                           now or _plan_clock(state.identity(), state))
    except (TrustError, FormatError) as e:
        raise PlanRefusedError(f"USB plan on {disk.path} refused: {e}") from e


# --- processing a stick ---------------------------------------------------------------------


def process_stick(
    state_dir: Path,
    stick: Path,
    events: EventQueue,
    totals: TotalsSource,
    *,
    config: AgentConfig = DEFAULT_CONFIG,
    now: datetime | None = None,
) -> StickOutcome:
    """Update trust, verify the plan, install what it gives this device, write the signed
    report onto the stick. Install refusals and failures are in the outcome (and events),
    not raised.

    Raises StickError (no plan, unreadable or pulled out: nothing was installed from what
    could not be read), StickLinkError (a path this device would use on the stick is a link:
    nothing read, installed or written), PlanRefusedError, bundles' RootRotationError/
    FormatError (the stick's trust roots are not a valid successor chain; the trust root is
    unchanged), NotInitializedError, StateCorruptError, LockBusyError; OSError for the
    device's disk.
    """
    stick = Path(stick)
    state = DeviceState(state_dir)
    identity = state.identity()
    with open_stick(stick) as disk:
        refuse_links(disk, identity.device_id)
        if not disk.is_file(stick_layout.PLAN_FILE):
            raise StickError(f"{stick} holds no {stick_layout.PLAN_FILE}; is it a Satchel "
                             "stick?")
        trust = accept_roots(state_dir, stick_roots(disk), config)
        plan = verified_plan(state_dir, disk, now)
        outcome = StickOutcome(stick, plan.plan_id, trust)
        mine = plan.for_device(identity.device_id, identity.device_class)
        log.info("USB plan %s on %s: %d assignment(s) for this device", plan.plan_id, stick,
                 len(mine))
        for assignment in mine:
            _apply(state_dir, state, disk, assignment, events, config, outcome)
        outcome.report = write_report(state_dir, disk, plan.plan_id, events, totals, config)
    remember_plan(state_dir, plan.plan_id, config)
    return outcome


def _apply(
    state_dir: Path, state: DeviceState, disk: StickDir, assignment: Assignment,
    events: EventQueue, config: AgentConfig, outcome: StickOutcome,
) -> None:
    release = f"{assignment.channel} {assignment.version}"
    active = active_sequence(state, assignment.channel)
    if active is not None and assignment.sequence <= active:
        outcome.skipped.append(release)
        return
    record = state.record(assignment.channel)
    if record is not None and assignment.sequence <= record.highest_sequence:
        outcome.refused.append(release)
        return
    delta = delta_assignment(state, assignment)  # a patch of a kept release (docs/DELTAS.md)
    if delta is not None and _install_one(state_dir, disk, delta, events, config):
        outcome.installed.append(release)
        return  # else the full bundle, the fallback
    origin = BundleOrigin.of(assignment, USB)
    staging = Path(state_dir) / STAGING_DIR
    try:
        copy = copy_from_stick(disk, staging, assignment, config)
    except StickBundleMismatchError as e:
        events.append(INSTALL_FAILED, reason=str(e), **origin.fields())
        outcome.failed.append((release, str(e)))
        return
    try:
        result = install_offered(state_dir, copy, origin, events,
                                 {"bytes": assignment.size, "via": USB}, config)
    finally:
        copy.unlink(missing_ok=True)
    if result.activated:
        outcome.installed.append(release)
    else:
        outcome.failed.append((release, result.reason or "not activated"))


def _install_one(state_dir: Path, disk: StickDir, assignment: Assignment, events: EventQueue,
                 config: AgentConfig) -> bool:
    """Copy and install one bundle of the stick; True when it was activated."""
    origin = BundleOrigin.of(assignment, USB)
    try:
        copy = copy_from_stick(disk, Path(state_dir) / STAGING_DIR, assignment, config)
    except StickBundleMismatchError as e:
        events.append(INSTALL_FAILED, reason=str(e), **origin.fields())
        return False
    why = delta_problem(state_dir, copy)  # base gone or damaged: the full bundle, unreported
    if why is not None:
        log.info("%s: installing the full bundle on the stick", why)
        copy.unlink(missing_ok=True)
        return False
    try:
        result = install_offered(state_dir, copy, origin, events,
                                 {"bytes": assignment.size, "via": USB}, config)
    finally:
        copy.unlink(missing_ok=True)
    return result.activated


def copy_from_stick(
    source: StickDir | Path, staging: Path, assignment: Assignment,
    config: AgentConfig = DEFAULT_CONFIG,
) -> Path:
    """Copy a bundle from the stick to the staging area and check the copy against the
    plan. Returns the copy. `source` is the stick (the bundle is the plan entry's file,
    reached without following a link) or the bundle file's own path (not followed if a
    link).

    Raises StickError (the stick cannot be read: pulled out), StickLinkError,
    StickBundleMismatchError (it reads fine but is not the file the plan names); the partial
    copy is removed either way. OSError for the device's own disk."""
    if not 0 < assignment.size <= config.max_bundle_bytes:
        raise StickBundleMismatchError(
            f"the plan gives {assignment.channel} {assignment.version} a size of "
            f"{assignment.size} bytes, which this device does not accept; nothing installed"
        )
    name = Path(assignment.file).name if isinstance(source, StickDir) else source.name
    if not staging.is_dir():
        staging.mkdir(parents=True, exist_ok=True)
        fsync_dir(staging.parent)
    target = staging / f"{assignment.bundle_sha256}.satchel"
    part = staging / f"{assignment.bundle_sha256}.part"
    fd = _open_bundle(source, assignment)
    try:
        copied = _copy(fd, name, part, assignment.size, config.download_chunk_bytes)
        digest = _sha256_of(part)  # of the copy, not of what was read: the copy is installed
        if copied != assignment.size or digest != assignment.bundle_sha256:
            raise StickBundleMismatchError(
                f"{name} on the stick is not the bundle the plan names "
                f"({copied} bytes, sha256 {digest[:12]}...; expected {assignment.size} bytes, "
                f"{assignment.bundle_sha256[:12]}...): damaged, or changed after export; "
                "nothing installed from it, export the stick again"
            )
        os.replace(part, target)
        fsync_dir(staging)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return target


def _open_bundle(source: StickDir | Path, assignment: Assignment) -> int:
    """A descriptor of the bundle file, opened without blocking (a FIFO would wait for a
    writer) and without following a link. Raises StickError, StickLinkError."""
    try:
        if isinstance(source, StickDir):
            return source.open_file(assignment.file)
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise StickLinkError(f"stick path {source} is a link; refusing to follow it out "
                                 "of the stick") from None
        where = assignment.file if isinstance(source, StickDir) else source
        raise StickError(f"cannot open {where} on the stick: {e.strerror}") from e
    return fd


def _copy(fd: int, name: str, part: Path, limit: int, chunk_bytes: int) -> int:
    """Copy at most limit + 1 bytes (enough to see a file that is too long) from `fd`, which
    it closes. Returns bytes copied. Raises StickError for a read error of the stick,
    StickBundleMismatchError when it is not a regular file (a FIFO or a device could block
    forever or never end)."""
    copied = 0
    with os.fdopen(fd, "rb") as src, open(part, "wb") as out:
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # a FIFO, a device: endless or stuck
            raise StickBundleMismatchError(f"{name} on the stick is not a regular file; "
                                           "nothing installed from it")
        while copied <= limit:
            try:
                chunk = src.read(min(chunk_bytes, limit + 1 - copied))
            except OSError as e:
                raise StickError(
                    f"reading {name} from the stick failed at byte {copied} "
                    f"({e.strerror}); was it pulled out? nothing was installed from it"
                ) from e
            if not chunk:
                break
            out.write(chunk)
            copied += len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return copied


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


# --- the report -----------------------------------------------------------------------------


def write_report(
    state_dir: Path,
    disk: StickDir,
    plan_id: str | None,
    events: EventQueue,
    totals: TotalsSource,
    config: AgentConfig = DEFAULT_CONFIG,
) -> Path:
    """Write this device's signed report onto the stick, durably, never through a link;
    return its path. Raises StickError (the stick cannot be written), StickLinkError,
    StateCorruptError, OSError."""
    state = DeviceState(state_dir)
    identity = state.identity()
    batch = events.pending(config.events_per_checkin, config.event_bytes_per_checkin)
    body = checkin_body(state, batch, health_summary(state, totals),
                        trusted_root(state_dir).version)
    from satchel.agent.sync.samples import captures_to_stick  # field inputs (agent.captures)

    samples, shipped = captures_to_stick(state_dir, disk, identity.device_id, config)
    if samples:
        body["samples"] = samples
    report = Report(uuid.uuid4().hex, identity.device_id, utcnow(), body, plan_id)
    data = sign_report(report, device_key(state_dir))
    path = disk.path / report.path
    try:
        disk.write_bytes(report.path, data)
    except OSError as e:
        raise StickError(f"cannot write the report to {path}: {e.strerror}; was the stick "
                         "pulled out? run `satchel-agent usb` again to write it") from e
    log.info("report %s written to %s (%d event(s), %d field input(s))", report.report_id,
             path, len(batch), len(samples))
    for capture in shipped:  # the report that lists them is durably on the stick
        drop_capture(capture)
    if load_credentials(state_dir) is None:
        events.ack(e["id"] for e in batch)  # the stick is this device's only transport
    return path


# --- plans already done ---------------------------------------------------------------------


def done_plans(state_dir: Path) -> list[str]:
    data = read_json(Path(state_dir) / PLANS_FILE, "USB plan record")
    plans = data.get("done") if isinstance(data, dict) else None
    return [p for p in plans if isinstance(p, str)] if isinstance(plans, list) else []


def remember_plan(state_dir: Path, plan_id: str, config: AgentConfig = DEFAULT_CONFIG) -> None:
    """Record a plan as done, so the watcher does not process its stick again."""
    plans = [p for p in done_plans(state_dir) if p != plan_id] + [plan_id]
    write_json(Path(state_dir) / PLANS_FILE,
               {"done": plans[-config.usb_plans_remembered:]})


# --- the watcher ----------------------------------------------------------------------------


def find_sticks(roots: Iterable[Path], depth: int) -> list[Path]:
    """Directories holding a plan.json: each root itself and its subdirectories down to
    `depth` levels (/media/USER/LABEL is two below /media)."""
    found: list[Path] = []
    level = [Path(r) for r in roots]
    for _ in range(depth + 1):
        below: list[Path] = []
        for directory in level:
            with contextlib.suppress(OSError):
                if (directory / stick_layout.PLAN_FILE).is_file():
                    found.append(directory)
                    continue
                below += sorted(p for p in directory.iterdir()
                                if p.is_dir() and not p.is_symlink())
        level = below
    return found


class UsbWatcher:
    """Looks under the mount roots every `usb_scan_interval_s` for a stick with a plan and
    processes each plan once (a stick pulled out mid-way is tried again when it is back)."""

    def __init__(
        self,
        state_dir: Path,
        roots: Iterable[Path],
        events: EventQueue,
        totals: TotalsSource,
        stop: threading.Event,
        *,
        config: AgentConfig = DEFAULT_CONFIG,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.roots = [Path(r) for r in roots]
        self.events = events
        self.totals = totals
        self.stop = stop
        self.config = config
        self._refused: set[tuple[str, str]] = set()  # (stick, plan id) refused: not retried
        self.outcomes: list[StickOutcome] = []

    def run(self) -> None:
        """Scan until `stop`; never raises."""
        while not self.stop.wait(self.config.usb_scan_interval_s):
            try:
                self.scan_once()
            except Exception:  # noqa: BLE001 - the watcher must outlive one bad stick
                log.exception("USB scan failed")

    def scan_once(self) -> list[StickOutcome]:
        """Process every new plan found now; returns what was done."""
        done_now = []
        done = set(done_plans(self.state_dir))
        for stick in find_sticks(self.roots, self.config.usb_scan_depth):
            plan_id = peek_plan_id(stick)
            if plan_id is None or plan_id in done or (str(stick), plan_id) in self._refused:
                continue
            log.info("USB stick with plan %s found at %s", plan_id, stick)
            try:
                outcome = process_stick(self.state_dir, stick, self.events, self.totals,
                                        config=self.config)
            except (PlanRefusedError, BundleError) as e:
                log.error("%s", e)
                self._refused.add((str(stick), plan_id))
                continue
            except StickError as e:
                log.warning("%s", e)
                continue
            done.add(plan_id)
            done_now.append(outcome)
            self.outcomes.append(outcome)
        return done_now
