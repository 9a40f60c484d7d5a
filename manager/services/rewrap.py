"""Re-wrapping a stored encrypted bundle for more devices (docs/ENCRYPTION.md).

With its recipient key (`encryption_identity`), the manager unlocks a stored bundle's data key
and wraps it for devices that are not recipients yet (a device's recipient is its Ed25519
device key converted to X25519). Only keys.json changes: the signed manifest, its signatures
and the encrypted payloads are copied byte for byte, so the new file has a new sha256 but the
same signed content. Before the new file becomes the bundle's (its row's sha256 and size):

- it verifies against the trust root like any upload (signature, every ciphertext hash);
- its manifest.json and manifest.sig are the stored file's, byte for byte;
- every stanza of the stored keys.json is still there, unchanged (re-wrapping only adds);
- the data key the manager unwraps from it matches the signed key commitment.

Any refusal leaves the database and the store as they were. The old file is deleted from the
store once the transaction is committed (`Rewrapped.replaced`); a device part-way through
downloading it is answered 404 and is offered the new file at its next check-in.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.crypt import KeyFile, unlock
from satchel.bundles.cryptbundle import read_encrypted_head, rewrap_bundle
from satchel.bundles.cryptinfo import MAX_RECIPIENTS
from satchel.bundles.errors import BundleError
from satchel.bundles.reader import verify_bundle
from satchel.bundles.recipients import Identity, Recipient, device_recipient_of, load_identity
from satchel.manager.config import ManagerConfig
from satchel.manager.errors import (
    BundleRefusedError,
    ConflictError,
    InvalidRequestError,
    NotFoundError,
    StoreUnavailableError,
)
from satchel.manager.models import Bundle, Deployment, DeploymentTarget, Device
from satchel.manager.services import trust
from satchel.manager.services.bundles import summary
from satchel.manager.store import Store

DEVICE = "device:"
CLASS = "class:"
ALL_ENROLLED = "all-enrolled"
MAX_TARGETS = 100  # --to specs in one request


def manager_identity(config: ManagerConfig) -> Identity:
    """The manager's recipient key from `encryption_identity`. Raises ConflictError (not
    configured) and BundleRefusedError (unreadable). The key itself is never logged."""
    if not config.encryption_identity:
        raise ConflictError(
            "this manager has no recipient key to re-wrap with: set encryption_identity "
            "(SATCHEL_ENCRYPTION_IDENTITY) to the manager's X25519 private key"
        )
    try:
        return load_identity(Path(config.encryption_identity), "manager")
    except BundleError as e:
        raise ConflictError(f"encryption_identity: {e}") from e


def _device_recipient(device: Device) -> Recipient | None:
    try:
        return device_recipient_of(device.id, bytes.fromhex(device.public_key))
    except (ValueError, BundleError):
        return None  # a device registered without a usable key cannot be a recipient


def resolve_targets(session: so.Session, specs: list[str], bundle: Bundle) -> list[Recipient]:
    """The recipients named by `specs`: `device:ID`, `class:CLASS` (its devices) or
    `all-enrolled` (every device of a class the bundle is built for). Raises
    InvalidRequestError, NotFoundError."""
    if not specs:
        raise InvalidRequestError("name whom to re-wrap for: device:ID, class:CLASS or "
                                  "all-enrolled")
    if len(specs) > MAX_TARGETS:
        raise InvalidRequestError(f"at most {MAX_TARGETS} targets in one re-wrap")
    out: dict[str, Recipient] = {}
    for spec in specs:
        if not isinstance(spec, str):
            raise InvalidRequestError("each target is a string")
        if spec.startswith(DEVICE):
            device = session.get(Device, spec[len(DEVICE):])
            if device is None:
                raise NotFoundError(f"no device {spec[len(DEVICE):][:64]}")
            found = [device]
        elif spec.startswith(CLASS):
            found = list(session.scalars(
                sa.select(Device).where(Device.device_class == spec[len(CLASS):])
                .order_by(Device.id)))
            if not found:
                raise NotFoundError(f"no device of class {spec[len(CLASS):][:64]}")
        elif spec == ALL_ENROLLED:
            classes = bundle.manifest.get("compatibility", {}).get("device_classes", [])
            query = sa.select(Device).order_by(Device.id)
            if classes:
                query = query.where(Device.device_class.in_(classes))
            found = list(session.scalars(query))
        else:
            raise InvalidRequestError(
                f"re-wrap for device:ID, class:CLASS or all-enrolled, not {spec[:40]!r}")
        for device in found:
            recipient = _device_recipient(device)
            if recipient is None:
                if spec.startswith(DEVICE):
                    raise InvalidRequestError(f"device {device.id} has no usable public key")
                continue
            out.setdefault(recipient.fingerprint, recipient)
    return list(out.values())


@dataclass(frozen=True)
class Rewrapped:
    result: dict[str, Any]
    replaced: str | None  # sha256 of the old file, to delete after the commit (None: no change)


def _local_copy(store: Store, sha256: str, tmp: Path) -> Path:
    path = store.local_path(sha256)
    if path is not None:
        return path
    copy = tmp / "stored.satchel"
    try:
        with store.open(sha256) as src, open(copy, "wb") as out:
            shutil.copyfileobj(src, out, 4 * 1024 * 1024)
    except OSError as e:
        raise StoreUnavailableError(f"cannot read bundle {sha256[:12]} from the store: {e}") \
            from e
    return copy


def check_rewrapped(old: Path, new: Path, identity: Identity, root: Any, now: datetime) -> KeyFile:
    """Refuse (BundleRefusedError) unless `new` is `old` with stanzas only added, its signed
    parts byte for byte the same, verifying against `root`, and its data key (as the manager
    unwraps it) the one the manifest commits to. Returns the new keys.json."""
    try:
        with open(old, "rb") as f:
            _m, old_manifest, old_sig, old_keys = read_encrypted_head(f)
        with open(new, "rb") as f:
            manifest, new_manifest, new_sig, new_keys = read_encrypted_head(f)
        if (new_manifest, new_sig) != (old_manifest, old_sig):
            raise BundleRefusedError("re-wrap refused: the signed manifest changed")
        kept = set(new_keys.stanzas)
        if any(s not in kept for s in old_keys.stanzas):
            raise BundleRefusedError("re-wrap refused: it would drop a recipient")
        assert manifest.encryption is not None
        unlock(new_keys, manifest.encryption, [identity],
               f"bundle {manifest.name} {manifest.version}", "this manager's key")
        with open(new, "rb") as f:
            verify_bundle(f, root, now)
    except BundleError as e:
        raise BundleRefusedError(f"re-wrap refused: {e}") from e
    return new_keys


def rewrap_stored(
    session: so.Session,
    store: Store,
    config: ManagerConfig,
    bundle: Bundle,
    targets: list[str],
    now: datetime,
) -> Rewrapped:
    """Wrap `bundle`'s data key also for the devices named by `targets` (see
    resolve_targets) that are not recipients yet, and make the re-wrapped file the bundle's.
    Raises ConflictError (no manager key; not encrypted), BundleRefusedError (the manager's
    key does not unlock it, the result does not verify), InvalidRequestError, NotFoundError,
    StoreWriteError, StoreUnavailableError. Nothing changes when it raises."""
    what = f"bundle {bundle.name} {bundle.version}"
    if "encryption" not in bundle.manifest:
        raise ConflictError(f"{what} is not encrypted: there is nothing to re-wrap")
    if bundle.manifest.get("delta_base"):
        raise ConflictError(f"{what} is a delta bundle: re-wrap its full bundle")
    identity = manager_identity(config)
    recipients = resolve_targets(session, list(targets), bundle)
    done = _rewrap(session, store, config, bundle, identity, recipients, now, strict=True)
    assert done is not None
    return done


def for_deployment(
    session: so.Session, store: Store, config: ManagerConfig, deployment: Deployment,
    now: datetime,
) -> str | None:
    """At deployment creation, with a manager recipient key configured: wrap the deployed
    encrypted bundle also for every target device that is not a recipient yet, so that the
    first offer to each names a file it can open. Nothing happens for a bundle that is not
    encrypted, or not for the manager's key (its devices must be recipients already). Returns
    the sha256 of the replaced file, to delete once the transaction is committed. Raises as
    rewrap_stored (a tampered manager stanza refuses the deployment, nothing changed)."""
    if not config.encryption_identity:
        return None
    bundle = deployment.bundle
    if "encryption" not in bundle.manifest or bundle.manifest.get("delta_base"):
        return None
    identity = manager_identity(config)
    devices = session.scalars(
        sa.select(Device)
        .join(DeploymentTarget, DeploymentTarget.device_id == Device.id)
        .where(DeploymentTarget.deployment_id == deployment.id)
        .order_by(Device.id)
    )
    recipients = [r for d in devices if (r := _device_recipient(d)) is not None]
    done = _rewrap(session, store, config, bundle, identity, recipients, now, strict=False)
    return None if done is None else done.replaced


def _rewrap(
    session: so.Session,
    store: Store,
    config: ManagerConfig,
    bundle: Bundle,
    identity: Identity,
    recipients: list[Recipient],
    now: datetime,
    strict: bool,
) -> Rewrapped | None:
    """The re-wrap itself; with `strict` False, None when the manager's key is not a
    recipient of the bundle (nothing to do)."""
    what = f"bundle {bundle.name} {bundle.version}"
    # one re-wrap of a bundle at a time (PostgreSQL: the row lock; SQLite: the one writer),
    # each from the file the row names now, so no re-wrap undoes another's stanzas
    session.refresh(bundle, with_for_update=True)
    root = trust.current_root(session)
    with tempfile.TemporaryDirectory(prefix="satchel-rewrap-") as tmp_name:
        tmp = Path(tmp_name)
        source = _local_copy(store, bundle.sha256, tmp)
        try:
            with open(source, "rb") as f:
                _m, _mb, _sb, keys = read_encrypted_head(f)
        except BundleError as e:
            raise BundleRefusedError(f"re-wrap refused: stored {what}: {e}") from e
        have = {s.fingerprint for s in keys.stanzas}
        if not strict and identity.fingerprint not in have:
            return None
        new = [r for r in recipients if r.fingerprint not in have]
        already = sorted(r.name for r in recipients if r.fingerprint in have)
        if not new:
            return Rewrapped(_result(bundle, keys, [], already, bundle.sha256), None)
        if len(keys.stanzas) + len(new) > MAX_RECIPIENTS:
            raise InvalidRequestError(f"{what} would have more than {MAX_RECIPIENTS} "
                                      "recipients")
        out_path = tmp / "rewrapped.satchel"
        try:
            with open(out_path, "wb") as out:
                rewrap_bundle(source, out, [identity], new)
        except BundleError as e:  # not for this manager, or its stanza tampered with
            raise BundleRefusedError(f"re-wrap refused: {e}") from e
        new_keys = check_rewrapped(source, out_path, identity, root, now)
        old_sha = bundle.sha256
        with open(out_path, "rb") as f:
            spooled = store.receive(f, config.max_bundle_bytes)
        try:
            with session.begin_nested():
                bundle.sha256 = spooled.sha256
                bundle.size = spooled.size
        except sa.exc.IntegrityError as e:
            store.discard(spooled)
            raise ConflictError(f"{what} was changed at the same time") from e
        except BaseException:
            store.discard(spooled)
            raise
        store.commit(spooled)
    return Rewrapped(_result(bundle, new_keys, new, already, old_sha), old_sha)


def _result(bundle: Bundle, keys: KeyFile, added: list[Recipient], already: list[str],
            previous: str) -> dict[str, Any]:
    out = summary(bundle)
    out["previous_sha256"] = previous
    out["added"] = [r.name for r in added]
    out["already"] = already
    out["recipients"] = [{"name": s.recipient, "fingerprint": s.fingerprint}
                         for s in keys.stanzas]
    return out
