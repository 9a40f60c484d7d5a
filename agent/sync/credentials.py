"""The device's credentials: its own Ed25519 key (made at `init`, signs USB reports) and its
LAN credential: which manager it enrolled with and the token it was given.

Kept in STATE/credentials.json, mode 0600 (the token is shown once by the manager and is as
good as the device's identity on the LAN), written durably through `bundles.durable`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from satchel.agent.errors import NotEnrolledError, StateCorruptError
from satchel.agent.state import Layout, read_json, write_json
from satchel.bundles.durable import fsync_dir
from satchel.bundles.errors import BundleError
from satchel.bundles.keys import SigningKey
from satchel.bundles.timeutil import format_time, utcnow

CREDENTIALS_FILE = "credentials.json"
CREDENTIALS_MODE = 0o600  # readable by the agent's user only


@dataclass(frozen=True)
class Credentials:
    manager_url: str  # base URL, e.g. http://10.0.0.5:8400
    device_id: str
    token: str  # sat_dev_...
    checkin_url: str  # path of the check-in endpoint, relative to manager_url
    enrolled_at: str  # ISO 8601, when the token was received

    def to_dict(self) -> dict[str, Any]:
        return {
            "manager_url": self.manager_url,
            "device_id": self.device_id,
            "token": self.token,
            "checkin_url": self.checkin_url,
            "enrolled_at": self.enrolled_at,
        }

    @classmethod
    def from_dict(cls, d: Any) -> Credentials:
        """Raises StateCorruptError."""
        try:
            return cls(**{k: str(d[k]) for k in (
                "manager_url", "device_id", "token", "checkin_url", "enrolled_at"
            )})
        except (KeyError, TypeError) as e:
            raise StateCorruptError(f"{CREDENTIALS_FILE} is damaged (missing {e})") from e


def credentials_path(state_dir: Path) -> Path:
    return Layout(state_dir).root / CREDENTIALS_FILE


def new_credentials(
    manager_url: str, device_id: str, token: str, checkin_url: str
) -> Credentials:
    return Credentials(
        manager_url=manager_url.rstrip("/"),
        device_id=device_id,
        token=token,
        checkin_url=checkin_url,
        enrolled_at=format_time(utcnow()),
    )


def save_credentials(state_dir: Path, credentials: Credentials) -> None:
    """Durably write the credential, mode 0600. Raises OSError."""
    write_json(credentials_path(state_dir), credentials.to_dict(), mode=CREDENTIALS_MODE)


def load_credentials(state_dir: Path) -> Credentials | None:
    """The stored credential, or None when the device was never enrolled.

    Raises StateCorruptError when the file is damaged or readable by others than its owner
    (a leaked token must be replaced, not used).
    """
    path = credentials_path(state_dir)
    data = read_json(path, "credentials")
    if data is None:
        return None
    mode = os.stat(path).st_mode & 0o777
    if mode & 0o077:
        raise StateCorruptError(
            f"{path} is readable by other users (mode {mode:o}); remove it and enroll again"
        )
    return Credentials.from_dict(data)


def require_credentials(state_dir: Path) -> Credentials:
    """Raises NotEnrolledError, StateCorruptError."""
    credentials = load_credentials(state_dir)
    if credentials is None:
        raise NotEnrolledError(
            "this device is not enrolled with a manager; run: satchel-agent enroll "
            "--manager URL --token TOKEN"
        )
    return credentials


def forget_credentials(state_dir: Path) -> bool:
    """Remove the credential (it was rejected or is being replaced). True if one existed.
    Raises OSError."""
    path = credentials_path(state_dir)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        fsync_dir(path.parent)
        return True
    return False


def device_key(state_dir: Path) -> SigningKey:
    """The device's own Ed25519 key (made at init). Raises StateCorruptError."""
    path = Layout(state_dir).device_key
    try:
        return SigningKey.from_pem(path.read_bytes())
    except (OSError, BundleError) as e:
        raise StateCorruptError(f"device key {path} cannot be read: {e}") from e
