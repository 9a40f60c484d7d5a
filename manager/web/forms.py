"""Reading the dashboard's forms into the arguments of service functions.

Only the shape is checked here (numbers are numbers, lists are split); what the values mean
is judged by the service functions, exactly as for the API and the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from satchel.manager.config import ManagerConfig
from satchel.manager.services.deployments import Selectors
from satchel.manager.web.errors import FormError

MAX_NAMES = 1000  # device ids, classes or tags in one form field
MAX_TEXT_CHARS = 200  # characters of a free-text field (token name, abort reason)
MAX_DAYS = 3650  # days of a lifetime given in days (an admin token's)
_SPLIT = re.compile(r"[\s,]+")


def text(form: Mapping[str, str], key: str, limit: int = MAX_TEXT_CHARS) -> str:
    """A free-text field, stripped; refused when longer than `limit`. Raises FormError."""
    value = (form.get(key) or "").strip()
    if len(value) > limit:
        raise FormError(f"{key.replace('_', ' ')} must be at most {limit} characters")
    return value


def names(form: Mapping[str, str], key: str) -> list[str]:
    """A list of names separated by commas or spaces, in order, each once.

    Raises FormError past MAX_NAMES.
    """
    found = list(dict.fromkeys(n for n in _SPLIT.split(form.get(key) or "") if n))
    if len(found) > MAX_NAMES:
        raise FormError(f"at most {MAX_NAMES} names in {key.replace('_', ' ')}")
    return found


def percent(form: Mapping[str, str], key: str, default: float) -> float:
    """A percentage field (0-100) as a fraction; `default` (a fraction) when left empty.

    Raises FormError when it is not a number from 0 to 100.
    """
    raw = (form.get(key) or "").strip().rstrip("%")
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as e:
        raise FormError(f"{key.replace('_', ' ')} must be a percentage, not {raw[:20]!r}") from e
    if not 0 <= value <= 100:
        raise FormError(f"{key.replace('_', ' ')} must be between 0 and 100")
    return value / 100


def hours(form: Mapping[str, str], key: str, default_s: float) -> float:
    """A positive number of hours, as seconds; `default_s` when left empty.

    Raises FormError.
    """
    raw = (form.get(key) or "").strip()
    if not raw:
        return default_s
    try:
        value = float(raw)
    except ValueError as e:
        raise FormError(f"{key.replace('_', ' ')} must be a number of hours") from e
    if not 0 < value <= 24 * 366:
        raise FormError(f"{key.replace('_', ' ')} must be more than 0 and at most a year")
    return value * 3600


def days(form: Mapping[str, str], key: str) -> float | None:
    """An optional positive number of days, as seconds; None when left empty.

    Raises FormError.
    """
    raw = (form.get(key) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError as e:
        raise FormError(f"{key.replace('_', ' ')} must be a number of days") from e
    if not 0 < value <= MAX_DAYS:
        raise FormError(f"{key.replace('_', ' ')} must be more than 0 and at most {MAX_DAYS} days")
    return value * 86400


@dataclass(frozen=True)
class DeploymentRequest:
    bundle: str  # NAME:VERSION or sha256
    selectors: Selectors
    waves: str
    success_ratio: float
    max_failure_ratio: float


def deployment_request(form: Mapping[str, str], config: ManagerConfig) -> DeploymentRequest:
    """The "start a deployment" form. Raises FormError, InvalidRequestError (bad names)."""
    bundle = text(form, "bundle")
    if not bundle:
        raise FormError("choose a bundle to deploy")
    selectors = Selectors.from_dict(
        {
            "device_classes": names(form, "device_classes"),
            "tags": names(form, "tags"),
            "devices": names(form, "devices"),
        }
    )
    return DeploymentRequest(
        bundle=bundle,
        selectors=selectors,
        waves=text(form, "waves") or config.deploy_default_waves,
        success_ratio=percent(form, "success_percent", config.deploy_success_ratio),
        max_failure_ratio=percent(form, "max_failure_percent", config.deploy_max_failure_ratio),
    )
