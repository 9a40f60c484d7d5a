"""`satchel-agent run` as a real process with a release with variants: the `[variants]`
settings of its settings file point it at a fake power-supply folder; the battery falls, the
light variant answers; it charges, the full one answers again; no request fails meanwhile, and
`status --json` and the event queue say what happened."""

from __future__ import annotations

import json
import threading
from collections import Counter
from pathlib import Path

import numpy as np
import requests

from satchel.agent.event_queue import EventQueue
from satchel.bundles.events import VARIANT_SWITCHED
from satchel.bundles.variants import parse_policy
from satchel.manager.build_variants import VariantSpec
from tests.factory.variants import IN_DIM, make_variant_models, variant_bundle
from tests.service.devices import Device
from tests.service.procs import AgentProcess
from tests.service.waiting import wait_for

POLICY = ('{"rules": [{"when": {"battery_below": 30, "charging": false}, "use": "lite", '
          '"leave": {"charging": true}}], "dwell_s": 0.2}')


def test_run_follows_the_battery_from_full_to_lite_and_back_without_failing_a_request(
    tmp_path: Path, device: Device
) -> None:
    models = make_variant_models(tmp_path / "models", slow_steps=0)
    bundle = device.work / "kws.satchel"
    variant_bundle(bundle, device.keys, [VariantSpec("full", models.full),
                                         VariantSpec("lite", models.lite)],
                   samples=models.samples, policy=parse_policy(POLICY))
    device.cli("install", str(bundle))
    battery = tmp_path / "power_supply" / "BAT0"
    battery.mkdir(parents=True)
    (battery / "type").write_text("Battery\n")
    (battery / "capacity").write_text("90\n")
    (battery / "status").write_text("Discharging\n")
    config = tmp_path / "agent.toml"
    config.write_text(
        "[variants]\n"
        f'power_supply_dir = "{battery.parent}"\n'
        f'thermal_dir = "{tmp_path / "none"}"\n'
        "poll_s = 0.05\n"
    )
    agent = AgentProcess(device.state_dir, env={"SATCHEL_AGENT_CONFIG": str(config)})
    answered: Counter[str] = Counter()
    failures: list[str] = []
    latest: list[str] = [""]
    stop = threading.Event()
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, IN_DIM], "datatype": "FP32",
                                   "data": np.ones(IN_DIM).tolist()}]})

    def load() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                r = session.post(f"{agent.url}/v2/models/kws/infer", data=body, timeout=10)
                assert r.status_code == 200, r.text
                latest[0] = r.json()["parameters"]["variant"]
                answered[latest[0]] += 1
            except Exception as e:  # noqa: BLE001 - counted
                failures.append(repr(e))

    threads = [threading.Thread(target=load, daemon=True) for _ in range(2)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: latest[0] == "full")
        (battery / "capacity").write_text("25\n")
        wait_for(lambda: latest[0] == "lite")
        (battery / "status").write_text("Charging\n")
        wait_for(lambda: latest[0] == "full")
        stop.set()
        for t in threads:
            t.join(10)
        status = json.loads(device.cli("status", "--json").stdout)
    finally:
        stop.set()
        agent.stop()
    assert failures == []
    assert answered["lite"] > 0 and answered["full"] > 0
    channel = status["channels"]["kws"]
    assert channel["variant"] == "full"
    assert channel["variants"]["lite"]["state"] == "ready"
    queued = [e for e in EventQueue(device.state_dir).pending() if e["kind"] == VARIANT_SWITCHED]
    assert [(e["figures"]["from"], e["figures"]["to"]) for e in queued] == [
        ("full", "lite"), ("lite", "full")]
    assert "variant full -> lite" in agent.log
