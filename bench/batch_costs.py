"""What a batch costs onnxruntime, in-process: rows/s per batch size, with the weights
prepacked and not (the agent's mapped weights when one tensor holds over 1/8 of them:
agent.runtimes.onnx turns prepacking off), one and two threads calling `run`.

Why agent/server/batching.py learns per model whether to batch: with prepacking off, a
batched matrix product packs the whole weight matrix again, so small batches cost more per
row than single runs.

`python -m bench.batch_costs [--seconds S]` prints one JSON object: the bench_serving 21 MB
MLP (1024-5120-10, float32), 1 intra-op thread per session as the agent runs it, and the
machine's idle share while it ran. Then a stack of 8 like layers (2048 x 2048 float32, 128
MiB, no tensor over 1/8 of the weights) loaded as the agent loads it (its weights mapped
from the file, prepacked: agent.runtimes.onnx) and with prepacking forced off, each in a
fresh process: rows/s, and the memory it grows by at its peak and once it has run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import Quiet, wait_for_quiet
from satchel.manager.modelgen import INPUT_NAME, make_mlp_weights, onnx_matmul_stack, onnx_mlp

BATCHES = (1, 2, 4, 8)
CALLERS = (1, 2)
STACK = (8, 2048)  # layers, width

# In a fresh process: the agent's loading of a model (prepacking as it decides, or forced
# off), its memory growth at the peak and once run, then rows/s per batch size.
AS_THE_AGENT_LOADS = """
import json, sys, time
import numpy as np, onnxruntime
from pathlib import Path
from satchel.agent.runtimes import onnx

path, prepack, width, seconds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
if prepack == "off":
    onnx._prepack_pays = lambda model: False
onnx._EXTERNAL_DATA_SCAN_BYTES = 0  # any size: mapped as a large model is

def kib(name):
    for line in open("/proc/self/status"):
        if line.startswith(name + ":"):
            return int(line.split()[1])

open("/proc/self/clear_refs", "w").write("5")
before = kib("VmRSS")
model = onnx.OnnxRuntimeAdapter().load(path, threads=1)
model.run({"input": np.ones((1, width), np.float32)})
out = {"peak_growth_mib": round((kib("VmHWM") - before) / 1024, 1),
       "in_use_growth_mib": round((kib("VmRSS") - before) / 1024, 1)}
for batch in (1, 2, 4, 8):
    x = np.ones((batch, width), np.float32)
    model.run({"input": x})
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        model.run({"input": x})
        runs += 1
    out[f"batch {batch}"] = round(runs * batch / (time.perf_counter() - started))
print(json.dumps(out))
"""


def as_the_agent_loads(model: Path, prepack: str, width: int, seconds: float) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", AS_THE_AGENT_LOADS, str(model), prepack,
                           str(width), str(seconds)],
                          capture_output=True, text=True, check=True, timeout=600)
    return dict(json.loads(done.stdout))


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
            layers, width = STACK
            stack = onnx_matmul_stack(Path(tmp) / "stack.onnx", layers, width)
            out["stack"] = {
                "model": f"ONNX {layers} x MatMul {width}x{width} + ReLU, float32 "
                         f"({stack.stat().st_size >> 20} MiB)",
                "as the agent loads it (prepacked)": as_the_agent_loads(
                    stack, "on", width, args.seconds),
                "prepacking off": as_the_agent_loads(stack, "off", width, args.seconds),
            }
        out["machine"] = quiet.report()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
