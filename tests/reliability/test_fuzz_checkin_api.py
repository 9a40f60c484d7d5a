"""Fuzzing the check-in API: random bytes, random JSON and mutated genuine bodies POSTed to
the real Flask app (test client) as an enrolled device in the middle of a deployment.

Never a server error; a 400 is the API's JSON error and records nothing at all (every table
unchanged); a 200 records exactly the new events it says it recorded.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.manager.helpers import Fleet, SimDevice, event
from tests.reliability.dbstate import dump, event_ids
from tests.reliability.figures import Recorder
from tests.reliability.strategies import fuzz_settings, json_values, mutated

FAST_EXAMPLES, SLOW_EXAMPLES = 200, 600
_ids = itertools.count(1)


def _genuine(device: SimDevice) -> dict[str, Any]:
    device.run("vision", "1.0.0", 1)
    body = device.body(
        [event("downloaded", bundle_sha256="ab" * 32, deployment_id=1),
         event("smoke_test", passed=True, figures={"max_abs_error": 0.01, "p95_ms": 1.5}),
         event("activated", version="1.0.0", reason="ok")],
        {"vision": {"count": 10, "errors": 0, "nan": 0, "p95_ms": 2.5}},
    )
    body["sent_at"] = "2026-03-02T12:00:00Z"
    return body


def _fresh_ids(body: Any) -> Any:
    """`body` with event ids not used before, so each input's events are new to the manager."""
    if isinstance(body, dict) and isinstance(body.get("events"), list):
        for e in body["events"]:
            if isinstance(e, dict) and isinstance(e.get("id"), str):
                e["id"] = f"fz-{next(_ids)}"
    return body


class CheckinFuzz:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.device = fleet.enroll("cam-1")
        fleet.bundle("1.0.0", 1)
        fleet.deploy("vision:1.0.0", devices=["cam-1"], waves="100%")
        self.url = "/api/v1/devices/cam-1/checkin"
        self.counts = {"inputs": 0, "200": 0, "400": 0}

    def post(self, data: bytes) -> None:
        before = dump(self.fleet.app)
        ids_before = len(event_ids(self.fleet.app))
        r = self.fleet.client.post(self.url, data=data, headers=self.device.headers,
                                   content_type="application/json")
        self.counts["inputs"] += 1
        assert r.status_code in (200, 400), (r.status_code, r.get_data()[:300], data[:300])
        self.counts[str(r.status_code)] += 1
        if r.status_code == 400:
            assert r.is_json and r.json["error"]["code"] == "invalid_request"
            assert "\n" not in r.json["error"]["message"]
            assert dump(self.fleet.app) == before, data[:300]
        else:
            recorded = len(event_ids(self.fleet.app)) - ids_before
            assert r.json["events"]["recorded"] == recorded

    def run(self, examples: int) -> None:
        genuine = _genuine(self.device)

        @fuzz_settings(examples)
        @given(st.one_of(
            st.binary(max_size=300),
            json_values.map(lambda v: json.dumps(v).encode()),
            mutated(genuine).map(lambda b: json.dumps(_fresh_ids(b)).encode()),
        ))
        def case(data: bytes) -> None:
            self.post(data)

        case()

    def result(self) -> str:
        return (f"{self.counts['200']} answered 200, {self.counts['400']} answered 400 with "
                "nothing recorded, 0 server errors")


def test_fuzzed_checkin_bodies_never_fail_and_refusals_record_nothing(
    fleet: Fleet, backend: str, measured: Recorder
) -> None:
    fuzz = CheckinFuzz(fleet)
    fuzz.run(FAST_EXAMPLES)
    measured.row("fuzzing", f"check-in API JSON, random and mutated bodies ({backend})",
                 fuzz.counts["inputs"], fuzz.result())


@pytest.mark.slow
def test_fuzzed_checkin_bodies_never_fail_and_refusals_record_nothing_long_run(
    fleet: Fleet, backend: str, measured: Recorder
) -> None:
    fuzz = CheckinFuzz(fleet)
    fuzz.run(SLOW_EXAMPLES)
    measured.row("fuzzing", f"check-in API JSON, random and mutated bodies ({backend})",
                 fuzz.counts["inputs"], fuzz.result())


# Found by this suite: integers beyond what the database columns hold and times whose UTC form
# leaves datetime's range passed the parser and failed in the database layer with a 500 (and
# aborted `satchel usb import`); the parser now refuses them.
OUT_OF_RANGE = {
    "event sequence 2**70": lambda b: b["events"][0].update(sequence=2**70),
    "event deployment_id 2**64": lambda b: b["events"][0].update(deployment_id=2**64),
    "active sequence 2**63": lambda b: b["status"]["channels"]["vision"]["active"].update(
        sequence=2**63),
    "trust_root_version 2**70": lambda b: b.update(trust_root_version=2**70),
    "sent_at year 9999 at -23:59": lambda b: b.update(sent_at="9999-12-31T23:59:59-23:59"),
    "event time year 1 at +23:59": lambda b: b["events"][0].update(
        time="0001-01-01T00:00:00+23:59"),
}


@pytest.mark.parametrize("edit", sorted(OUT_OF_RANGE))
def test_out_of_range_numbers_and_times_are_refused_with_400(fleet: Fleet, edit: str) -> None:
    device = fleet.enroll("cam-1")
    body = _genuine(device)
    OUT_OF_RANGE[edit](body)
    before = dump(fleet.app)

    r = fleet.client.post("/api/v1/devices/cam-1/checkin", json=body, headers=device.headers)

    assert r.status_code == 400, r.get_data()[:300]
    assert dump(fleet.app) == before
