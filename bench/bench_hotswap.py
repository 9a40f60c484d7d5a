"""Hot swap, health rollback and per-request overhead of the device's inference server.

`python -m bench.bench_hotswap [--swaps N] [--hidden H]` prints one JSON object:

- swap: a load process (separate from the server, keep-alive connections in threads) sends
  predict requests without pause while N releases are installed (by the CLI in its own
  process, then again by the installer inside the server's process) and swapped in by the
  server. Failed requests (goal 0), the longest request and the longest gap between two
  completed requests during the swaps (goal < 50 ms), and within 100 ms of each swap,
  against the same figures measured just before under the same load with no swap.
- breach: a release that answers NaN is activated, clients send inputs that trigger it; the
  time from the response that completes the policy's minimum sample count (the breach) to
  the first response served by the previous release (goal < 1 s).
- overhead: one-row predict, median and p95 round trip through the server (JSON over TCP,
  binary tensors over TCP, JSON over the Unix socket) minus calling the runtime in-process
  on the same input, in microseconds.

Everything runs on 127.0.0.1 in a temporary state dir, with the real installer (smoke tests
included) and real onnxruntime.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import multiprocessing
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from satchel.agent.install.installer import install
from satchel.agent.provision import init_device
from satchel.agent.runtimes import get_runtime
from satchel.agent.server import AgentServer, MemoryEventSink, ServerConfig
from satchel.bundles.events import SERVING
from satchel.bundles.keys import SigningKey
from satchel.bundles.manifest import (
    Compatibility,
    HealthPolicy,
    Manifest,
    ModelEntry,
    SmokeTest,
    TensorInfo,
)
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import make_root, sign_root
from satchel.manager.build import BuildDefaults
from satchel.manager.external_data import shipped_model
from satchel.manager.modelgen import INPUT_NAME, make_mlp_weights, onnx_mlp, sample_inputs

CHANNEL = "bench"
AROUND_SWAP_S = 0.1  # seconds either side of a swap looked at on their own
POLICY = HealthPolicy(probation_s=600.0, min_samples=32, max_error_rate=0.0, max_nan_rate=0.0)


# --- a device with releases -------------------------------------------------------------


class BenchDevice:
    def __init__(self, root: Path, in_dim: int, hidden: int) -> None:
        self.root = root
        self.in_dim = in_dim
        self.hidden = hidden
        self.state_dir = root / "state"
        self.key = SigningKey.generate()
        root_key = SigningKey.generate()
        trust = sign_root(make_root(1, [root_key.public], [self.key.public]), [root_key])
        init_device(self.state_dir, trust, "bench-1", "bench")
        self.sequence = 0

    def model(self, seed: int, *, nan: bool = False) -> Path:
        weights = make_mlp_weights(self.in_dim, self.hidden, 10, seed=seed)
        path = self.root / f"model-{seed}-{nan}.onnx"
        return onnx_mlp(weights, path, nan_for_negative_first_feature=nan)

    def build(self, model_file: Path) -> tuple[Path, str]:
        """Build and sign the next release of `model_file`: (bundle path, version)."""
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
            health_policy=POLICY, compatibility=Compatibility(),
        )
        bundle = self.root / f"{version}.satchel"
        # the model as `satchel bundle build` ships it: above its size limit, the weights as
        # ONNX external data (model.onnx + model.onnx.data)
        limit = BuildDefaults().external_data_min_bytes
        with shipped_model(model_file, limit, self.root) as shipped:
            if shipped == model_file:
                payloads = [Payload("model.onnx", model_file)]
            else:  # model.onnx and model.onnx.data, alone in the build's temporary folder
                payloads = [Payload(p.name, p) for p in sorted(shipped.parent.iterdir())]
            payloads += [Payload("smoke/inputs.npz", _npz({INPUT_NAME: inputs})),
                         Payload("smoke/reference.npz", _npz(reference))]
            with open(bundle, "wb") as f:
                write_bundle(f, manifest, payloads, [self.key])
        return bundle, version

    def install(self, bundle: Path, *, in_process: bool) -> None:
        """Install as the service would (in this process) or as a technician's CLI does."""
        if in_process:
            install(self.state_dir, bundle)
            return
        subprocess.run(
            [sys.executable, "-m", "satchel.agent", "--state-dir", str(self.state_dir), "install",
             str(bundle)],
            check=True, capture_output=True,
        )


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def _wait_serving(server: AgentServer, version: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (serving := server.registry.get(CHANNEL)) is None or serving.key.version != version:
        if time.monotonic() > deadline:
            raise RuntimeError(f"release {version} was not serving after {timeout_s} s")
        time.sleep(0.005)


def _json_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": INPUT_NAME, "shape": list(x.shape),
                                   "datatype": "FP32", "data": x.ravel().tolist()}]}).encode()


def _post(conn: http.client.HTTPConnection, path: str, body: bytes,
          headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn.request("POST", path, body, headers or {})
    response = conn.getresponse()
    return response.status, response.read()


# --- the load process -------------------------------------------------------------------


def _load_worker(port: int, body: bytes, stop: Any, out: Any, threads: int) -> None:
    """Runs in its own process: `threads` keep-alive clients posting until `stop` is set;
    sends back (start, end, status, version) per request, monotonic clock (system-wide)."""
    records: list[tuple[float, float, int, str]] = []
    lock = threading.Lock()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while not stop.is_set():
            start = time.monotonic()
            try:
                status, data = _post(conn, f"/v2/models/{CHANNEL}/infer", body)
                version = json.loads(data).get("model_version", "") if status == 200 else ""
            except (OSError, http.client.HTTPException, ValueError):
                status, version = 0, ""
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            mine.append((start, time.monotonic(), status, version))
        with lock:
            records.extend(mine)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    out.put(records)


def _window_stats(records: list[tuple[float, float, int, str]], start: float,
                  end: float) -> dict[str, Any]:
    inside = sorted((r for r in records if start <= r[0] and r[1] <= end), key=lambda r: r[1])
    latencies = sorted((r[1] - r[0]) * 1000 for r in inside)
    gaps = [(b[1] - a[1]) * 1000 for a, b in zip(inside, inside[1:], strict=False)]
    return {
        "requests": len(inside),
        "failed": sum(1 for r in inside if r[2] != 200),
        "latency_p50_ms": round(_quantile(latencies, 0.5), 2),
        "latency_p99_ms": round(_quantile(latencies, 0.99), 2),
        "longest_request_ms": round(max(latencies, default=0.0), 2),
        "longest_gap_ms": round(max(gaps, default=0.0), 2),
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def bench_swaps(device: BenchDevice, server: AgentServer, events: MemoryEventSink,
                swaps: int, threads: int, baseline_s: float, in_process: bool) -> dict[str, Any]:
    port = int(server.url.rsplit(":", 1)[1])
    body = _json_body(np.abs(sample_inputs(device.in_dim, 1, 7)))
    # Bundles are built before the load starts: what is measured is install + swap.
    bundles = [device.build(device.model(seed=100 + i)) for i in range(swaps)]
    context = multiprocessing.get_context("spawn")
    stop, out = context.Event(), context.Queue()
    loader = context.Process(target=_load_worker, args=(port, body, stop, out, threads))
    loader.start()
    time.sleep(1.0)  # let the load process start and reach a steady rate
    baseline_start = time.monotonic()
    time.sleep(baseline_s)
    swap_start = time.monotonic()
    for bundle, version in bundles:
        device.install(bundle, in_process=in_process)
        _wait_serving(server, version)
        time.sleep(0.2)  # traffic on the new release before the next install
    swap_end = time.monotonic()
    stop.set()
    records = out.get(timeout=60)
    loader.join(30)
    swapped = events.of_kind(SERVING)[-swaps:]
    load_ms = [e.details["load_ms"] for e in swapped]
    versions = {r[3] for r in records if swap_start <= r[0]}
    wall_to_monotonic = time.monotonic() - time.time()
    around = [_window_stats(records, e.time + wall_to_monotonic - AROUND_SWAP_S,
                            e.time + wall_to_monotonic + AROUND_SWAP_S) for e in swapped]
    return {
        "installer": "in the server's process" if in_process else "CLI, separate process",
        "swaps": swaps,
        "client_threads": threads,
        "baseline_no_swap": _window_stats(records, baseline_start, swap_start),
        "during_swaps": _window_stats(records, swap_start, swap_end),
        "around_each_swap": {
            "window_ms": 2 * AROUND_SWAP_S * 1000,
            "failed": sum(w["failed"] for w in around),
            "longest_request_ms": max(w["longest_request_ms"] for w in around),
            "longest_gap_ms": max(w["longest_gap_ms"] for w in around),
        },
        "versions_served_during_swaps": len(versions),
        "release_load_and_warmup_ms_median": round(statistics.median(load_ms), 2),
    }


def bench_breach(device: BenchDevice, server: AgentServer, repeats: int) -> dict[str, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    path = f"/v2/models/{CHANNEL}/infer"
    timings = []
    for i in range(repeats):
        good_bundle, good = device.build(device.model(seed=200 + i))
        bad_bundle, bad = device.build(device.model(seed=300 + i, nan=True))
        device.install(good_bundle, in_process=True)
        device.install(bad_bundle, in_process=True)
        _wait_serving(server, bad)
        x = sample_inputs(device.in_dim, 1, i)
        x[0, 0] = -abs(x[0, 0]) - 0.1
        body = _json_body(x)
        breach_at = 0.0
        for _ in range(POLICY.min_samples):
            _post(conn, path, body)
            breach_at = time.monotonic()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status, data = _post(conn, path, body)
            if status == 200 and json.loads(data)["model_version"] == good:
                break
        else:
            raise RuntimeError(f"release {good} was not serving 60 s after the breach")
        timings.append((time.monotonic() - breach_at) * 1000)
    return {
        "repeats": repeats,
        "min_samples": POLICY.min_samples,
        "breach_to_previous_serving_ms_median": round(statistics.median(timings), 2),
        "breach_to_previous_serving_ms_max": round(max(timings), 2),
    }


def _raw_request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: localhost", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def _raw_round_trip(sock: socket.socket, request: bytes) -> int:
    """Send a prepared request on a keep-alive socket, read the whole response; the status.
    A minimal client, so that the round trip is mostly the server's."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ", 1)[1].split(b"\r\n", 1)[0])
    while len(rest) < length:
        rest += sock.recv(65536)
    return int(head[9:12])


def _timed_requests(port: int, unix_path: str, bodies: dict[str, Any], n: int,
                    out: Any) -> None:
    """Runs in its own process: n sequential requests per variant on one keep-alive
    connection, after 50 warm-up requests; sends back sorted round trips in microseconds."""
    path = f"/v2/models/{CHANNEL}/infer"
    results = {}
    for name, (body, headers) in bodies.items():
        if name.startswith("unix"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(unix_path)
        else:
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        request = _raw_request(path, body, headers)
        for _ in range(50):
            _raw_round_trip(sock, request)
        samples = []
        for _ in range(n):
            start = time.perf_counter()
            status = _raw_round_trip(sock, request)
            samples.append((time.perf_counter() - start) * 1e6)
            assert status == 200
        results[name] = sorted(samples)
        sock.close()
    out.put(results)


def bench_overhead(device: BenchDevice, server: AgentServer, n: int) -> dict[str, Any]:
    serving = server.registry.get(CHANNEL)
    assert serving is not None
    x = np.abs(sample_inputs(device.in_dim, 1, 11))
    header = json.dumps({"inputs": [{"name": INPUT_NAME, "shape": list(x.shape),
                                     "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    bodies = {
        "tcp_json": (_json_body(x), {}),
        "tcp_binary": (header + x.tobytes(),
                       {"Inference-Header-Content-Length": str(len(header))}),
        "unix_json": (_json_body(x), {}),
    }
    for _ in range(50):
        serving.model.run({INPUT_NAME: x})
    in_process = []
    for _ in range(n):
        start = time.perf_counter()
        serving.model.run({INPUT_NAME: x})
        in_process.append((time.perf_counter() - start) * 1e6)
    in_process.sort()
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    client = context.Process(target=_timed_requests, args=(
        int(server.url.rsplit(":", 1)[1]), str(server.unix_socket), bodies, n, out))
    client.start()
    variants = out.get(timeout=600)
    client.join(30)
    base50, base95 = _quantile(in_process, 0.5), _quantile(in_process, 0.95)
    result: dict[str, Any] = {
        "requests": n,
        "client": "minimal keep-alive client in a separate process, request bytes prepared",
        "in_process_us": {"median": round(base50, 1), "p95": round(base95, 1)},
    }
    for name, samples in variants.items():
        result[name] = {
            "round_trip_median_us": round(_quantile(samples, 0.5), 1),
            "round_trip_p95_us": round(_quantile(samples, 0.95), 1),
            "overhead_median_us": round(_quantile(samples, 0.5) - base50, 1),
            "overhead_p95_us": round(_quantile(samples, 0.95) - base95, 1),
        }
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="client threads of the load")
    parser.add_argument("--baseline-s", type=float, default=2.0)
    parser.add_argument("--breaches", type=int, default=3)
    parser.add_argument("--requests", type=int, default=2000, help="per overhead variant")
    parser.add_argument("--in-dim", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=512)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-hotswap-") as tmp:
        device = BenchDevice(Path(tmp), args.in_dim, args.hidden)
        device.install(device.build(device.model(seed=1))[0], in_process=True)
        events = MemoryEventSink()
        config = ServerConfig(poll_interval_s=0.1)
        server = AgentServer(device.state_dir, listen="127.0.0.1:0",
                             unix_socket=device.state_dir / "agent.sock",
                             event_sink=events, config=config).start()
        try:
            overhead = bench_overhead(device, server, args.requests)
            swap = bench_swaps(device, server, events, args.swaps, args.threads,
                               args.baseline_s, in_process=False)
            swap_in_process = bench_swaps(device, server, events, args.swaps, args.threads,
                                          args.baseline_s, in_process=True)
            breach = bench_breach(device, server, args.breaches)
        finally:
            server.stop()
    during = swap["during_swaps"]
    result = {
        "model": f"ONNX MLP {args.in_dim}-{args.hidden}-10, float32, batch 1",
        "swap": swap,
        "swap_installer_in_process": swap_in_process,
        "breach": breach,
        "overhead": overhead,
        "goals": {
            "failed_requests_during_swaps": {"value": during["failed"], "goal": 0,
                                             "met": during["failed"] == 0},
            "longest_pause_ms": {"value": during["longest_gap_ms"], "goal": "< 50",
                                 "met": during["longest_gap_ms"] < 50},
            "breach_to_previous_serving_ms": {
                "value": breach["breach_to_previous_serving_ms_max"], "goal": "< 1000",
                "met": breach["breach_to_previous_serving_ms_max"] < 1000},
        },
    }
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
