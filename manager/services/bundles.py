"""Bundles in the manager: verified on arrival against the trust root, stored by sha256.

A bundle that fails verification is refused with its one-line reason and leaves nothing
behind: no database row, no file.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.errors import BundleError
from satchel.bundles.identifiers import SHA256_RE
from satchel.bundles.reader import read_unverified, verify_bundle
from satchel.manager.errors import (
    BundleRefusedError,
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
)
from satchel.manager.models import Bundle, Deployment, DeploymentTarget
from satchel.manager.services import trust
from satchel.manager.store import Store

# deployment states and target states under which a device may fetch a bundle
FETCHABLE_DEPLOYMENT_STATES = ("active", "paused", "halted", "completed")
PENDING_TARGET = "pending"


@dataclass(frozen=True)
class Added:
    bundle: Bundle
    created: bool  # False when exactly this bundle was already stored


def add(
    session: so.Session, store: Store, source: BinaryIO, now: datetime, max_bytes: int
) -> Added:
    """Receive a bundle from `source`, verify it against the trust root, store it.

    Raises NoTrustRootError, RequestTooLargeError, BundleRefusedError (verification failed),
    ConflictError (another bundle already has this channel's version or sequence),
    StoreWriteError (the store cannot be written), DiskFullError (nor the database), OSError
    (reading `source` failed). Nothing is stored when it raises.
    """
    root = trust.current_root(session)
    spooled = store.receive(source, max_bytes)
    try:
        with open(spooled.path, "rb") as f:
            verified = verify_bundle(f, root, now)
    except BundleError as e:
        store.discard(spooled)
        raise BundleRefusedError(f"bundle refused: {e}") from e
    except BaseException:
        store.discard(spooled)
        raise
    existing = session.scalar(sa.select(Bundle).where(Bundle.sha256 == spooled.sha256))
    if existing is not None:
        store.commit(spooled)  # discards the upload, or puts back a file that went missing
        return Added(existing, False)
    m = verified.manifest
    if m.delta_base is not None:  # linked to its full bundle (services/deltas.py)
        return _add_delta(session, store, spooled, m, now)
    clash = session.scalar(
        sa.select(Bundle).where(
            Bundle.name == m.name,
            sa.or_(Bundle.version == m.version, Bundle.sequence == m.sequence),
        )
    )
    if clash is not None:
        store.discard(spooled)
        same = "version" if clash.version == m.version else f"sequence {m.sequence}"
        raise ConflictError(
            f"channel {m.name} already has a bundle with this {same} "
            f"({clash.version}, sequence {clash.sequence}, {clash.sha256[:12]})"
        )
    bundle = Bundle(
        sha256=spooled.sha256,
        name=m.name,
        version=m.version,
        sequence=m.sequence,
        size=spooled.size,
        created_at=m.created,
        uploaded_at=now,
        manifest=m.to_dict(),
    )
    # the row first: when the database refuses it, no file has reached the store yet; when
    # the store refuses the file, the caller's rollback takes the row away
    try:
        with session.begin_nested():
            session.add(bundle)
    except sa.exc.IntegrityError as e:
        store.discard(spooled)
        raise ConflictError(f"bundle {m.name} {m.version} was added at the same time") from e
    except BaseException:
        store.discard(spooled)
        raise
    store.commit(spooled)
    return Added(bundle, True)


def _add_delta(session: so.Session, store: Store, spooled: Any, m: Any, now: datetime) -> Added:
    from satchel.manager.services import deltas

    view = deltas.as_bundle(session, spooled.sha256)
    if view is not None:
        store.commit(spooled)
        return Added(view, False)  # type: ignore[arg-type]  # read as a Bundle
    try:
        deltas.link(session, m, spooled.sha256, spooled.size, now)
    except BaseException:
        store.discard(spooled)
        raise
    store.commit(spooled)
    view = deltas.as_bundle(session, spooled.sha256)
    assert view is not None
    return Added(view, True)  # type: ignore[arg-type]


def remove(session: so.Session, bundle: Bundle) -> dict[str, Any]:
    """Forget a bundle that no deployment refers to, and return its summary; the caller
    deletes its file from the store once the transaction is committed (a file without a row
    is harmless and a later add reuses it; a row without its file is not). Raises
    ConflictError (a deployment refers to it: its history names the bundle, so the bundle
    stays)."""
    used = list(session.scalars(
        sa.select(Deployment.id).where(Deployment.bundle_id == bundle.id)
        .order_by(Deployment.id).limit(6)
    ))
    if used:
        ids = ", ".join(str(i) for i in used[:5]) + (", ..." if len(used) > 5 else "")
        raise ConflictError(
            f"bundle {bundle.name} {bundle.version} is kept: deployment {ids} refers to it"
        )
    out = summary(bundle)
    try:
        with session.begin_nested():
            session.delete(bundle)
    except sa.exc.IntegrityError as e:  # a deployment of it was created meanwhile
        raise ConflictError(
            f"bundle {bundle.name} {bundle.version} is kept: a deployment refers to it"
        ) from e
    return out


def read_signatures(f: BinaryIO) -> list[str]:
    """The key ids that signed the bundle file `f` (no trust check). Raises BundleError."""
    _manifest, sigs = read_unverified(f)
    return [s.keyid for s in sigs]


def get_by_sha(session: so.Session, sha256: str) -> Bundle:
    """Raises InvalidRequestError (not a sha256), NotFoundError."""
    if not SHA256_RE.fullmatch(sha256):
        raise InvalidRequestError("a bundle is named by the lowercase hex sha256 of its file")
    bundle = session.scalar(sa.select(Bundle).where(Bundle.sha256 == sha256))
    if bundle is None:  # a delta bundle: fetched with its full bundle's rights
        from satchel.manager.services.deltas import as_bundle

        bundle = as_bundle(session, sha256)  # type: ignore[assignment]
    if bundle is None:
        raise NotFoundError(f"no bundle {sha256[:12]}")
    return bundle


def get_by_ref(session: so.Session, ref: str) -> Bundle:
    """A bundle by `NAME:VERSION` or by sha256 (or a unique prefix of 8+ hex characters).

    Raises NotFoundError, InvalidRequestError.
    """
    if ":" in ref:
        name, _, version = ref.partition(":")
        bundle = session.scalar(
            sa.select(Bundle).where(Bundle.name == name, Bundle.version == version)
        )
        if bundle is None:
            raise NotFoundError(f"no bundle {name} version {version}")
        return bundle
    if len(ref) >= 8 and all(c in "0123456789abcdef" for c in ref):
        found = list(session.scalars(sa.select(Bundle).where(Bundle.sha256.startswith(ref))))
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise InvalidRequestError(f"bundle prefix {ref} is ambiguous")
        raise NotFoundError(f"no bundle {ref}")
    raise InvalidRequestError(f"name a bundle as NAME:VERSION or by sha256, not {ref[:40]!r}")


def list_bundles(session: so.Session, name: str | None = None) -> list[Bundle]:
    query = sa.select(Bundle).order_by(Bundle.name, Bundle.sequence.desc())
    if name:
        query = query.where(Bundle.name == name)
    return list(session.scalars(query))


def check_device_may_fetch(session: so.Session, device_id: str, bundle: Bundle) -> None:
    """Raise ForbiddenError unless a deployment has released `bundle` to `device_id`."""
    assigned = session.scalar(
        sa.select(sa.func.count())
        .select_from(DeploymentTarget)
        .join(Deployment, Deployment.id == DeploymentTarget.deployment_id)
        .where(
            DeploymentTarget.device_id == device_id,
            DeploymentTarget.state != PENDING_TARGET,
            Deployment.bundle_id == bundle.id,
            Deployment.state.in_(FETCHABLE_DEPLOYMENT_STATES),
        )
    )
    if not assigned:
        raise ForbiddenError("this bundle has not been assigned to this device")


def summary(bundle: Bundle) -> dict[str, Any]:
    m = bundle.manifest
    return {
        "sha256": bundle.sha256,
        "name": bundle.name,
        "version": bundle.version,
        "sequence": bundle.sequence,
        "size": bundle.size,
        "created_at": bundle.created_at.isoformat(),
        "uploaded_at": bundle.uploaded_at.isoformat(),
        "device_classes": m.get("compatibility", {}).get("device_classes", []),
        "runtimes": sorted({model["runtime"] for model in m.get("models", [])}),
        "download_url": download_url(bundle.sha256),
        **({"delta_base": m["delta_base"]} if m.get("delta_base") else {}),
    }


def detail(bundle: Bundle) -> dict[str, Any]:
    out = summary(bundle)
    out["manifest"] = bundle.manifest
    return out


def download_url(sha256: str) -> str:
    return f"/api/v1/bundles/{sha256}/download"
