"""The captures a device left on a USB stick beside its report, read back with no database.

A device's signed report lists the captures it wrote (`"samples": [{"file":
"samples/<sha256>.npz", "sha256", "size"}]`, in the signed body or in its `checkin`); the files
lie at `reports/<device_id>/samples/<sha256>.npz`. Each is read with a bounded read through
`bundles.stickfs` (never through a link), and its size and sha256 checked against the signed
list before it is handed on; the caller decodes and stores it like an upload. Call this only
for a report whose signature was verified (`usb.record_report` did).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from satchel.bundles import plan as stick
from satchel.bundles.canonical import decode_json
from satchel.bundles.errors import BundleError, StickLinkError
from satchel.bundles.identifiers import IDENTIFIER_RE, SHA256_RE
from satchel.bundles.stickfs import StickDir

# Store a report's checked captures: (how many were new, refusals as (file, why)).
RecordSamples = Callable[["StickSamples"], tuple[int, list[tuple[str, str]]]]
MAX_LISTED = 10_000  # captures one report may list
SAMPLES_DIR = "samples"  # in a device's report directory


@dataclass
class StickSamples:
    """The captures of one report: (sha256, bytes) checked against the list, and refusals."""

    device_id: str = ""
    found: list[tuple[str, bytes]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (file on the stick, why)


def listed_samples(report_data: bytes) -> tuple[str, list[Any]]:
    """(device id, the report's list of captures): the signed body's `samples`, else its
    check-in's. An unparsable report lists none."""
    try:
        signed = decode_json(report_data, "device report")
    except BundleError:
        return "", []
    body = signed.get("signed") if isinstance(signed, dict) else None
    if not isinstance(body, dict):
        return "", []
    device_id = body.get("device_id")
    listed = body.get("samples")
    checkin = body.get("checkin")
    if listed is None and isinstance(checkin, dict):
        listed = checkin.get("samples")
    if not isinstance(device_id, str) or IDENTIFIER_RE.fullmatch(device_id) is None:
        return "", []
    return device_id, listed if isinstance(listed, list) else []


def read_samples(disk: StickDir, report_data: bytes, max_bytes: int) -> StickSamples:
    """The captures a verified report lists, each checked for size and sha256.

    Raises StickLinkError (a link where a capture should be: nothing is read through it).
    """
    device_id, listed = listed_samples(report_data)
    out = StickSamples(device_id)
    if not device_id:
        return out
    where = f"{stick.REPORTS_DIR}/{device_id}/{SAMPLES_DIR}"
    for entry in listed[:MAX_LISTED]:
        sha = entry.get("sha256") if isinstance(entry, dict) else None
        size = entry.get("size") if isinstance(entry, dict) else None
        if not isinstance(sha, str) or SHA256_RE.fullmatch(sha) is None:
            out.refused.append((where, "a listed capture has no valid sha256"))
            continue
        rel = f"{where}/{sha}.npz"
        if entry.get("file") not in (None, f"{SAMPLES_DIR}/{sha}.npz"):
            out.refused.append((rel, f"listed as {str(entry.get('file'))[:60]!r}"))
            continue
        if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= max_bytes:
            out.refused.append((rel, f"listed size {size!r} is not within 1..{max_bytes} bytes"))
            continue
        try:
            data = disk.read_bytes(rel, max_bytes)
        except StickLinkError:
            raise
        except OSError as e:
            out.refused.append((rel, f"cannot read: {e.strerror or e}"))
            continue
        if len(data) != size:
            out.refused.append((rel, f"{len(data)} bytes, the report says {size}"))
        elif hashlib.sha256(data).hexdigest() != sha:
            out.refused.append((rel, "sha256 differs from the signed report"))
        else:
            out.found.append((sha, data))
    return out
