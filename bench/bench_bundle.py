"""Bundle packing and verify+unpack throughput against the stock pipelines, same run.

Goals (issue 2):
- packing a 200 MB model payload: throughput >= `tar | zstd -3 -T0` plus `sha256sum`;
- verify + unpack: throughput >= `zstd -d | sha256sum` on the same bundle;
- peak RSS of verify + unpack <= 64 MB for a 1 GB bundle.

Run: `python -m bench.bench_bundle [--mb 200] [--big-mb 1024] [--repeat 3]`; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from satchel.bundles.keys import SigningKey
from satchel.bundles.manifest import Manifest, ModelEntry, TensorInfo
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.reader import unpack_bundle, verify_bundle
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import load_root, make_root, sign_root

MODEL_PATH = "model.onnx"


def make_weights(path: Path, megabytes: int) -> None:
    """Float32 weights as a real model holds them (normal values: zstd gains only ~7%)."""
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        for _ in range(megabytes):
            f.write(rng.standard_normal(262_144, dtype=np.float32).tobytes())


def manifest_for() -> Manifest:
    spec = (TensorInfo("input", "FP32", (-1, 4)),)
    out = (TensorInfo("logits", "FP32", (-1, 2)),)
    return Manifest(
        name="bench", version="1.0", sequence=1, created=utcnow(), files=(),
        models=(ModelEntry("model", "onnxruntime", MODEL_PATH, spec, out),), smoke_tests=(),
    )


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    """Seconds `fn` takes, started with no dirty pages pending, so neither side pays for
    writeback of files the benchmark itself made just before."""
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def shell(cmd: str, cwd: Path) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL)


def drop_file(path: Path) -> None:
    path.unlink(missing_ok=True)


def bench_pack(work: Path, repeat: int, key: SigningKey) -> dict[str, float]:
    src = work / MODEL_PATH
    size = src.stat().st_size
    ours, stock = [], []
    for _ in range(repeat):
        out = work / "b.satchel"

        def pack(out: Path = out) -> None:
            with open(out, "wb") as f:
                write_bundle(f, manifest_for(), [Payload(MODEL_PATH, src)], [key], tmp_dir=work)

        ours.append(timed(pack))
        drop_file(out)
        t_tar = timed(lambda: shell(f"tar -cf - {MODEL_PATH} | zstd -3 -T0 -q -c > stock.tar.zst",
                                    work))
        t_sha = timed(lambda: shell(f"sha256sum {MODEL_PATH}", work))
        stock.append(t_tar + t_sha)
        drop_file(work / "stock.tar.zst")
    o, s = statistics.median(ours), statistics.median(stock)
    return {
        "payload_mb": size / 1e6,
        "satchel_s": o, "stock_s": s,
        "satchel_mb_s": size / 1e6 / o, "stock_mb_s": size / 1e6 / s,
        "ratio": s / o,  # > 1: Satchel is faster than the stock pipeline
    }


def bench_unpack(work: Path, repeat: int, root_json: bytes, key: SigningKey) -> dict[str, float]:
    src = work / MODEL_PATH
    size = src.stat().st_size
    bundle = work / "b.satchel"
    with open(bundle, "wb") as f:
        write_bundle(f, manifest_for(), [Payload(MODEL_PATH, src)], [key], tmp_dir=work)
    member = work / "member.zst"
    shell(f"tar -xOf {bundle.name} payload/{MODEL_PATH}.zst > {member.name}", work)
    root = load_root(root_json)
    results: dict[str, list[float]] = {"fsync": [], "nofsync": [], "stock": []}
    for _ in range(repeat):
        for mode in ("fsync", "nofsync"):
            target = work / f"stage-{mode}"
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()

            def run(target: Path = target, mode: str = mode) -> None:
                with open(bundle, "rb") as f:
                    verified = verify_bundle(f, root, utcnow())
                    unpack_bundle(f, verified, target, fsync=(mode == "fsync"))

            results[mode].append(timed(run))
            shutil.rmtree(target)
        results["stock"].append(timed(lambda: shell(f"zstd -dc -q {member.name} | sha256sum",
                                                    work)))
    med = {k: statistics.median(v) for k, v in results.items()}
    return {
        "bundle_mb": bundle.stat().st_size / 1e6,
        "satchel_fsync_s": med["fsync"], "satchel_nofsync_s": med["nofsync"],
        "stock_s": med["stock"],
        "satchel_fsync_mb_s": size / 1e6 / med["fsync"],
        "satchel_nofsync_mb_s": size / 1e6 / med["nofsync"],
        "stock_mb_s": size / 1e6 / med["stock"],
        "ratio_fsync": med["stock"] / med["fsync"],
        "ratio_nofsync": med["stock"] / med["nofsync"],
    }


# ru_maxrss survives exec (it would report this parent's peak), VmHWM is per address space.
_HWM = (
    "print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
)
_CHILD = """
import sys
from pathlib import Path
from satchel.bundles.reader import verify_bundle, unpack_bundle
from satchel.bundles.trust import load_root
from satchel.bundles.timeutil import utcnow
root = load_root(Path(sys.argv[1]).read_bytes())
with open(sys.argv[2], "rb") as f:
    v = verify_bundle(f, root, utcnow())
    unpack_bundle(f, v, Path(sys.argv[3]), fsync=True)
""" + _HWM


def bench_rss(work: Path, megabytes: int, root_json: bytes, key: SigningKey) -> dict[str, float]:
    src = work / "big.bin"
    make_weights(src, megabytes)
    bundle = work / "big.satchel"
    with open(bundle, "wb") as f:
        write_bundle(f, manifest_for(), [Payload(MODEL_PATH, src)], [key], tmp_dir=work)
    src.unlink()
    (work / "root.json").write_bytes(root_json)
    target = work / "stage-big"
    target.mkdir()
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _CHILD, str(work / "root.json"), str(bundle),
                          str(target)], check=True, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    baseline = subprocess.run(
        [sys.executable, "-c", "import bundles.reader, bundles.trust\n" + _HWM],
        check=True, capture_output=True, text=True,
    )
    peak_kb, base_kb = int(out.stdout.split()[-1]), int(baseline.stdout.split()[-1])
    return {
        "bundle_mb": bundle.stat().st_size / 1e6,
        "peak_rss_mb": peak_kb / 1024, "interpreter_baseline_rss_mb": base_kb / 1024,
        "seconds": elapsed, "mb_s": megabytes * 1.048576 / elapsed,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mb", type=int, default=200, help="model payload size for throughput")
    p.add_argument("--big-mb", type=int, default=1024, help="bundle size for the RSS check")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None)
    args = p.parse_args(argv)
    for tool in ("tar", "zstd", "sha256sum"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed for the stock baseline")
    rk, sk = SigningKey.generate(), SigningKey.generate()
    root_json = sign_root(make_root(1, [rk.public], [sk.public]), [rk])
    base = args.workdir or Path(tempfile.gettempdir())
    base.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=base) as tmp:
        work = Path(tmp)
        make_weights(work / MODEL_PATH, args.mb)
        shell(f"cat {MODEL_PATH} > /dev/null", work)  # warm the page cache for both sides
        result = {
            "cpu_count": os.cpu_count(),
            "pack": bench_pack(work, args.repeat, sk),
            "verify_unpack": bench_unpack(work, args.repeat, root_json, sk),
        }
        (work / MODEL_PATH).unlink()
        for leftover in work.glob("*.satchel"):
            leftover.unlink()
        if args.big_mb:
            result["rss_1gb"] = bench_rss(work, args.big_mb, root_json, sk)
    result["self_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
