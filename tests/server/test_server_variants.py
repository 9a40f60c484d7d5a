"""A release with variants, served: a fake power-supply folder drives a running server from
its full variant to its light one and back with no failed request under steady load; request
parameters choose a variant (and get 400 in one line when none can); a variant that breaches
the health policy is disabled without rolling its release back. Real onnxruntime models, the
real installer and a real server on 127.0.0.1."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from satchel.agent.install.installer import install
from satchel.agent.server import AgentServer, MemoryEventSink
from satchel.agent.variants.settings import VariantSettings
from satchel.bundles.events import ROLLED_BACK, VARIANT_DISABLED, VARIANT_SWITCHED
from satchel.bundles.manifest import HealthPolicy
from satchel.bundles.variants import parse_policy
from satchel.manager.build_variants import VariantSpec
from tests.factory.model_makers import make_mlp_weights, onnx_mlp, tflite_mlp
from tests.factory.variants import IN_DIM, OUT_DIM, VariantModels, make_variant_models
from tests.factory.variants import variant_bundle as build_variants
from tests.server.clients import metric
from tests.server.devices import Device
from tests.server.servers import FAST, ServerFactory, wait_for

BATTERY_POLICY = parse_policy(
    '{"rules": [{"when": {"battery_below": 30}, "use": "lite", "leave": {"battery_above": 80}}],'
    ' "dwell_s": 0.2}'
)
X = np.abs(np.random.default_rng(4).standard_normal((1, IN_DIM))).astype(np.float32)


@pytest.fixture(scope="module")
def vmodels(tmp_path_factory: pytest.TempPathFactory) -> VariantModels:
    # "slow": the full model with 30 extra MatMuls, ~6 ms a run; "lite": ~0.03 ms
    return make_variant_models(tmp_path_factory.mktemp("variant-models"), slow_steps=30)


class Battery:
    """A fake /sys/class/power_supply with one battery."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bat = root / "BAT0"
        self.bat.mkdir(parents=True)
        (self.bat / "type").write_text("Battery\n")
        self.set(100, "Full")

    def set(self, capacity: int, status: str = "Discharging") -> None:
        (self.bat / "capacity").write_text(f"{capacity}\n")
        (self.bat / "status").write_text(f"{status}\n")


def _settings(tmp_path: Path, battery: Battery, **changes: Any) -> VariantSettings:
    return VariantSettings(
        power_supply_dir=str(battery.root), thermal_dir=str(tmp_path / "no-thermal"),
        meminfo_file=str(tmp_path / "no-meminfo"), loadavg_file=str(tmp_path / "no-loadavg"),
        poll_s=0.05, **changes,
    )


def _install(device: Device, specs: list[VariantSpec], *, sequence: int = 1,
             samples: Path | None = None, health: HealthPolicy | None = None) -> None:
    bundle = device.work / f"kws-{sequence}.satchel"
    build_variants(bundle, device.keys, specs, sequence=sequence, version=f"1.{sequence}",
                   samples=samples, policy=BATTERY_POLICY, health=health)
    install(device.state_dir, bundle)


def _start(start_server: ServerFactory, settings: VariantSettings) -> AgentServer:
    return start_server(config=dataclasses.replace(FAST, variants=settings))


def _infer(server: AgentServer, x: np.ndarray = X, **parameters: Any) -> requests.Response:
    body: dict[str, Any] = {"inputs": [{"name": "input", "shape": list(x.shape),
                                        "datatype": "FP32", "data": x.ravel().tolist()}]}
    if parameters:
        body["parameters"] = parameters
    return requests.post(f"{server.url}/v2/models/kws/infer", json=body, timeout=10)


def _variant(response: requests.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["parameters"]["variant"])


class Load:
    """Threads that keep sending requests; which variant answered each, and every failure."""

    def __init__(self, server: AgentServer, threads: int = 3) -> None:
        self.url = f"{server.url}/v2/models/kws/infer"
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.answered: Counter[str] = Counter()
        self.latest = ""
        self.failures: list[str] = []
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self) -> None:
        session = requests.Session()
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, IN_DIM], "datatype": "FP32",
                                       "data": X.ravel().tolist()}]})
        while not self.stop.is_set():
            try:
                r = session.post(self.url, data=body, timeout=10)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code} {r.text[:200]}")
                variant = r.json()["parameters"]["variant"]
                with self.lock:
                    self.answered[variant] += 1
                    self.latest = variant
            except Exception as e:  # noqa: BLE001 - every failure is what the test counts
                with self.lock:
                    self.failures.append(repr(e))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def wait_answered_by(self, variant: str) -> None:
        wait_for(lambda: self.latest == variant)
        seen = self.answered[variant]
        wait_for(lambda: self.answered[variant] >= seen + 20)  # and keeps being answered so


def test_battery_drives_full_to_lite_and_back_with_no_failed_request(
    tmp_path: Path, device: Device, start_server: ServerFactory, events: MemoryEventSink,
    vmodels: VariantModels,
) -> None:
    _install(device, [VariantSpec("full", vmodels.slow), VariantSpec("lite", vmodels.lite)])
    battery = Battery(tmp_path / "power_supply")
    server = _start(start_server, _settings(tmp_path, battery))
    assert _variant(_infer(server)) == "full"
    with Load(server) as load:
        load.wait_answered_by("full")
        battery.set(20)  # the battery falls: the light variant
        load.wait_answered_by("lite")
        battery.set(60, "Charging")  # inside the hysteresis band: stays light
        time.sleep(0.5)
        assert load.latest == "lite"
        battery.set(85, "Charging")  # charged: back to the full variant
        load.wait_answered_by("full")
    assert load.failures == []
    switches = events.of_kind(VARIANT_SWITCHED)
    assert [(e.details["from"], e.details["to"]) for e in switches] == [
        ("full", "lite"), ("lite", "full")]
    assert switches[0].details["state"]["battery_percent"] == 20
    assert switches[0].reason == "variant full -> lite: battery_below=30"
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    assert metric(text, "satchel_agent_variant_switches_total", channel="kws", **{
        "from": "full", "to": "lite"}) == 1
    assert metric(text, "satchel_agent_variant", channel="kws", variant="full") == 1
    assert metric(text, "satchel_agent_variant_inferences_total", variant="lite") > 0
    channel = device.state.status()["channels"]["kws"]
    assert channel["variant"] == "full"
    assert set(channel["variant_seconds"]) == {"full", "lite"}


def test_readings_that_cross_a_threshold_back_and_forth_switch_once_per_dwell(
    tmp_path: Path, device: Device, start_server: ServerFactory, events: MemoryEventSink,
    vmodels: VariantModels,
) -> None:
    _install(device, [VariantSpec("full", vmodels.full), VariantSpec("lite", vmodels.lite)])
    battery = Battery(tmp_path / "power_supply")
    policy = ('{"rules": [{"when": {"battery_below": 30}, "use": "lite"}], "dwell_s": 30}')
    server = _start(start_server, _settings(tmp_path, battery, policy=policy))
    for capacity in (29, 31, 45, 29, 31, 45) * 2:
        battery.set(capacity)
        time.sleep(0.06)
    wait_for(lambda: bool(events.of_kind(VARIANT_SWITCHED)))
    time.sleep(0.2)
    assert len(events.of_kind(VARIANT_SWITCHED)) == 1  # to lite, then it must dwell 30 s
    assert _variant(_infer(server)) == "lite"


def test_no_state_files_means_the_default_variant(
    tmp_path: Path, device: Device, start_server: ServerFactory, events: MemoryEventSink,
    vmodels: VariantModels,
) -> None:
    _install(device, [VariantSpec("full", vmodels.full), VariantSpec("lite", vmodels.lite)])
    settings = VariantSettings(power_supply_dir=str(tmp_path / "none"),
                               thermal_dir=str(tmp_path / "none"),
                               meminfo_file=str(tmp_path / "none"),
                               loadavg_file=str(tmp_path / "none"), poll_s=0.05)
    server = _start(start_server, settings)
    time.sleep(0.3)
    assert _variant(_infer(server)) == "full"
    assert events.of_kind(VARIANT_SWITCHED) == []
    assert server.variants.last.battery_percent is None


def test_request_parameters_choose_the_variant_that_meets_them(
    tmp_path: Path, device: Device, start_server: ServerFactory, vmodels: VariantModels,
) -> None:
    _install(device, [VariantSpec("full", vmodels.slow), VariantSpec("lite", vmodels.lite)])
    server = _start(start_server, _settings(tmp_path, Battery(tmp_path / "ps")))
    assert _variant(_infer(server)) == "full"
    assert _variant(_infer(server, max_latency_ms=2)) == "lite"  # full takes ~6 ms
    assert _variant(_infer(server, max_latency_ms=5000)) == "full"  # the state's choice meets it
    assert _variant(_infer(server, accuracy_level=2)) == "full"
    assert _variant(_infer(server, accuracy_level=1)) == "full"
    answer = _infer(server, max_latency_ms=2).json()
    assert answer["model_version"] == "1.1" and answer["model_name"] == "kws"


@pytest.mark.parametrize("parameters, message", [
    ({"max_latency_ms": 0.0001}, "no variant of kws meets max_latency_ms=0.0001: fastest is lite"
                                 " at "),
    ({"accuracy_level": 7}, "no variant of kws meets accuracy_level=7: most accurate is full at "
                            "level 2"),
    ({"accuracy_level": 2, "max_latency_ms": 1},
     "no variant of kws meets accuracy_level=2 and max_latency_ms=1: fastest is full at "),
    ({"max_latency_ms": "fast"}, "'max_latency_ms' must be a positive number"),
    ({"accuracy_level": 1.5}, "'accuracy_level' must be an integer >= 0"),
])
def test_a_request_no_variant_can_meet_gets_400_in_one_line(
    tmp_path: Path, device: Device, start_server: ServerFactory, vmodels: VariantModels,
    parameters: dict[str, Any], message: str,
) -> None:
    _install(device, [VariantSpec("full", vmodels.slow), VariantSpec("lite", vmodels.lite)])
    server = _start(start_server, _settings(tmp_path, Battery(tmp_path / "ps")))
    r = _infer(server, **parameters)
    assert r.status_code == 400
    error = r.json()["error"]
    assert message in error and "\n" not in error
    assert error.endswith("ms p95") or "max_latency_ms" not in parameters \
        or isinstance(parameters["max_latency_ms"], str)


def test_a_variant_that_breaches_is_disabled_and_the_release_stays(
    tmp_path: Path, device: Device, start_server: ServerFactory, events: MemoryEventSink,
) -> None:
    weights = make_mlp_weights(in_dim=IN_DIM, hidden=32, out_dim=OUT_DIM, seed=5)
    full = onnx_mlp(weights, tmp_path / "full.onnx")
    nan = onnx_mlp(weights, tmp_path / "nan.onnx", nan_for_negative_first_feature=True)
    samples = tmp_path / "positive.npz"
    np.savez(samples, input=np.abs(np.random.default_rng(1).standard_normal((8, IN_DIM)))
             .astype(np.float32))
    health = HealthPolicy(probation_s=600, min_samples=10, max_error_rate=0.05,
                          max_nan_rate=0.0, max_crash_restarts=3)
    _install(device, [VariantSpec("full", full), VariantSpec("lite", nan)], samples=samples,
             health=health)
    battery = Battery(tmp_path / "ps")
    battery.set(10)  # the light (broken) variant answers
    server = _start(start_server, _settings(tmp_path, battery))
    wait_for(lambda: _variant(_infer(server)) == "lite")
    negative = -np.abs(X)
    answered = [_variant(_infer(server, negative)) for _ in range(20)]
    assert "full" in answered  # disabled after its 10th NaN: the default answers
    (disabled,) = events.of_kind(VARIANT_DISABLED)
    assert disabled.details["variant"] == "lite"
    assert "health: nan rate" in disabled.reason
    assert events.of_kind(ROLLED_BACK) == []
    active = device.active("kws")
    assert active is not None and active.sequence == 1
    assert _variant(_infer(server, negative)) == "full"
    channel = device.state.status()["channels"]["kws"]
    assert channel["variants"]["lite"]["state"] == "disabled"
    assert channel["variant"] == "full"


def test_a_breach_of_the_default_variant_rolls_the_release_back(
    tmp_path: Path, device: Device, start_server: ServerFactory, events: MemoryEventSink,
) -> None:
    weights = make_mlp_weights(in_dim=IN_DIM, hidden=32, out_dim=OUT_DIM, seed=5)
    good = onnx_mlp(weights, tmp_path / "good.onnx")
    nan = onnx_mlp(weights, tmp_path / "nan.onnx", nan_for_negative_first_feature=True)
    samples = tmp_path / "positive.npz"
    np.savez(samples, input=np.abs(np.random.default_rng(1).standard_normal((8, IN_DIM)))
             .astype(np.float32))
    health = HealthPolicy(probation_s=600, min_samples=10, max_error_rate=0.05,
                          max_nan_rate=0.0, max_crash_restarts=3)
    _install(device, [VariantSpec("full", good), VariantSpec("lite", good)], samples=samples)
    _install(device, [VariantSpec("full", nan), VariantSpec("lite", good)], sequence=2,
             samples=samples, health=health)
    server = _start(start_server, _settings(tmp_path, Battery(tmp_path / "ps")))
    negative = -np.abs(X)
    for _ in range(12):
        assert _infer(server, negative).status_code == 200
    wait_for(lambda: bool(events.of_kind(ROLLED_BACK)))
    assert "nan rate" in events.of_kind(ROLLED_BACK)[0].reason
    assert events.of_kind(VARIANT_DISABLED) == []
    wait_for(lambda: _infer(server).json()["model_version"] == "1.1")
    assert _variant(_infer(server)) == "full"


def test_variants_may_mix_runtimes(
    tmp_path: Path, device: Device, start_server: ServerFactory,
) -> None:
    weights = make_mlp_weights(in_dim=IN_DIM, hidden=16, out_dim=OUT_DIM, seed=2)
    full = onnx_mlp(weights, tmp_path / "full.onnx")
    lite = tflite_mlp(weights, tmp_path / "lite.tflite")  # input [1, 32] beside ONNX [-1, 32]
    _install(device, [VariantSpec("full", full), VariantSpec("lite", lite)])
    battery = Battery(tmp_path / "ps")
    server = _start(start_server, _settings(tmp_path, battery))
    by_full = _infer(server).json()["outputs"][0]["data"]
    battery.set(5)
    wait_for(lambda: _variant(_infer(server)) == "lite")
    by_lite = _infer(server).json()["outputs"][0]["data"]
    np.testing.assert_allclose(by_lite, by_full, rtol=1e-4, atol=1e-5)
