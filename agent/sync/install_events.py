"""Install a bundle a transport brought (LAN, USB stick, or a technician's CLI) through the
installer, queueing the events the manager acts on.

A transport checks first that the bundle it received is the release it was offered (the
manifest's channel, version and sequence), and refuses a mix-and-match before the installer
runs. Events of one install, in order: `downloaded`, `verified`, `smoke_test` (passed or not,
every figure the installer measured), then `activated`, or exactly one of `install_refused`
(the bundle is not acceptable here: signature, trust, expiry, compatibility, sequence) or
`install_failed` (it was acceptable but did not make it: smoke test, disk, lock), with the
installer's one-line reason. Once the manifest could be read, events carry its facts (channel,
version, sequence), not what the offer announced.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satchel.agent.config import DEFAULT_CONFIG, AgentConfig
from satchel.agent.errors import (
    AgentError,
    BundleFileError,
    IncompatibleError,
    OfferMismatchError,
    SequenceRollbackError,
    SmokeTestFailedError,
)
from satchel.agent.event_queue import EventQueue, json_safe
from satchel.agent.install.installer import InstallResult, install
from satchel.agent.state import DeviceState
from satchel.bundles.errors import BundleError
from satchel.bundles.events import (
    ACTIVATED,
    DOWNLOADED,
    INSTALL_FAILED,
    INSTALL_REFUSED,
    SHADOW_STARTED,
    SMOKE_TEST,
    VERIFIED,
)
from satchel.bundles.reader import read_unverified

if TYPE_CHECKING:
    from satchel.bundles.offer import Offer

log = logging.getLogger(__name__)

LAN, USB, CLI = "lan", "usb", "cli"  # how a bundle reached the device


@dataclass(frozen=True)
class BundleOrigin:
    """What a transport knows about a bundle before the installer looks at it."""

    channel: str
    version: str
    sequence: int
    bundle_sha256: str
    deployment_id: int | None
    via: str  # LAN or USB

    @classmethod
    def of(cls, offer: Offer, via: str) -> BundleOrigin:
        """What a LAN offer or a USB plan's assignment announces."""
        return cls(offer.channel, offer.version, offer.sequence, offer.bundle_sha256,
                   offer.deployment_id, via)

    def fields(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "version": self.version,
            "sequence": self.sequence,
            "bundle_sha256": self.bundle_sha256,
            "deployment_id": self.deployment_id,
        }


@dataclass(frozen=True)
class InstallOutcome:
    activated: bool
    reason: str | None  # one line when not activated


def active_sequence(state: DeviceState, channel: str) -> int | None:
    """The sequence the channel serves now, or judges in shadow or ramp if newer (an offer at
    or below it is skipped: the manager offers a release until it is active), or None.
    Raises StateCorruptError."""
    from satchel.agent.staging.record import read_candidate

    record = state.record(channel)
    candidate = read_candidate(state.layout, channel)
    sequences = [r.sequence for r in (record.active if record else None, candidate) if r]
    return max(sequences) if sequences else None


def smoke_figures(report: Mapping[str, Any]) -> dict[str, Any]:
    """The headline figures of a smoke-test report (worst over its models: the ones the
    API names), plus every test's full figures under "tests"."""
    tests = [t for t in report.get("tests") or [] if isinstance(t, Mapping)]

    def values(section: str, key: str) -> list[float]:
        found = [(t.get(section) or {}).get(key) for t in tests]
        return [float(v) for v in found if isinstance(v, (int, float)) and v is not None]

    def pick(fn: Callable[[list[float]], float], section: str, key: str) -> float | None:
        found = values(section, key)
        return fn(found) if found else None

    loads = [float(t["load_ms"]) for t in tests if isinstance(t.get("load_ms"), (int, float))]
    figures: dict[str, Any] = {
        "max_abs_error": pick(max, "agreement", "max_abs_error"),
        "max_rel_error": pick(max, "agreement", "max_rel_error"),
        "min_sqnr_db": pick(min, "agreement", "min_sqnr_db"),
        "min_cosine": pick(min, "agreement", "min_cosine"),
        "top1_agreement": pick(min, "agreement", "top1_agreement"),
        "nonfinite": int(sum(values("agreement", "nonfinite"))),
        "p50_ms": pick(max, "latency_ms", "p50"),
        "p95_ms": pick(max, "latency_ms", "p95"),
        "peak_memory_mb": pick(max, "memory_mb", "peak_growth"),
        "load_ms": max(loads) if loads else None,
        "tests": tests,
    }
    if isinstance(report.get("variants"), Mapping):  # each variant: ready or dropped, and why
        figures["variants"] = dict(report["variants"])
    return json_safe(figures)


def install_with_events(
    state_dir: Path,
    bundle: Path,
    origin: BundleOrigin,
    events: EventQueue,
    config: AgentConfig = DEFAULT_CONFIG,
) -> InstallOutcome:
    """Install `bundle` with the installer (which takes the device lock) and queue what
    happened. Never raises for a refused or failed install; raises OSError only when the
    event queue itself cannot be written."""
    try:
        result = install(state_dir, bundle, config=config)
    except (AgentError, BundleError, OSError) as e:
        return queue_install_events(events, origin, error=e)
    return queue_install_events(events, origin, result=result)


def install_offered(
    state_dir: Path,
    bundle: Path,
    offered: BundleOrigin,
    events: EventQueue,
    received: Mapping[str, Any],
    config: AgentConfig = DEFAULT_CONFIG,
) -> InstallOutcome:
    """Install a bundle a transport received for `offered`: queue `downloaded` (with the
    `received` figures), refuse it (`install_refused`, OfferMismatchError, nothing touched)
    unless its manifest is the offered release, else install it with events. Never raises
    for a refused or failed install; raises OSError only when the event queue itself cannot
    be written."""
    try:
        origin = manifest_origin(bundle, offered)
    except (AgentError, BundleError) as e:
        events.append(DOWNLOADED, figures=dict(received), **offered.fields())
        return queue_install_events(events, offered, error=e)
    events.append(DOWNLOADED, figures=dict(received), **origin.fields())
    try:
        check_offered(offered, origin)
    except OfferMismatchError as e:
        return queue_install_events(events, origin, error=e)
    return install_with_events(state_dir, bundle, origin, events, config)


def manifest_origin(bundle: Path, offered: BundleOrigin) -> BundleOrigin:
    """`offered` with the channel, version and sequence the bundle's own manifest states:
    read, not verified (the installer verifies). Raises BundleError subclasses (the head
    cannot be read), BundleFileError."""
    try:
        with open(bundle, "rb") as f:
            manifest, _ = read_unverified(f)
    except OSError as e:
        raise BundleFileError(f"cannot read bundle {bundle}: {e.strerror}") from e
    return replace(offered, channel=manifest.name, version=manifest.version,
                   sequence=manifest.sequence)


def check_offered(offered: BundleOrigin, actual: BundleOrigin) -> None:
    """Raises OfferMismatchError unless `actual` (from the manifest) is the release
    `offered` names: same channel, version and sequence."""
    facts = (actual.channel, actual.version, actual.sequence)
    if facts == (offered.channel, offered.version, offered.sequence):
        return
    source = "the USB plan" if offered.via == USB else "the manager's offer"
    raise OfferMismatchError(
        f"bundle {offered.bundle_sha256[:12]}... is {actual.channel} {actual.version} "
        f"(sequence {actual.sequence}), but {source} names {offered.channel} "
        f"{offered.version} (sequence {offered.sequence}); nothing installed from it"
    )


def queue_install_events(
    events: EventQueue,
    origin: BundleOrigin,
    *,
    result: InstallResult | None = None,
    error: BaseException | None = None,
) -> InstallOutcome:
    """Queue the events of one install that ended with `result` or `error`, and log it.
    Raises OSError when the queue cannot be written."""
    where = f"{origin.channel} {origin.version}"
    if result is not None:
        events.append(VERIFIED, **origin.fields())
        events.append(SMOKE_TEST, passed=True, figures=smoke_figures(result.report.to_dict()),
                      **origin.fields())
        if result.stage is not None:  # staged (agent.staging): judged on field requests first
            events.append(SHADOW_STARTED, figures={"previous": result.previous,
                                                   "via": origin.via, "stage": result.stage},
                          **origin.fields())
            log.info("staged %s (sequence %d) in %s beside %s; smoke test passed: %s", where,
                     origin.sequence, result.stage, result.previous, result.report.summary())
            return InstallOutcome(True, None)
        events.append(ACTIVATED, figures={"previous": result.previous, "via": origin.via},
                      **origin.fields())
        log.info("activated %s (sequence %d)%s; smoke test passed: %s", where,
                 origin.sequence, f", replacing {result.previous}" if result.previous else "",
                 result.report.summary())
        return InstallOutcome(True, None)
    reason = str(error) if isinstance(error, (AgentError, BundleError)) else (
        f"disk error: {error}" if isinstance(error, OSError) else f"unexpected failure: {error}"
    )
    if isinstance(error, SmokeTestFailedError):
        events.append(VERIFIED, **origin.fields())
        events.append(SMOKE_TEST, passed=False, reason=reason,
                      figures=smoke_figures(error.report), **origin.fields())
    refused = isinstance(error, (BundleError, IncompatibleError, SequenceRollbackError,
                                 OfferMismatchError))
    events.append(INSTALL_REFUSED if refused else INSTALL_FAILED, reason=reason,
                  **origin.fields())
    log.error("install of %s %s: %s", where, "refused" if refused else "failed", reason)
    return InstallOutcome(False, reason)


def origin_of_file(bundle: Path, via: str) -> BundleOrigin | None:
    """What a bundle file says it is (read, not verified) and its sha256; None when it
    cannot be read as a bundle at all. For installs a technician starts by hand."""
    try:
        with open(bundle, "rb") as f:
            manifest, _ = read_unverified(f)
            f.seek(0)
            digest = hashlib.sha256()
            while chunk := f.read(1024 * 1024):
                digest.update(chunk)
    except (OSError, BundleError):
        return None
    return BundleOrigin(manifest.name, manifest.version, manifest.sequence,
                        digest.hexdigest(), None, via)
