"""The manager's trust root: every bundle and USB plan is checked against it.

The first import is trusted as given (its own root keys must sign it); every later one must
be a valid rotation from the current root, as a device would check it. Every accepted version
is kept so that devices can walk the rotation chain.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
import sqlalchemy.orm as so

from satchel.bundles.errors import BundleError
from satchel.bundles.trust import Root, load_root, update_root_chain
from satchel.manager.errors import InvalidRequestError, NotFoundError, NoTrustRootError
from satchel.manager.models import TrustRoot


@dataclass(frozen=True)
class TrustImport:
    root: Root
    added: tuple[int, ...]  # versions newly stored


def current_document(session: so.Session) -> bytes | None:
    """The newest root.json accepted, or None."""
    return session.scalar(sa.select(TrustRoot.document).order_by(TrustRoot.version.desc()))


def current_root(session: so.Session) -> Root:
    """The newest accepted trust root. Raises NoTrustRootError if none was imported."""
    data = current_document(session)
    if data is None:
        raise NoTrustRootError(
            "no trust root imported yet: run `satchel trust import KEYDIR/root.json`"
        )
    return load_root(data)


_CURRENT_VERSION = sa.select(sa.func.max(TrustRoot.version))


def current_version(session: so.Session) -> int | None:
    return session.scalar(_CURRENT_VERSION)


def root_document(session: so.Session, version: int) -> bytes:
    """The root.json of `version`. Raises NotFoundError."""
    data = session.get(TrustRoot, version)
    if data is None:
        raise NotFoundError(f"trust root version {version} is not known to this manager")
    return data.document


def history(session: so.Session) -> list[tuple[int, bytes]]:
    """Every accepted (version, root.json), oldest first."""
    rows = session.execute(
        sa.select(TrustRoot.version, TrustRoot.document).order_by(TrustRoot.version)
    )
    return [(r.version, r.document) for r in rows]


def import_roots(session: so.Session, documents: list[bytes]) -> TrustImport:
    """Accept root.json documents: the first ever import is self-verified; later ones must
    chain from the current root (each version signed by the previous root keys).

    Raises InvalidRequestError (with the verification failure) when a document is refused;
    nothing is stored then.
    """
    if not documents:
        raise InvalidRequestError("no trust root document given")
    known = dict(history(session))
    try:
        if not known:
            ordered = sorted(documents, key=lambda d: load_root(d).version)
            first = load_root(ordered[0])
            base, base_doc = first, ordered[0]
            newest = update_root_chain(first, ordered[1:])
            accepted = {first.version: base_doc}
        else:
            base = load_root(known[max(known)])
            newest = update_root_chain(base, documents)
            accepted = {}
        for doc in documents:
            version = load_root(doc).version
            if base.version < version <= newest.version:
                accepted[version] = doc
    except BundleError as e:
        raise InvalidRequestError(f"trust root refused: {e}") from e
    added = []
    for version, doc in sorted(accepted.items()):
        if version not in known:
            session.add(TrustRoot(version=version, document=doc))
            added.append(version)
    session.flush()
    return TrustImport(newest, tuple(added))


def summary(session: so.Session) -> dict[str, object]:
    """JSON-ready description of the trust root: version, keys, thresholds, history."""
    root = current_root(session)
    return {
        "version": root.version,
        "versions": [v for v, _ in history(session)],
        "expires": root.expires.isoformat() if root.expires else None,
        "signing_keys": sorted(root.signing_role.keyids),
        "signing_threshold": root.signing_role.threshold,
        "root_keys": sorted(root.root_role.keyids),
        "root_threshold": root.root_role.threshold,
    }
