"""Delta bundles (issue 19): a fine-tuned model as a patch against the release before it.

Models: a float32 MLP of four layers (1024-8192-8192-1024-10 by default, 320 MiB of
weights, He-initialised random values: zstd gains next to nothing, as on real weights),
and a "fine-tuned" copy whose last two layers (weights and biases, 10.0% of the weights) were
nudged as a short retraining would; and both requantized to INT8 (onnxruntime's dynamic
quantization, `manager.quantize`), where only the retrained layers' int8 values and scales
change.

1. The two patch methods, each in its own process under GNU time (wall, peak RSS):
   - `zstd-patch-from`: one zstd frame with the old file as prefix, long-distance matching,
     window covering the old file (bundles/delta.make_patch; `zstd -d --patch-from` reads it);
   - `cdc`: content-defined chunking (gear hash, 64 KiB average chunks, 16-256 KiB), chunks
     found in the old file copied from it, the rest zstd-compressed literals; bounded memory.
2. The chosen method end to end: `make_delta_bundle` against the full bundle build, and
   `satchel-agent install` of the full bundle against that of the delta, each on a device
   that has the old release, in fresh processes (phases from `install --json`, peak RSS).

Run: `python -m bench.bench_delta [--dims 1024,8192,8192,1024,10] [--rounds 1]`; prints JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import mmap
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import zstandard

from bench.bench_install import _spawn_rss
from bench.machine import Quiet, wait_for_quiet

AGENT = str(Path(sys.executable).with_name("satchel-agent"))
GOAL_SHARE = 0.10  # delta <= 10% of the full bundle when 10% of the weights changed
CHANGED_LAYERS = 2  # the last two layers are retrained
SAMPLES = 8


# --- models --------------------------------------------------------------------------------


def mlp_weights(dims: list[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [((rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32),
             (rng.standard_normal(b) * 0.1).astype(np.float32))
            for a, b in zip(dims[:-1], dims[1:], strict=False)]


def fine_tune(layers: list[tuple[np.ndarray, np.ndarray]], changed: int = CHANGED_LAYERS,
              seed: int = 7) -> list[tuple[np.ndarray, np.ndarray]]:
    """The last `changed` layers nudged by a small random step (as a short retraining)."""
    rng = np.random.default_rng(seed)
    out = list(layers)
    for i in range(len(layers) - changed, len(layers)):
        w, b = layers[i]
        step = 0.02 * float(np.abs(w).mean())
        out[i] = ((w + rng.standard_normal(w.shape, dtype=np.float32) * step).astype(np.float32),
                  (b + rng.standard_normal(b.shape, dtype=np.float32) * step).astype(np.float32))
    return out


def onnx_deep_mlp(layers: list[tuple[np.ndarray, np.ndarray]], path: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits, x = [], [], "input"
    for i, (w, b) in enumerate(layers):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        x = f"a{i}"
        if i < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["logits"]))
    d_in, d_out = layers[0][0].shape[0], layers[-1][0].shape[1]
    graph = helper.make_graph(
        nodes, "bench_deep_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", d_in])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", d_out])],
        initializer=inits)
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])
    path.write_bytes(model.SerializeToString())
    return path


def make_models(work: Path, dims: list[int], int8: bool) -> dict[str, dict[str, Any]]:
    from satchel.manager.quantize import quantize_onnx

    layers = mlp_weights(dims)
    tuned = fine_tune(layers)
    total = sum(w.size + b.size for w, b in layers)
    changed = sum(w.size + b.size for w, b in layers[-CHANGED_LAYERS:])
    models: dict[str, dict[str, Any]] = {"float32": {
        "old": onnx_deep_mlp(layers, work / "old.onnx"),
        "new": onnx_deep_mlp(tuned, work / "new.onnx"),
        "changed_weight_share": round(changed / total, 4)}}
    del layers, tuned
    if int8:
        quantize_onnx(work / "old.onnx", work / "old-int8.onnx")
        quantize_onnx(work / "new.onnx", work / "new-int8.onnx")
        models["int8"] = {"old": work / "old-int8.onnx", "new": work / "new-int8.onnx",
                          "changed_weight_share": models["float32"]["changed_weight_share"]}
    return models


# --- the content-defined chunking alternative ----------------------------------------------

_GEAR = np.random.default_rng(0x5A7C4E1).integers(0, 2**63, 256, dtype=np.uint64)
_WINDOW = 48
_MASK = (1 << 16) - 1  # 64 KiB average
_MIN, _MAX = 16 * 1024, 256 * 1024
_BLOCK = 4 * 1024 * 1024
_COPY, _LIT = 0, 1


def cdc_chunks(view: memoryview) -> list[tuple[int, int]]:
    """(offset, length) of each content-defined chunk of `view` (a rolling sum of a gear
    table over 48 bytes; a cut where 16 of its bits are zero), in 4 MiB numpy steps."""
    cuts: list[int] = []
    n = len(view)
    for start in range(0, n, _BLOCK):
        lo = max(0, start - _WINDOW)
        data = np.frombuffer(view[lo:min(n, start + _BLOCK)], dtype=np.uint8)
        sums = np.cumsum(_GEAR[data], dtype=np.uint64)
        rolled = sums[_WINDOW:] - sums[:-_WINDOW]
        hits = np.nonzero(((rolled >> np.uint64(20)) & np.uint64(_MASK)) == 0)[0]
        cuts += (hits + lo + _WINDOW + 1).tolist()
    out, at = [], 0
    for cut in [*cuts, n]:
        while cut - at > _MAX:
            out.append((at, _MAX))
            at += _MAX
        if cut - at >= _MIN or (cut == n and cut > at):
            out.append((at, cut - at))
            at = cut
    return out


def cdc_build(old: Path, new: Path, out: BinaryIO) -> int:
    """Ops (copy from old / literal) then zstd literals: `COPY off len`, `LIT len`."""
    with open(old, "rb") as fo, mmap.mmap(fo.fileno(), 0, access=mmap.ACCESS_READ) as mo, \
            open(new, "rb") as fn, mmap.mmap(fn.fileno(), 0, access=mmap.ACCESS_READ) as mn:
        vo, vn = memoryview(mo), memoryview(mn)
        index = {hashlib.sha256(vo[o:o + n]).digest(): o for o, n in cdc_chunks(vo)}
        ops: list[tuple[int, int, int]] = []
        cctx = zstandard.ZstdCompressor(level=3)
        lits = io.BytesIO()
        with cctx.stream_writer(lits, closefd=False) as lw:
            for o, n in cdc_chunks(vn):
                at = index.get(hashlib.sha256(vn[o:o + n]).digest())
                if at is not None:
                    if ops and ops[-1][0] == _COPY and ops[-1][1] + ops[-1][2] == at:
                        ops[-1] = (_COPY, ops[-1][1], ops[-1][2] + n)
                    else:
                        ops.append((_COPY, at, n))
                else:
                    lw.write(vn[o:o + n])
                    if ops and ops[-1][0] == _LIT:
                        ops[-1] = (_LIT, 0, ops[-1][2] + n)
                    else:
                        ops.append((_LIT, 0, n))
        del vo, vn
    head = struct.pack("<I", len(ops)) + b"".join(struct.pack("<BQQ", *op) for op in ops)
    out.write(head)
    out.write(lits.getvalue())
    return len(head) + lits.tell()


def cdc_apply(old: Path, delta: Path, out: BinaryIO) -> None:
    with open(old, "rb") as fo, open(delta, "rb") as fd:
        (count,) = struct.unpack("<I", fd.read(4))
        ops = [struct.unpack("<BQQ", fd.read(17)) for _ in range(count)]
        lits = zstandard.ZstdDecompressor().stream_reader(fd)
        for kind, at, n in ops:
            src: Any = lits
            if kind == _COPY:
                fo.seek(at)
                src = fo
            while n:
                data = src.read(min(n, 1 << 20))
                out.write(data)
                n -= len(data)


# --- children measured under GNU time ------------------------------------------------------


def child(args: list[str]) -> None:
    from satchel.bundles.delta import PatchReader, make_patch, patch_window_log

    what = args[0]
    if what == "zstd-build":
        with open(args[3], "wb") as o:
            make_patch(Path(args[1]), Path(args[2]), o)
    elif what == "zstd-apply":
        old, patch, size = Path(args[1]), Path(args[2]), int(args[3])
        with open(patch, "rb") as p, open(args[4], "wb") as o:
            r = PatchReader(p, old, patch_window_log(old.stat().st_size, size))
            while data := r.read(1 << 20):
                o.write(data)
            r.close()
    elif what == "cdc-build":
        with open(args[3], "wb") as o:
            cdc_build(Path(args[1]), Path(args[2]), o)
    elif what == "cdc-apply":
        with open(args[3], "wb") as o:
            cdc_apply(Path(args[1]), Path(args[2]), o)
    elif what == "delta-bundle":
        from satchel.bundles.delta import make_delta_bundle
        from satchel.bundles.keys import SigningKey

        key = SigningKey.from_pem(Path(args[4]).read_bytes())
        make_delta_bundle(Path(args[1]), Path(args[2]), Path(args[3]), [key])
    elif what == "full-bundle":
        write_release(Path(args[1]), Path(args[2]), args[3], int(args[4]), Path(args[5]))
    else:
        raise SystemExit(f"unknown child {what}")


def _measured(work: Path, *args: str) -> tuple[float, float]:
    wall, rss, _ = _spawn_rss([sys.executable, "-m", "bench.bench_delta", "--child", *args],
                              work)
    return round(wall, 3), round(rss / 2**20, 1)


def _sha(path: Path) -> str:
    from satchel.bundles.delta import file_sha256

    return file_sha256(path)


def compare_methods(work: Path, old: Path, new: Path, full_member: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    want = _sha(new)
    for method in ("zstd", "cdc"):
        patch, rebuilt = work / f"{method}.patch", work / f"{method}.out"
        build_s, build_mb = _measured(work, f"{method}-build", str(old), str(new), str(patch))
        apply = [f"{method}-apply", str(old), str(patch)]
        apply += [str(new.stat().st_size)] if method == "zstd" else []
        apply_s, apply_mb = _measured(work, *apply, str(rebuilt))
        assert _sha(rebuilt) == want, f"{method} did not rebuild the file"
        out["zstd-patch-from" if method == "zstd" else "cdc"] = {
            "patch_mb": round(patch.stat().st_size / 2**20, 2),
            "share_of_compressed_file": round(patch.stat().st_size / full_member, 4),
            "build_s": build_s, "build_peak_rss_mb": build_mb,
            "apply_s": apply_s, "apply_peak_rss_mb": apply_mb,
        }
        patch.unlink()
        rebuilt.unlink()
    if shutil.which("zstd"):  # the stock CLI on the same pair, for reference
        patch = work / "cli.patch"
        start = time.perf_counter()
        subprocess.run(["zstd", "-q", "-3", f"--patch-from={old}", str(new), "-o", str(patch),
                        "-f"], check=True)
        out["stock_zstd_cli"] = {"patch_mb": round(patch.stat().st_size / 2**20, 2),
                                 "build_s": round(time.perf_counter() - start, 3)}
        patch.unlink()
    return out


# --- bundles and installs ------------------------------------------------------------------


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def write_release(model: Path, out: Path, version: str, sequence: int, key: Path) -> None:
    """A signed full bundle of `model` whose smoke test references its own outputs."""
    import onnxruntime as ort

    from satchel.bundles.keys import SigningKey
    from satchel.bundles.manifest import Manifest, ModelEntry, SmokeTest, TensorInfo
    from satchel.bundles.pack import Payload, write_bundle
    from satchel.bundles.timeutil import utcnow

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    d_in = session.get_inputs()[0].shape[1]
    d_out = session.get_outputs()[0].shape[1]
    x = np.random.default_rng(1).standard_normal((SAMPLES, d_in)).astype(np.float32)
    ref = session.run(None, {"input": x})[0]
    del session
    quant = "dynamic-int8" if "int8" in model.name else "none"
    manifest = Manifest(
        name="bench", version=version, sequence=sequence, created=utcnow(), files=(),
        models=(ModelEntry("model", "onnxruntime", "model.onnx",
                           (TensorInfo("input", "FP32", (-1, d_in)),),
                           (TensorInfo("logits", "FP32", (-1, d_out)),),
                           quantization=quant),),
        smoke_tests=(SmokeTest("model", "smoke/inputs.npz", "smoke/reference.npz",
                               max_abs_error=1e-2, warmup_runs=1, latency_runs=5),),
    )
    payloads = [Payload("model.onnx", model),
                Payload("smoke/inputs.npz", _npz({"input": x})),
                Payload("smoke/reference.npz", _npz({"logits": ref}))]
    with open(out, "wb") as f:
        write_bundle(f, manifest, payloads, [SigningKey.from_pem(key.read_bytes())],
                     tmp_dir=out.parent)


def _install(bundle: Path, device: Path, work: Path) -> dict[str, float]:
    state = work / "device"
    shutil.rmtree(state, ignore_errors=True)
    shutil.copytree(device, state)
    wall, rss, out = _spawn_rss([AGENT, "--state-dir", str(state), "install", "--json",
                                 str(bundle)], work)
    shutil.rmtree(state)
    seconds = json.loads(out)["seconds"]
    return {"wall_s": round(wall, 3), "peak_rss_mb": round(rss / 2**20, 1),
            **{f"{k}_s": round(v, 3) for k, v in seconds.items()}}


def run_kind(kind: str, pair: dict[str, Any], work: Path, key: Path, pristine: Path,
             rounds: int) -> dict[str, Any]:
    old_b, new_b, delta_b = work / f"{kind}-old.satchel", work / f"{kind}-new.satchel", \
        work / f"{kind}-new.delta.satchel"
    _measured(work, "full-bundle", str(pair["old"]), str(old_b), "1.0.0", "1", str(key))
    full_build = _measured(work, "full-bundle", str(pair["new"]), str(new_b), "1.1.0", "2",
                           str(key))
    delta_build = _measured(work, "delta-bundle", str(new_b), str(old_b), str(delta_b), str(key))
    from satchel.bundles.reader import read_unverified

    with open(new_b, "rb") as f:
        full_member = read_unverified(f)[0].file("model.onnx").compressed_size
    methods = compare_methods(work, pair["old"], pair["new"], full_member)
    device = work / f"device-{kind}"  # has the old release
    shutil.copytree(pristine, device)
    subprocess.run([AGENT, "--state-dir", str(device), "install", str(old_b)], check=True,
                   capture_output=True)
    _install(new_b, device, work)  # warm-up: page cache, bytecode
    full_runs, delta_runs = [], []
    for _ in range(rounds):
        full_runs.append(_install(new_b, device, work))
        delta_runs.append(_install(delta_b, device, work))
    full = {k: statistics.median(r[k] for r in full_runs) for k in full_runs[0]}
    delta = {k: statistics.median(r[k] for r in delta_runs) for k in delta_runs[0]}
    share = delta_b.stat().st_size / new_b.stat().st_size
    result = {
        "model_mb": round(pair["new"].stat().st_size / 2**20, 1),
        "changed_weight_share": pair["changed_weight_share"],
        "full_bundle_mb": round(new_b.stat().st_size / 2**20, 2),
        "delta_bundle_mb": round(delta_b.stat().st_size / 2**20, 2),
        "delta_share_of_full": round(share, 4),
        "build": {"full_s": full_build[0], "full_peak_rss_mb": full_build[1],
                  "delta_s": delta_build[0], "delta_peak_rss_mb": delta_build[1]},
        "install_full": full, "install_delta": delta,
        "methods": methods,
        "goal": {"goal": f"delta <= {GOAL_SHARE:.0%} of the full bundle",
                 "ok": share <= GOAL_SHARE},
    }
    for p in (old_b, new_b, delta_b):
        p.unlink()
    shutil.rmtree(device)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", default="1024,8192,8192,1024,10",
                        help="layer widths of the MLP (default: 320 MiB of float32 weights)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--no-int8", action="store_true", help="skip the INT8 model")
    parser.add_argument("--child", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    work = Path(tempfile.mkdtemp(prefix="bench-delta-"))
    try:
        from satchel.bundles.keys import SigningKey
        from satchel.bundles.trust import make_root, sign_root

        root_key, signing = SigningKey.generate(), SigningKey.generate()
        key = work / "signing.key"
        key.write_bytes(signing.to_pem())
        os.chmod(key, 0o600)
        (work / "root.json").write_bytes(
            sign_root(make_root(1, [root_key.public], [signing.public]), [root_key]))
        pristine = work / "pristine"
        subprocess.run([AGENT, "--state-dir", str(pristine), "init", "--trust",
                        str(work / "root.json"), "--device-id", "bench", "--device-class",
                        "bench"], check=True, capture_output=True)
        models = make_models(work, [int(d) for d in args.dims.split(",")], not args.no_int8)
        others_before = wait_for_quiet(timeout_s=60)
        results: dict[str, Any] = {"bench": "delta", "rounds": args.rounds, "dims": args.dims}
        with Quiet() as quiet:
            for kind, pair in models.items():
                results[kind] = run_kind(kind, pair, work, key, pristine, args.rounds)
        results["machine"] = {**quiet.report(), "others_share_before": round(others_before, 3)}
        print(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
