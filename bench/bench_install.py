"""Device install cost, minus the smoke test itself, against `zstd -d | sha256sum`.

Goal (issue 3): for a bundle whose model runs in under 10 ms, everything the install does
besides the smoke test (lock, recovery, verification, compatibility checks, journaled and
fsynced unpack, promotion, the atomic switch, pruning, history) takes less than 2x the time
of `zstd -d | sha256sum` over the bundle's payloads, measured in the same run.

The model is a float32 ONNX MLP with random weights, a few tens of MB, so the ratio measures
the payload work and not fixed costs. Each repetition installs the same bundle on a freshly
initialised device (same filesystem), with a smoke runner that times the real in-process
smoke test so that it can be subtracted. Page cache is warm for both sides.

Run: `python -m bench.bench_install [--hidden 30000] [--repeat 5]`; prints JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from satchel.agent.install.installer import install
from satchel.agent.install.smoketest import InProcessSmokeRunner, SmokeReport
from satchel.agent.provision import init_device
from satchel.bundles.keys import SigningKey
from satchel.bundles.manifest import Manifest, ModelEntry, SmokeTest, TensorInfo
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import make_root, sign_root
from satchel.manager.modelgen import INPUT_NAME, OUTPUT_NAME, mlp_forward, onnx_mlp, sample_inputs

IN_DIM, OUT_DIM = 256, 10
SAMPLES = 8


class TimedSmokeRunner:
    """The real in-process smoke runner, timed, so its share can be subtracted."""

    def __init__(self) -> None:
        self.inner = InProcessSmokeRunner()
        self.seconds = 0.0
        self.report: SmokeReport | None = None

    def run(self, manifest: Manifest, files: Path) -> SmokeReport:
        start = time.perf_counter()
        self.report = self.inner.run(manifest, files)
        self.seconds = time.perf_counter() - start
        return self.report


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def build(work: Path, hidden: int) -> tuple[Path, bytes]:
    """A signed bundle with a big random-weight MLP; returns it and the trust root."""
    rng = np.random.default_rng(0)
    weights = {
        "w1": (rng.standard_normal((IN_DIM, hidden)) * 0.05).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": (rng.standard_normal((hidden, OUT_DIM)) * 0.01).astype(np.float32),
        "b2": np.zeros(OUT_DIM, np.float32),
    }
    model = onnx_mlp(weights, work / "model.onnx")
    x = sample_inputs(IN_DIM, SAMPLES, seed=1)
    root_key, signing = SigningKey.generate(), SigningKey.generate()
    trust = sign_root(make_root(1, [root_key.public], [signing.public]), [root_key])
    manifest = Manifest(
        name="bench", version="1.0", sequence=1, created=utcnow(), files=(),
        models=(ModelEntry("model", "onnxruntime", "model.onnx",
                           (TensorInfo(INPUT_NAME, "FP32", (-1, IN_DIM)),),
                           (TensorInfo(OUTPUT_NAME, "FP32", (-1, OUT_DIM)),)),),
        smoke_tests=(SmokeTest("model", "smoke/inputs.npz", "smoke/reference.npz",
                               max_abs_error=1e-3, warmup_runs=3, latency_runs=20),),
    )
    payloads = [
        Payload("model.onnx", model),
        Payload("smoke/inputs.npz", _npz({INPUT_NAME: x})),
        Payload("smoke/reference.npz", _npz({OUTPUT_NAME: mlp_forward(weights, x)})),
    ]
    bundle = work / "bench.satchel"
    with open(bundle, "wb") as f:
        write_bundle(f, manifest, payloads, [signing], tmp_dir=work)
    return bundle, trust


def stock_pipeline(bundle: Path, work: Path) -> tuple[float, list[Path]]:
    """Time `zstd -d | sha256sum` over every payload member (extracted beforehand)."""
    extracted = work / "extracted"
    with tarfile.open(bundle) as tar:
        tar.extractall(extracted, filter="data")
    members = sorted((extracted / "payload").rglob("*.zst"))
    command = ["bash", "-o", "pipefail", "-c",
               "zstd -q -d -c -- \"$@\" | sha256sum >/dev/null", "stock", *map(str, members)]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - start, members


def one_install(bundle: Path, trust: bytes, work: Path, i: int) -> tuple[float, float, dict]:
    state_dir = work / f"device-{i}"
    init_device(state_dir, trust, f"bench-{i}", "bench")
    runner = TimedSmokeRunner()
    start = time.perf_counter()
    install(state_dir, bundle, smoke_runner=runner)
    total = time.perf_counter() - start
    shutil.rmtree(state_dir)
    assert runner.report is not None
    return total, runner.seconds, runner.report.tests[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=30_000, help="MLP hidden width")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-install-"))
    try:
        bundle, trust = build(work, args.hidden)
        payload_bytes = (work / "model.onnx").stat().st_size
        one_install(bundle, trust, work, -1)  # warm-up: page cache, runtime import
        stock_pipeline(bundle, work)
        totals, smokes, stocks = [], [], []
        test: dict = {}
        for i in range(args.repeat):
            total, smoke, test = one_install(bundle, trust, work, i)
            totals.append(total)
            smokes.append(smoke)
            shutil.rmtree(work / "extracted", ignore_errors=True)
            stocks.append(stock_pipeline(bundle, work)[0])
        without_smoke = [t - s for t, s in zip(totals, smokes, strict=True)]
        ours, stock = statistics.median(without_smoke), statistics.median(stocks)
        print(json.dumps({
            "bench": "install",
            "model_mb": round(payload_bytes / 2**20, 1),
            "bundle_mb": round(bundle.stat().st_size / 2**20, 1),
            "model_p95_ms": round(test["latency_ms"]["p95"], 3),
            "repeat": args.repeat,
            "install_total_s": round(statistics.median(totals), 4),
            "smoke_test_s": round(statistics.median(smokes), 4),
            "install_without_smoke_s": round(ours, 4),
            "zstd_d_sha256sum_s": round(stock, 4),
            "ratio": round(ours / stock, 2),
            "goal_ratio_below": 2.0,
            "ok": ours / stock < 2.0 and test["latency_ms"]["p95"] < 10.0,
        }, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
