"""Serving throughput, tail latency, memory and start-up of the device's inference server,
against MLServer 1.7.1 on the same onnxruntime, measured in the same run.

`python -m bench.bench_serving [--seconds S] [--no-mlserver]` prints one JSON object.

Each server runs as its own process on 127.0.0.1 (`satchel-agent run` over a device state
with the model installed by the real installer; `mlserver start` with the onnxruntime model
class of `bench/mlserver_onnx.py`, in-process inference as MLServer runs it with
`parallel_workers: 0`, both with the agent's intra-op threads per run). The load comes from wrk in
another process: keep-alive connections posting the same JSON infer request for a fixed
time, at concurrency 1 and 8, after a warm-up, in rounds in which the servers take turns
(both are up throughout); each figure is the median over the rounds. Two models: a small
ONNX MLP 64-512-10 and a ~21 MB one (1024-5120-10), float32, realistic random weights,
batch 1.

Reported per server and model: requests/s, p50/p90/p99/max latency, server memory (VmHWM,
VmRSS of its processes), time from exec to ready, and the machine's idle share and the share
other processes took (`bench.machine`; the servers' CPU, read from /proc, counts as ours).
MLServer runs in its own venv, made on first use: bench/out/mlserver-venv.

The tail at one client is also measured by the tail probe of bench/tail_probe.py, a client
that never sleeps, against each server and against a floor server that answers a canned
response (what the host and the client alone add): wrk's own wake-ups put the floor's p99 at
several times its p50 on a VM.

Goals (issue 14): at concurrency 1, p99 <= 3x p50 on the small model (tail probe); at
concurrency 8,
requests/s >= 1.5x concurrency 1 on the 21 MB model; >= 3x MLServer's requests/s and <= 1/2
its memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_hotswap import CHANNEL, BenchDevice
from bench.machine import Quiet, wait_for_quiet
from bench.serving_profile import arithmetic, runtime_ms
from satchel.agent.server import DEFAULT_CONFIG
from satchel.manager.modelgen import INPUT_NAME, sample_inputs

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
MLSERVER_VENV = OUT / "mlserver-venv"
MLSERVER_VERSION = "1.7.1"
LUA = ROOT / "bench" / "serving.lua"
MODELS = {"small": (64, 512), "21mb": (1024, 5120)}  # name -> (in_dim, hidden); 10 outputs
CONCURRENCY = (1, 8)
GOAL_TAIL = 3.0  # p99 / p50 at concurrency 1, small model, at most (bench/tail_probe.py)
FLOOR = "floor"  # the canned server of bench/tail_probe.py
RUNTIME_S = 1.0  # seconds of in-process runs per round measuring the runtime's own time
GOAL_SCALING = 1.5  # requests/s at concurrency 8 / concurrency 1, 21 MB model, at least
GOAL_VS_MLSERVER_RPS = 3.0  # our requests/s / MLServer's, at least
GOAL_VS_MLSERVER_MEMORY = 0.5  # our peak memory / MLServer's, at most


# --- servers as processes ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tree(pid: int) -> list[int]:
    """`pid` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system, every thread) of `pid` and its live descendants."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
        except (OSError, ValueError, IndexError):
            continue
    return total


def _memory_mb(pid: int) -> dict[str, float]:
    """VmHWM and VmRSS of `pid` and its descendants, summed, in MB."""
    sums = {"VmHWM": 0.0, "VmRSS": 0.0}
    for p in _tree(pid):
        try:
            with open(f"/proc/{p}/status", encoding="ascii") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in sums:
                        sums[key] += int(value.split()[0]) / 1024
        except (OSError, ValueError):
            continue
    return {"peak_rss_mb": round(sums["VmHWM"], 1), "rss_mb": round(sums["VmRSS"], 1)}


@dataclass
class Running:
    name: str
    proc: subprocess.Popen[bytes]
    port: int
    ready_s: float

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, started: float, log: Path,
                timeout_s: float = 120.0) -> float:
    while time.perf_counter() - started < timeout_s:
        if proc.poll() is not None:
            last = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(
                f"the server exited with {proc.returncode} before it was ready: {last[0]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} not ready after {timeout_s} s")


def start_satchel(state_dir: Path, log: Path) -> Running:
    port = _free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "satchel.agent", "--state-dir", str(state_dir), "run",
         "--listen", f"127.0.0.1:{port}", "--no-socket"],
        stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )
    ready = _wait_ready(proc, f"http://127.0.0.1:{port}/v2/models/{CHANNEL}/ready", started, log)
    return Running("satchel", proc, port, ready)


def start_floor(log: Path) -> Running:
    """The canned server of bench/tail_probe.py: what the host and the client alone make of
    a request (the floor under every server's latency)."""
    port = _free_port()
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "bench.tail_probe", "serve", str(port)],
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"), cwd=ROOT)
    deadline = started + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.perf_counter() > deadline:
                proc.kill()
                raise RuntimeError("the floor server did not start") from None
            time.sleep(0.01)
    return Running(FLOOR, proc, port, time.perf_counter() - started)


def mlserver_python() -> Path:
    """MLServer's venv (made with pip on first use) with the agent's onnxruntime version."""
    import onnxruntime  # type: ignore[import-untyped]

    python = MLSERVER_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q",
                        f"mlserver=={MLSERVER_VERSION}", f"onnxruntime=={onnxruntime.__version__}"],
                       check=True)
    return python


def start_mlserver(model_file: Path, work: Path, log: Path) -> Running:
    python = mlserver_python()
    port = _free_port()
    repo = work / "mlserver-models"
    model_dir = repo / CHANNEL
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_file, model_dir / "model.onnx")
    parameters: dict[str, Any] = {"uri": "./model.onnx"}
    if DEFAULT_CONFIG.runtime_threads is not None:  # the same threads as the agent's
        parameters["extra"] = {"intra_op_num_threads": DEFAULT_CONFIG.runtime_threads}
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": CHANNEL, "implementation": "mlserver_onnx.OnnxModel", "parameters": parameters,
    }))
    (repo / "settings.json").write_text(json.dumps({
        "http_port": port, "grpc_port": _free_port(), "metrics_port": _free_port(),
        "host": "127.0.0.1", "parallel_workers": 0, "debug": False,
    }))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "bench"))
    started = time.perf_counter()
    proc = subprocess.Popen([str(python.parent / "mlserver"), "start", str(repo)],
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"), env=env,
                            cwd=repo)
    try:
        ready = _wait_ready(proc, f"http://127.0.0.1:{port}/v2/models/{CHANNEL}/ready", started,
                            log)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Running("mlserver", proc, port, ready)


# --- load ---------------------------------------------------------------------------------


def wrk(port: int, body_file: Path, connections: int, seconds: float) -> dict[str, Any]:
    """wrk in its own process (one thread), `connections` keep-alive connections."""
    proc = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
         "-s", str(LUA), f"http://127.0.0.1:{port}", "--", f"/v2/models/{CHANNEL}/infer",
         str(body_file)],
        capture_output=True, text=True, check=True,
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("{"))
    raw = json.loads(line)
    duration_s = raw["duration_us"] / 1e6
    return {
        "connections": connections,
        "requests": raw["requests"],
        "rps": round(raw["requests"] / duration_s, 1),
        "errors": raw["non2xx"] + raw["socket_errors"],
        "p50_ms": raw["p50_us"] / 1000,
        "p90_ms": raw["p90_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "max_ms": raw["max_us"] / 1000,
        "p99_over_p50": round(raw["p99_us"] / max(1, raw["p50_us"]), 2),
    }


def tail_probe(port: int, body_file: Path, seconds: float) -> dict[str, Any]:
    """bench/tail_probe.py's client, in its own process: one connection that never sleeps."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench.tail_probe", "probe", str(port),
         f"/v2/models/{CHANNEL}/infer", str(body_file), str(seconds)],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )
    return {"connections": 1, "errors": 0,  # the probe stops at any answer but 200
            **json.loads(proc.stdout.strip().splitlines()[-1])}


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One figure per measure over rounds of the same (server, concurrency): the medians."""
    out: dict[str, Any] = {"connections": runs[0]["connections"], "rounds": len(runs)}
    for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms"):
        if key in runs[0]:
            out[key] = round(statistics.median(r[key] for r in runs), 4)
    out["requests"] = sum(r["requests"] for r in runs)
    out["errors"] = sum(r["errors"] for r in runs)
    # each round's own p99/p50, then their median (not the medians' ratio: a round's p99
    # belongs with its p50)
    out["p99_over_p50_runs"] = [r["p99_over_p50"] for r in runs]
    out["p99_over_p50"] = round(statistics.median(out["p99_over_p50_runs"]), 2)
    if "rps" in runs[0]:
        out["rps_runs"] = [r["rps"] for r in runs]
    return out


def measure(servers: list[Running], body_file: Path, seconds: float, warmup_s: float,
            rounds: int, probe_s: float,
            runtime: Callable[[], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Warm every server up, then `rounds` rounds of every concurrency, the servers taking
    turns within each (a neighbour's burst or the host's drift then lands on both sides, not
    on whichever ran in that minute), and of the tail probe at one client; medians per
    server and concurrency, each server's memory, CPU and the machine. The floor server
    (FLOOR) takes its turn at one client only. `runtime()` (the runtime's own time per run,
    in-process) is measured once per round, as the machine is then, under "runtime"."""
    for server in servers:
        wrk(server.port, body_file, max(CONCURRENCY), warmup_s)
    wait_for_quiet(timeout_s=30.0)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {
        s.name: {**{f"c{c}": [] for c in CONCURRENCY}, "probe_c1": []} for s in servers}
    own_cpu = {s.name: 0.0 for s in servers}
    runtimes: list[dict[str, Any]] = []
    with Quiet() as quiet:
        for _ in range(rounds):
            runtimes.append(runtime())
            for c in CONCURRENCY:
                for server in servers:
                    if server.name == FLOOR and c != 1:
                        continue
                    before = _cpu_s(server.proc.pid)
                    runs[server.name][f"c{c}"].append(
                        wrk(server.port, body_file, c, seconds / rounds))
                    own_cpu[server.name] += _cpu_s(server.proc.pid) - before
            for server in servers:
                before = _cpu_s(server.proc.pid)
                runs[server.name]["probe_c1"].append(
                    tail_probe(server.port, body_file, probe_s / rounds))
                own_cpu[server.name] += _cpu_s(server.proc.pid) - before
        quiet.extra_own_cpu_s = sum(own_cpu.values())
    machine = quiet.report()
    return {
        "runtime": {
            "mean_ms": round(statistics.median(r["mean_ms"] for r in runtimes), 4),
            "p50_ms": round(statistics.median(r["p50_ms"] for r in runtimes), 4),
            "mean_ms_rounds": [r["mean_ms"] for r in runtimes],
        },
        **{s.name: {
            **{key: _median_run(value) for key, value in runs[s.name].items() if value},
            "startup_to_ready_s": round(s.ready_s, 3),
            "memory": _memory_mb(s.proc.pid),
            "server_cpu_s": round(own_cpu[s.name], 2),
            "machine": machine,
        } for s in servers},
    }


def bench_model(name: str, in_dim: int, hidden: int, work: Path, seconds: float,
                warmup_s: float, with_mlserver: bool, rounds: int,
                probe_s: float) -> dict[str, Any]:
    device = BenchDevice(work / name, in_dim, hidden)
    model_file = device.model(seed=1)
    device.install(device.build(model_file)[0], in_process=True)
    x = np.abs(sample_inputs(in_dim, 1, 7))
    body_file = work / f"{name}-body.json"
    body_file.write_text(json.dumps({"inputs": [{
        "name": INPUT_NAME, "shape": list(x.shape), "datatype": "FP32",
        "data": x.ravel().tolist()}]}))
    result: dict[str, Any] = {
        "model": f"ONNX MLP {in_dim}-{hidden}-10, float32, batch 1",
        "model_mb": round(model_file.stat().st_size / 1e6, 1),
    }
    servers = [start_satchel(device.state_dir, work / f"{name}-satchel.log")]
    try:
        if with_mlserver:
            servers.append(start_mlserver(model_file, work / f"{name}-mls",
                                          work / f"{name}-mlserver.log"))
        servers.append(start_floor(work / f"{name}-floor.log"))
        result.update(measure(  # the runtime's own time: bench/serving_profile.py
            servers, body_file, seconds, warmup_s, rounds, probe_s,
            lambda: runtime_ms(model_file, in_dim, seconds=RUNTIME_S)))
    finally:
        for server in servers:
            server.stop()
    return result


# --- goals --------------------------------------------------------------------------------


def _ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float]:
    ratios = {f"rps_c{c}": round(ours[f"c{c}"]["rps"] / theirs[f"c{c}"]["rps"], 2)
              for c in CONCURRENCY}
    ratios["peak_memory"] = round(
        ours["memory"]["peak_rss_mb"] / theirs["memory"]["peak_rss_mb"], 3)
    ratios["startup"] = round(theirs["startup_to_ready_s"] / ours["startup_to_ready_s"], 2)
    return ratios


def why_rps_ratio(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per model, the requests/s ratio against MLServer at one client split into the
    runtime's time and each server's overhead (bench/serving_profile.py)."""
    return {name: arithmetic(m["runtime"]["mean_ms"], m["satchel"]["c1"]["rps"],
                             m["mlserver"]["c1"]["rps"],
                             m[FLOOR]["c1"]["rps"] if FLOOR in m else None)
            for name, m in models.items() if "mlserver" in m and "runtime" in m}


def notes(models: dict[str, dict[str, Any]], why: dict[str, Any]) -> list[str]:
    """The rendered explanation of the requests/s ratio (docs/BENCHMARKS.md)."""
    if not why:
        return []
    lines = [
        "Why the requests/s ratio against MLServer is bounded at one client: both servers "
        "call the same onnxruntime `run`, whose time R per request (measured in-process on "
        "the same request by bench/serving_profile.py, 1 s in every round, as the machine "
        "was then: the median of the rounds' means) neither server can shorten. With O "
        "each server's own time per request beyond R (1000 / requests/s - R), the ratio is "
        "(R + O_mlserver) / (R + O_satchel), so it cannot exceed (R + O_mlserver) / R even "
        "with no overhead of ours at all. Part of each O is the client's and the host's "
        "(F: the floor server's time per request under the same wrk); the last column "
        "compares what is left, each server's own time:",
        "",
        "| model | R (runtime) | R in each round | satchel per request | "
        "MLServer per request | O_satchel | O_mlserver | ratio | bound at O_satchel = 0 | "
        "ratio on overhead alone | F | "
        "ratio on each server's own time (O - F) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, a in why.items():
        lines.append(
            f"| {models[name]['model']} ({models[name]['model_mb']} MB) | "
            f"{a['runtime_ms']:.3f} ms | "
            f"{', '.join(f'{x:.3f}' for x in models[name]['runtime']['mean_ms_rounds'])} | "
            f"{a['ours_ms']:.3f} ms | {a['theirs_ms']:.3f} ms | "
            f"{a['overhead_ours_ms']:.3f} ms | {a['overhead_theirs_ms']:.3f} ms | "
            f"{a['ratio']:.2f}x | {a['ratio_bound_at_zero_overhead']:.2f}x | "
            f"{a['ratio_overhead_only']:.2f}x | "
            + (f"{a['floor_ms']:.3f} ms | **{a['ratio_own_overhead']:.2f}x** |"
               if "floor_ms" in a else "- | - |"))
    def bound(a: dict[str, float]) -> float:  # the best ratio any server of ours could get
        return a.get("ratio_bound_at_no_own_time", a["ratio_bound_at_zero_overhead"])

    for n, a in why.items():
        if "ratio_bound_at_no_own_time" in a:
            lines += ["", f"On {models[n]['model']}, a server of ours spending no time of its "
                      f"own (R + F = {a['runtime_ms'] + a['floor_ms']:.3f} ms a request) would "
                      f"reach {a['ratio_bound_at_no_own_time']:.2f}x MLServer's requests/s at "
                      "one client."]
    compute_bound = [n for n, a in why.items() if bound(a) < GOAL_VS_MLSERVER_RPS]
    if compute_bound:
        lines += ["", "On " + ", ".join(models[n]["model"] for n in compute_bound)
                  + f" the {GOAL_VS_MLSERVER_RPS:g}x goal at one client is out of reach by "
                  "construction: the runtime's run and the client's own time cap the ratio "
                  "below it; what the server design controls is its own time, compared in "
                  "the last column."]
    overhead_bound = [n for n, a in why.items()
                      if bound(a) >= GOAL_VS_MLSERVER_RPS and a["ratio"] < GOAL_VS_MLSERVER_RPS]
    for n in overhead_bound:
        a = why[n]
        lines += ["", f"On {models[n]['model']} the runtime is {a['runtime_share_ours']:.0%} "
                  f"of our time per request: the ratio there is the overheads' "
                  f"({a['overhead_theirs_ms']:.3f} / {a['overhead_ours_ms']:.3f} ms), short "
                  f"of {GOAL_VS_MLSERVER_RPS:g}x at one client."]
    return lines


def tail_notes(models: dict[str, dict[str, Any]]) -> list[str]:
    """The rendered tail at one client: wrk's and the tail probe's, for every server and the
    floor (docs/BENCHMARKS.md)."""
    lines = [
        "The tail at one client, measured two ways in the same rounds (medians): by wrk, "
        "whose thread sleeps between requests and wakes on each answer, and by the tail "
        "probe of bench/tail_probe.py, a client that never sleeps. The floor is a server "
        "that answers a canned response without reading the request: what the host and "
        "the client alone add. Under wrk even the floor's p99 is several times its p50 (the "
        "wake-up of an idle vCPU), so the goal is judged on the probe. Latencies are medians "
        "over the rounds; p99/p50 is the median of each round's own ratio:",
        "",
        "| model | server | wrk p50 | wrk p99 | wrk p99/p50 | probe p50 | probe p99 | "
        "probe p99/p50: median (each round) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in models.values():
        for server in ("satchel", "mlserver", FLOOR):
            if server not in m or "probe_c1" not in m[server]:
                continue
            w, p = m[server]["c1"], m[server]["probe_c1"]
            rounds = ", ".join(f"{x:.1f}" for x in p["p99_over_p50_runs"])
            lines.append(
                f"| {m['model']} ({m['model_mb']} MB) | {server} | {w['p50_ms']:.3f} ms | "
                f"{w['p99_ms']:.3f} ms | {w['p99_over_p50']:.1f} | {p['p50_ms']:.3f} ms | "
                f"{p['p99_ms']:.3f} ms | **{p['p99_over_p50']:.1f}** ({rounds}) |")
    return lines


def goals(models: dict[str, dict[str, Any]]) -> dict[str, Any]:
    small, big = models["small"]["satchel"], models["21mb"]["satchel"]
    tail = small["probe_c1"]["p99_over_p50"]
    out: dict[str, Any] = {
        "tail_small_c1": {"value": tail, "goal": f"<= {GOAL_TAIL} (tail probe)",
                          "ok": tail <= GOAL_TAIL},
    }
    scaling = round(big["c8"]["rps"] / big["c1"]["rps"], 2)
    out["scaling_21mb_c8_over_c1"] = {"value": scaling, "goal": f">= {GOAL_SCALING}",
                                      "ok": scaling >= GOAL_SCALING}
    if all("mlserver" in m for m in models.values()):
        rps = min(m["vs_mlserver"][f"rps_c{c}"] for m in models.values() for c in CONCURRENCY)
        memory = max(m["vs_mlserver"]["peak_memory"] for m in models.values())
        out["rps_vs_mlserver_min"] = {"value": rps, "goal": f">= {GOAL_VS_MLSERVER_RPS}",
                                      "ok": rps >= GOAL_VS_MLSERVER_RPS}
        out["peak_memory_vs_mlserver_max"] = {
            "value": memory, "goal": f"<= {GOAL_VS_MLSERVER_MEMORY}",
            "ok": memory <= GOAL_VS_MLSERVER_MEMORY}
    out["ok"] = all(g["ok"] for g in out.values() if isinstance(g, dict))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=15.0,
                        help="per server and concurrency, over all rounds")
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds per concurrency, the servers taking turns in each")
    parser.add_argument("--probe-seconds", type=float, default=10.0,
                        help="of the tail probe per server, over all rounds")
    parser.add_argument("--no-mlserver", action="store_true")
    parser.add_argument("--models", nargs="*", choices=sorted(MODELS), default=list(MODELS))
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    models: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        for name in args.models:
            in_dim, hidden = MODELS[name]
            r = bench_model(name, in_dim, hidden, Path(tmp), args.seconds, args.warmup_s,
                            not args.no_mlserver, args.rounds, args.probe_seconds)
            if "mlserver" in r:
                r["vs_mlserver"] = _ratios(r["satchel"], r["mlserver"])
            models[name] = r
    result: dict[str, Any] = {
        "load": f"wrk, 1 thread, keep-alive, {args.seconds:g} s per concurrency "
                f"{', '.join(map(str, CONCURRENCY))} in {args.rounds} rounds, the servers "
                "taking turns in each (medians), same JSON request; the tail probe "
                f"(bench/tail_probe.py) {args.probe_seconds:g} s per server in the same rounds",
        "mlserver": f"MLServer {MLSERVER_VERSION}, parallel_workers 0, bench/mlserver_onnx.py",
        "runtime_threads": DEFAULT_CONFIG.runtime_threads or "onnxruntime's default",
        "models": models,
    }
    if set(models) == set(MODELS):
        result["goals"] = goals(models)
    result["rps_ratio_at_one_client"] = why_rps_ratio(models)
    result["notes"] = [*tail_notes(models), "",
                       *notes(models, result["rps_ratio_at_one_client"])]
    json.dump(result, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
