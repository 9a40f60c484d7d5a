"""Shipping kept field inputs (`agent.captures`) to the manager after a LAN check-in.

Each capture is one `POST /api/v1/devices/{device_id}/samples` with the device's credential,
the capture's bytes as an `application/octet-stream` body and its sha256 in
`X-Satchel-Sample-SHA256`. 201 (stored) or 200 (the manager had it) removes it here; 400 or
413 (the manager will never take it) removes it and logs why; anything else keeps it for the
next round. At most `captures_per_upload` per round, oldest first. On a USB stick they are
written beside the device's signed report, which lists them (`captures_to_stick`).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from satchel.agent.captures import PendingCapture, drop_capture, pending_captures
from satchel.agent.config import AgentConfig
from satchel.agent.errors import CredentialRejectedError, ManagerRefusedError, TransportError

if TYPE_CHECKING:
    from satchel.agent.sync.client import ManagerClient
    from satchel.bundles.stickfs import StickDir

log = logging.getLogger(__name__)

SHA256_HEADER = "X-Satchel-Sample-SHA256"


def ship_captures(
    client: ManagerClient, state_dir: Path, device_id: str, config: AgentConfig
) -> tuple[int, int]:
    """Upload pending captures; returns (delivered, given up). Raises CredentialRejectedError
    (the next check-in says so too); other failures leave the rest for the next round."""
    delivered = refused = 0
    for capture in pending_captures(state_dir)[: config.captures_per_upload]:
        try:
            data = capture.read()
        except OSError:
            continue
        try:
            client.upload_sample(device_id, data, capture.sha256)
        except CredentialRejectedError:
            raise
        except ManagerRefusedError as e:
            if e.status in (400, 413):
                log.warning("field input %s refused by the manager, dropped: %s",
                            capture.sha256[:12], e)
                drop_capture(capture)
                refused += 1
                continue
            log.info("field inputs kept for the next round: %s", e)
            break
        except TransportError as e:
            log.info("field inputs kept for the next round: %s", e)
            break
        drop_capture(capture)
        delivered += 1
    if delivered:
        log.info("%d field input(s) delivered to the manager", delivered)
    return delivered, refused


def captures_to_stick(
    state_dir: Path, disk: StickDir, device_id: str, config: AgentConfig
) -> tuple[list[dict[str, Any]], list[PendingCapture]]:
    """Write pending captures next to the device's report, as
    `reports/<device_id>/samples/<sha256>.npz` (durably, never through a link): the report's
    `"samples"` list, and the captures to drop once the report is on the stick. A capture
    that cannot be written stays for the next stick. Raises StickLinkError."""
    from satchel.bundles.plan import REPORTS_DIR

    listed: list[dict[str, Any]] = []
    written: list[PendingCapture] = []
    for capture in pending_captures(state_dir)[: config.capture_max_samples]:
        name = f"samples/{capture.sha256}.npz"
        try:
            data = capture.read()
            if hashlib.sha256(data).hexdigest() != capture.sha256:
                drop_capture(capture)  # damaged on the device's disk: never shipped
                continue
            disk.write_bytes(f"{REPORTS_DIR}/{device_id}/{name}", data)
        except OSError as e:
            log.warning("field input %s not written to the stick: %s", capture.sha256[:12],
                        e.strerror)
            break
        listed.append({"file": name, "sha256": capture.sha256, "size": len(data)})
        written.append(capture)
    return listed, written
