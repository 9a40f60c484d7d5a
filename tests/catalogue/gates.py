"""Run one catalogue model through both gates as a user and a device would meet them.

1. The build: `manager.build.build_bundle` with `--reference` the float model and the family's
   samples. A good model must build; a broken one must be refused in one line, leaving no
   bundle behind.
2. The device: a real agent state directory (`satchel-agent install`, in-process). A good
   model's bundle must activate. For a broken model the test forges what a build host
   without these gates would have signed: the good bundle with the broken model file in
   place of the good one (same smoke inputs, references and checks); the device must refuse
   it in one line and stay exactly as it was.

Shared by `tests/agent/test_agent_catalogue.py` and `python -m tests.catalogue.report`.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from satchel.agent.cli import main as agent_main
from satchel.agent.provision import init_device
from satchel.bundles.config import PackOptions
from satchel.bundles.keys import SigningKey
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.reader import verify_and_unpack
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import load_root
from satchel.manager.build import BuildRequest, BuildResult, build_bundle
from satchel.manager.errors import BuildError
from satchel.manager.model_files import model_files
from tests.catalogue.kinds import ACTIVATE, CatalogueModel

DEVICE_CLASS = "catalogue-board"
_PACK = PackOptions(zstd_level=3, zstd_threads=0)


@dataclass
class GateResult:
    """What happened to one catalogue model at the build and on the device."""

    entry: CatalogueModel
    build_ok: bool
    build_line: str  # the build's one-line refusal, or its headline figures
    device_ok: bool | None  # None: not tried (a good model that failed to build)
    device_line: str
    device_unchanged: bool = True
    figures: dict[str, Any] | None = None

    @property
    def as_expected(self) -> bool:
        if self.entry.expect == ACTIVATE:
            return self.build_ok and bool(self.device_ok)
        return (not self.build_ok) and self.device_ok is False and self.device_unchanged


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if rel in ("lock", "history.json") or rel == "events" or rel.startswith("events/"):
            continue
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def _install(state_dir: Path, bundle: Path) -> tuple[int, str]:
    result = CliRunner().invoke(agent_main, ["--state-dir", str(state_dir), "install", str(bundle)])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    text = (result.stderr or result.stdout).strip()
    return result.exit_code, text


def _request(entry: CatalogueModel, model: Path, sequence: int) -> BuildRequest:
    return BuildRequest(
        name=entry.family.replace("_", "-"),
        version=f"{entry.variant}-{sequence}",
        model=model,
        reference=entry.reference,
        samples=entry.samples,
        sequence=sequence,
        device_classes=(DEVICE_CLASS,),
    )


def _forge(
    good: BuildResult, broken: Path, keys: SigningKey, root_json: bytes, work: Path
) -> Path:
    """The good bundle with `broken` as its model file, signed: what a build without gates
    would ship."""
    unpacked = work / "forge-unpacked"
    unpacked.mkdir()
    verified = verify_and_unpack(good.output, load_root(root_json), unpacked, utcnow(), fsync=False)
    manifest = verified.manifest
    entry = manifest.models[0]
    extra = model_files(broken)  # the broken model's own external data, if any
    forged_entry = replace(entry, data_files=extra.data_files)
    manifest = replace(manifest, sequence=manifest.sequence + 1, models=(forged_entry,))
    replaced = {entry.file, *entry.data_paths()}
    payloads = [
        Payload(entry.file, broken),
        *(Payload(f, extra.folder / f) for f in extra.data_files),
        *(Payload(f.path, unpacked / f.path) for f in verified.manifest.files
          if f.path not in replaced),
    ]
    out = work / "forged.satchel"
    with open(out, "wb") as f:
        write_bundle(f, manifest.with_files([]), payloads, [keys], _PACK)
    shutil.rmtree(unpacked)
    return out


def run_gates(
    entry: CatalogueModel, good_model: Path, keys: SigningKey, root_json: bytes, work: Path
) -> GateResult:
    """Build `entry` and install what the gates let through (or a forged bundle for a broken
    model) on a fresh device under `work`."""
    work.mkdir(parents=True, exist_ok=True)
    state = work / "state"
    init_device(state, root_json, "catalogue-1", DEVICE_CLASS)
    out = work / "bundle.satchel"
    try:
        built = build_bundle(_request(entry, entry.model, 10), [keys], out)
        build_ok, build_line = True, built.agreement.headline()
        figures = built.agreement.to_dict()
    except BuildError as e:
        build_ok, build_line, built, figures = False, str(e), None, None
        if out.exists():
            raise AssertionError(f"a refused build left {out} behind") from e
    if entry.expect == ACTIVATE:
        if built is None:
            return GateResult(entry, build_ok, build_line, None, "not built", True, figures)
        code, text = _install(state, out)
        return GateResult(entry, build_ok, build_line, code == 0, text, True, figures)
    # A broken model: the device must refuse it even when a build host let it through.
    good = build_bundle(_request(entry, good_model, 10), [keys], work / "good.satchel")
    forged = _forge(good, entry.model, keys, root_json, work)
    before = _tree(state)
    code, text = _install(state, forged)
    return GateResult(entry, build_ok, build_line, code == 0, text, _tree(state) == before,
                      figures)
