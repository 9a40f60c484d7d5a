"""Staged rollouts: a bundle to a set of devices, in waves, advancing and halting by itself.

One module per job: `creation` (resolving targets, starting the first wave), `waves` (wave
specs and sizes), `advance` (releasing, halting, completing), `read` (one deployment, the
list, their views), `actions` (pause, resume, abort), `progress` (what a device reports moves
its targets), `health` (a health summary judged against a stored policy), `states`. Their
public names are re-exported here: the API, the web views, the CLI, check-ins and USB imports
call `deployments.<name>`.
"""

from __future__ import annotations

from satchel.manager.services.deployments.actions import ACTIONS, abort, act, pause, resume
from satchel.manager.services.deployments.advance import evaluate
from satchel.manager.services.deployments.creation import Selectors, create, resolve_targets
from satchel.manager.services.deployments.health import health_breach
from satchel.manager.services.deployments.progress import (
    BundleRef,
    ChannelReport,
    DeviceTarget,
    PolicyLookup,
    ReportedEvent,
    record_progress,
    target_change,
)
from satchel.manager.services.deployments.read import get, list_deployments, status, summary
from satchel.manager.services.deployments.states import (
    ABORTED,
    ACTIVATED,
    ACTIVE,
    ASSIGNED,
    COMPLETED,
    DEPLOYMENT_STATES,
    DOWNLOADED,
    FAILED,
    FAILURE_EVENTS,
    HALTED,
    OFFERED,
    PAUSED,
    PENDING,
    PROGRESS_EVENTS,
    SUCCEEDED,
    TARGET_STATES,
    TRACKED,
    VERIFIED,
)
from satchel.manager.services.deployments.waves import parse_waves, wave_sizes

__all__ = [
    "ABORTED",
    "ACTIONS",
    "ACTIVATED",
    "ACTIVE",
    "ASSIGNED",
    "COMPLETED",
    "DEPLOYMENT_STATES",
    "DOWNLOADED",
    "FAILED",
    "FAILURE_EVENTS",
    "HALTED",
    "OFFERED",
    "PAUSED",
    "PENDING",
    "PROGRESS_EVENTS",
    "SUCCEEDED",
    "TARGET_STATES",
    "TRACKED",
    "VERIFIED",
    "BundleRef",
    "ChannelReport",
    "DeviceTarget",
    "PolicyLookup",
    "ReportedEvent",
    "Selectors",
    "abort",
    "act",
    "create",
    "evaluate",
    "get",
    "health_breach",
    "list_deployments",
    "parse_waves",
    "pause",
    "record_progress",
    "resolve_targets",
    "resume",
    "status",
    "summary",
    "target_change",
    "wave_sizes",
]
