"""The REST API under /api/v1: one blueprint, one JSON error helper, an OpenAPI document.

Every resource needs credentials (`Authorization: Bearer TOKEN`): without them it answers 401;
only the API's description (`/openapi.json`) and its reference page (`/docs`) are public.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("api", __name__, url_prefix="/api/v1")

from satchel.manager.api import (  # noqa: E402,F401  (routes register themselves on `bp`)
    bundles,
    deployments,
    devices,
    errors,
    openapi,
    reference,
    rewrap,
    samples,
    tokens,
    trust,
    usb,
)
