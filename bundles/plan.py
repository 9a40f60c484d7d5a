"""USB sneakernet documents: the signed plan the manager writes, the signed reports devices
write back, and the stick's directory layout. Pure: bytes in, verified objects out.

Stick layout (PATH is the mounted stick or any directory):
    PATH/plan.json                           signed plan (signing role of the trust root)
    PATH/trust/root.json                     current trust root
    PATH/trust/roots/<N>.root.json           every trust root version, for rotation
    PATH/bundles/<sha256>.satchel            bundles named by the plan
    PATH/reports/<device_id>/<report_id>.json  signed device reports
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from satchel.bundles.canonical import encode_canonical
from satchel.bundles.delta_manifest import PlanDelta
from satchel.bundles.envelope import Role, check_threshold, open_envelope, sign_envelope
from satchel.bundles.errors import ExpiredError, WrongTypeError
from satchel.bundles.identifiers import (
    CHANNEL_RE,
    IDENTIFIER_RE,
    SHA256_RE,
    VERSION_RE,
    is_identifier,
)
from satchel.bundles.keys import PublicKey, SigningKey
from satchel.bundles.offer import Offer
from satchel.bundles.schema import check_keys, get, get_int, get_str
from satchel.bundles.timeutil import format_time, parse_time
from satchel.bundles.trust import Root

PLAN_TYPE = "satchel-usb-plan"
REPORT_TYPE = "satchel-device-report"
SPEC_VERSION = 1
PLAN_FILE = "plan.json"
ROOT_FILE = "trust/root.json"
ROOTS_DIR = "trust/roots"
BUNDLES_DIR = "bundles"
REPORTS_DIR = "reports"
MAX_PLAN_BYTES = 16 * 1024 * 1024  # bytes of plan.json
MAX_REPORT_BYTES = 4 * 1024 * 1024  # bytes of one device report
MAX_ASSIGNMENTS = 10_000  # entries in one plan
MAX_PLAN_DEVICES = 1_000_000  # device ids named across one plan


MAX_DELTAS = 16  # delta bundles of one assignment (one per base release)


def root_file(version: int) -> str:
    return f"{ROOTS_DIR}/{version}.root.json"


def bundle_file(sha256: str) -> str:
    return f"{BUNDLES_DIR}/{sha256}.satchel"


def report_file(device_id: str, report_id: str) -> str:
    return f"{REPORTS_DIR}/{device_id}/{report_id}.json"


def _labels(d: dict[str, Any], name: str, where: str, limit: int) -> tuple[str, ...]:
    values = get(d, name, list, where)
    if len(values) > limit or not all(is_identifier(v) for v in values):
        raise WrongTypeError(f"{where}: '{name}' must be a list of names")
    return tuple(values)


@dataclass(frozen=True)
class Assignment(Offer):
    """An offer to the devices named and to every device of the classes named. Its bundle is a
    file on the stick named by its sha256, which is its `url`; `to_dict` and `from_dict` are
    a plan entry's."""

    url: str = field(init=False, default="")  # set from the sha256: the file on the stick
    devices: tuple[str, ...] = ()
    device_classes: tuple[str, ...] = ()
    # delta bundles of the same release, each for devices keeping its base (docs/DELTAS.md)
    deltas: tuple[PlanDelta, ...] = ()

    def delta_for(self, kept: set[tuple[str, int]]) -> Assignment | None:
        """This assignment with its delta bundle against one of the `kept` (version,
        sequence) releases as its bundle, if it has one (the full bundle stays the fallback)."""
        for d in self.deltas:
            if (d.base_version, d.base_sequence) in kept:
                return Assignment(self.channel, self.version, self.sequence, d.bundle_sha256,
                                  d.size, deployment_id=self.deployment_id,
                                  origins=self.origins, devices=self.devices,
                                  device_classes=self.device_classes)
        return None

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", bundle_file(self.bundle_sha256))

    @property
    def file(self) -> str:
        return self.url

    def applies_to(self, device_id: str, device_class: str) -> bool:
        return device_id in self.devices or device_class in self.device_classes

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "version": self.version,
            "sequence": self.sequence,
            "bundle_sha256": self.bundle_sha256,
            "size": self.size,
            "file": self.file,
            "devices": list(self.devices),
            "device_classes": list(self.device_classes),
            "deployment_id": self.deployment_id,
            **({"deltas": [x.to_dict() for x in self.deltas]} if self.deltas else {}),
        }

    @classmethod
    def from_dict(cls, d: Any) -> Assignment:
        """Raises ManifestError subclasses."""
        w = "plan assignment"
        names = {
            "channel",
            "version",
            "sequence",
            "bundle_sha256",
            "size",
            "file",
            "devices",
            "device_classes",
            "deployment_id",
        }
        check_keys(d, w, names, {"deltas"})
        sha = get_str(d, "bundle_sha256", w, SHA256_RE)
        if d["file"] != bundle_file(sha):
            raise WrongTypeError(f"{w}: 'file' must be {bundle_file(sha)}")
        deployment_id = d["deployment_id"]
        if deployment_id is not None and (
            not isinstance(deployment_id, int) or isinstance(deployment_id, bool)
        ):
            raise WrongTypeError(f"{w}: 'deployment_id' must be an integer or null")
        return cls(
            channel=get_str(d, "channel", w, CHANNEL_RE),
            version=get_str(d, "version", w, VERSION_RE),
            sequence=get_int(d, "sequence", w),
            bundle_sha256=sha,
            size=get_int(d, "size", w, 0, 2**62),
            devices=_labels(d, "devices", w, MAX_PLAN_DEVICES),
            device_classes=_labels(d, "device_classes", w, 1024),
            deployment_id=deployment_id,
            deltas=_deltas(d, w),
        )


def _deltas(d: dict[str, Any], where: str) -> tuple[PlanDelta, ...]:
    raw = get(d, "deltas", list, where, nullable=True) or []
    if len(raw) > MAX_DELTAS:
        raise WrongTypeError(f"{where}: too many deltas ({len(raw)})")
    return tuple(PlanDelta.from_dict(x) for x in raw)


@dataclass(frozen=True)
class Plan:
    """Which devices or device classes get which bundles, until `expires`."""

    plan_id: str
    created: datetime
    expires: datetime
    trust_root_version: int
    assignments: tuple[Assignment, ...] = field(default_factory=tuple)

    def for_device(self, device_id: str, device_class: str) -> list[Assignment]:
        """The assignments for one device: the highest sequence per channel, by channel."""
        best: dict[str, Assignment] = {}
        for a in self.assignments:
            if a.applies_to(device_id, device_class) and (
                a.channel not in best or a.sequence > best[a.channel].sequence
            ):
                best[a.channel] = a
        return [best[c] for c in sorted(best)]

    def to_signed(self) -> dict[str, Any]:
        return {
            "_type": PLAN_TYPE,
            "spec_version": SPEC_VERSION,
            "plan_id": self.plan_id,
            "created": format_time(self.created),
            "expires": format_time(self.expires),
            "trust_root_version": self.trust_root_version,
            "assignments": [a.to_dict() for a in self.assignments],
        }

    @classmethod
    def from_signed(cls, d: dict[str, Any]) -> Plan:
        """Raises ManifestError subclasses."""
        w = "USB plan"
        names = {
            "_type",
            "spec_version",
            "plan_id",
            "created",
            "expires",
            "trust_root_version",
            "assignments",
        }
        check_keys(d, w, names)
        if d["_type"] != PLAN_TYPE:
            raise WrongTypeError(f"document is not a USB plan (_type is not {PLAN_TYPE!r})")
        if get_int(d, "spec_version", w) != SPEC_VERSION:
            raise WrongTypeError(f"USB plan spec_version {d['spec_version']} is not supported")
        raw = get(d, "assignments", list, w)
        if len(raw) > MAX_ASSIGNMENTS:
            raise WrongTypeError(f"USB plan has too many assignments ({len(raw)})")
        return cls(
            plan_id=get_str(d, "plan_id", w, IDENTIFIER_RE),
            created=parse_time(d["created"], "USB plan 'created'"),
            expires=parse_time(d["expires"], "USB plan 'expires'"),
            trust_root_version=get_int(d, "trust_root_version", w, 1),
            assignments=tuple(Assignment.from_dict(a) for a in raw),
        )


def sign_plan(plan: Plan, keys: list[SigningKey]) -> bytes:
    """plan.json bytes signed by `keys` (signing keys of the trust root)."""
    return sign_envelope(plan.to_signed(), keys)


def verify_plan(data: bytes, root: Root, now: datetime) -> Plan:
    """Parse plan.json and check it is signed by a threshold of the root's signing role and
    not expired at `now`. Raises FormatError, TrustError (ExpiredError) subclasses."""
    signed, sigs = open_envelope(data, "USB plan", MAX_PLAN_BYTES)
    check_threshold(
        encode_canonical(signed), sigs, root.signing_keys(), root.signing_role, "USB plan"
    )
    plan = Plan.from_signed(signed)
    if now >= plan.expires:
        raise ExpiredError(f"USB plan {plan.plan_id} expired at {format_time(plan.expires)}")
    return plan


@dataclass(frozen=True)
class Report:
    """What a device did with a stick, signed by the device's own key.

    `checkin` is exactly the body the device would POST to /api/v1/devices/{id}/checkin.
    """

    report_id: str
    device_id: str
    created: datetime
    checkin: dict[str, Any]
    plan_id: str | None = None

    @property
    def path(self) -> str:
        return report_file(self.device_id, self.report_id)

    def to_signed(self) -> dict[str, Any]:
        return {
            "_type": REPORT_TYPE,
            "spec_version": SPEC_VERSION,
            "report_id": self.report_id,
            "device_id": self.device_id,
            "created": format_time(self.created),
            "plan_id": self.plan_id,
            "checkin": self.checkin,
        }

    @classmethod
    def from_signed(cls, d: dict[str, Any]) -> Report:
        """Raises ManifestError subclasses."""
        w = "device report"
        names = {"_type", "spec_version", "report_id", "device_id", "created", "plan_id", "checkin"}
        check_keys(d, w, names)
        if d["_type"] != REPORT_TYPE:
            raise WrongTypeError(f"document is not a device report (_type is not {REPORT_TYPE!r})")
        if get_int(d, "spec_version", w) != SPEC_VERSION:
            raise WrongTypeError(f"device report spec_version {d['spec_version']} is not supported")
        plan_id = d["plan_id"]
        if plan_id is not None and not is_identifier(plan_id):
            raise WrongTypeError(f"{w}: 'plan_id' must be an id or null")
        return cls(
            report_id=get_str(d, "report_id", w, IDENTIFIER_RE),
            device_id=get_str(d, "device_id", w, IDENTIFIER_RE),
            created=parse_time(d["created"], "device report 'created'"),
            checkin=get(d, "checkin", dict, w),
            plan_id=plan_id,
        )


def sign_report(report: Report, key: SigningKey) -> bytes:
    """The report's bytes, signed by the device key."""
    return sign_envelope(report.to_signed(), [key])


def read_report_unverified(data: bytes) -> Report:
    """Parse a report without checking its signature (to learn which device it claims to
    come from). Raises FormatError subclasses."""
    signed, _ = open_envelope(data, "device report", MAX_REPORT_BYTES)
    return Report.from_signed(signed)


def verify_report(data: bytes, device_key: PublicKey) -> Report:
    """Parse a report and check it is signed by `device_key`.

    Raises FormatError and TrustError subclasses (SignatureError for a tampered report).
    """
    signed, sigs = open_envelope(data, "device report", MAX_REPORT_BYTES)
    check_threshold(
        encode_canonical(signed),
        sigs,
        {device_key.keyid: device_key},
        Role((device_key.keyid,), 1),
        "device report",
    )
    return Report.from_signed(signed)
