"""Install, roll back and recover: the installer's steps in order, under the device lock.

The decisions (which record comes next, finish or undo) are `agent.install.states`; the disk
work is `agent.install.channel_store.ChannelStore`; the smoke test is a `SmokeRunner` passed in.
Each step is durable and journaled before the next begins (see `agent.install.states`),
so `recover()`, run first by every command, finishes or undoes an interrupted operation.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from satchel.agent.config import DEFAULT_CONFIG, AgentConfig
from satchel.agent.errors import (
    AgentError,
    BundleFileError,
    RollbackSupersededError,
    SmokeTestFailedError,
    StateCorruptError,
    UnknownChannelError,
)
from satchel.agent.install import history
from satchel.agent.install.channel_store import ChannelStore, crash_point, remove_temp_files
from satchel.agent.install.journal import (
    OP_INSTALL,
    OP_ROLLBACK,
    Journal,
    clear_journal,
    new_id,
    read_journal,
    write_journal,
)
from satchel.agent.install.lock import device_lock, try_device_lock
from satchel.agent.install.states import (
    FINISHED,
    GENERATION,
    JOURNALED,
    PROMOTED,
    PRUNED,
    SMOKE_TESTED,
    SWITCHED,
    UNPACKED,
    Recovery,
    record_after_install,
    record_after_rollback,
    recovery_for,
    release_name,
)
from satchel.agent.staging import has_candidate
from satchel.agent.state import (
    ChannelRecord,
    DeviceState,
    Layout,
    Release,
    advance_newest_signed_time,
    bump_generation,
    load_release,
    read_record,
)
from satchel.bundles.errors import BundleError
from satchel.bundles.events import (
    HISTORY_ACTIVATED,
    HISTORY_REFUSED,
    HISTORY_ROLLED_BACK,
    HISTORY_SMOKE_TEST_FAILED,
    HISTORY_UNDONE,
)
from satchel.bundles.timeutil import format_time, parse_time, utcnow

# The install path's heavy modules (signature checks, zstandard, the runtimes behind the smoke
# test) are imported inside the functions that use them: recovery and rollback, which every
# `satchel-agent status` and `rollback` run, need none of them (issue 14).
if TYPE_CHECKING:
    from satchel.agent.install.compat import DeviceFacts
    from satchel.agent.install.smoketest import SmokeReport, SmokeRunner
    from satchel.bundles.reader import VerifiedBundle
    from satchel.bundles.trust import Root

FactsSource = Callable[[DeviceState], "DeviceFacts"]


@dataclass(frozen=True)
class InstallResult:
    release: Release  # now active
    report: SmokeReport
    previous: str | None  # version that was active before, if any
    seconds: dict[str, float] = field(default_factory=dict)  # phase -> wall seconds: verify
    # (signatures, hashes), check (compatibility; finds the runtime), unpack, smoke_test,
    # activate (promote, switch, history)
    stage: str | None = None  # "shadow" or "ramp": `release` is a candidate, not active yet
    # (agent.staging); None: `release` is active


# --- public operations ----------------------------------------------------------------------


def install(
    state_dir: Path,
    bundle_path: Path,
    *,
    config: AgentConfig = DEFAULT_CONFIG,
    smoke_runner: SmokeRunner | None = None,
    facts: FactsSource | None = None,
) -> InstallResult:
    """Verify, check, unpack, smoke-test and activate the bundle at `bundle_path`.

    On any refusal the device is left as it was (the refusal is recorded in the history).
    Raises BundleError subclasses (format, trust, payload), BundleFileError, ExpiredError
    (the manifest, or the trust root itself),
    SequenceRollbackError, IncompatibleError subclasses, SmokeTestFailedError,
    NotInitializedError, LockBusyError, StateCorruptError; OSError on a failing disk.
    """
    from satchel.agent.install.facts import gather_facts
    from satchel.agent.install.smoketest import default_runner

    state = DeviceState(state_dir)
    state.identity()
    layout = state.layout
    with device_lock(layout.lock, config.lock_wait_s, config.lock_poll_s):
        _recover_locked(layout, config)
        try:
            with _open_bundle(bundle_path) as f:
                return _install_locked(state, f, config, smoke_runner or default_runner(config),
                                       facts or gather_facts)
        except (AgentError, BundleError) as e:
            if not isinstance(e, SmokeTestFailedError):
                history.record_event(layout, HISTORY_REFUSED, config, reason=str(e),
                                     bundle=str(bundle_path))
            raise


def rollback(
    state_dir: Path,
    channel: str,
    reason: str,
    *,
    expected_sequence: int | None = None,
    config: AgentConfig = DEFAULT_CONFIG,
) -> Release:
    """Switch `channel` back to its previous kept release, dropping the active one; return
    the release now active. Called by `satchel-agent rollback` and the health monitor, which
    passes `expected_sequence` (the release it judged) so that a release activated since is
    never rolled back in its place.

    Raises UnknownChannelError, NoPreviousReleaseError, RollbackSupersededError,
    NotInitializedError, LockBusyError, StateCorruptError; OSError on a failing disk.
    """
    state = DeviceState(state_dir)
    state.identity()
    layout = state.layout
    with device_lock(layout.lock, config.lock_wait_s, config.lock_poll_s):
        _recover_locked(layout, config)
        try:
            return _rollback_locked(layout, channel, reason, config, expected_sequence)
        except AgentError as e:
            history.record_event(layout, HISTORY_REFUSED, config, channel=channel,
                                 reason=f"rollback refused: {e}")
            raise


def recover(state_dir: Path, *, config: AgentConfig = DEFAULT_CONFIG) -> list[str]:
    """Finish or undo whatever install or rollback was interrupted; remove leftovers.

    Returns one line per thing done. Does nothing if another live process holds the lock
    (it is mid-operation and will finish it). Raises NotInitializedError, StateCorruptError;
    OSError on a failing disk.
    """
    state = DeviceState(state_dir)
    state.identity()
    with try_device_lock(state.layout.lock) as locked:
        return _recover_locked(state.layout, config) if locked else []


# --- install --------------------------------------------------------------------------------


def _open_bundle(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")  # noqa: SIM115 - the caller closes it
    except OSError as e:
        raise BundleFileError(f"cannot read bundle {path}: {e.strerror}") from e


def _load_root(layout: Layout) -> Root:
    from satchel.bundles.trust import load_root

    try:
        return load_root(layout.trust.read_bytes())
    except (OSError, BundleError) as e:
        raise StateCorruptError(f"trust root {layout.trust} cannot be loaded: {e}") from e


def _verify(f: BinaryIO, layout: Layout, facts: DeviceFacts) -> VerifiedBundle:
    from satchel.agent.install.compat import expiry_clock
    from satchel.bundles.reader import verify_bundle
    from satchel.bundles.trust import check_root_expiry

    now, not_before = expiry_clock(facts)
    root = _load_root(layout)
    # A root past its expiry may be what an attacker keeps serving to freeze the device on
    # old keys: nothing is installed until a newer root.json arrives (judged like manifests).
    check_root_expiry(root, max(now, not_before) if not_before is not None else now)
    # Payloads with a signed chunk index are checked chunk by chunk as they unpack: one read.
    return verify_bundle(f, root, now, not_before=not_before, defer_payloads=True)


def _install_locked(
    state: DeviceState,
    f: BinaryIO,
    config: AgentConfig,
    runner: SmokeRunner,
    facts_source: FactsSource,
) -> InstallResult:
    from satchel.agent.install.compat import check_compatible

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    layout = state.layout
    facts = facts_source(state)
    verified = _verify(f, layout, facts)
    if verified.manifest.encryption is not None:  # only a recipient unlocks it (issue 19)
        from satchel.agent.install.decrypt import unlock_for_device

        verified = unlock_for_device(verified, state)
    seconds["verify"] = time.perf_counter() - started
    started = time.perf_counter()
    manifest = verified.manifest
    record = read_record(layout, manifest.name)
    check_compatible(
        manifest, facts, record.highest_sequence if record else None, config.disk_margin_bytes
    )
    if has_candidate(layout.channel(manifest.name)):  # judged in shadow or ramp already?
        from satchel.agent.staging.lifecycle import check_not_judged

        check_not_judged(layout, manifest)
    if manifest.delta_base is not None:  # patches of a kept release's files (docs/DELTAS.md)
        from satchel.agent.install.delta import base_files
        from satchel.bundles.delta import with_bases

        verified = with_bases(verified, base_files(layout, record, manifest))
    seconds["check"] = time.perf_counter() - started
    name = release_name(manifest)
    journal = Journal(
        op=OP_INSTALL, id=new_id(), channel=manifest.name, target=name,
        version=manifest.version, sequence=manifest.sequence,
        previous=record.active.name if record else None, step=JOURNALED,
        started=format_time(utcnow()), created=format_time(manifest.created),
        previous_version=record.active.version if record else "",
    )
    store = ChannelStore(layout, manifest.name)
    store.prepare()
    write_journal(layout, journal)
    crash_point(OP_INSTALL, JOURNALED)
    try:
        report = _stage_and_test(store, f, verified, journal, runner, seconds)
        if not report.passed:
            raise _smoke_failure(journal, record, report)
        started = time.perf_counter()
        store.promote(name)
        write_journal(layout, journal.at(PROMOTED))
        crash_point(OP_INSTALL, PROMOTED)
        if record is not None and (manifest.activation is not None
                                   or has_candidate(layout.channel(manifest.name))):
            # a release judged on field requests first, or one replacing it (agent.staging)
            from satchel.agent.staging.lifecycle import enter_staging

            candidate = enter_staging(layout, journal, manifest, config)
            if candidate is not None:  # staged: the previous release stays active
                seconds["activate"] = time.perf_counter() - started
                release = state.candidate_release(manifest.name)
                assert release is not None
                return InstallResult(release, report, record.active.version, seconds,
                                     stage=candidate.first_stage)
        new_record = record_after_install(record, manifest, name, utcnow(), config.keep_releases)
        store.switch(new_record)
    except BaseException as e:
        if _switched_to(layout, journal):
            raise  # the switch is on disk but not confirmed durable: recovery finishes it
        store.discard(name, record)
        clear_journal(layout, manifest.name)
        if record is None:
            store.remove_if_empty_channel()
        if isinstance(e, SmokeTestFailedError):
            history.record_event(
                layout, HISTORY_SMOKE_TEST_FAILED, config, id=journal.id,
                channel=journal.channel, version=journal.version, sequence=journal.sequence,
                reason=str(e), report=e.report,
            )
        raise
    crash_point(OP_INSTALL, SWITCHED)
    _finish_or_leave_to_recovery(layout, store, journal, new_record, config)
    release = load_release(layout, manifest.name, new_record.active)
    previous = record.active.version if record else None
    seconds["activate"] = time.perf_counter() - started
    return InstallResult(release, report, previous, seconds)


def _stage_and_test(
    store: ChannelStore, f: BinaryIO, verified: VerifiedBundle, journal: Journal,
    runner: SmokeRunner, seconds: dict[str, float],
) -> SmokeReport:
    started = time.perf_counter()
    files = store.stage(f, verified, journal.target)
    write_journal(store.layout, journal.at(UNPACKED))
    crash_point(OP_INSTALL, UNPACKED)
    seconds["unpack"] = time.perf_counter() - started
    started = time.perf_counter()
    report = runner.run(verified.manifest, files)
    seconds["smoke_test"] = time.perf_counter() - started
    store.write_report(journal.target, report)
    if report.passed:
        write_journal(store.layout, journal.at(SMOKE_TESTED))
        crash_point(OP_INSTALL, SMOKE_TESTED)
    return report


def _switched_to(layout: Layout, journal: Journal) -> bool:
    try:
        record = read_record(layout, journal.channel)
    except StateCorruptError:
        return False
    return record is not None and record.active.name == journal.target


def _smoke_failure(
    journal: Journal, record: ChannelRecord | None, report: SmokeReport
) -> SmokeTestFailedError:
    kept = f"{record.active.version} stays active" if record else "nothing activated"
    return SmokeTestFailedError(
        f"smoke test of {journal.channel} {journal.version} failed on this device: "
        f"{report.summary()} ({kept})",
        report.to_dict(),
    )


# --- rollback -------------------------------------------------------------------------------


def _rollback_locked(
    layout: Layout,
    channel: str,
    reason: str,
    config: AgentConfig,
    expected_sequence: int | None = None,
) -> Release:
    record = read_record(layout, channel)
    if record is None:
        raise UnknownChannelError(f"channel {channel} has no active release on this device")
    if expected_sequence is not None and record.active.sequence != expected_sequence:
        raise RollbackSupersededError(
            f"channel {channel} now runs sequence {record.active.sequence}, not "
            f"{expected_sequence}; rollback not applied"
        )
    new_record = record_after_rollback(record, utcnow())
    journal = Journal(
        op=OP_ROLLBACK, id=new_id(), channel=channel, target=new_record.active.name,
        version=new_record.active.version, sequence=new_record.active.sequence,
        previous=record.active.name, step=JOURNALED, started=format_time(utcnow()),
        reason=reason, previous_version=record.active.version,
    )
    write_journal(layout, journal)
    crash_point(OP_ROLLBACK, JOURNALED)
    store = ChannelStore(layout, channel)
    store.switch(new_record)
    crash_point(OP_ROLLBACK, SWITCHED)
    _finish_or_leave_to_recovery(layout, store, journal, new_record, config)
    return load_release(layout, channel, new_record.active)


# --- after the switch, and recovery ---------------------------------------------------------


def _finish(
    layout: Layout,
    store: ChannelStore,
    journal: Journal,
    record: ChannelRecord,
    config: AgentConfig,
    recovered: bool = False,
) -> None:
    """The steps after the switch; each is idempotent, so recovery may run them again."""
    op = journal.op
    bump_generation(layout)
    crash_point(op, GENERATION)
    store.collect_garbage(record)
    crash_point(op, PRUNED)
    if op == OP_INSTALL:
        if journal.created:
            advance_newest_signed_time(layout, parse_time(journal.created, "created"))
        event, reason = HISTORY_ACTIVATED, None
    else:
        rolled_from = journal.previous_version or journal.previous
        event, reason = HISTORY_ROLLED_BACK, f"{journal.reason} (from {rolled_from})"
    history.record_event(
        layout, event, config, id=journal.id, channel=journal.channel, version=journal.version,
        sequence=journal.sequence, reason=reason, recovered=recovered or None,
    )
    crash_point(op, FINISHED)
    clear_journal(layout, journal.channel)


def _finish_or_leave_to_recovery(
    layout: Layout, store: ChannelStore, journal: Journal, record: ChannelRecord,
    config: AgentConfig,
) -> None:
    """Finish after the switch; a disk error here does not undo the activation, it leaves
    the journal for the next recovery to finish."""
    with contextlib.suppress(OSError):
        _finish(layout, store, journal, record, config)


def _recover_locked(layout: Layout, config: AgentConfig) -> list[str]:
    done: list[str] = []
    remove_temp_files(layout.root)
    try:
        channels = sorted(p.name for p in layout.channels.iterdir() if p.is_dir())
    except FileNotFoundError:
        return done
    for channel in channels:
        done += _recover_channel(layout, channel, config)
    return done


def _recover_channel(layout: Layout, channel: str, config: AgentConfig) -> list[str]:
    done: list[str] = []
    store = ChannelStore(layout, channel)
    record = read_record(layout, channel)
    journal = read_journal(layout, channel)
    if journal is not None:
        from satchel.agent.staging.lifecycle import recover_staging

        journal = recover_staging(layout, journal, record, done)
    if journal is not None:
        what = f"{journal.op} of {channel} {journal.version}"
        action = recovery_for(journal, record)
        if action is Recovery.REDO and record is not None:
            record = record_after_rollback(record, utcnow())
            store.switch(record)
            action = Recovery.FINISH
        if action is Recovery.FINISH and record is not None:
            _finish(layout, store, journal, record, config, recovered=True)
            done.append(f"finished the interrupted {what}")
        else:
            store.discard(journal.target, record)
            history.record_event(
                layout, HISTORY_UNDONE, config, id=journal.id, channel=channel,
                version=journal.version, sequence=journal.sequence,
                reason=f"interrupted at step {journal.step!r}; undone",
            )
            clear_journal(layout, channel)
            done.append(f"undid the interrupted {what}")
    done += [f"removed leftover {channel}/{n}" for n in store.collect_garbage(record)]
    if record is None and store.remove_if_empty_channel():
        done.append(f"removed empty channel {channel}")
    return done
