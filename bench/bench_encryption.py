"""What encryption costs (issue 19): verify + unpack of the same payload, encrypted and not,
interleaved in the same run.

Both sides verify the signature, check every chunk of the member against the signed chunk
index, decompress and hash the content, write it and fsync it, exactly as a device installs;
the encrypted side also unwraps the data key (X25519 + HKDF) and opens every 64 KiB segment
with AES-256-GCM on the way. The figure is the encrypted side's median time over the plain
side's (goal: at most 1.15, i.e. under 15% more), also without the fsync (CPU cost alone),
with packing both ways and the peak RSS of an encrypted install in a fresh process.

Run: `python -m bench.bench_encryption [--mb 200] [--repeat 5]`; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.bench_bundle import MODEL_PATH, Runs, _fresh, _quiet_first, make_weights, manifest_for
from bench.machine import DEFAULT_MAX_OTHERS, Quiet
from satchel.bundles.crypt import BundleEncryption, unlock_bundle
from satchel.bundles.keys import SigningKey
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.reader import unpack_bundle, verify_bundle
from satchel.bundles.recipients import Identity
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import load_root, make_root, sign_root

GOAL_OVERHEAD_RATIO = 1.15  # encrypted verify + unpack time / plain, at most


def _pack(src: Path, out: Path, key: SigningKey, work: Path,
          encryption: BundleEncryption | None) -> Callable[[], None]:
    def run() -> None:
        with open(out, "wb") as f:
            write_bundle(f, manifest_for(), [Payload(MODEL_PATH, src)], [key], tmp_dir=work,
                         encryption=encryption)

    return run


def _install(bundle: Path, root_json: bytes, target: Path, fsync: bool,
             identity: Identity | None) -> Callable[[], None]:
    """Verify + unpack in one read, as the agent does (and unlock, when encrypted)."""
    def run() -> None:
        root = load_root(root_json)
        with open(bundle, "rb") as f:
            verified = verify_bundle(f, root, utcnow(), defer_payloads=True)
            if identity is not None:
                verified = unlock_bundle(verified, [identity])
            unpack_bundle(f, verified, target, fsync=fsync)

    return run


_CHILD = """
import sys
from pathlib import Path
from satchel.bundles.crypt import unlock_bundle
from satchel.bundles.reader import verify_bundle, unpack_bundle
from satchel.bundles.recipients import load_identity
from satchel.bundles.trust import load_root
from satchel.bundles.timeutil import utcnow
root = load_root(Path(sys.argv[1]).read_bytes())
with open(sys.argv[2], "rb") as f:
    v = unlock_bundle(verify_bundle(f, root, utcnow(), defer_payloads=True),
                      [load_identity(Path(sys.argv[4]))])
    unpack_bundle(f, v, Path(sys.argv[3]), fsync=True)
print([int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM')][0])
"""


def bench(work: Path, megabytes: int, repeat: int) -> dict[str, Any]:
    root_key, key = SigningKey.generate(), SigningKey.generate()
    root_json = sign_root(make_root(1, [root_key.public], [key.public]), [root_key])
    device = Identity.generate("bench-device")
    src = work / MODEL_PATH
    make_weights(src, megabytes)
    mb = src.stat().st_size / 1e6
    plain, sealed = work / "plain.satchel", work / "encrypted.satchel"
    others_before = _quiet_first()
    packs = {"plain": Runs(mb), "encrypted": Runs(mb)}
    for _ in range(max(1, repeat // 2)):
        packs["plain"].time(_pack(src, plain, key, work, None))
        packs["encrypted"].time(
            _pack(src, sealed, key, work, BundleEncryption((device.recipient,))))
    sides = {name: Runs(mb) for name in ("plain", "encrypted", "plain_nofsync",
                                         "encrypted_nofsync")}
    target = work / "stage"
    with Quiet() as whole:
        for _ in range(repeat):
            for name, bundle, fsync, identity in (
                ("plain", plain, True, None), ("encrypted", sealed, True, device),
                ("plain_nofsync", plain, False, None),
                ("encrypted_nofsync", sealed, False, device),
            ):
                sides[name].time(_install(bundle, root_json, target, fsync, identity),
                                 before=_fresh(target))
    shutil.rmtree(target, ignore_errors=True)
    (work / "root.json").write_bytes(root_json)
    (work / "device.key").write_bytes(device.to_pem())
    target.mkdir()
    child = subprocess.run(
        [sys.executable, "-c", _CHILD, str(work / "root.json"), str(sealed), str(target),
         str(work / "device.key")], check=True, capture_output=True, text=True).stdout
    ratio = sides["encrypted"].median / sides["plain"].median
    ratio_nofsync = sides["encrypted_nofsync"].median / sides["plain_nofsync"].median
    return {
        "payload_mb": round(mb, 1),
        "bundle_mb": {"plain": round(plain.stat().st_size / 1e6, 2),
                      "encrypted": round(sealed.stat().st_size / 1e6, 2)},
        "others_share_before": others_before,
        "machine": whole.report(),
        "pack": {name: runs.summary() for name, runs in packs.items()},
        "verify_unpack": {name: runs.summary() for name, runs in sides.items()},
        "time_ratio": round(ratio, 3),  # encrypted / plain, fsync'd as a device installs
        "time_ratio_nofsync": round(ratio_nofsync, 3),
        "cpu_ratio": round(sides["encrypted"].summary()["cpu_s"]
                           / sides["plain"].summary()["cpu_s"], 3),
        "encrypted_peak_rss_mb": round(int(child.split()[-1]) / 1024, 1),
        "goal_time_ratio_at_most": GOAL_OVERHEAD_RATIO,
        "ok": ratio <= GOAL_OVERHEAD_RATIO,
        "max_others_share": DEFAULT_MAX_OTHERS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=int, default=200, help="payload size in MiB")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per side")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir, prefix="bench-encryption-") as d:
        result = bench(Path(d), args.mb, args.repeat)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
