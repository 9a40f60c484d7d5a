"""The HTTP side of a check-in that the WSGI route (route.py) and the Flask view
(`api/devices.py`) share: where it is, what it answers, what it counts.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import datetime
from typing import Any

from satchel.manager.checkin.answer import CheckinResult, jittered
from satchel.manager.checkin.record import LAN
from satchel.manager.config import ManagerConfig
from satchel.manager.metrics.registry import Metrics
from satchel.manager.store import download_origins

RULE = "/devices/<device_id>/checkin"  # the Flask rule, under the API blueprint's /api/v1
ENDPOINT = f"/api/v1{RULE}"  # the rule as metrics name it
PATH = re.compile(r"/api/v1/devices/([^/]+)/checkin")  # what RULE matches; group 1 the device
FAST_PATH_TRIED = "satchel.checkin_fast_path_tried"  # environ key: the view skips it then


def count(metrics: Metrics, result: CheckinResult) -> None:
    """Count a recorded LAN check-in and its new events."""
    metrics.inc("satchel_checkins_total", via=LAN)
    if result.fast:
        metrics.inc("satchel_checkins_fast_total", via=LAN)
    if result.events_recorded:
        metrics.inc("satchel_events_recorded_total", result.events_recorded)


def answer(config: ManagerConfig, result: CheckinResult, now: datetime) -> dict[str, Any]:
    """The JSON answer to a check-in, with a freshly jittered poll interval."""
    interval = jittered(config.poll_interval_s, config.poll_jitter)
    origins = download_origins(config)  # where a download may be redirected (the store)
    if origins and result.offers:
        offers = tuple(dataclasses.replace(o, origins=origins) for o in result.offers)
        result = dataclasses.replace(result, offers=offers)
    return result.to_dict(interval, now)
