"""A channel's health summary judged against a bundle's stored health policy, by the device's
own judge (`bundles.health`): the deployments and the dashboard ask the same question."""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any

from satchel.bundles.errors import BundleError
from satchel.bundles.health import HealthFigures, judge
from satchel.bundles.manifest import HealthPolicy

log = logging.getLogger(__name__)


def health_breach(policy: Mapping[str, Any], health: Mapping[str, Any] | None) -> str | None:
    """Why a channel's health summary breaks the bundle's health policy (the manifest's
    `health_policy` as stored), judged by the device's own judge, or None. A policy that no
    longer parses is not judged here: the device judges with its verified copy. Raises
    nothing."""
    if not policy or not health:
        return None
    try:
        parsed = _parsed_policy(tuple(sorted(policy.items())))
    except TypeError:  # an unhashable value: not a policy the manifest parser ever wrote
        parsed = None
    if parsed is None:
        return None
    return judge(parsed, HealthFigures.from_summary(health)).breach


# Parsed once per distinct policy: the dashboard judges every device's channels per page.
@functools.lru_cache(maxsize=256)
def _parsed_policy(items: tuple[tuple[str, Any], ...]) -> HealthPolicy | None:
    try:
        return HealthPolicy.from_dict(dict(items))
    except BundleError as e:
        log.warning("a stored health policy does not parse, not judged: %s", e)
        return None
