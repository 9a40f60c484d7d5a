"""The installer's side of staged activation: every step under the device lock, durable.

- `enter_staging` (inside an install, after the smoke test and the promotion): the release
  stays under releases/ as the channel's candidate; channel.json is untouched, so the
  previous release keeps serving; the generation moves so the server loads the candidate.
- `activate_candidate` (the server, once the ramp completed): THE switch of an install
  (channel.json names it active, journaled like any install), then probation.
- `refuse_candidate` (the server, on a failed stage): the candidate and its files go, the
  anti-rollback floor rises to its sequence (it is not offered back in a loop), history.
- `recover_staging` (recovery): an install or activation cut short around the candidate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from satchel.agent.config import DEFAULT_CONFIG, AgentConfig
from satchel.agent.errors import CandidateGoneError, SequenceRollbackError
from satchel.agent.install import history
from satchel.agent.install.channel_store import ChannelStore
from satchel.agent.install.journal import OP_INSTALL, Journal, clear_journal, new_id, write_journal
from satchel.agent.install.lock import device_lock
from satchel.agent.install.states import PROMOTED, record_after_install
from satchel.agent.staging.record import (
    STAGE_RAMP,
    STAGE_SHADOW,
    Candidate,
    read_candidate,
    remove_candidate,
    write_candidate,
)
from satchel.agent.state import (
    ChannelRecord,
    DeviceState,
    KeptRelease,
    Layout,
    Release,
    bump_generation,
    load_release,
    read_record,
    write_record,
)
from satchel.bundles.events import HISTORY_REFUSED, HISTORY_STAGED
from satchel.bundles.manifest import Manifest
from satchel.bundles.timeutil import format_time, utcnow


def first_stage(manifest: Manifest, config: AgentConfig) -> tuple[str | None, str | None]:
    """Where a staged release starts on this device, and why its shadow stage is skipped
    (None: it is not). (None, reason): nothing left to stage, it activates at once."""
    policy = manifest.activation
    if policy is None or not policy.staged:
        return None, None
    skipped = None
    if policy.shadow is not None and config.activation_shadow == "forbid":
        skipped = "this device forbids shadowing (activation_shadow = \"forbid\")"
    if policy.shadow is not None and skipped is None:
        return STAGE_SHADOW, None
    return (STAGE_RAMP if policy.ramp is not None else None), skipped


def check_not_judged(layout: Layout, manifest: Manifest) -> None:
    """Raises SequenceRollbackError when the channel judges this release, or a newer one,
    in shadow or ramp already."""
    candidate = read_candidate(layout, manifest.name)
    if candidate is not None and manifest.sequence <= candidate.sequence:
        raise SequenceRollbackError(
            f"{manifest.name} sequence {candidate.sequence} ({candidate.version}) is being "
            f"judged on field requests here already; {manifest.version} (sequence "
            f"{manifest.sequence}) not installed"
        )


def enter_staging(
    layout: Layout, journal: Journal, manifest: Manifest, config: AgentConfig
) -> Candidate | None:
    """Make the promoted release `journal.target` the channel's candidate (replacing one
    being judged, which is dropped); None when this device stages nothing of it (it then
    activates as before). Raises OSError."""
    stage, skipped = first_stage(manifest, config)
    channel = manifest.name
    old = read_candidate(layout, channel)
    if stage is None:  # activates at once: an older candidate judged meanwhile goes
        if old is not None:
            _drop_replaced(layout, old, manifest, config)
        return None
    candidate = Candidate(
        channel=channel, name=journal.target, version=manifest.version,
        sequence=manifest.sequence, first_stage=stage, installed_at=utcnow(),
        created=format_time(manifest.created), shadow_skipped=skipped,
    )
    write_candidate(layout, candidate)
    if old is not None and old.name != candidate.name:
        _drop_replaced(layout, old, manifest, config, keep_record=True)
    history.record_event(layout, HISTORY_STAGED, config, id=journal.id, channel=channel,
                         version=manifest.version, sequence=manifest.sequence,
                         reason=f"judged on field requests first ({stage})"
                         + (f"; shadow skipped: {skipped}" if skipped else ""))
    bump_generation(layout)
    clear_journal(layout, channel)
    return candidate


def _drop_replaced(layout: Layout, old: Candidate, manifest: Manifest, config: AgentConfig,
                   *, keep_record: bool = False) -> None:
    """Remove a candidate a newer install replaces (its record too, unless the new
    candidate's record was written over it already). Raises OSError."""
    channel = old.channel
    if not keep_record:
        remove_candidate(layout, channel)
    ChannelStore(layout, channel).discard(old.name, read_record(layout, channel))
    history.record_event(layout, HISTORY_REFUSED, config, channel=channel,
                         version=old.version, sequence=old.sequence,
                         reason=f"replaced by {manifest.version} before it was activated")


def recover_staging(
    layout: Layout, journal: Journal, record: ChannelRecord | None, done: list[str]
) -> Journal | None:
    """Recovery of an install or activation cut short around the channel's candidate: the
    journal to go on with, or None when this settled it. Raises OSError, StateCorruptError."""
    candidate = read_candidate(layout, journal.channel)
    if candidate is None or journal.op != OP_INSTALL or candidate.name != journal.target:
        return journal
    if record is not None and record.active.name == journal.target:
        remove_candidate(layout, journal.channel)  # activated: recovery finishes the install
        return journal
    clear_journal(layout, journal.channel)  # staged, or its activation never switched
    done.append(f"kept candidate {journal.channel} {journal.version}; it is judged again")
    return None


def activate_candidate(
    state_dir: Path, channel: str, sequence: int, *, config: AgentConfig = DEFAULT_CONFIG,
    figures: dict[str, Any] | None = None,
) -> Release:
    """Switch `channel` to its candidate (sequence `sequence`): the install's switch, after
    which it is on probation. Returns the release now active. Raises CandidateGoneError,
    LockBusyError, StateCorruptError; OSError."""
    from satchel.agent.install.installer import _finish_or_leave_to_recovery, _recover_locked

    state = DeviceState(state_dir)
    layout = state.layout
    with device_lock(layout.lock, config.lock_wait_s, config.lock_poll_s):
        _recover_locked(layout, config)
        candidate = _the_candidate(layout, channel, sequence)
        record = read_record(layout, channel)
        kept = KeptRelease(candidate.name, candidate.version, candidate.sequence,
                           candidate.installed_at, candidate.installed_at)
        manifest = load_release(layout, channel, kept).manifest
        journal = Journal(
            op=OP_INSTALL, id=new_id(), channel=channel, target=candidate.name,
            version=candidate.version, sequence=candidate.sequence,
            previous=record.active.name if record else None, step=PROMOTED,
            started=format_time(utcnow()), created=candidate.created,
            reason="ramp completed" if figures is None else "",
            previous_version=record.active.version if record else "",
        )
        write_journal(layout, journal)
        new_record = record_after_install(record, manifest, candidate.name, utcnow(),
                                          config.keep_releases)
        store = ChannelStore(layout, channel)
        store.switch(new_record)
        remove_candidate(layout, channel)
        _finish_or_leave_to_recovery(layout, store, journal, new_record, config)
        return load_release(layout, channel, new_record.active)


def refuse_candidate(
    state_dir: Path, channel: str, sequence: int, reason: str, *,
    config: AgentConfig = DEFAULT_CONFIG, figures: dict[str, Any] | None = None,
) -> None:
    """Drop `channel`'s candidate (sequence `sequence`) after a failed stage: its files
    go, the anti-rollback floor rises to its sequence, the history says why with the
    figures. Raises CandidateGoneError, LockBusyError, StateCorruptError; OSError."""
    state = DeviceState(state_dir)
    layout = state.layout
    with device_lock(layout.lock, config.lock_wait_s, config.lock_poll_s):
        candidate = _the_candidate(layout, channel, sequence)
        record = read_record(layout, channel)
        if record is not None and record.highest_sequence < sequence:
            # the floor first: after a power cut anywhere below, recovery drops a candidate
            # at or under it (ChannelStore.collect_garbage), and it is never offered back
            record = ChannelRecord(record.channel, record.releases, sequence, record.state)
            write_record(layout, record)
        ChannelStore(layout, channel).discard(candidate.name, record)
        remove_candidate(layout, channel)
        history.record_event(layout, HISTORY_REFUSED, config, channel=channel,
                             version=candidate.version, sequence=candidate.sequence,
                             reason=reason, figures=figures)
        bump_generation(layout)


def _the_candidate(layout: Layout, channel: str, sequence: int) -> Candidate:
    candidate = read_candidate(layout, channel)
    if candidate is None or candidate.sequence != sequence:
        raise CandidateGoneError(
            f"channel {channel} no longer judges sequence {sequence}; nothing changed"
        )
    return candidate
