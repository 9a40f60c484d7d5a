"""The bundles pages: how many deployments use each bundle, and one bundle's manifest,
signatures and the deployments that use it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, BinaryIO

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.errors import BundleError
from satchel.manager.errors import NotFoundError, NoTrustRootError, StoreUnavailableError
from satchel.manager.models import Bundle, Deployment
from satchel.manager.services import bundles as bundle_service
from satchel.manager.services import trust


@dataclass(frozen=True)
class SignatureView:
    keyid: str
    trusted: bool  # a signing key of the manager's current trust root


@dataclass(frozen=True)
class BundlePage:
    detail: dict[str, Any]  # `bundles.detail`: summary and the whole manifest
    signatures: tuple[SignatureView, ...]
    signatures_error: str | None  # why the signatures could not be read from the store
    threshold: int | None  # signatures the trust root requires, None without a trust root
    deployments: tuple[tuple[int, str, datetime], ...]  # (id, state, created), newest first


def bundle_page(
    session: so.Session, sha256: str, bundle_file: Callable[[str], BinaryIO]
) -> BundlePage:
    """A bundle's manifest, models, thresholds, health policy, signatures and key ids, and
    the deployments that use it. `bundle_file(sha256)` opens the stored file.

    Raises NotFoundError, InvalidRequestError (not a sha256).
    """
    bundle = bundle_service.get_by_sha(session, sha256)
    signing: set[str] = set()
    threshold: int | None = None
    try:
        role = trust.current_root(session).signing_role
        signing, threshold = set(role.keyids), role.threshold
    except (NoTrustRootError, BundleError):  # nothing to judge signatures against
        pass
    error = None
    keyids: list[str] = []
    try:
        with bundle_file(sha256) as f:
            keyids = bundle_service.read_signatures(f)
    except (OSError, NotFoundError, StoreUnavailableError, BundleError) as e:
        error = f"the bundle file cannot be read: {e}"
    deps = session.execute(
        sa.select(Deployment.id, Deployment.state, Deployment.created_at)
        .where(Deployment.bundle_id == bundle.id)
        .order_by(Deployment.id.desc())
    )
    return BundlePage(
        detail=bundle_service.detail(bundle),
        signatures=tuple(SignatureView(k, k in signing) for k in keyids),
        signatures_error=error,
        threshold=threshold,
        deployments=tuple((r.id, r.state, r.created_at) for r in deps),
    )


def bundle_deployment_counts(session: so.Session) -> dict[str, int]:
    """How many deployments use each bundle, by the bundle's sha256."""
    rows = session.execute(
        sa.select(Bundle.sha256, sa.func.count())
        .join(Deployment, Deployment.bundle_id == Bundle.id)
        .group_by(Bundle.sha256)
    )
    return {sha256: n for sha256, n in rows}
