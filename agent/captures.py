"""Field inputs kept for retraining ("hard examples"), on the device.

While a release is judged in shadow or ramp, the stager keeps the inputs of requests where
it disagreed with the active release, produced NaN/Inf, or (class scores) had a top-1 margin
below the bundle's threshold: only when the bundle asks (`--capture`) and the device allows
(`activation_capture`). Each is one file `STATE/captures/<sha256>.npz` made by
`bundles.captures.encode_capture` (mode 0600, in a 0700 directory), bounded in count and
bytes by the smaller of the bundle's and the device's caps, oldest dropped first. They go
home after a LAN check-in (`agent.sync.samples`) or on the USB stick's report, and are
removed once delivered.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satchel.agent.config import AgentConfig
from satchel.bundles.durable import atomic_write_bytes, fsync_dir

if TYPE_CHECKING:
    import numpy as np

    from satchel.bundles.activation import CapturePolicy

log = logging.getLogger(__name__)

CAPTURES_DIR = "captures"
_SUFFIX = ".npz"


@dataclass(frozen=True)
class PendingCapture:
    path: Path
    sha256: str
    size: int
    mtime_ns: int

    def read(self) -> bytes:
        """Raises OSError."""
        return self.path.read_bytes()


def captures_dir(state_dir: Path) -> Path:
    return Path(state_dir) / CAPTURES_DIR


def pending_captures(state_dir: Path) -> list[PendingCapture]:
    """The kept captures, oldest first (links and odd names are ignored)."""
    directory = captures_dir(state_dir)
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    for entry in entries:
        name = entry.name
        digest = name[: -len(_SUFFIX)]
        if not name.endswith(_SUFFIX) or len(digest) != 64 or entry.is_symlink():
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        found.append(PendingCapture(Path(entry.path), digest, st.st_size, st.st_mtime_ns))
    found.sort(key=lambda c: (c.mtime_ns, c.sha256))
    return found


def drop_capture(capture: PendingCapture) -> None:
    try:
        capture.path.unlink()
    except FileNotFoundError:
        return


def caps(policy: CapturePolicy, config: AgentConfig) -> tuple[int, int]:
    """(files, bytes) kept at most: the smaller of the bundle's and the device's caps."""
    return (min(policy.max_samples, config.capture_max_samples),
            min(policy.max_bytes, int(config.capture_max_mb * 1024 * 1024)))


def keep_capture(
    state_dir: Path, policy: CapturePolicy, config: AgentConfig,
    inputs: Mapping[str, np.ndarray], meta: Mapping[str, Any],
) -> PendingCapture | None:
    """Write one capture and drop the oldest beyond the caps; None when it alone is over
    the byte cap. Raises OSError, bundles' CaptureError."""
    from satchel.bundles.captures import encode_capture

    max_files, max_bytes = caps(policy, config)
    data = encode_capture(dict(inputs), dict(meta))
    if len(data) > max_bytes:
        log.info("a %s capture of %d bytes is over the %d-byte cap; not kept",
                 meta.get("reason"), len(data), max_bytes)
        return None
    directory = captures_dir(state_dir)
    if not directory.is_dir():
        directory.mkdir(mode=0o700, exist_ok=True)
        fsync_dir(directory.parent)
    os.chmod(directory, 0o700)
    digest = hashlib.sha256(data).hexdigest()
    path = directory / f"{digest}{_SUFFIX}"
    atomic_write_bytes(path, data, 0o600)
    kept = pending_captures(state_dir)
    total = sum(c.size for c in kept)
    dropped = 0
    while kept and (len(kept) > max_files or total > max_bytes):
        oldest = kept.pop(0)
        if oldest.path == path and kept:
            kept.append(oldest)  # never drop the one just written while older ones remain
            continue
        drop_capture(oldest)
        total -= oldest.size
        dropped += 1
    if dropped:
        fsync_dir(directory)
    st = path.stat()
    return PendingCapture(path, digest, st.st_size, st.st_mtime_ns)
