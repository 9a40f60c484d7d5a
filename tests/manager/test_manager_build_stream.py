"""`build_bundle` packs the model on a thread while the model runs (the fast path): its bundle is
the one `write_bundle` writes in one go (the slow path), a refused build leaves nothing and
stops packing, and this host's latency comes from the sample runs, topped up with runs of
its own that stop at their time bound."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import threading
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import pytest

from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.reader import verify_and_unpack
from satchel.manager.build import (
    INPUTS_PATH,
    REFERENCE_PATH,
    BuildDefaults,
    BuildRequest,
    build_bundle,
)
from satchel.manager.errors import BuildError
from satchel.manager.modelgen import make_mlp_weights, onnx_mlp
from tests.factory.keys import Keyring

CREATED = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=timezone.utc)


def _model(folder: Path, *, external: bool = False, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = onnx_mlp(make_mlp_weights(seed=seed), folder / "net.onnx")
    if external:
        onnx.save_model(onnx.load(str(path)), str(path), save_as_external_data=True,
                        location="net.onnx.data", size_threshold=0)
    return path


def _request(model: Path, reference: Path | None = None) -> BuildRequest:
    return BuildRequest(name="detector", version="1.0", model=model, reference=reference,
                        sequence=7)


def _members(bundle: Path) -> list[tuple[str, bytes]]:
    """The bundle's members in order, manifest.sig without its whitespace fill."""
    with tarfile.open(bundle) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar]  # type: ignore[union-attr]
    return [(name, data.rstrip(b" ") if name == "manifest.sig" else data)
            for name, data in members]


def _pack_threads() -> list[threading.Thread]:
    names = ("satchel-pack", "satchel-pack-hash", "satchel-hash")
    return [t for t in threading.enumerate() if t.name in names]


@pytest.mark.parametrize("external", [False, True], ids=["one file", "external data"])
def test_streamed_build_writes_the_bundle_write_bundle_writes(
    tmp_path: Path, keys: Keyring, external: bool
) -> None:
    model = _model(tmp_path / "model", external=external)
    streamed = tmp_path / "streamed.satchel"

    result = build_bundle(_request(model), [keys.signing], streamed, now=CREATED)

    staged = tmp_path / "staged"
    staged.mkdir()
    verify_and_unpack(streamed, keys.root, staged, NOW, fsync=False)
    data_files = result.manifest.models[0].data_files
    assert data_files == (("net.onnx.data",) if external else ())
    one_pass = tmp_path / "one-pass.satchel"
    with open(one_pass, "wb") as f:
        write_bundle(f, result.manifest, [
            Payload("model.onnx", model),
            *(Payload(name, model.parent / name) for name in data_files),
            Payload(INPUTS_PATH, (staged / INPUTS_PATH).read_bytes()),
            Payload(REFERENCE_PATH, (staged / REFERENCE_PATH).read_bytes()),
        ], [keys.signing], options=BuildDefaults().pack)
    # the same members; each writer pads the signatures to fill the room it left for its head
    assert _members(streamed) == _members(one_pass)
    # hashed on a thread while the write waited for the disk: the file's own sha256
    assert result.bundle_sha256 == hashlib.sha256(streamed.read_bytes()).hexdigest()
    assert (staged / "model.onnx").read_bytes() == model.read_bytes()
    assert not _pack_threads()


def test_refused_build_stops_packing_and_leaves_nothing(tmp_path: Path, keys: Keyring) -> None:
    model = _model(tmp_path / "model")
    stranger = _model(tmp_path / "other", seed=1)  # disagrees with the model
    out = tmp_path / "out" / "b.satchel"

    with pytest.raises(BuildError, match="disagrees with its reference"):
        build_bundle(_request(model, reference=stranger), [keys.signing], out, now=CREATED)

    assert list(out.parent.iterdir()) == []
    assert not _pack_threads()


def _few_samples(folder: Path, feeds: int) -> Path:
    """An .npz of `feeds` feeds for the MLP `_model` makes (input "input", 64 features)."""
    path = folder / "samples.npz"
    rng = np.random.default_rng(3)
    np.savez(path, input=rng.standard_normal((feeds, 1, 64)).astype(np.float32))
    return path


def test_host_latency_comes_from_the_sample_runs_when_enough_ran(
    tmp_path: Path, keys: Keyring
) -> None:
    model = _model(tmp_path / "model")

    # no time at all for runs of its own: the 32 generated feeds give the latencies
    result = build_bundle(_request(model), [keys.signing], tmp_path / "b.satchel",
                          defaults=BuildDefaults(host_latency_s=0.0), now=CREATED)

    assert result.manifest.build["host_latency_runs"] == 20  # 32 feeds less 3 warm-up, capped
    (smoke,) = result.manifest.smoke_tests
    assert (smoke.warmup_runs, smoke.latency_runs) == (3, 20)  # the device's runs, unchanged


def test_host_latency_runs_stop_at_their_time_bound(tmp_path: Path, keys: Keyring) -> None:
    model = _model(tmp_path / "model")
    request = replace(_request(model), samples=_few_samples(tmp_path, 4))

    result = build_bundle(request, [keys.signing], tmp_path / "b.satchel",
                          defaults=BuildDefaults(host_latency_s=0.0), now=CREATED)

    # 4 feeds: 3 warm the model, 1 is timed; then one run of its own before the bound
    assert result.manifest.build["host_latency_runs"] == 2


def test_host_latency_runs_stop_at_their_count(tmp_path: Path, keys: Keyring) -> None:
    model = _model(tmp_path / "model")
    request = replace(_request(model), samples=_few_samples(tmp_path, 2))

    result = build_bundle(request, [keys.signing], tmp_path / "b.satchel",
                          defaults=BuildDefaults(latency_runs=7, host_latency_s=600.0),
                          now=CREATED)

    assert result.manifest.build["host_latency_runs"] == 7
    assert result.manifest.smoke_tests[0].latency_runs == 7
    assert set(result.to_dict()["timings_s"]) >= {"load", "run", "latency", "pack", "total"}


def test_onnx_build_imports_neither_onnx_nor_the_other_runtime(
    tmp_path: Path, keys: Keyring
) -> None:
    model = _model(tmp_path / "model")
    report = (
        "import atexit, sys\n"
        "atexit.register(lambda: print(sorted(m for m in ('onnx', 'ai_edge_litert', "
        "'tflite_runtime') if m in sys.modules), file=sys.stderr))\n"
        "from satchel.manager.cli import main\n"
        "main()\n"
    )

    child = subprocess.run(
        [sys.executable, "-c", report, "bundle", "build", "--name", "detector", "--version",
         "1.0", "--model", str(model), "--key", str(keys.directory / "signing.key"),
         "-o", str(tmp_path / "b.satchel")],
        capture_output=True, text=True, check=False, timeout=120,
    )

    assert child.returncode == 0, child.stderr
    assert child.stderr.strip().splitlines()[-1] == "[]"
