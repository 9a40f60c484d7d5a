"""The check-in loop of `satchel-agent run`: report, learn what to install, install it.

One round: send status, health and the oldest undelivered events; on a 200 answer remove those
events from the queue (the manager records each id once, so a round that fails after sending is
simply repeated); walk the trust root forward if the manager has a newer one (a failure there
is reported, not fatal: the offers are verified against the root the device has); download each
offer, check it is the release offered, and install it through the installer. The next round
comes after the manager's (jittered) poll interval, at once after an install or a health
rollback, or after an exponential backoff with jitter while the manager cannot be reached.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from satchel.agent.config import DEFAULT_CONFIG, AgentConfig
from satchel.agent.errors import (
    AgentError,
    CredentialRejectedError,
    DownloadError,
    ManagerUnreachableError,
    NotEnrolledError,
    TransportError,
)
from satchel.agent.event_queue import EventQueue
from satchel.agent.state import DeviceState
from satchel.agent.sync.backoff import Backoff
from satchel.agent.sync.credentials import Credentials, require_credentials
from satchel.agent.sync.install_events import LAN, BundleOrigin, active_sequence, install_offered
from satchel.agent.sync.report import TotalsSource, checkin_body, health_summary
from satchel.agent.sync.trust_roots import accept_roots, trusted_root
from satchel.bundles.errors import BundleError
from satchel.bundles.events import (
    INSTALL_FAILED,
    TRUST_UPDATE_FAILED,
    TRUST_UPDATE_REFUSED,
    TRUST_UPDATED,
)
from satchel.bundles.offer import Offer

if TYPE_CHECKING:  # the LAN client (and requests, 14 MB) is loaded once a manager is known
    from satchel.agent.sync.client import CheckinAnswer, ManagerClient, TrustInfo

log = logging.getLogger(__name__)

DOWNLOADS_DIR = "downloads"
DEFAULT_POLL_S = 60.0  # seconds between check-ins when neither config nor manager says


class CheckinLoop:
    """Checks in with the enrolled manager until `stop` is set. `manager_url` overrides
    the URL stored at enrollment (the manager moved); the credential stays the same."""

    def __init__(
        self,
        state_dir: Path,
        events: EventQueue,
        totals: TotalsSource,
        stop: threading.Event,
        *,
        config: AgentConfig = DEFAULT_CONFIG,
        manager_url: str | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state = DeviceState(self.state_dir)
        self.events = events
        self.totals = totals
        self.stop = stop
        self.config = config
        self.manager_url = manager_url
        self.downloads = self.state_dir / DOWNLOADS_DIR
        self._wake = threading.Event()
        self._client: ManagerClient | None = None
        self._backoff = Backoff(config)
        self._refused_root: int | None = None  # a trust root version refused once
        self._failed_root: int | None = None  # a trust root version whose fetch failed
        self.rounds = 0  # successful check-ins, for tests and logs

    def wake(self) -> None:
        """Check in now instead of at the next poll (e.g. a rollback just happened), or
        notice at once that `stop` was set."""
        self._wake.set()

    def run(self) -> None:
        """Round after round until `stop`; never raises."""
        while not self.stop.is_set():
            self._wake.clear()
            delay = self._round()
            if delay > 0:
                self._wait(delay)
        if self._client is not None:
            self._client.close()

    def _wait(self, seconds: float) -> None:
        """Sleep until the next round, `wake()` or a stop (whoever stops also wakes)."""
        if not self.stop.is_set():
            self._wake.wait(seconds)

    def _round(self) -> float:
        """One round; returns seconds until the next."""
        try:
            delay = self.once()
        except NotEnrolledError:
            return self._retry_later("not enrolled yet; LAN check-in waits for `satchel-agent "
                                     "enroll`", logging.INFO)
        except CredentialRejectedError as e:
            return self._retry_later(str(e), logging.ERROR)
        except ManagerUnreachableError as e:
            return self._retry_later(f"check-in failed: {e}", logging.WARNING)
        except (AgentError, BundleError, OSError) as e:
            return self._retry_later(f"check-in failed: {e}", logging.ERROR)
        except Exception:  # noqa: BLE001 - the loop must outlive any bug in one round
            log.exception("check-in round failed")
            return self._backoff.next_delay()
        self._backoff.reset()
        return delay

    def _retry_later(self, message: str, level: int) -> float:
        delay = self._backoff.next_delay()
        log.log(level, "%s; next try in %.1f s", message, delay)
        return delay

    # --- one round ----------------------------------------------------------------------

    def once(self) -> float:
        """Check in once and act on the answer; returns seconds until the next round.

        Raises NotEnrolledError, ManagerUnreachableError, CredentialRejectedError,
        ManagerRefusedError, StateCorruptError, OSError.
        """
        credentials = require_credentials(self.state_dir)
        client = self._client_for(credentials)
        root_version = trusted_root(self.state_dir).version
        batch = self.events.pending(self.config.events_per_checkin,
                                     self.config.event_bytes_per_checkin)
        body = checkin_body(self.state, batch, health_summary(self.state, self.totals),
                            root_version)
        answer = client.checkin(credentials.checkin_url, body)
        self.events.ack(e["id"] for e in batch)
        more = len(self.events) > 0  # a backlog beyond one batch: send the rest at once
        self.rounds += 1
        log.log(
            logging.INFO if batch or answer.install else logging.DEBUG,
            "checked in: %d event(s) delivered (%d already known), %d install(s) offered",
            answer.recorded, answer.duplicate, len(answer.install),
        )
        newest = answer.trust.version if answer.trust is not None else None
        if answer.trust is not None and newest and newest > root_version and (
            newest != self._refused_root
        ):
            self._update_trust(client, answer.trust, root_version)
        self._prune_downloads(answer)
        from satchel.agent.sync.samples import ship_captures  # field inputs (agent.captures)

        ship_captures(client, self.state_dir, credentials.device_id, self.config)
        acted = False
        for offer in answer.install:
            acted = self._apply(client, offer) or acted
        return 0.0 if acted or more else self._poll_interval(answer)

    def _client_for(self, credentials: Credentials) -> ManagerClient:
        url = self.manager_url or credentials.manager_url
        client = self._client
        if client is None or client.base_url != url.rstrip("/") or (
            client.token != credentials.token
        ):
            if client is not None:
                client.close()
            from satchel.agent.sync.client import ManagerClient

            client = self._client = ManagerClient(url, credentials.token, config=self.config,
                                                  stop=self.stop)
        return client

    def _poll_interval(self, answer: CheckinAnswer) -> float:
        c = self.config
        interval = c.poll_interval_s or answer.poll_interval_s or DEFAULT_POLL_S
        return min(max(interval, c.min_poll_interval_s), c.max_poll_interval_s)

    def _update_trust(self, client: ManagerClient, trust: TrustInfo, have: int) -> None:
        """Walk the trust root forward to the manager's newest. Never lets a failure stop the
        round: the offers are then verified against the root the device has. A refused root
        is not tried again until the manager has a newer one; a fetch that fails is tried
        again next round, logged and reported once per version. Raises
        CredentialRejectedError, LockBusyError, StateCorruptError, OSError (device faults)."""
        target = trust.version or have
        try:
            documents = {
                v: client.fetch_document(trust.version_url.format(version=v),
                                         f"trust root v{v}")
                for v in range(have + 1, target + 1)
            }
            old, new = accept_roots(self.state_dir, documents, self.config)
        except CredentialRejectedError:
            raise
        except TransportError as e:
            self._trust_fetch_failed(target, e)
            return
        except BundleError as e:
            log.error("the manager's trust root v%d was refused: %s", target, e)
            self.events.append(TRUST_UPDATE_REFUSED, reason=str(e))
            self._refused_root = target  # not tried again until the manager has a newer one
            return
        self._failed_root = None
        self.events.append(TRUST_UPDATED, figures={"from_version": old, "to_version": new})

    def _trust_fetch_failed(self, target: int, error: TransportError) -> None:
        if self._failed_root == target:
            log.debug("trust root v%d still cannot be fetched: %s", target, error)
            return
        self._failed_root = target
        log.error("the manager's trust root v%d cannot be fetched: %s; installs go on with "
                  "the trust root this device has", target, error)
        self.events.append(TRUST_UPDATE_FAILED, reason=str(error))

    def _prune_downloads(self, answer: CheckinAnswer) -> None:
        """Drop partial downloads of bundles no longer offered."""
        offered = {o.bundle_sha256 for o in answer.install}
        with contextlib.suppress(FileNotFoundError):
            for path in self.downloads.iterdir():
                if path.name.split(".")[0] not in offered:
                    path.unlink(missing_ok=True)

    def _apply(self, client: ManagerClient, offer: Offer) -> bool:
        """Download and install one offer. True when something happened worth reporting at
        once. Raises ManagerUnreachableError (the download resumes next round), OSError."""
        active = active_sequence(self.state, offer.channel)
        if active is not None and offer.sequence <= active:
            return False  # a race with another install: skip silently, as the API asks
        origin = BundleOrigin.of(offer, LAN)
        log.info("installing %s %s (sequence %d, %d bytes) from the manager", offer.channel,
                 offer.version, offer.sequence, offer.size)
        try:
            download = client.download(offer, self.downloads)
        except DownloadError as e:
            self.events.append(INSTALL_FAILED, reason=str(e), **origin.fields())
            return True
        received = {"bytes": download.size, "seconds": round(download.seconds, 3),
                    "resumes": download.resumes, "via": LAN}
        if offer.fallback is not None and self._fall_back(download.path):
            return self._apply(client, _full_offer(offer))
        try:
            outcome = install_offered(self.state_dir, download.path, origin, self.events,
                                      received, self.config)
        finally:
            download.path.unlink(missing_ok=True)
        if offer.fallback is not None and not outcome.activated:  # the delta failed:
            return self._apply(client, _full_offer(offer))  # the full bundle, once
        return True

    def _fall_back(self, delta: Path) -> bool:
        """True (the download removed) when the delta bundle at `delta` cannot be applied
        here (its base is gone or damaged): the offer's full bundle is installed instead,
        with nothing to report about the delta (docs/DELTAS.md)."""
        from satchel.agent.install.delta import delta_problem

        why = delta_problem(self.state_dir, delta)
        if why is None:
            return False
        log.info("%s: installing the full bundle offered with it", why)
        delta.unlink(missing_ok=True)
        return True


def _full_offer(offer: Offer) -> Offer:
    """The offer of the full bundle behind an offer of a delta bundle."""
    fb = offer.fallback
    assert fb is not None
    return replace(offer, bundle_sha256=fb.bundle_sha256, size=fb.size, url=fb.url,
                   fallback=None)
