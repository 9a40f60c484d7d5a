"""Bundle packing and verify + unpack against the strongest stock anchors, in the same run.

Anchors (each the fastest stock way to do the same work):
- pack: `tar -cf - | zstd -3 -T0` then `openssl dgst -sha256` of the payload (openssl, not
  coreutils `sha256sum`, which is ~2.5x slower than the SHA-256 Satchel uses);
- verify + unpack: `openssl dgst -sha256` over the bundle, then `zstd -d` of its payload to a
  file and an fsync of it (the stock-tools check a careful user runs, minus the tar copy);
- RAUC (`rauc bundle`, plain squashfs format, zstd level 3; `rauc extract` + fsync, which
  checks the CMS signature over the whole bundle before unsquashing it), a real OTA tool.

Goals (issues 2 and 14):
- pack at least as fast as its anchor (`ratio` >= 1);
- verify + unpack, fsync'd, in one read of the bundle: at most 1.5x its anchor's time;
- peak RSS of verify + unpack of a 1 GB bundle in a fresh process <= 64 MB.

Every figure carries the machine's idle share and the share other processes took while it
was measured (bench/machine.py): the machine is shared, a figure means little without them.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import DEFAULT_MAX_OTHERS, NoisyMachine, Quiet, own_cpu_s, wait_for_quiet
from satchel.bundles.keys import SigningKey
from satchel.bundles.manifest import Manifest, ModelEntry, TensorInfo
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.reader import unpack_bundle, verify_bundle
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import load_root, make_root, sign_root

MODEL_PATH = "model.onnx"
MEMBER = f"payload/{MODEL_PATH}.zst"
GOAL_PACK_RATIO = 1.0  # anchor time / Satchel time, at least
GOAL_UNPACK_TIME_RATIO = 1.5  # Satchel time / anchor time, at most
GOAL_RSS_MB = 64.0  # MiB, verify + unpack of a 1 GB bundle
QUIET_WAIT_S = [60.0]  # seconds to wait for the neighbours to calm down before a section
TOOLS = ("tar", "zstd", "openssl", "sync")


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


def shell(cmd: str, cwd: Path) -> None:
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@dataclass
class Runs:
    """The timed runs of one side of a comparison, each with how busy the machine was."""

    megabytes: float  # payload MB (1e6 bytes) the throughput is given in
    seconds: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # CPU seconds, ours and reaped children
    machine: list[dict[str, Any]] = field(default_factory=list)

    def time(self, fn: Callable[[], object], before: Callable[[], object] | None = None) -> None:
        """Time `fn`, started with no dirty pages pending (neither side pays for writeback of
        files the benchmark made just before) after `before` (untimed set-up)."""
        if before is not None:
            before()
        os.sync()
        with Quiet() as q:
            cpu = own_cpu_s()
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            cpu = own_cpu_s() - cpu
        self.seconds.append(elapsed)
        self.cpu.append(cpu)
        self.machine.append(q.report())

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def summary(self) -> dict[str, Any]:
        return {
            "s": round(self.median, 4),
            "mb_s": round(self.megabytes / self.median, 1),
            "runs_s": [round(s, 4) for s in self.seconds],
            # CPU seconds hold better than wall time when neighbours take the cores
            "cpu_s": round(statistics.median(self.cpu), 4),
            "idle_share": round(statistics.mean(m["idle_share"] for m in self.machine), 3),
            "others_share": max(m["others_share"] for m in self.machine),
        }


def _quiet_first() -> float:
    """Wait (bounded) for the neighbours to calm down; the share they still took."""
    return round(wait_for_quiet(DEFAULT_MAX_OTHERS, timeout_s=QUIET_WAIT_S[0]), 3)


def bench_pack(work: Path, repeat: int, key: SigningKey) -> dict[str, Any]:
    src = work / MODEL_PATH
    mb = src.stat().st_size / 1e6
    others_before = _quiet_first()
    ours, anchor = Runs(mb), Runs(mb)
    out = work / "b.satchel"
    for _ in range(repeat):
        def pack() -> None:
            with open(out, "wb") as f:
                write_bundle(f, manifest_for(), [Payload(MODEL_PATH, src)], [key], tmp_dir=work)

        ours.time(pack, before=lambda: out.unlink(missing_ok=True))
        anchor.time(lambda: shell(
            f"tar -cf - {MODEL_PATH} | zstd -3 -T0 -q -c > stock.tar.zst && "
            f"openssl dgst -sha256 {MODEL_PATH}", work))
        (work / "stock.tar.zst").unlink()
    out.unlink()
    ratio = anchor.median / ours.median
    return {
        "payload_mb": round(mb, 1),
        "others_share_before": others_before,
        "satchel": ours.summary(),
        "anchor": {"what": "tar | zstd -3 -T0, then openssl dgst -sha256 of the payload",
                   **anchor.summary()},
        "ratio": round(ratio, 3),  # > 1: Satchel is faster than the anchor
        "cpu_ratio": round(ours.summary()["cpu_s"] / anchor.summary()["cpu_s"], 3),
        "goal_ratio_at_least": GOAL_PACK_RATIO,
        "ok": ratio >= GOAL_PACK_RATIO,
    }


def _unpacker(bundle: Path, root_json: bytes, target: Path, one_read: bool, fsync: bool
              ) -> Callable[[], None]:
    """Verify + unpack as the agent does (one read) or as before the chunk index (two)."""
    def run() -> None:
        root = load_root(root_json)
        with open(bundle, "rb") as f:
            verified = verify_bundle(f, root, utcnow(), defer_payloads=one_read)
            unpack_bundle(f, verified, target, fsync=fsync)

    return run


def _fresh(path: Path) -> Callable[[], None]:
    def make() -> None:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()

    return make


def bench_unpack(work: Path, repeat: int, root_json: bytes, key: SigningKey) -> dict[str, Any]:
    src = work / MODEL_PATH
    mb = src.stat().st_size / 1e6
    bundle = work / "b.satchel"
    with open(bundle, "wb") as f:
        write_bundle(f, manifest_for(), [Payload(MODEL_PATH, src)], [key], tmp_dir=work)
    shell(f"tar -xOf {bundle.name} {MEMBER} > member.zst && cat {bundle.name} > /dev/null", work)
    others_before = _quiet_first()
    sides = {name: Runs(mb) for name in ("one_read", "two_reads", "one_read_nofsync", "anchor")}
    target = work / "stage"
    for _ in range(repeat):
        for name, one_read, fsync in (("one_read", True, True), ("two_reads", False, True),
                                      ("one_read_nofsync", True, False)):
            sides[name].time(_unpacker(bundle, root_json, target, one_read, fsync),
                             before=_fresh(target))
        sides["anchor"].time(lambda: shell(
            f"openssl dgst -sha256 {bundle.name} && zstd -d -q -f member.zst -o out.bin && "
            "sync out.bin", work), before=lambda: (work / "out.bin").unlink(missing_ok=True))
    shutil.rmtree(target)
    for leftover in ("member.zst", "out.bin"):
        (work / leftover).unlink(missing_ok=True)
    anchor = sides["anchor"].median
    time_ratio = sides["one_read"].median / anchor
    return {
        "payload_mb": round(mb, 1),
        "bundle_mb": round(bundle.stat().st_size / 1e6, 1),
        "others_share_before": others_before,
        **{name: runs.summary() for name, runs in sides.items() if name != "anchor"},
        "anchor": {"what": "openssl dgst -sha256 over the bundle, then zstd -d of its payload "
                           "to a file and fsync", **sides["anchor"].summary()},
        "time_ratio": round(time_ratio, 3),  # Satchel (one read, fsync'd) / anchor
        "cpu_ratio": round(sides["one_read"].summary()["cpu_s"]
                           / sides["anchor"].summary()["cpu_s"], 3),
        "two_reads_time_ratio": round(sides["two_reads"].median / anchor, 3),
        "nofsync_time_ratio": round(sides["one_read_nofsync"].median / anchor, 3),
        "goal_time_ratio_at_most": GOAL_UNPACK_TIME_RATIO,
        "ok": time_ratio <= GOAL_UNPACK_TIME_RATIO,
    }


def _rauc_keys(work: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a signing certificate it issued: (ca.pem, signer.pem, signer.key)."""
    ca_key, ca, key, csr, cert = (work / n for n in
                                  ("ca.key", "ca.pem", "signer.key", "signer.csr", "signer.pem"))
    ext = work / "signer.ext"
    ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n")
    shell(f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
          f"-keyout {ca_key} -out {ca} -days 400 -subj '/CN=satchel bench CA' "
          f"-addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign", work)
    shell(f"openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {key} "
          f"-out {csr} -subj '/CN=satchel bench signer'", work)
    shell(f"openssl x509 -req -in {csr} -CA {ca} -CAkey {ca_key} -CAcreateserial -out {cert} "
          f"-days 400 -extfile {ext}", work)
    return ca, cert, key


RAUC_MANIFEST = f"""[update]
compatible=satchel-bench
version=1.0

[bundle]
format=plain

[image.model]
filename={MODEL_PATH}
"""


def bench_rauc(work: Path, repeat: int, ours_pack_s: float, ours_unpack_s: float
               ) -> dict[str, Any]:
    """`rauc bundle` and `rauc extract` (+ fsync) of the same payload, timed like ours."""
    if shutil.which("rauc") is None or shutil.which("mksquashfs") is None:
        return {"error": "rauc or mksquashfs (squashfs-tools) not installed"}
    rauc_dir = work / "rauc"
    rauc_dir.mkdir()
    content = rauc_dir / "content"
    content.mkdir()
    os.link(work / MODEL_PATH, content / MODEL_PATH)
    (content / "manifest.raucm").write_text(RAUC_MANIFEST)
    mb = (work / MODEL_PATH).stat().st_size / 1e6
    out, extracted = rauc_dir / "b.raucb", rauc_dir / "extracted"
    squash = "-comp zstd -Xcompression-level 3"
    pack, info, extract = Runs(mb), Runs(mb), Runs(mb)
    try:
        ca, cert, key = _rauc_keys(rauc_dir)
        others_before = _quiet_first()
        for _ in range(repeat):
            pack.time(lambda: shell(f"rauc bundle --cert={cert} --key={key} --keyring={ca} "
                                    f"--mksquashfs-args='{squash}' {content} {out}", rauc_dir),
                      before=lambda: out.unlink(missing_ok=True))
            info.time(lambda: shell(f"rauc info --keyring={ca} {out}", rauc_dir))
            extract.time(lambda: shell(f"rauc extract --keyring={ca} {out} {extracted} && "
                                       f"sync {extracted}/{MODEL_PATH}", rauc_dir),
                         before=lambda: shutil.rmtree(extracted, ignore_errors=True))
    except subprocess.CalledProcessError as e:
        return {"error": f"rauc failed here: {e}"}
    finally:
        shutil.rmtree(rauc_dir, ignore_errors=True)
    return {
        "version": subprocess.run(["rauc", "--version"], capture_output=True, text=True
                                  ).stdout.strip(),
        "format": f"plain (squashfs, mksquashfs {squash}), CMS signature over the bundle",
        "others_share_before": others_before,
        "bundle": pack.summary(),
        "info_verify": info.summary(),
        "extract_fsync": extract.summary(),
        "pack_ratio": round(pack.median / ours_pack_s, 3),  # > 1: Satchel packs faster
        "unpack_time_ratio": round(ours_unpack_s / extract.median, 3),  # < 1: Satchel faster
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
    v = verify_bundle(f, root, utcnow(), defer_payloads=True)
    unpack_bundle(f, v, Path(sys.argv[3]), fsync=True)
""" + _HWM


def bench_rss(work: Path, megabytes: int, root_json: bytes, key: SigningKey) -> dict[str, Any]:
    src = work / "big.bin"
    make_weights(src, megabytes)
    bundle = work / "big.satchel"
    with open(bundle, "wb") as f:
        write_bundle(f, manifest_for(), [Payload(MODEL_PATH, src)], [key], tmp_dir=work)
    src.unlink()
    (work / "root.json").write_bytes(root_json)
    target = work / "stage-big"
    target.mkdir()
    others_before = _quiet_first()
    runs = Runs(megabytes * 1.048576)
    child: list[str] = []
    runs.time(lambda: child.append(subprocess.run(
        [sys.executable, "-c", _CHILD, str(work / "root.json"), str(bundle), str(target)],
        check=True, capture_output=True, text=True).stdout))
    baseline = subprocess.run(
        [sys.executable, "-c", "import satchel.bundles.reader, satchel.bundles.trust\n" + _HWM],
        check=True, capture_output=True, text=True,
    )
    shutil.rmtree(target)
    peak_mb = int(child[0].split()[-1]) / 1024
    return {
        "bundle_mb": round(bundle.stat().st_size / 1e6, 1),
        "others_share_before": others_before,
        "peak_rss_mb": round(peak_mb, 1),
        "interpreter_baseline_rss_mb": round(int(baseline.stdout.split()[-1]) / 1024, 1),
        "run": runs.summary(),
        "goal_rss_mb_at_most": GOAL_RSS_MB,
        "ok": peak_mb <= GOAL_RSS_MB,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--mb", type=int, default=200, help="model payload size for throughput")
    p.add_argument("--big-mb", type=int, default=1024, help="bundle size for the RSS check")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--no-rauc", action="store_true", help="skip the RAUC anchor")
    p.add_argument("--quiet-wait", type=float, default=QUIET_WAIT_S[0],
                   help="seconds to wait for a quiet machine before each section")
    p.add_argument("--require-quiet", action="store_true",
                   help=f"fail when others took more than {DEFAULT_MAX_OTHERS:.0%} of the "
                        "machine during a figure")
    args = p.parse_args(argv)
    QUIET_WAIT_S[0] = args.quiet_wait
    for tool in TOOLS:
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is needed for the stock anchors")
    rk, sk = SigningKey.generate(), SigningKey.generate()
    root_json = sign_root(make_root(1, [rk.public], [sk.public]), [rk])
    base = (args.workdir or Path(tempfile.gettempdir())).resolve()
    base.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"cpu_count": os.cpu_count()}
    with Quiet() as whole, tempfile.TemporaryDirectory(dir=base) as tmp:
        work = Path(tmp)
        make_weights(work / MODEL_PATH, args.mb)
        shell(f"cat {MODEL_PATH} > /dev/null", work)  # warm the page cache for both sides
        result["pack"] = bench_pack(work, args.repeat, sk)
        result["verify_unpack"] = bench_unpack(work, args.repeat, root_json, sk)
        if not args.no_rauc:
            result["rauc"] = bench_rauc(work, args.repeat, result["pack"]["satchel"]["s"],
                                        result["verify_unpack"]["one_read"]["s"])
        (work / MODEL_PATH).unlink()
        for leftover in work.glob("*.satchel"):
            leftover.unlink()
        if args.big_mb:
            result["rss_1gb"] = bench_rss(work, args.big_mb, root_json, sk)
    result["machine"] = whole.report()
    result["self_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["ok"] = all(result[k]["ok"] for k in ("pack", "verify_unpack", "rss_1gb")
                       if k in result)
    print(json.dumps(result, indent=2))
    if args.require_quiet:
        noisiest = max(_others_shares(result))
        if noisiest > DEFAULT_MAX_OTHERS:
            raise NoisyMachine(f"other processes took {noisiest:.0%} of the machine during a "
                               f"figure (limit {DEFAULT_MAX_OTHERS:.0%}): rerun when quieter")
    return result


def _others_shares(node: Any) -> list[float]:
    """Every figure's `others_share` in a result tree."""
    if isinstance(node, dict):
        own = [node["others_share"]] if isinstance(node.get("others_share"), float) else []
        return own + [s for v in node.values() for s in _others_shares(v)]
    return []


if __name__ == "__main__":
    main()
