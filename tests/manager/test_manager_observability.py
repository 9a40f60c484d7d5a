"""The OpenAPI document covers every endpoint; /metrics speaks the Prometheus text format."""

from __future__ import annotations

import re

from tests.manager.helpers import Fleet


def _flask_to_openapi(rule: str) -> str:
    path = rule.removeprefix("/api/v1")
    return re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", path)


def test_openapi_document_describes_every_api_route(fleet: Fleet) -> None:
    doc = fleet.client.get("/api/v1/openapi.json", headers=fleet.admin).json
    assert doc["openapi"].startswith("3.")
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops
                 if m != "parameters"}
    routes = set()
    for rule in fleet.app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                routes.add((method, _flask_to_openapi(rule.rule)))
    assert routes == described
    for ops in doc["paths"].values():
        for method, op in ops.items():
            if method != "parameters" and op["security"]:  # all but the public description
                assert "401" in op["responses"]


def test_metrics_count_requests_checkins_and_fleet(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    fleet.checkin(device)
    fleet.client.get("/api/v1/devices")
    text = fleet.client.get("/metrics").data.decode()
    assert "# TYPE satchel_http_requests_total counter" in text
    assert re.search(r'satchel_checkins_total\{via="lan"\} 1\.0\n', text)
    assert re.search(r'satchel_http_requests_total\{code="401",endpoint="/api/v1/devices",'
                     r'method="GET"\} 1\.0\n', text)
    assert "satchel_devices 1.0\n" in text
    assert 'satchel_http_request_duration_seconds_bucket{' in text and 'le="+Inf"' in text
    for line in text.splitlines():
        assert line.startswith("#") or re.fullmatch(r"[a-z_]+(\{.*\})? \S+", line), line
