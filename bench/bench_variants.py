"""What choosing a variant costs per request, and switching variants under load.

`python -m bench.bench_variants [--requests N] [--switches N]` prints one JSON object:

- pick: the server-side cost of choosing the variant of a request, in nanoseconds (median
  over N calls of `VariantSet.pick`): by the device's state alone (no parameters), and by a
  request's `max_latency_ms` and `accuracy_level`.
- round_trip: one-row infer requests over HTTP keep-alive, interleaved in the same run between
  a channel without variants and one with two variants (the same model as its default), with
  and without request parameters: median and p95 round trip, and the difference to the
  channel without variants (the selection's cost, end to end).
- switches: N state-driven switches (a fake power-supply folder flips between 20% and 90%)
  while client threads send requests without pause: failed requests (goal 0) and the longest
  gap between two completed requests, against the same load with no switch.

Everything runs on 127.0.0.1 in a temporary state dir, with the real installer (smoke tests
of every variant) and real onnxruntime. The machine's idle share and others' share are
reported (bench.machine): the figures are comparisons within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import Quiet
from satchel.agent.install.installer import install
from satchel.agent.provision import init_device
from satchel.agent.server import AgentServer, MemoryEventSink, ServerConfig
from satchel.agent.variants.settings import VariantSettings
from satchel.bundles.events import VARIANT_SWITCHED
from satchel.bundles.keys import SigningKey
from satchel.bundles.trust import make_root, sign_root
from satchel.bundles.variants import parse_policy
from satchel.manager.build import BuildDefaults, BuildRequest, build_bundle
from satchel.manager.build_variants import VariantSpec, build_variant_bundle
from satchel.manager.modelgen import make_mlp_weights, onnx_mlp, sample_inputs

IN_DIM = 64
POLICY = ('{"rules": [{"when": {"battery_below": 30}, "use": "lite", '
          '"leave": {"battery_above": 80}}], "dwell_s": 0}')
FAST_BUILD = BuildDefaults(latency_runs=10, warmup_runs=2, host_latency_s=0.1)


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        self.key = SigningKey.generate()
        root_key = SigningKey.generate()
        trust = sign_root(make_root(1, [root_key.public], [self.key.public]), [root_key])
        self.state_dir = work / "state"
        init_device(self.state_dir, trust, "bench-1", "bench")
        full_w = make_mlp_weights(IN_DIM, 256, 10, seed=0)
        self.full = onnx_mlp(full_w, work / "full.onnx")
        self.lite = onnx_mlp(make_mlp_weights(IN_DIM, 16, 10, seed=1), work / "lite.onnx")
        self.power = work / "power_supply" / "BAT0"
        self.power.mkdir(parents=True)
        (self.power / "type").write_text("Battery\n")
        self.battery(100)

    def battery(self, percent: int) -> None:
        (self.power / "capacity").write_text(f"{percent}\n")
        (self.power / "status").write_text("Discharging\n")

    def install_channels(self) -> None:
        plain = BuildRequest(name="plain", version="1", model=self.full, sequence=1)
        build_bundle(plain, [self.key], self.work / "plain.satchel", defaults=FAST_BUILD)
        install(self.state_dir, self.work / "plain.satchel")
        req = BuildRequest(name="var", version="1", model=self.full, sequence=1)
        build_variant_bundle(req, [VariantSpec("full", self.full), VariantSpec("lite", self.lite)],
                             [self.key], self.work / "var.satchel", policy=parse_policy(POLICY),
                             defaults=FAST_BUILD)
        install(self.state_dir, self.work / "var.satchel")

    def server(self) -> AgentServer:
        settings = VariantSettings(
            power_supply_dir=str(self.power.parent), thermal_dir=str(self.work / "none"),
            meminfo_file=str(self.work / "none"), loadavg_file=str(self.work / "none"),
            poll_s=0.02)
        config = dataclasses.replace(ServerConfig(), variants=settings)
        return AgentServer(self.state_dir, listen="127.0.0.1:0", unix_socket=None,
                           event_sink=MemoryEventSink(), config=config).start()


def _body(parameters: dict[str, Any] | None = None) -> bytes:
    x = sample_inputs(IN_DIM, 1, seed=3)
    doc: dict[str, Any] = {"inputs": [{"name": "input", "shape": [1, IN_DIM],
                                       "datatype": "FP32", "data": x.ravel().tolist()}]}
    if parameters:
        doc["parameters"] = parameters
    return json.dumps(doc).encode()


def bench_pick(server: AgentServer, n: int) -> dict[str, Any]:
    slot = server.registry.slot("var")
    assert slot is not None and slot.active.variants is not None
    serving, variants = slot.active, slot.active.variants
    cases = {"state_only": {}, "max_latency_ms": {"max_latency_ms": 50.0},
             "both": {"max_latency_ms": 50.0, "accuracy_level": 1}}
    out: dict[str, Any] = {}
    for name, params in cases.items():
        times = []
        for _ in range(n):
            start = time.perf_counter_ns()
            variants.pick(serving, params)
            times.append(time.perf_counter_ns() - start)
        out[name] = {"median_ns": statistics.median(times), "p95_ns": _percentile(
            [float(t) for t in times], 95)}
    return out


def bench_round_trip(server: AgentServer, n: int) -> dict[str, Any]:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    cases = {
        "no_variants": ("plain", _body()),
        "variants_by_state": ("var", _body()),
        "variants_by_request": ("var", _body({"max_latency_ms": 50.0, "accuracy_level": 1})),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(20):  # warm-up
        for channel, body in cases.values():
            conn.request("POST", f"/v2/models/{channel}/infer", body)
            conn.getresponse().read()
    for _ in range(n):
        for name, (channel, body) in cases.items():  # interleaved: the same noise for each
            start = time.perf_counter()
            conn.request("POST", f"/v2/models/{channel}/infer", body)
            response = conn.getresponse()
            response.read()
            times[name].append((time.perf_counter() - start) * 1e6)
            if response.status != 200:
                raise RuntimeError(f"{name}: HTTP {response.status}")
    conn.close()
    base = statistics.median(times["no_variants"])
    return {
        name: {"median_us": round(statistics.median(t), 1),
               "p95_us": round(_percentile(t, 95), 1),
               "over_no_variants_median_us": round(statistics.median(t) - base, 1)}
        for name, t in times.items()
    }


class _Load:
    def __init__(self, url: str, threads: int = 2) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.addr = (host, int(port))
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.done: list[float] = []
        self.failed = 0
        self.variants: dict[str, int] = {}
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def _loop(self) -> None:
        conn = http.client.HTTPConnection(*self.addr, timeout=10)
        body = _body()
        while not self.stop.is_set():
            try:
                conn.request("POST", "/v2/models/var/infer", body)
                response = conn.getresponse()
                data = response.read()
                ok = response.status == 200
                variant = json.loads(data)["parameters"]["variant"] if ok else None
            except Exception:  # noqa: BLE001 - counted
                ok, variant = False, None
                conn = http.client.HTTPConnection(*self.addr, timeout=10)
            with self.lock:
                if ok:
                    self.done.append(time.perf_counter())
                    self.variants[variant] = self.variants.get(variant, 0) + 1
                else:
                    self.failed += 1

    def __enter__(self) -> _Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def longest_gap_ms(self) -> float:
        done = sorted(self.done)
        return max((b - a for a, b in zip(done, done[1:], strict=False)), default=0.0) * 1000


def bench_switches(bench: Bench, server: AgentServer, switches: int) -> dict[str, Any]:
    url = server.url
    with _Load(url) as quiet:
        time.sleep(1.0)
    baseline = {"requests": len(quiet.done), "failed": quiet.failed,
                "longest_gap_ms": round(quiet.longest_gap_ms(), 2)}
    events = server.events
    assert isinstance(events, MemoryEventSink)
    before = len(events.of_kind(VARIANT_SWITCHED))
    with _Load(url) as load:
        for i in range(switches):
            bench.battery(20 if i % 2 == 0 else 90)
            deadline = time.monotonic() + 5
            while len(events.of_kind(VARIANT_SWITCHED)) < before + i + 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the variant did not switch within 5 s")
                time.sleep(0.005)
            time.sleep(0.1)
    return {
        "switches": len(events.of_kind(VARIANT_SWITCHED)) - before,
        "requests": len(load.done), "failed": load.failed,
        "longest_gap_ms": round(load.longest_gap_ms(), 2),
        "answered_by": load.variants, "baseline_no_switch": baseline,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--picks", type=int, default=20000)
    parser.add_argument("--switches", type=int, default=20)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp))
        bench.install_channels()
        server = bench.server()
        try:
            with Quiet() as q:
                result = {
                    "pick": bench_pick(server, args.picks),
                    "round_trip": bench_round_trip(server, args.requests),
                    "switches": bench_switches(bench, server, args.switches),
                }
        finally:
            server.stop()
    result["machine"] = q.report()
    result["goals"] = {"failed_requests_during_switches": {
        "value": result["switches"]["failed"], "ok": result["switches"]["failed"] == 0}}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
