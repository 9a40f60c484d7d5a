"""Shadow stage on a real device and server: a new release answers copies of field
requests beside the active one; clients never see its answers; it is refused with its
figures when it disagrees (or turns NaN) on field inputs it never met in the lab."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from satchel.agent.config import AgentConfig
from satchel.bundles.events import ACTIVATED, SHADOW_FAILED, SHADOW_PASSED
from satchel.bundles.timeutil import format_time, utcnow
from tests.agent.staged import (
    StagedModels,
    field_inputs,
    make_models,
    rig,
    shadow,
)
from tests.factory.keys import Keyring
from tests.server.servers import wait_for


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> StagedModels:
    return make_models(tmp_path_factory.mktemp("staged-models"))


def test_release_that_disagrees_on_field_inputs_is_refused_without_answering_a_client(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        r.start()
        result = r.install(models.other, version="2.0.0", sequence=2,
                           activation=shadow(20, ramp="50,100"))
        assert result.stage == "shadow"  # passed its lab smoke test, not active
        assert r.status()["active"]["version"] == "1.0.0"
        assert r.status()["stage"] == "shadow"
        wait_for(lambda: r.server is not None and r.server.registry.candidate("vision")
                 is not None)
        answered_by = set()
        for x in field_inputs(1000):
            answered_by.add(r.infer(x)["model_version"])
            if r.events.of_kind(SHADOW_FAILED):
                break
        wait_for(lambda: bool(r.events.of_kind(SHADOW_FAILED)))
        assert answered_by == {"1.0.0"}
        (failed,) = r.events.of_kind(SHADOW_FAILED)
        assert "agreement" in failed.reason
        assert failed.details["client_answers"] == 0
        assert failed.details["shadow"]["compared"] >= 1
        assert failed.details["shadow"]["agreed"] < failed.details["shadow"]["compared"]
        wait_for(lambda: r.status()["candidate"] is None)
        status = r.status()
        assert status["active"]["version"] == "1.0.0" and status["stage"] != "shadow"
        assert not (r.state_dir / "channels/vision/releases/2-2.0.0").exists()
        assert r.infer(field_inputs(1)[0])["model_version"] == "1.0.0"


def test_release_turning_nan_on_field_inputs_is_refused_in_shadow(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        r.start()
        r.install(models.nan, version="2.0.0", sequence=2, activation=shadow(30))
        wait_for(lambda: r.server is not None and r.server.registry.candidate("vision")
                 is not None)
        versions = set()
        for x in field_inputs(1000):
            versions.add(r.infer(x)["model_version"])
            if r.events.of_kind(SHADOW_FAILED):
                break
        wait_for(lambda: bool(r.events.of_kind(SHADOW_FAILED)))
        assert versions == {"1.0.0"}
        (failed,) = r.events.of_kind(SHADOW_FAILED)
        assert "NaN" in failed.reason and failed.details["shadow"]["nonfinite"] >= 1
        assert not r.events.of_kind(ACTIVATED)


def test_release_that_agrees_passes_its_shadow_and_activates(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        r.start()
        r.install(models.twin, version="2.0.0", sequence=2, activation=shadow(10))
        wait_for(lambda: r.server is not None and r.server.registry.candidate("vision")
                 is not None)
        for x in field_inputs(1000):  # until 10 copies were compared (some may be dropped)
            if r.events.of_kind(SHADOW_PASSED):
                break
            assert r.infer(x)["model_version"] == "1.0.0"
        wait_for(lambda: bool(r.events.of_kind(ACTIVATED)))
        (passed,) = r.events.of_kind(SHADOW_PASSED)
        assert passed.details["shadow"]["agreed"] == passed.details["shadow"]["compared"] >= 10
        wait_for(lambda: r.infer(field_inputs(1)[0])["model_version"] == "2.0.0")
        status = r.status()
        assert status["active"]["version"] == "2.0.0"
        assert status["stage"] == "probation" and status["candidate"] is None


def test_first_release_of_a_channel_skips_its_shadow_stage(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    with rig(tmp_path, keys, models) as r:
        result = r.install(models.good, version="1.0.0", sequence=1, activation=shadow(10))
        assert result.stage is None
        assert r.status()["active"]["version"] == "1.0.0"


def test_device_that_forbids_shadowing_skips_to_activation_and_says_why(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    config = AgentConfig(lock_wait_s=10.0, activation_shadow="forbid")
    with rig(tmp_path, keys, models, config) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        result = r.install(models.twin, version="2.0.0", sequence=2, activation=shadow(10))
        assert result.stage is None  # no ramp either: activated at once
        assert r.status()["active"]["version"] == "2.0.0"
        staged = shadow(10, ramp="100")
        result = r.install(models.good, version="3.0.0", sequence=3, activation=staged)
        assert result.stage == "ramp"
        candidate = r.status()["candidate"]
        assert candidate["stage"] == "ramp" and "forbids" in candidate["shadow_skipped"]


def test_status_shows_the_shadow_figures_while_it_runs(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        r.start()
        r.install(models.twin, version="2.0.0", sequence=2, activation=shadow(1000))
        wait_for(lambda: r.server is not None and r.server.registry.candidate("vision")
                 is not None)
        for x in field_inputs(1000):
            if (r.status()["candidate"]["shadow"] or {}).get("compared", 0) >= 10:
                break
            r.infer(x)
            time.sleep(0.002)
        wait_for(lambda: (r.status()["candidate"]["shadow"] or {}).get("compared", 0) >= 10)
        candidate = r.status()["candidate"]
        assert candidate["version"] == "2.0.0" and candidate["stage"] == "shadow"
        figures = candidate["shadow"]
        assert figures["agreed"] == figures["compared"] and figures["needed"] == 0.99
        assert figures["requests"] == 1000 and candidate["client_answers"] == 0
        assert candidate["started_at"] <= format_time(utcnow())


def test_staged_install_ends_its_events_with_shadow_started_not_activated(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    from satchel.agent.event_queue import EventQueue
    from satchel.agent.sync.install_events import CLI, install_with_events, origin_of_file
    from tests.agent.staged import staged_bundle

    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        bundle = staged_bundle(r.work / "two.satchel", keys, models.twin, version="2.0.0",
                               sequence=2, activation=shadow(10))
        origin = origin_of_file(bundle, CLI)
        assert origin is not None
        queue = EventQueue(r.state_dir)
        outcome = install_with_events(r.state_dir, bundle, origin, queue, r.config)
        assert outcome.activated and outcome.reason is None
        events = queue.pending()
        assert [e["kind"] for e in events][-1] == "shadow_started"
        assert events[-1]["figures"]["stage"] == "shadow"
        assert "activated" not in [e["kind"] for e in events]


def test_release_whose_service_outgrows_its_memory_budget_in_shadow_is_refused(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    """The shadow stage judges memory too: the service's resident set may grow by at most
    the smoke test's `max_memory_mb` while the candidate answers field copies (here the
    growth is 200 MB of ballast touched in this process, which serves in-process)."""
    with rig(tmp_path, keys, models) as r:
        r.install(models.good, version="1.0.0", sequence=1)
        r.start()
        result = r.install(models.twin, version="2.0.0", sequence=2,
                           activation=shadow(40), max_memory_mb=64)
        assert result.stage == "shadow"  # the lab smoke test stayed inside 64 MB
        wait_for(lambda: r.server is not None and r.server.registry.candidate("vision")
                 is not None)
        ballast = np.ones(200 * 1024 * 1024 // 8)  # touched: resident
        for x in field_inputs(1000):
            assert r.infer(x)["model_version"] == "1.0.0"
            if r.events.of_kind(SHADOW_FAILED) or r.events.of_kind(SHADOW_PASSED):
                break
        wait_for(lambda: bool(r.events.of_kind(SHADOW_FAILED)))
        del ballast
        (failed,) = r.events.of_kind(SHADOW_FAILED)
        assert "over the memory budget of 64.0 MB" in failed.reason
        assert failed.details["shadow"]["agreed"] == failed.details["shadow"]["compared"]
        assert failed.details["shadow"]["rss_growth_mb"] > 64
        assert failed.details["client_answers"] == 0
        wait_for(lambda: r.status()["candidate"] is None)
        assert r.status()["active"]["version"] == "1.0.0"
