"""schemathesis against the manager's own OpenAPI document, in-process (WSGI), with an admin
token and a device token: data valid by the schema and data that breaks it, random path
parameters and the ids of real devices, bundles and deployments. Zero server errors."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.manager.helpers import Fleet
from tests.reliability.figures import Recorder
from tests.reliability.kit import sha256_of

FAST_EXAMPLES, SLOW_EXAMPLES = 4, 25  # per operation, generation mode, token and id set


def _run(fleet: Fleet, examples: int) -> Counter[str]:
    device = fleet.enroll("cam-1")
    built = fleet.bundle("1.0.0", 1)
    deployment = fleet.deploy("vision:1.0.0", devices=["cam-1"], waves="100%")["id"]
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", fleet.app,
                                            headers=fleet.admin)
    known = {"device_id": "cam-1", "sha256": sha256_of(built.data),
             "deployment_id": deployment, "version": 1}
    statuses: Counter[str] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        wanted = {p.name for p in operation.path_parameters}
        for token in (fleet.admin, device.headers):
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                if mode is GenerationMode.NEGATIVE and not _breakable(operation):
                    continue
                for ids in (None, {k: v for k, v in known.items() if k in wanted}):
                    _explore(operation, token, mode, ids or None, examples, statuses)
    return statuses


def _breakable(operation: Any) -> bool:
    """False for a public operation without parameters or body (the API's description and
    its reference page): there is no invalid request of it to make."""
    inputs = (operation.path_parameters, operation.query, operation.headers, operation.body)
    return bool(operation.definition.raw.get("security")) or any(len(i) for i in inputs)


def _explore(operation: Any, headers: dict[str, str], mode: GenerationMode,
             path_parameters: dict[str, Any] | None, examples: int,
             statuses: Counter[str]) -> None:
    strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def case(c: Any) -> None:
        response = c.call(headers=headers)
        statuses[f"{response.status_code // 100}xx"] += 1
        c.validate_response(response, checks=[not_a_server_error])

    case()


def _record(measured: Recorder, backend: str, statuses: Counter[str]) -> None:
    assert statuses["5xx"] == 0
    spread = ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
    measured.row("manager", f"schemathesis, every operation, admin and device token, "
                 f"positive and negative data ({backend})", sum(statuses.values()),
                 f"0 server errors ({spread})")


def test_schemathesis_finds_no_server_error(fleet: Fleet, backend: str,
                                            measured: Recorder) -> None:
    _record(measured, backend, _run(fleet, FAST_EXAMPLES))


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_long_run(fleet: Fleet, backend: str,
                                                     measured: Recorder) -> None:
    _record(measured, backend, _run(fleet, SLOW_EXAMPLES))
