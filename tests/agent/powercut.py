"""Power-cut simulation: rebuild what a disk would hold after losing every write not yet
made durable by fsync, from the fsync trace of `fstrace/fstrace_hook.py`.

The model is the POSIX promise and nothing more: a file's content survives a power cut as of
its last fsync (a file never fsynced comes back empty), and a directory's entries (creations,
renames, removals) survive as of the last fsync of that directory. The state before the
traced run is taken as fully durable. Replaying the trace record by record gives the disk as
it would be after a power cut at each fsync boundary of the run.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FSTRACE_DIR = Path(__file__).parent / "fstrace"
_spec = importlib.util.spec_from_file_location("fstrace_hook", FSTRACE_DIR / "fstrace_hook.py")
assert _spec and _spec.loader
fstrace_hook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fstrace_hook)


def trace_env(log: Path, root: Path) -> dict[str, str]:
    """Environment that makes a child Python process trace its fsyncs under `root`."""
    python_path = os.pathsep.join(filter(None, [str(FSTRACE_DIR), os.environ.get("PYTHONPATH")]))
    return {
        "PYTHONPATH": python_path,
        "SATCHEL_TEST_FSTRACE": str(log),
        "SATCHEL_TEST_FSTRACE_ROOT": str(root),
    }


@dataclass
class Disk:
    root: str  # identity of the top directory
    dirs: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def snapshot(cls, top: Path) -> Disk:
        """Everything under `top` as it is now, taken as durable."""
        disk = cls(fstrace_hook.path_identity(str(top)))
        for directory, _, names in os.walk(top):
            disk.dirs[fstrace_hook.path_identity(directory)] = fstrace_hook.dir_entries(directory)
            for name in names:
                path = os.path.join(directory, name)
                if not os.path.islink(path):
                    disk.files[fstrace_hook.path_identity(path)] = Path(path).read_bytes()
        return disk

    def apply(self, record: dict[str, Any], blobs: Path) -> None:
        """One fsync of the trace becomes durable."""
        if record["kind"] == "d":
            self.dirs[record["id"]] = record["entries"]
            for identity, kind, _ in record["entries"].values():
                if kind == "d":
                    self.dirs.setdefault(identity, {})
                elif kind == "f":
                    self.files.setdefault(identity, b"")
        else:
            self.files[record["id"]] = (blobs / record["blob"]).read_bytes()

    def materialize(self, dest: Path) -> None:
        """Write the durable state out as a real directory tree at `dest`."""
        if dest.exists():
            shutil.rmtree(dest)
        self._write_dir(self.root, dest)

    def _write_dir(self, identity: str, dest: Path) -> None:
        dest.mkdir()
        for name, (child, kind, target) in self.dirs.get(identity, {}).items():
            if kind == "d":
                self._write_dir(child, dest / name)
            elif kind == "f":
                (dest / name).write_bytes(self.files.get(child, b""))
            else:
                os.symlink(target, dest / name)


def power_cuts(before: Disk, log: Path) -> Iterator[tuple[int, str, Disk]]:
    """(index, path fsynced last, disk) after each fsync of the trace, starting with none."""
    records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    yield 0, "(nothing fsynced)", before
    for i, record in enumerate(records, 1):
        before.apply(record, log.parent / "blobs")
        yield i, record["path"], before
