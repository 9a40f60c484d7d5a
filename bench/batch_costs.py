"""What a batch costs onnxruntime, in-process: rows/s per batch size, with the weights
prepacked (a model loaded from its own bytes) and not (the agent's mapped weights:
agent.runtimes.onnx turns prepacking off), one and two threads calling `run`.

Why agent/server/batching.py learns per model whether to batch: with prepacking off, a
batched matrix product packs the whole weight matrix again, so small batches cost more per
row than single runs.

`python -m bench.batch_costs [--seconds S]` prints one JSON object: the bench_serving 21 MB
MLP (1024-5120-10, float32), 1 intra-op thread per session as the agent runs it, and the
machine's idle share while it ran.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import Quiet, wait_for_quiet
from satchel.manager.modelgen import INPUT_NAME, make_mlp_weights, onnx_mlp

BATCHES = (1, 2, 4, 8)
CALLERS = (1, 2)


def _session(model: Path, prepack: bool) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    if not prepack:
        options.add_session_config_entry("session.disable_prepacking", "1")
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def rows_per_s(session: Any, batch: int, callers: int, seconds: float) -> float:
    """Rows/s of `callers` threads each running batches of `batch` rows for `seconds`."""
    x = np.abs(np.random.default_rng(7).standard_normal((batch, 1024), dtype=np.float32))
    for _ in range(5):
        session.run(None, {INPUT_NAME: x})
    done = [0] * callers
    deadline = time.perf_counter() + seconds

    def call(i: int) -> None:
        while time.perf_counter() < deadline:
            session.run(None, {INPUT_NAME: x})
            done[i] += batch

    threads = [threading.Thread(target=call, args=(i,)) for i in range(callers)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measure")
    args = parser.parse_args(argv)
    out: dict[str, Any] = {"model": "ONNX MLP 1024-5120-10, float32 (21 MB)",
                           "intra_op_threads": 1}
    with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
        model = onnx_mlp(make_mlp_weights(1024, 5120, 10, seed=1), Path(tmp) / "model.onnx")
        wait_for_quiet(timeout_s=30.0)
        with Quiet() as quiet:
            for prepack in (False, True):
                session = _session(model, prepack)
                key = "prepacked" if prepack else "not prepacked (the agent's mapped weights)"
                out[key] = {
                    f"{callers} caller(s)": {
                        f"batch {b}": round(rows_per_s(session, b, callers, args.seconds))
                        for b in BATCHES}
                    for callers in CALLERS}
        out["machine"] = quiet.report()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
