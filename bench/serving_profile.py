"""How much of a served request is the runtime's own work: onnxruntime's `run` on the bench's
request, in-process, as the agent's server and MLServer both call it (same runtime, same
intra-op threads), so what each server adds per request is its time per request minus this.

`bench/bench_serving.py` turns it into the arithmetic of the requests/s ratio against MLServer
at one client (issue 14): with R the runtime's time and O_ours, O_theirs each server's own
overhead per request, the ratio is (R + O_theirs) / (R + O_ours), so it can never exceed
(R + O_theirs) / R however small our overhead gets; on overhead alone it is O_theirs / O_ours.

Run alone: `python -m bench.serving_profile MODEL.onnx IN_DIM [--seconds 3]`; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from satchel.agent.runtimes import get_runtime
from satchel.agent.server import DEFAULT_CONFIG
from satchel.manager.modelgen import INPUT_NAME, sample_inputs

WARMUP_RUNS = 50
MAX_RUNS = 20_000


def runtime_ms(model_file: Path, in_dim: int, seconds: float = 3.0) -> dict[str, Any]:
    """onnxruntime's own time per run of the bench's request (batch 1): mean and median ms
    over runs for `seconds` (at most MAX_RUNS), after a warm-up."""
    x = np.abs(sample_inputs(in_dim, 1, 7))  # the request bench_serving posts
    with get_runtime("onnxruntime").load(model_file,
                                         threads=DEFAULT_CONFIG.runtime_threads) as model:
        for _ in range(WARMUP_RUNS):
            model.run({INPUT_NAME: x})
        times: list[float] = []
        deadline = time.perf_counter() + seconds
        while len(times) < MAX_RUNS and time.perf_counter() < deadline:
            start = time.perf_counter()
            model.run({INPUT_NAME: x})
            times.append((time.perf_counter() - start) * 1000.0)
    return {"mean_ms": round(statistics.fmean(times), 4),
            "p50_ms": round(statistics.median(times), 4), "runs": len(times)}


def arithmetic(runtime: float, ours_rps: float, theirs_rps: float,
               floor_rps: float | None = None) -> dict[str, float]:
    """The requests/s ratio at one client, split into runtime and overheads (ms per request;
    each server's time per request is 1000 / its requests/s). With `floor_rps`, the
    requests/s of a server that does no work (bench/tail_probe.py) under the same client,
    the overheads are also split into the client's and the host's share (the floor's time
    per request) and each server's own."""
    ours, theirs = 1000.0 / ours_rps, 1000.0 / theirs_rps
    o_ours, o_theirs = max(ours - runtime, 1e-9), max(theirs - runtime, 0.0)
    own: dict[str, float] = {}
    if floor_rps:
        floor = 1000.0 / floor_rps
        own_ours, own_theirs = max(o_ours - floor, 1e-9), max(o_theirs - floor, 0.0)
        own = {"floor_ms": round(floor, 4), "own_ours_ms": round(own_ours, 4),
               "own_theirs_ms": round(own_theirs, 4),
               "ratio_own_overhead": round(own_theirs / own_ours, 2),
               # a server of ours doing nothing but the run: R + F per request
               "ratio_bound_at_no_own_time": round(theirs / (runtime + floor), 2)}
    return {**own,
        "runtime_ms": round(runtime, 4),
        "ours_ms": round(ours, 4),
        "theirs_ms": round(theirs, 4),
        "overhead_ours_ms": round(o_ours, 4),
        "overhead_theirs_ms": round(o_theirs, 4),
        "ratio": round(theirs / ours, 2),  # = (R + O_theirs) / (R + O_ours)
        "ratio_overhead_only": round(o_theirs / o_ours, 2),
        "ratio_bound_at_zero_overhead": round(theirs / runtime, 2),  # (R + O_theirs) / R
        "runtime_share_ours": round(runtime / ours, 3),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("in_dim", type=int)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args(argv)
    print(json.dumps(runtime_ms(args.model, args.in_dim, args.seconds), indent=2))


if __name__ == "__main__":
    main()
