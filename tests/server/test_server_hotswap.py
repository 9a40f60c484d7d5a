"""Hot swap: a newly activated release is loaded beside the serving one and swapped in while
clients keep sending requests; not one of them fails. The previous release stays loaded
through probation, so going back to it is instant."""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial

import requests

from satchel.agent.install.installer import rollback
from satchel.agent.server import MemoryEventSink
from satchel.bundles.events import LOAD_FAILED, ROLLED_BACK, SERVING
from tests.server.clients import LoadThreads, infer_body, metric
from tests.server.devices import CHANNEL, LENIENT, Device, Models, positive_inputs
from tests.server.servers import FAST, ServerFactory, one_event, wait_for


def _serving_version(url: str, channel: str = CHANNEL) -> str | None:
    response = requests.get(f"{url}/v2/models/{channel}")
    return response.json()["versions"][0] if response.status_code == 200 else None


SLOW_POLL = replace(FAST, poll_interval_s=3600.0)


def _serves(url: str, version: str) -> bool:
    return _serving_version(url) == version


def _answered_more_than(load: LoadThreads, n: int) -> bool:
    return load.ok > n


def test_new_releases_swap_in_under_load_without_a_failed_request(
    device: Device, models: Models, start_server: ServerFactory, events: MemoryEventSink
) -> None:
    device.install(models.good, version="1.0.0", sequence=1)
    server = start_server()
    url = f"{server.url}/v2/models/{CHANNEL}/infer"
    with LoadThreads(url, infer_body(positive_inputs(2)), threads=3) as load:
        for sequence, model in ((2, models.other), (3, models.good), (4, models.other)):
            before = load.ok
            device.install(model, version=f"{sequence}.0.0", sequence=sequence)
            wait_for(partial(_serves, server.url, f"{sequence}.0.0"))
            wait_for(partial(_answered_more_than, load, before + 20))  # traffic after the swap
    assert load.failures == []
    assert {"1.0.0", "4.0.0"} <= load.versions
    serving = [e.version for e in events.of_kind(SERVING)]
    assert serving == ["1.0.0", "2.0.0", "3.0.0", "4.0.0"]
    text = requests.get(f"{server.url}/metrics").text
    assert metric(text, "satchel_model_swaps_total", channel=CHANNEL) == 4
    assert metric(text, "satchel_model_active", channel=CHANNEL, version="4.0.0") == 1
    assert metric(text, "satchel_inference_errors_total") == 0



def test_previous_release_stays_loaded_through_probation(
    device: Device, models: Models, start_server: ServerFactory
) -> None:
    device.install(models.good, version="1.0.0", sequence=1)
    server = start_server()
    device.install(models.other, version="2.0.0", sequence=2)
    wait_for(lambda: _serving_version(server.url) == "2.0.0")
    slot = server.registry.slots()[CHANNEL]
    assert slot.active.on_probation(time.time())
    assert slot.previous is not None and slot.previous.key.version == "1.0.0"


def test_previous_release_is_unloaded_when_probation_ends(
    device: Device, models: Models, start_server: ServerFactory
) -> None:
    short = replace(LENIENT, probation_s=1.0)
    device.install(models.good, version="1.0.0", sequence=1, policy=short)
    server = start_server()
    device.install(models.other, version="2.0.0", sequence=2, policy=short)
    wait_for(lambda: _serving_version(server.url) == "2.0.0")
    wait_for(lambda: server.registry.slots()[CHANNEL].previous is None, timeout_s=5)
    assert _serving_version(server.url) == "2.0.0"


def test_technician_rollback_swaps_back_to_the_loaded_previous_at_once(
    device: Device, models: Models, start_server: ServerFactory, events: MemoryEventSink
) -> None:
    device.install(models.good, version="1.0.0", sequence=1)
    device.install(models.other, version="2.0.0", sequence=2)
    server = start_server()
    previous = server.registry.slots()[CHANNEL].previous
    assert previous is not None and previous.key.version == "1.0.0"
    rollback(device.state_dir, CHANNEL, "technician: camera recalibrated")
    wait_for(lambda: _serving_version(server.url) == "1.0.0")
    assert server.registry.get(CHANNEL) is not None
    assert server.registry.get(CHANNEL).model is previous.model  # type: ignore[union-attr]
    wait_for(lambda: events.of_kind(SERVING)[-1].version == "1.0.0")
    assert events.of_kind(SERVING)[-1].details["load_ms"] == 0.0
    text = requests.get(f"{server.url}/metrics").text
    assert metric(text, "satchel_model_rollbacks_total", channel=CHANNEL) == 1


def test_reload_now_swaps_without_waiting_for_the_poll(
    device: Device, models: Models, start_server: ServerFactory
) -> None:
    device.install(models.good, version="1.0.0", sequence=1)
    server = start_server(config=SLOW_POLL)
    device.install(models.other, version="2.0.0", sequence=2)
    assert _serving_version(server.url) == "1.0.0"
    server.reload_now()
    assert _serving_version(server.url) == "2.0.0"


def test_channel_installed_after_start_appears_and_others_keep_serving(
    device: Device, models: Models, start_server: ServerFactory
) -> None:
    device.install(models.good, version="1.0.0", sequence=1)
    server = start_server()
    assert requests.get(f"{server.url}/v2/models/audio").status_code == 404
    device.install(models.other, version="0.1.0", sequence=1, channel="audio")
    wait_for(lambda: _serving_version(server.url, "audio") == "0.1.0")
    assert _serving_version(server.url) == "1.0.0"
    response = requests.post(
        f"{server.url}/v2/models/audio/infer", data=infer_body(positive_inputs(1))
    )
    assert response.status_code == 200 and response.json()["model_name"] == "audio"


def test_release_that_fails_to_load_is_rolled_back_and_the_old_one_serves(
    device: Device, models: Models, start_server: ServerFactory, events: MemoryEventSink
) -> None:
    device.install(models.good, version="1.0.0", sequence=1)
    server = start_server(config=SLOW_POLL)  # so the release is damaged before it is seen
    broken = device.install(models.other, version="2.0.0", sequence=2)
    (broken.path / "model.onnx").write_bytes(b"not a model any more")
    server.reload_now()
    wait_for(lambda: device.active().version == "1.0.0")  # type: ignore[union-attr]
    assert _serving_version(server.url) == "1.0.0"
    failed = one_event(events, LOAD_FAILED)
    assert failed.version == "2.0.0"
    rolled = one_event(events, ROLLED_BACK)
    assert rolled.reason.startswith("health: release failed to load")
    ok = requests.post(f"{server.url}/v2/models/{CHANNEL}/infer",
                       data=infer_body(positive_inputs(1)))
    assert ok.status_code == 200 and ok.json()["model_version"] == "1.0.0"
