"""`satchel-agent enroll`: trade a one-time token for the device's LAN credential.

The device introduces itself with its id, class, CPU architecture, agent version and the
public half of its own Ed25519 key (made at `init`; the manager checks USB reports with it).
The credential is stored mode 0600 before anything else happens, then the trust root is
brought up to the manager's newest version (best effort: the check-in loop does it too).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satchel.agent.config import DEFAULT_CONFIG, AgentConfig
from satchel.agent.errors import AlreadyEnrolledError, TransportError
from satchel.agent.install.facts import agent_version
from satchel.agent.state import DeviceState
from satchel.agent.sync.client import ManagerClient, with_retries
from satchel.agent.sync.credentials import (
    device_key,
    load_credentials,
    new_credentials,
    save_credentials,
)
from satchel.agent.sync.trust_roots import accept_roots, trusted_root
from satchel.bundles.errors import BundleError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EnrollResult:
    device_id: str
    manager_url: str
    poll_interval_s: float | None
    trust_root_version: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "manager_url": self.manager_url,
            "poll_interval_s": self.poll_interval_s,
            "trust_root_version": self.trust_root_version,
        }


def enroll_device(
    state_dir: Path,
    manager_url: str,
    enroll_token: str,
    *,
    config: AgentConfig = DEFAULT_CONFIG,
    force: bool = False,
) -> EnrollResult:
    """Enroll with the manager and store the credential.

    Raises NotInitializedError, AlreadyEnrolledError (unless `force`), ManagerUnreachableError
    (after `retry_attempts` tries), ManagerRefusedError (the token is unknown, used, expired
    or for another class; the device id is taken), StateCorruptError, OSError.
    """
    state = DeviceState(state_dir)
    identity = state.identity()
    existing = load_credentials(state_dir)
    if existing is not None and not force:
        raise AlreadyEnrolledError(
            f"this device is already enrolled with {existing.manager_url} as "
            f"{existing.device_id}; add --force to enroll again"
        )
    body = {
        "device_id": identity.device_id,
        "device_class": identity.device_class,
        "arch": identity.architecture,
        "agent_version": agent_version(),
        "public_key": device_key(state_dir).public.raw.hex(),
    }
    client = ManagerClient(manager_url, config=config)
    try:
        enrollment = with_retries(lambda: client.enroll(enroll_token, body), config,
                                  what="enrollment")
        credentials = new_credentials(manager_url, enrollment.device_id, enrollment.token,
                                      enrollment.checkin_url)
        save_credentials(state_dir, credentials)
        client.token = enrollment.token
        version = trusted_root(state_dir).version
        if enrollment.trust is not None and (enrollment.trust.version or 0) > version:
            version = _update_trust(state_dir, client, enrollment.trust.version_url,
                                    enrollment.trust.version or version, version, config)
    finally:
        client.close()
    return EnrollResult(enrollment.device_id, credentials.manager_url,
                        enrollment.poll_interval_s, version)


def _update_trust(state_dir: Path, client: ManagerClient, version_url: str, target: int,
                  have: int, config: AgentConfig) -> int:
    try:
        documents = {
            v: with_retries(
                functools.partial(client.fetch_document, version_url.format(version=v),
                                  f"trust root v{v}"),
                config, what=f"trust root v{v}",
            )
            for v in range(have + 1, target + 1)
        }
        return accept_roots(state_dir, documents, config)[1]
    except (TransportError, BundleError) as e:
        log.warning("trust root not updated now (the check-in will retry): %s", e)
        return have
