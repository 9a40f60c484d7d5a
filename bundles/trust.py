"""The trust root (`root.json`): which keys may sign bundles, and how root keys rotate.

As in TUF: the root role's keys sign the trust document itself; the signing role's keys
sign bundle manifests, USB plans and the like. A device starts from one provisioned
`root.json` and accepts a new one only when it is the next version and is signed by a
threshold of the current root's root keys and of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from satchel.bundles.canonical import encode_canonical
from satchel.bundles.config import DEFAULT_LIMITS
from satchel.bundles.envelope import Role, check_threshold, open_envelope, sign_envelope
from satchel.bundles.errors import (
    ExpiredError,
    KeyFileError,
    ManifestError,
    MissingFieldError,
    RootRotationError,
    TrustError,
    WrongTypeError,
)
from satchel.bundles.keys import PublicKey, SigningKey
from satchel.bundles.timeutil import format_time, parse_time

ROOT_TYPE = "root"
ROOT_SPEC_VERSION = 1
ROLE_NAMES = ("root", "signing")


@dataclass(frozen=True)
class Root:
    """A parsed trust root. Immutable: rotation makes a new one."""

    version: int
    keys: dict[str, PublicKey]
    roles: dict[str, Role]
    expires: datetime | None = None
    signers: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def root_role(self) -> Role:
        return self.roles["root"]

    @property
    def signing_role(self) -> Role:
        return self.roles["signing"]

    def signing_keys(self) -> dict[str, PublicKey]:
        return {k: self.keys[k] for k in self.signing_role.keyids}

    def to_signed(self) -> dict[str, Any]:
        return {
            "_type": ROOT_TYPE,
            "spec_version": ROOT_SPEC_VERSION,
            "version": self.version,
            "expires": format_time(self.expires) if self.expires else None,
            "keys": {kid: key.to_dict() for kid, key in sorted(self.keys.items())},
            "roles": {name: self.roles[name].to_dict() for name in ROLE_NAMES},
        }


def make_root(
    version: int,
    root_keys: list[PublicKey],
    signing_keys: list[PublicKey],
    root_threshold: int = 1,
    signing_threshold: int = 1,
    expires: datetime | None = None,
) -> Root:
    """Build a Root from public keys. Raises WrongTypeError on impossible thresholds."""
    keys = {k.keyid: k for k in [*root_keys, *signing_keys]}
    roles = {
        "root": Role(tuple(sorted({k.keyid for k in root_keys})), root_threshold),
        "signing": Role(tuple(sorted({k.keyid for k in signing_keys})), signing_threshold),
    }
    root = Root(version, keys, roles, expires)
    _check_roles(root)
    return root


def sign_root(root: Root, keys: list[SigningKey]) -> bytes:
    """Serialize `root` as root.json bytes signed by `keys`."""
    return sign_envelope(root.to_signed(), keys)


def _field(d: dict[str, Any], name: str, kind: type, where: str) -> Any:
    if name not in d:
        raise MissingFieldError(f"{where} has no '{name}' field")
    value = d[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise WrongTypeError(f"{where}: '{name}' must be {kind.__name__}")
    return value


def _parse_role(d: Any, name: str) -> Role:
    where = f"trust root role '{name}'"
    if not isinstance(d, dict):
        raise WrongTypeError(f"{where} must be an object")
    keyids = _field(d, "keyids", list, where)
    threshold = _field(d, "threshold", int, where)
    if not all(isinstance(k, str) for k in keyids) or len(set(keyids)) != len(keyids):
        raise WrongTypeError(f"{where}: keyids must be distinct strings")
    return Role(tuple(keyids), threshold)


def _check_roles(root: Root) -> None:
    for name, role in root.roles.items():
        if role.threshold < 1:
            raise WrongTypeError(f"trust root role '{name}' threshold must be at least 1")
        if role.threshold > len(role.keyids):
            raise WrongTypeError(
                f"trust root role '{name}' threshold {role.threshold} exceeds its "
                f"{len(role.keyids)} key(s)"
            )
        missing = [k for k in role.keyids if k not in root.keys]
        if missing:
            raise WrongTypeError(
                f"trust root role '{name}' names unknown key {missing[0][:12]!r}"
            )


def parse_root_signed(signed: dict[str, Any]) -> Root:
    """Parse the `signed` part of a root.json. Raises ManifestError subclasses."""
    where = "trust root"
    if signed.get("_type") != ROOT_TYPE:
        raise WrongTypeError("document is not a trust root (_type is not 'root')")
    spec = _field(signed, "spec_version", int, where)
    if spec != ROOT_SPEC_VERSION:
        raise WrongTypeError(f"trust root spec_version {spec} is not supported")
    version = _field(signed, "version", int, where)
    if version < 1:
        raise WrongTypeError("trust root version must be at least 1")
    expires_raw = signed.get("expires")
    expires = None if expires_raw is None else parse_time(expires_raw, "trust root expires")
    keys_raw = _field(signed, "keys", dict, where)
    try:
        keys = {kid: PublicKey.from_dict(v) for kid, v in keys_raw.items()}
    except KeyFileError as e:
        raise WrongTypeError(str(e)) from e
    for kid, key in keys.items():
        if key.keyid != kid:
            raise WrongTypeError(f"trust root key id {kid[:12]!r} does not match its key")
    roles_raw = _field(signed, "roles", dict, where)
    if set(roles_raw) != set(ROLE_NAMES):
        raise WrongTypeError("trust root must define exactly the roles 'root' and 'signing'")
    roles = {name: _parse_role(roles_raw[name], name) for name in ROLE_NAMES}
    root = Root(version, keys, roles, expires)
    _check_roles(root)
    return root


def load_root(data: bytes) -> Root:
    """Parse a provisioned root.json and check it is signed by a threshold of its own root keys.

    Used when a device is first given its trust root (trust on first use of that file).
    Raises FormatError or TrustError subclasses.
    """
    signed, sigs = open_envelope(data, "trust root", DEFAULT_LIMITS.max_trust_bytes)
    root = parse_root_signed(signed)
    valid = check_threshold(encode_canonical(signed), sigs, root.keys, root.root_role, "trust root")
    return Root(root.version, root.keys, root.roles, root.expires, frozenset(valid))


def update_root(trusted: Root, data: bytes) -> Root:
    """Accept `data` as the successor of `trusted`, or raise RootRotationError.

    The new root must be exactly version trusted.version + 1 and be signed by a threshold
    of the trusted root's root keys and by a threshold of its own root keys.
    Raises FormatError subclasses if `data` does not parse.
    """
    signed, sigs = open_envelope(data, "new trust root", DEFAULT_LIMITS.max_trust_bytes)
    new = parse_root_signed(signed)
    if new.version <= trusted.version:
        raise RootRotationError(
            f"new trust root version {new.version} is not newer than trusted version "
            f"{trusted.version} (rollback refused)"
        )
    if new.version != trusted.version + 1:
        raise RootRotationError(
            f"new trust root version {new.version} skips version {trusted.version + 1}; "
            "apply the roots in order"
        )
    body = encode_canonical(signed)
    try:
        check_threshold(body, sigs, trusted.keys, trusted.root_role, "new trust root")
    except TrustError as e:
        raise RootRotationError(
            f"new trust root v{new.version} is not signed by {trusted.root_role.threshold} "
            f"of the current root keys: {e}"
        ) from e
    try:
        valid = check_threshold(body, sigs, new.keys, new.root_role, "new trust root")
    except TrustError as e:
        raise RootRotationError(
            f"new trust root v{new.version} is not signed by its own root keys: {e}"
        ) from e
    return Root(new.version, new.keys, new.roles, new.expires, frozenset(valid))


def update_root_chain(trusted: Root, documents: list[bytes]) -> Root:
    """Apply successive root.json documents in version order; return the newest accepted.

    Documents not newer than `trusted` are skipped. Raises as `update_root`.
    """
    parsed: list[tuple[int, bytes]] = []
    for data in documents:
        signed, _ = open_envelope(data, "trust root", DEFAULT_LIMITS.max_trust_bytes)
        version = signed.get("version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise WrongTypeError("trust root: 'version' must be int")
        parsed.append((version, data))
    current = trusted
    for version, data in sorted(parsed, key=lambda p: p[0]):
        if version > current.version:
            current = update_root(current, data)
    return current


def check_root_expiry(root: Root, now: datetime) -> None:
    """Raise ExpiredError if the trust root has expired at `now`."""
    if root.expires is not None and now >= root.expires:
        raise ExpiredError(
            f"trust root v{root.version} expired at {format_time(root.expires)}; "
            "a new root.json is needed"
        )


__all__ = [
    "ManifestError",
    "Root",
    "check_root_expiry",
    "load_root",
    "make_root",
    "parse_root_signed",
    "sign_root",
    "update_root",
    "update_root_chain",
]
