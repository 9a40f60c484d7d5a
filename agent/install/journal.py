"""The per-channel journal: what install or rollback is under way, and how far it got.

Written durably before an operation changes anything, advanced after each durable step,
removed when the operation is finished or undone. At start-up, a journal that is still
there means the process died mid-way; `agent.install.installer.recover` reads it to finish or undo.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, replace
from typing import Any

from satchel.agent.errors import StateCorruptError
from satchel.agent.state import Layout, read_json, write_json
from satchel.bundles.durable import fsync_dir

OP_INSTALL = "install"
OP_ROLLBACK = "rollback"


@dataclass(frozen=True)
class Journal:
    op: str  # OP_INSTALL or OP_ROLLBACK
    id: str  # random; ties the history events of one operation together
    channel: str
    target: str  # release directory being activated
    version: str  # of the target
    sequence: int  # of the target
    previous: str | None  # release directory active when the operation started
    step: str  # last durable step reached
    started: str  # timestamp
    reason: str = ""  # why (rollbacks)
    created: str = ""  # the target manifest's signed creation time (installs)
    previous_version: str = ""  # version of `previous`, for messages

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, channel: str) -> Journal:
        """Raises StateCorruptError."""
        try:
            journal = cls(**d)
        except TypeError as e:
            raise StateCorruptError(f"journal of channel {channel} is damaged ({e})") from e
        if journal.channel != channel or journal.op not in (OP_INSTALL, OP_ROLLBACK):
            raise StateCorruptError(f"journal of channel {channel} is damaged")
        return journal

    def at(self, step: str) -> Journal:
        return replace(self, step=step)


def new_id() -> str:
    return os.urandom(8).hex()  # what secrets.token_hex does, without loading hmac


def write_journal(layout: Layout, journal: Journal) -> None:
    """Durably record `journal` as the channel's operation under way. Raises OSError."""
    write_json(layout.journal(journal.channel), journal.to_dict())


def read_journal(layout: Layout, channel: str) -> Journal | None:
    """The channel's journal, or None. Raises StateCorruptError."""
    data = read_json(layout.journal(channel), "journal")
    return None if data is None else Journal.from_dict(data, channel)


def clear_journal(layout: Layout, channel: str) -> None:
    """Durably remove the channel's journal (the operation is over). Raises OSError."""
    path = layout.journal(channel)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)
