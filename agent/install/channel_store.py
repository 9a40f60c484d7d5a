"""The installer's I/O on one channel's directory: staging, promoting, switching, pruning.

Every step is durable before it returns (files and the directories that name them are
fsynced), so the decisions in `agent.install.states` can rely on the order of the steps.
`crash_point` is the test-only hook that kills the process between two steps.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from satchel.agent.config import CRASH_AT_ENV
from satchel.agent.install.states import stale_releases
from satchel.agent.staging import has_candidate
from satchel.agent.state import (
    FILES_DIR,
    MANIFEST_FILE,
    REPORT_FILE,
    SIGNATURES_FILE,
    ChannelRecord,
    Layout,
    write_json,
    write_record,
)
from satchel.bundles.canonical import encode_canonical
from satchel.bundles.durable import atomic_write_bytes, fsync_dir

if TYPE_CHECKING:
    from satchel.agent.install.smoketest import SmokeReport
    from satchel.agent.staging.record import Candidate
    from satchel.bundles.reader import VerifiedBundle

_TEMP_SUFFIX = ".tmp"  # bundles.durable's temp files: ".NAME.XXXX.tmp"


def crash_point(op: str, step: str) -> None:
    """Test-only: SIGKILL this process when $SATCHEL_AGENT_CRASH_AT is "OP:STEP"."""
    if os.environ.get(CRASH_AT_ENV) == f"{op}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _mkdir(path: Path) -> None:
    """Create `path` (if needed) and make its entry in the parent durable."""
    if not path.is_dir():
        path.mkdir(mode=0o755)
        fsync_dir(path.parent)


def _remove_tree(path: Path) -> bool:
    """Remove a directory tree (or file); True if something was removed. Not durable alone:
    the caller fsyncs the parent once after a batch of removals."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
        return True
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class ChannelStore:
    """The releases and staging area of one channel."""

    def __init__(self, layout: Layout, channel: str) -> None:
        self.layout = layout
        self.channel = channel
        self.directory = layout.channel(channel)
        self.releases = layout.releases(channel)
        self.staging = layout.staging(channel)

    def prepare(self) -> None:
        """Create the channel's directories, durably. Raises OSError."""
        _mkdir(self.layout.channels)
        _mkdir(self.directory)
        _mkdir(self.releases)
        _mkdir(self.staging)

    def staged(self, name: str) -> Path:
        return self.staging / name

    def stage(self, bundle: BinaryIO, verified: VerifiedBundle, name: str) -> Path:
        """Unpack a verified bundle into staging/NAME/files, beside its signed manifest.

        Returns the files directory. Raises bundles' PayloadError, StagingError; OSError.
        """
        # Imported here: recovery and rollback (`satchel-agent status`, `rollback`) use this
        # module too and need neither zstandard nor the signature code (issue 14).
        from satchel.bundles.reader import unpack_bundle

        target = self.staged(name)
        if _remove_tree(target):
            fsync_dir(self.staging)
        target.mkdir(mode=0o755)
        (target / FILES_DIR).mkdir(mode=0o755)
        atomic_write_bytes(target / MANIFEST_FILE, verified.manifest_bytes)
        signatures = encode_canonical([s.to_dict() for s in verified.signatures])
        atomic_write_bytes(target / SIGNATURES_FILE, signatures)
        unpack_bundle(bundle, verified, target / FILES_DIR, fsync=True)
        fsync_dir(self.staging)
        return target / FILES_DIR

    def write_report(self, name: str, report: SmokeReport) -> None:
        """Durably write the smoke-test report into the staged release. Raises OSError."""
        write_json(self.staged(name) / REPORT_FILE, report.to_dict())

    def promote(self, name: str) -> None:
        """Move a staged, smoke-tested release into releases/ (one rename). Raises OSError."""
        os.rename(self.staged(name), self.releases / name)
        fsync_dir(self.releases)
        fsync_dir(self.staging)

    def switch(self, record: ChannelRecord) -> None:
        """THE switch: make `record` channel.json in one durable rename. Raises OSError."""
        write_record(self.layout, record)

    def discard(self, name: str, record: ChannelRecord | None) -> None:
        """Remove release `name` from staging and, unless `record` keeps it, from releases/.
        Raises OSError."""
        if _remove_tree(self.staged(name)):
            fsync_dir(self.staging)
        if (record is None or name not in record.names()) and _remove_tree(self.releases / name):
            fsync_dir(self.releases)

    def collect_garbage(self, record: ChannelRecord | None) -> list[str]:
        """Remove every release `record` does not keep, everything staged, and temp files
        left by a killed write. Returns what was removed. Raises OSError."""
        removed: list[str] = []
        candidate: Candidate | None = None
        if has_candidate(self.directory, or_figures=True):  # staged releases (agent.staging)
            from satchel.agent.staging.record import read_candidate, remove_candidate_figures

            candidate = read_candidate(self.layout, self.channel)  # kept while it is judged
            if candidate is not None and (not (self.releases / candidate.name).is_dir() or (
                    record is not None and candidate.sequence <= record.highest_sequence)):
                from satchel.agent.staging.record import remove_candidate

                # its files went, or the floor rose over it: a refusal cut short
                remove_candidate(self.layout, self.channel)
                removed.append(f"candidate {candidate.version} (its files are gone)")
                candidate = None
            if candidate is None and remove_candidate_figures(self.layout, self.channel):
                removed.append("candidate-figures.json")
        on_disk = [n for n in _listdir(self.releases) if not candidate or n != candidate.name]
        for directory, names in (
            (self.releases, stale_releases(record, on_disk)),
            (self.staging, _listdir(self.staging)),
            (self.directory, [n for n in _listdir(self.directory) if _is_temp(n)]),
        ):
            gone = [n for n in names if _remove_tree(directory / n)]
            if gone:
                fsync_dir(directory)
                where = directory.relative_to(self.directory)
                removed += [str(where / n) for n in gone]
        return removed

    def remove_if_empty_channel(self) -> bool:
        """Remove the channel directory of a first install that was undone. Raises OSError."""
        if self.layout.record(self.channel).exists() or self.layout.journal(self.channel).exists():
            return False
        shutil.rmtree(self.directory)
        fsync_dir(self.layout.channels)
        return True


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _is_temp(name: str) -> bool:
    return name.startswith(".") and name.endswith(_TEMP_SUFFIX)


def remove_temp_files(directory: Path) -> None:
    """Remove temp files left in `directory` by a write that was killed. Raises OSError."""
    gone = False
    for name in _listdir(directory):
        if _is_temp(name):
            with contextlib.suppress(FileNotFoundError):
                (directory / name).unlink()
                gone = True
    if gone:
        fsync_dir(directory)
