"""The installer's decisions, as pure functions over records: no I/O here.

An install moves a release through these durable steps, each one recorded in the channel's
journal before the next begins:

    journaled     journal written; nothing else changed yet
    unpacked      payloads unpacked and fsynced under staging/
    smoke-tested  smoke test passed, report.json written in the staged release
    promoted      staged release renamed into releases/ (complete, durable, not yet active)
    switched      channel.json names it active: THE commit point (one atomic rename)
    generation    generation counter bumped, so a running server reloads
    pruned        releases no longer kept are removed
    finished      history and clock updated; the journal is then removed

A rollback has the same shape: journaled, switched, generation, pruned, finished.
Before `switched`, recovery undoes (removes what was staged); from `switched` on, it finishes.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime

from satchel.agent.errors import NoPreviousReleaseError
from satchel.agent.install.journal import OP_INSTALL, Journal
from satchel.agent.state import ChannelRecord, KeptRelease
from satchel.bundles.channels import STATE_ACTIVE, STATE_ROLLED_BACK
from satchel.bundles.manifest import Manifest

JOURNALED = "journaled"
UNPACKED = "unpacked"
SMOKE_TESTED = "smoke-tested"
PROMOTED = "promoted"
SWITCHED = "switched"
GENERATION = "generation"
PRUNED = "pruned"
FINISHED = "finished"

INSTALL_STEPS = (JOURNALED, UNPACKED, SMOKE_TESTED, PROMOTED, SWITCHED, GENERATION, PRUNED,
                 FINISHED)
ROLLBACK_STEPS = (JOURNALED, SWITCHED, GENERATION, PRUNED, FINISHED)


class Recovery(enum.Enum):
    FINISH = "finish"  # the switch happened: complete the remaining steps
    UNDO = "undo"  # the switch did not happen: remove what was staged, keep the old release
    REDO = "redo"  # a rollback was decided but not switched: switch now, then finish


def release_name(manifest: Manifest) -> str:
    """The release directory name: unique per channel, as sequences only grow."""
    return f"{manifest.sequence}-{manifest.version}"


def record_after_install(
    record: ChannelRecord | None, manifest: Manifest, name: str, now: datetime, keep: int
) -> ChannelRecord:
    """channel.json once `manifest` (staged as `name`) is active; the oldest beyond `keep`
    releases are dropped. The anti-rollback floor only grows."""
    new = KeptRelease(name, manifest.version, manifest.sequence, now, now)
    older = record.releases if record else ()
    floor = max(manifest.sequence, record.highest_sequence if record else manifest.sequence)
    return ChannelRecord(manifest.name, (new, *older)[: max(1, keep)], floor, STATE_ACTIVE)


def record_after_rollback(record: ChannelRecord, now: datetime) -> ChannelRecord:
    """channel.json once the active release is dropped for the previous one.

    The dropped release is not kept (it is not good); the anti-rollback floor is unchanged,
    so the release rolled away from cannot be installed again. Raises NoPreviousReleaseError.
    """
    previous = record.previous
    if previous is None:
        raise NoPreviousReleaseError(
            f"channel {record.channel} has no earlier release to roll back to "
            f"(only {record.active.version} is kept)"
        )
    back = KeptRelease(
        previous.name, previous.version, previous.sequence, previous.installed_at, now
    )
    return ChannelRecord(
        record.channel, (back, *record.releases[2:]), record.highest_sequence, STATE_ROLLED_BACK
    )


def stale_releases(record: ChannelRecord | None, on_disk: Iterable[str]) -> list[str]:
    """Release directories that channel.json does not name: to be removed."""
    kept = record.names() if record else set()
    return sorted(name for name in on_disk if name not in kept)


def recovery_for(journal: Journal, record: ChannelRecord | None) -> Recovery:
    """Finish or undo an operation interrupted at `journal.step`, given what channel.json
    says now (the switch either happened or it did not: it is one rename)."""
    switched = record is not None and record.active.name == journal.target
    if switched:
        return Recovery.FINISH
    if (
        journal.op != OP_INSTALL
        and record is not None
        and record.active.name == journal.previous
        and record.previous is not None
        and record.previous.name == journal.target
    ):
        return Recovery.REDO
    return Recovery.UNDO
