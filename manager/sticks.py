"""A USB stick's files, manager side, with no database: writing an export (trust roots,
bundles, the signed plan) and reading the device reports back. `usb` fills them from the
manager's database; `fleet.remote` from a manager's REST API (`satchel --url ... usb`).

The export goes first into a temporary directory on the stick and is then renamed into place,
the plan last: an export that fails half-way leaves the stick as it was. Both read and write
the stick through `bundles.stickfs`: never through a link.
"""

from __future__ import annotations

import contextlib
import dataclasses
import shutil
import stat
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Protocol

from satchel.bundles import plan as stick
from satchel.bundles.keys import SigningKey
from satchel.bundles.stickfs import StickDir, StickLinkError
from satchel.bundles.trust import Root
from satchel.manager.errors import ReportRefusedError, UsageError
from satchel.manager.stick_samples import RecordSamples, read_samples

COPY_CHUNK_BYTES = 4 * 1024 * 1024  # bytes copied per step onto the stick
EXPORT_TEMP = ".satchel-export.tmp"  # where an export is written on the stick before its rename
REPLACED_DIR = "replaced"  # in EXPORT_TEMP: files an export replaced, until its plan is in


@dataclass(frozen=True)
class StickContents:
    """Everything an export writes: the plan, the trust roots, the bundles it names."""

    plan: stick.Plan
    roots: tuple[tuple[int, bytes], ...]  # (version, root.json), oldest first
    bundles: tuple[str, ...]  # sha256 of every bundle the plan names


@dataclass(frozen=True)
class ExportResult:
    plan: stick.Plan
    bundles_written: int
    bundles_present: int  # already on the stick with the right size


def check_keys(root: Root, keys: list[SigningKey]) -> None:
    """Refuse keys that cannot sign a plan devices trusting `root` accept. Raises UsageError."""
    foreign = [k.keyid[:12] for k in keys if k.keyid not in root.signing_role.keyids]
    if foreign:
        raise UsageError(f"key {foreign[0]} is not a signing key of the manager's trust root")
    threshold = root.signing_role.threshold
    if len({k.keyid for k in keys}) < threshold:
        raise UsageError(f"the trust root needs {threshold} signing keys to sign a plan")


def stick_contents(
    trust_root_version: int,
    roots: tuple[tuple[int, bytes], ...],
    assignments: tuple[stick.Assignment, ...],
    now: datetime,
    ttl_s: float,
) -> StickContents:
    """A new plan of `assignments`, valid for `ttl_s` seconds, and what goes with it."""
    plan = stick.Plan(
        plan_id=uuid.uuid4().hex,
        created=now,
        expires=now + timedelta(seconds=ttl_s),
        trust_root_version=trust_root_version,
        assignments=assignments,
    )
    shas = tuple(dict.fromkeys(  # full bundles and their deltas (docs/DELTAS.md)
        sha for a in assignments for sha in (a.bundle_sha256, *(d.bundle_sha256 for d in a.deltas))
    ))
    return StickContents(plan, roots, shas)


class BundleFiles(Protocol):
    """Where an export finds a bundle's file: the store, or downloads from a manager."""

    def open(self, sha256: str) -> BinaryIO:
        """The bytes of bundle `sha256` (the caller closes it). Raises NotFoundError,
        ManagerError."""


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
    disk: StickDir, temp: str, contents: StickContents, store: BundleFiles,
    keys: list[SigningKey],
) -> tuple[list[str], int]:
    """Write into `temp` on the stick what the stick lacks. Returns the paths written, in the
    order they go into place (bundles, trust roots, reports/, the plan last), and the number
    of bundles already there. Raises NotFoundError, StickLinkError, OSError."""
    written: list[str] = []
    present = 0
    sizes = {a.bundle_sha256: a.size for a in contents.plan.assignments}
    for sha in contents.bundles:
        rel = stick.bundle_file(sha)
        there = disk.lstat(rel)
        if there is not None and stat.S_ISREG(there.st_mode) and there.st_size == sizes[sha]:
            present += 1
            continue
        with store.open(sha) as src, disk.writer(f"{temp}/{rel}") as out:
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
    dest: Path, contents: StickContents, store: BundleFiles, keys: list[SigningKey]
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


# --- import ---------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    imported: list[str] = dataclasses.field(default_factory=list)  # report files recorded
    duplicates: list[str] = dataclasses.field(default_factory=list)  # imported before
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (file, why)
    samples: int = 0  # captures (hard examples) newly stored from the reports' samples/

    def to_dict(self) -> dict[str, object]:
        return {
            "imported": self.imported,
            "duplicates": self.duplicates,
            "refused": [{"file": f, "reason": r} for f, r in self.refused],
            "samples": self.samples,
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
        disk.entries(f"{where}/samples")  # captures (stick_samples): no link there either
        if len(found) > max_reports:
            raise UsageError(f"{disk.path} holds more than {max_reports} reports")
    return sorted(found)


def import_reports(
    path: Path,
    record_one: Callable[[str, bytes], bool],
    max_reports: int,
    max_bytes: int,
    record_samples: RecordSamples | None = None,
    max_sample_bytes: int = 1024 * 1024,
) -> ImportResult:
    """Hand every device report on the stick to `record_one(rel, data)`, which records it
    (True), finds it imported before (False) or raises ReportRefusedError; refusals are
    collected, not raised. Nothing is read through a link: a link anywhere under reports/
    refuses the whole stick before anything is recorded.

    With `record_samples`, the captures a recorded report lists (`stick_samples`) are read,
    checked and handed to it.

    Raises UsageError when `path` is not a readable directory, StickLinkError, and what
    `record_one` raises but ReportRefusedError.
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
                new = record_one(rel, data)
            except ReportRefusedError as e:
                result.refused.append((rel, str(e)))
                continue
            except OSError as e:
                result.refused.append((rel, f"cannot read: {e.strerror or e}"))
                continue
            (result.imported if new else result.duplicates).append(rel)
            if record_samples is not None:
                captures = read_samples(disk, data, max_sample_bytes)
                stored, refused = record_samples(captures)
                result.samples += stored
                result.refused += captures.refused + refused
    return result
