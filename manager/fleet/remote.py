"""The fleet of a remote manager, through its REST API (`satchel --url URL ...`).

The answers are the documents the API sends, which are the dictionaries the services make:
a command prints them exactly as it prints those of its own database. A stick's plan is
worked out by the manager and signed here, with keys that never leave this machine; its
bundles are downloaded (and checked against their sha256) on the way to the stick.
"""

from __future__ import annotations

import base64
import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlencode

from satchel.bundles import plan as stick
from satchel.bundles.errors import BundleError
from satchel.bundles.timeutil import now
from satchel.bundles.trust import load_root
from satchel.manager import sticks
from satchel.manager.config import ManagerConfig
from satchel.manager.errors import InvalidRequestError, RequestTooLargeError
from satchel.manager.fleet import NewDeployment, NewToken
from satchel.manager.fleet.http import ApiClient, ApiError
from satchel.manager.stick_samples import StickSamples

if TYPE_CHECKING:
    from satchel.bundles.keys import SigningKey

DEVICES_PAGE = 10_000  # devices asked for per request (the API's largest page)


class ApiFleet:
    """`Fleet` over one manager's REST API, with an admin token. `config` is this machine's:
    its limits bound what is read from a stick here, and it sets a plan's lifetime."""

    def __init__(self, client: ApiClient, config: ManagerConfig) -> None:
        self.api = client
        self.config = config

    def add_bundle(self, file: Path) -> tuple[dict[str, Any], bool]:
        try:
            with open(file, "rb") as f:
                stored = self.api.upload("/bundles", f, os.fstat(f.fileno()).st_size)
        except OSError as e:
            raise InvalidRequestError(f"cannot read {file}: {e.strerror or e}") from e
        stored = _document(stored)
        created = bool(_field(stored, "created"))
        summary = {k: v for k, v in stored.items() if k not in ("created", "manifest")}
        return summary, created  # the detail less its manifest is the summary

    def remove_bundle(self, ref: str) -> dict[str, Any]:
        return _document(self.api.send("DELETE", f"/bundles/{_segment(ref)}"))

    def list_bundles(self, name: str | None) -> list[dict[str, Any]]:
        return _list(self.api.get("/bundles", name=name), "bundles")

    def create_deployment(self, new: NewDeployment) -> dict[str, Any]:
        body: dict[str, Any] = {"bundle": new.bundle, **new.selectors()}
        for key in ("waves", "success_ratio", "max_failure_ratio"):
            if getattr(new, key) is not None:
                body[key] = getattr(new, key)
        return _document(self.api.send("POST", "/deployments", body))

    def list_deployments(self, state: str | None) -> list[dict[str, Any]]:
        return _list(self.api.get("/deployments", state=state), "deployments")

    def deployment_status(self, deployment_id: int) -> dict[str, Any]:
        return _document(self.api.get(f"/deployments/{deployment_id}"))

    def act_on_deployment(self, deployment_id: int, action: str, reason: str) -> dict[str, Any]:
        body = {"reason": reason} if action == "abort" else None
        return _document(self.api.send("POST", f"/deployments/{deployment_id}/{action}", body))

    def list_devices(self, device_class: str | None, tag: str | None) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        while True:
            page = _list(
                self.api.get(
                    "/devices", device_class=device_class, tag=tag, limit=DEVICES_PAGE,
                    offset=len(found),
                ),
                "devices",
            )
            found += page
            if len(page) < DEVICES_PAGE:
                return found

    def device_detail(self, device_id: str, events: int) -> dict[str, Any]:
        return _document(self.api.get(f"/devices/{_segment(device_id)}", events=events))

    def register_device(self, identity: dict[str, str]) -> dict[str, Any]:
        return _document(self.api.send("POST", "/devices", identity))

    def set_device_tags(self, device_id: str, add: list[str], remove: list[str]) -> list[str]:
        answer = self.api.send(
            "PATCH", f"/devices/{_segment(device_id)}/tags", {"add": add, "remove": remove}
        )
        return _list(answer, "tags")

    def remove_device(self, device_id: str) -> None:
        self.api.send("DELETE", f"/devices/{_segment(device_id)}")

    def create_token(self, new: NewToken) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": new.kind}
        if new.kind == "admin":
            body["name"] = new.name
        elif new.device_class is not None:
            body["device_class"] = new.device_class
        if new.ttl_s is not None:
            body["ttl_s"] = new.ttl_s
        return _document(self.api.send("POST", "/tokens", body))

    def list_admin_tokens(self, limit: int) -> list[dict[str, Any]]:
        return _list(self.api.get("/tokens", limit=limit), "admin_tokens")

    def revoke_admin_token(self, token_id: int) -> None:
        self.api.send("POST", f"/tokens/{token_id}/revoke")

    def export_stick(
        self, path: Path, keys: list[SigningKey], ttl_s: float | None, deployment_id: int | None
    ) -> sticks.ExportResult:
        root = load_root(self.api.raw("/trust/root.json"))
        sticks.check_keys(root, keys)  # before the manager evaluates anything for this plan
        body = {} if deployment_id is None else {"deployment_id": deployment_id}
        answer = self.api.send("POST", "/usb/plan", body)
        try:
            versions = [int(v) for v in answer["trust_root_versions"]]
            assignments = tuple(stick.Assignment.from_dict(a) for a in answer["assignments"])
            current = int(answer["trust_root_version"])
        except (KeyError, TypeError, ValueError, BundleError) as e:
            raise ApiError(f"the manager's plan is malformed: {e}") from None
        if current != root.version or not versions or versions[-1] != current:
            raise ApiError("the manager's trust root changed during the export; try again")
        roots = tuple((v, self.api.raw(f"/trust/roots/{v}.json")) for v in versions)
        ttl = self.config.usb_plan_ttl_s if ttl_s is None else ttl_s
        contents = sticks.stick_contents(current, roots, assignments, now(), ttl)
        with tempfile.TemporaryDirectory(prefix="satchel-export-") as spool:
            return sticks.write_stick(path, contents, _Downloads(self.api, Path(spool)), keys)

    def import_stick(self, path: Path) -> sticks.ImportResult:
        self.api.get("/trust")  # a stick without reports still learns the manager is there

        def record_one(rel: str, data: bytes) -> bool:
            answer = self.api.send_bytes("/usb/reports", data, path=rel)
            return bool(_field(_document(answer), "recorded"))

        def record_samples(found: StickSamples) -> tuple[int, list[tuple[str, str]]]:
            stored, refused = 0, []
            for sha, data in found.found:
                where = f"/devices/{_segment(found.device_id)}/samples"
                try:
                    answer = _document(self.api.upload(where, io.BytesIO(data), len(data)))
                except (InvalidRequestError, RequestTooLargeError) as e:
                    refused.append((f"reports/{found.device_id}/samples/{sha}.npz", str(e)))
                    continue
                stored += bool(answer.get("stored"))
            return stored, refused

        cfg = self.config
        return sticks.import_reports(
            path, record_one, cfg.max_reports_per_import, cfg.max_report_bytes,
            record_samples, cfg.max_sample_bytes,
        )

    def list_samples(
        self, channel: str | None, version: str | None, reasons: list[str], devices: list[str]
    ) -> list[dict[str, Any]]:
        query = _sample_query(channel, version, reasons, devices)
        return _list(self.api.get("/samples" + query), "samples")

    def export_samples(
        self, channel: str, version: str, reasons: list[str], devices: list[str]
    ) -> tuple[bytes, dict[str, Any]]:
        answer = _document(self.api.get("/samples/export" + _sample_query(
            channel, version, reasons, devices)))
        try:
            return base64.b64decode(answer["npz"], validate=True), _document(answer["meta"])
        except (KeyError, TypeError, ValueError) as e:
            raise ApiError(f"the manager's export is malformed: {e}") from None


class _Downloads:
    """Bundle files for a stick, downloaded from the manager into `spool` on first use."""

    def __init__(self, api: ApiClient, spool: Path) -> None:
        self.api = api
        self.spool = spool

    def open(self, sha256: str) -> BinaryIO:
        target = self.spool / f"{sha256}.satchel"
        if not target.exists():
            with open(target, "wb") as out:
                self.api.download(f"/bundles/{sha256}/download", out, sha256)
        return open(target, "rb")  # noqa: SIM115  (the caller closes it)


def _document(answer: Any) -> dict[str, Any]:
    """An answer that must be a JSON object. Raises ApiError."""
    if not isinstance(answer, dict):
        raise ApiError("the manager's answer is not a JSON object (not the Satchel API?)")
    return answer


def _field(answer: dict[str, Any], key: str) -> Any:
    if key not in answer:
        raise ApiError(f"the manager's answer has no {key!r} (not the Satchel API?)")
    return answer[key]


def _list(answer: Any, key: str) -> list[Any]:
    """`answer[key]`, which must be a list. Raises ApiError."""
    found = _field(_document(answer), key)
    if not isinstance(found, list):
        raise ApiError(f"the manager's {key!r} is not a list")
    return found


def _sample_query(
    channel: str | None, version: str | None, reasons: list[str], devices: list[str]
) -> str:
    """The query of the samples resources (`reason` and `device` repeat)."""
    pairs = [("channel", channel), ("version", version)]
    pairs += [("reason", r) for r in reasons] + [("device", d) for d in devices]
    wanted = [(k, v) for k, v in pairs if v is not None]
    return "?" + urlencode(wanted) if wanted else ""


def _segment(value: str) -> str:
    """A path segment, quoted: an odd id reaches the API as itself (it answers 404)."""
    return quote(value, safe="")
