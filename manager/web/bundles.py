"""Bundles: the list, and one bundle's manifest, models, thresholds, health policy,
signatures and key ids."""

from __future__ import annotations

from typing import Any, BinaryIO

from flask import render_template

from satchel.manager.context import state
from satchel.manager.services import bundles
from satchel.manager.services.dashboard.bundles import bundle_deployment_counts, bundle_page
from satchel.manager.web import bp
from satchel.manager.web.common import run


@bp.get("/bundles")
def bundle_list() -> str:
    def read(s: Any) -> tuple[list[dict[str, Any]], dict[str, int]]:
        found = [bundles.summary(b) for b in bundles.list_bundles(s)]
        return found, bundle_deployment_counts(s)

    found, uses = run(read)
    return render_template("bundles.html", bundles=found, uses=uses)


def _open_stored(sha256: str) -> BinaryIO:
    """The stored bundle file. Raises NotFoundError (missing from the store), OSError."""
    return state().store.open(sha256)


@bp.get("/bundles/<sha256>")
def bundle(sha256: str) -> str:
    page = run(lambda s: bundle_page(s, sha256, _open_stored))
    return render_template("bundle.html", page=page, b=page.detail, m=page.detail["manifest"])
