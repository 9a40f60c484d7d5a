"""Staged activation on the device (issue 18): the cost of shadowing, and the ramp's fallback.

`python -m bench.bench_staging [--seconds S] [--hidden H] [--repeats N]` prints one JSON
object:

- shadow_cost: the active release's p95 round trip under a steady load (2 client threads,
  keep-alive, in a process of their own) on a server judging a candidate in shadow at a
  10% fraction, against a server with no candidate, both in this process, measured in
  alternating phases of S seconds so both see the same machine (pooled, and the median of
  the per-pair ratios, robust to a phase another program disturbed). Goal: under 10% more p95
  on 2 cores.
- ramp_fallback: a release that turns NaN on field inputs ramps at 50%; the time from the
  NaN answer that breaches its policy to the next answer (by the previous release), and
  whether any later request reached the candidate; against today's probation rollback of
  the same release activated at once (`bench_hotswap`'s breach: min_samples answers, then
  the rollback). Goal: under 1 s, median.

Everything runs on 127.0.0.1 with the real installer, smoke tests and onnxruntime.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_hotswap import CHANNEL, POLICY, BenchDevice, _json_body, _npz, _post
from satchel.agent.config import AgentConfig
from satchel.agent.install.installer import install
from satchel.agent.runtimes import get_runtime
from satchel.agent.server import AgentServer, MemoryEventSink, ServerConfig
from satchel.bundles.activation import ActivationPolicy, build_policy
from satchel.bundles.manifest import Compatibility, Manifest, ModelEntry, SmokeTest, TensorInfo
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.timeutil import utcnow
from satchel.manager.modelgen import INPUT_NAME, sample_inputs

FAST = ServerConfig(poll_interval_s=0.05, monitor_interval_s=0.2, health_flush_s=5.0)


class StagedDevice(BenchDevice):
    def build_staged(self, model_file: Path,
                     activation: ActivationPolicy | None) -> tuple[Path, str]:
        self.sequence += 1
        version = f"1.0.{self.sequence}"
        model = get_runtime("onnxruntime").load(model_file)
        inputs = np.abs(sample_inputs(self.in_dim, 4, self.sequence)) + 0.1
        reference = model.run({INPUT_NAME: inputs})
        manifest = Manifest(
            name=CHANNEL, version=version, sequence=self.sequence, created=utcnow(), files=(),
            models=(ModelEntry(
                "main", "onnxruntime", "model.onnx",
                tuple(TensorInfo(s.name, s.datatype, s.shape) for s in model.inputs),
                tuple(TensorInfo(s.name, s.datatype, s.shape) for s in model.outputs),
            ),),
            smoke_tests=(SmokeTest("main", "smoke/inputs.npz", "smoke/reference.npz",
                                   max_abs_error=1e-3, warmup_runs=1, latency_runs=5),),
            health_policy=POLICY, compatibility=Compatibility(), activation=activation,
        )
        bundle = self.root / f"{version}.satchel"
        payloads = [Payload("model.onnx", model_file),
                    Payload("smoke/inputs.npz", _npz({INPUT_NAME: inputs})),
                    Payload("smoke/reference.npz", _npz(reference))]
        with open(bundle, "wb") as f:
            write_bundle(f, manifest, payloads, [self.key])
        return bundle, version


def _port(server: AgentServer) -> int:
    return int(server.url.rsplit(":", 1)[1])


def _load_process(port: int, bodies: list[bytes], seconds: float, threads: int,
                  out: Any) -> None:
    """Runs in its own process (clients are other programs on a device): `threads`
    keep-alive clients sending `bodies` for `seconds`; sends back the round trips (ms)."""
    times: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port)
        mine = []
        i = k
        while time.monotonic() < stop:
            started = time.perf_counter()
            status, _ = _post(conn, f"/v2/models/{CHANNEL}/infer", bodies[i % len(bodies)])
            if status == 200:
                mine.append((time.perf_counter() - started) * 1000)
            i += 1
        conn.close()
        with lock:
            times.extend(mine)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(times)


def _load(port: int, bodies: list[bytes], seconds: float, threads: int) -> list[float]:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    process = context.Process(target=_load_process, args=(port, bodies, seconds, threads, out))
    process.start()
    times: list[float] = out.get(timeout=seconds + 120)
    process.join()
    return times


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * 0.95) - 1)]


def bench_shadow_cost(root: Path, hidden: int, seconds: float, phases: int) -> dict[str, Any]:
    plain = StagedDevice(root / "plain", 64, hidden)
    shadowed = StagedDevice(root / "shadowed", 64, hidden)
    servers = []
    for device, staged in ((plain, False), (shadowed, True)):
        device.root.mkdir(exist_ok=True)
        bundle, _ = device.build_staged(device.model(seed=1), None)
        install(device.state_dir, bundle)
        if staged:
            policy = build_policy(shadow_requests=10**7, shadow_fraction=0.1)
            bundle, _ = device.build_staged(device.model(seed=1), policy)
            install(device.state_dir, bundle, config=AgentConfig())
        servers.append(AgentServer(device.state_dir, listen="127.0.0.1:0", unix_socket=None,
                                   event_sink=MemoryEventSink(), config=FAST).start())
    try:
        deadline = time.monotonic() + 30
        while servers[1].registry.candidate(CHANNEL) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the candidate was not loaded")
            time.sleep(0.01)
        bodies = [_json_body(sample_inputs(64, 1, i)) for i in range(64)]
        for server in servers:
            _load(_port(server), bodies, 1.0, 2)  # warm up
        base: list[float] = []
        shadow: list[float] = []
        ratios: list[float] = []  # per pair of neighbouring phases: robust to a noisy one
        for k in range(phases):
            order = (0, 1) if k % 2 == 0 else (1, 0)  # neither always runs first
            got = {i: _load(_port(servers[i]), bodies, seconds, 2) for i in order}
            base += got[0]
            shadow += got[1]
            ratios.append(_p95(got[1]) / _p95(got[0]))
        staging = servers[1].registry.candidate(CHANNEL)
        figures = staging.shadow_figures()
    finally:
        for server in servers:
            server.stop()
    p95_base, p95_shadow = _p95(base), _p95(shadow)
    return {
        "hidden": hidden,
        "seconds_per_phase": seconds,
        "phases": phases,
        "requests_without": len(base),
        "requests_with": len(shadow),
        "p95_ms_without_shadow": round(p95_base, 3),
        "p95_ms_with_shadow_10pct": round(p95_shadow, 3),
        "p95_increase": round(p95_shadow / p95_base - 1.0, 4),
        "p95_increase_median_of_pairs": round(statistics.median(ratios) - 1.0, 4),
        "median_ms_without": round(statistics.median(base), 3),
        "median_ms_with": round(statistics.median(shadow), 3),
        "shadow_compared": figures["compared"],
        "shadow_dropped": figures["dropped"],
    }


def _first_nan_then_back(conn: http.client.HTTPConnection, bodies: list[bytes], bad: str,
                         good: str) -> tuple[float, int]:
    """Send NaN-triggering requests until one is answered NaN by `bad`; then the ms until
    the next answer by `good`, and how many later answers (of 50) came from `bad`."""
    path = f"/v2/models/{CHANNEL}/infer"
    deadline = time.monotonic() + 60
    breach_at = None
    i = 0
    while breach_at is None:
        if time.monotonic() > deadline:
            raise RuntimeError("no NaN answer")
        _, data = _post(conn, path, bodies[i % len(bodies)])
        i += 1
        if json.loads(data)["model_version"] == bad:
            breach_at = time.perf_counter()
    while True:
        if time.monotonic() > deadline:
            raise RuntimeError("the previous release never answered again")
        _, data = _post(conn, path, bodies[i % len(bodies)])
        i += 1
        if json.loads(data)["model_version"] == good:
            back_ms = (time.perf_counter() - breach_at) * 1000
            break
    later = 0
    for _ in range(50):
        _, data = _post(conn, path, bodies[i % len(bodies)])
        i += 1
        later += json.loads(data)["model_version"] == bad
    return back_ms, later


def bench_ramp_fallback(root: Path, hidden: int, repeats: int) -> dict[str, Any]:
    device = StagedDevice(root / "ramp", 64, hidden)
    device.root.mkdir(exist_ok=True)
    server = AgentServer(device.state_dir, listen="127.0.0.1:0", unix_socket=None,
                         event_sink=MemoryEventSink(), config=FAST)
    ramp_ms: list[float] = []
    rollback_ms: list[float] = []
    leaked = 0
    conn = None
    try:
        for i in range(repeats):
            bundle, good = device.build_staged(device.model(seed=10 + i), None)
            install(device.state_dir, bundle)
            if not server.registry.loaded_once.is_set():
                server.start()
                conn = http.client.HTTPConnection("127.0.0.1", _port(server))
            server.reload_now()
            x = sample_inputs(64, 8, i)
            x[:, 0] = -np.abs(x[:, 0]) - 0.1
            bodies = [_json_body(x[k : k + 1]) for k in range(8)]
            assert conn is not None
            # the ramp: the NaN release answers half the requests until its first NaN
            policy = build_policy(ramp="50,100", ramp_step_requests=10**6)
            bundle, bad = device.build_staged(device.model(seed=10 + i, nan=True), policy)
            install(device.state_dir, bundle)
            server.reload_now()
            while server.registry.candidate(CHANNEL) is None:
                time.sleep(0.005)
            back, later = _first_nan_then_back(conn, bodies, bad, good)
            ramp_ms.append(back)
            leaked += later
            while server.registry.candidate(CHANNEL) is not None:
                time.sleep(0.005)
            # today's way: the same release activated at once, rolled back by probation
            bundle, bad = device.build_staged(device.model(seed=10 + i, nan=True), None)
            install(device.state_dir, bundle)
            server.reload_now()
            while (s := server.registry.get(CHANNEL)) is None or s.key.version != bad:
                time.sleep(0.005)
            path = f"/v2/models/{CHANNEL}/infer"
            for k in range(POLICY.min_samples - 1):
                _post(conn, path, bodies[k % 8])
            back, _ = _first_nan_then_back(conn, bodies, bad, good)
            rollback_ms.append(back)
    finally:
        if conn is not None:
            conn.close()
        server.stop()
    return {
        "repeats": repeats,
        "ramp_breach_to_previous_ms_median": round(statistics.median(ramp_ms), 3),
        "ramp_breach_to_previous_ms_max": round(max(ramp_ms), 3),
        "candidate_answers_after_breach": leaked,
        "probation_rollback_ms_median": round(statistics.median(rollback_ms), 3),
        "nan_answers_ramp": 1,
        "nan_answers_probation": POLICY.min_samples,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--phases", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="satchel-bench-staging-") as tmp:
        root = Path(tmp)
        result = {
            "shadow_cost": bench_shadow_cost(root, args.hidden, args.seconds, args.phases),
            "ramp_fallback": bench_ramp_fallback(root, args.hidden, args.repeats),
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
