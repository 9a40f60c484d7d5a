"""Power cuts inside staged activation: at every fsync boundary of entering shadow, the
stage figures of shadow and each ramp step, the switch once the ramp completed, a refusal,
a newer release replacing a candidate, and the captures kept meanwhile, the device comes
back serving the previous release or (only after the switch) the new one; a candidate left
on disk is complete and judged again from its first stage; a refused candidate never comes
back and the anti-rollback floor stays raised; every capture on disk is whole (a torn one is
never there to ship); `satchel-agent status --json` answers.

The disk after each cut is made as in tests/agent/test_agent_powercut.py: the real run
(tests/agent/staged_run.py: the installer, then the real server judging the candidate on
field requests) is traced once, and the POSIX promise is replayed fsync by fsync.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from satchel.agent.captures import pending_captures
from satchel.agent.cli import main as agent_main
from satchel.agent.install.installer import install, recover
from satchel.agent.provision import init_device
from satchel.agent.staging.record import read_candidate
from satchel.agent.state import FILES_DIR, MANIFEST_FILE, DeviceState
from satchel.bundles.activation import ActivationPolicy
from satchel.bundles.captures import decode_capture
from satchel.bundles.manifest import parse_manifest
from tests.agent.devices import verify_active_release
from tests.agent.powercut import Disk, power_cuts, trace_env
from tests.agent.staged import CHANNEL, StagedModels, make_models, shadow, staged_bundle
from tests.factory.keys import Keyring

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> StagedModels:
    return make_models(tmp_path_factory.mktemp("powercut-staging-models"))


class Setup:
    def __init__(self, tmp_path: Path, keys: Keyring, models: StagedModels) -> None:
        self.tmp_path, self.keys, self.models = tmp_path, keys, models
        self.state_dir = tmp_path / "state"
        init_device(self.state_dir, keys.root_json, "dev-1", "edge-box")
        (tmp_path / "bundles").mkdir()

    def bundle(self, model: Path, version: str, sequence: int,
               activation: ActivationPolicy | None = None) -> Path:
        return staged_bundle(self.tmp_path / "bundles" / f"{version}.satchel", self.keys, model,
                             version=version, sequence=sequence, activation=activation)

    def install(self, *args: object, **kwargs: object) -> None:
        install(self.state_dir, self.bundle(*args, **kwargs))  # type: ignore[arg-type]

    def traced(self, *bundles: Path) -> tuple[Disk, Path]:
        """Run tests/agent/staged_run.py on the device under the fsync tracer."""
        os.sync()
        before = Disk.snapshot(self.state_dir)
        log = self.tmp_path / "trace" / "fsync.log"
        log.parent.mkdir()
        env = {**os.environ, **trace_env(log, self.state_dir)}
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(REPO)])
        done = subprocess.run(
            [sys.executable, "-m", "tests.agent.staged_run", str(self.state_dir),
             *map(str, bundles)],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
            check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        return before, log


def verify_release_dir(directory: Path) -> str:
    """Re-hash a release's files against its manifest; its version."""
    manifest = parse_manifest((directory / MANIFEST_FILE).read_bytes())
    files = directory / FILES_DIR
    on_disk = sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file())
    assert on_disk == sorted(f.path for f in manifest.files)
    for entry in manifest.files:
        data = (files / entry.path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry.sha256, f"{entry.path} is torn"
    return manifest.version


class Cut:
    """The device after one power cut and the start-up recovery."""

    def __init__(self, where: Path) -> None:
        recover(where)
        self.state = DeviceState(where)
        record = self.state.record(CHANNEL)
        assert record is not None, "channel lost"
        self.record = record
        self.active = record.active.version
        assert verify_active_release(where, CHANNEL).version == self.active
        self.candidate = read_candidate(self.state.layout, CHANNEL)
        kept = list(record.names())
        if self.candidate is not None:
            directory = self.state.layout.releases(CHANNEL) / self.candidate.name
            assert verify_release_dir(directory) == self.candidate.version
            kept.append(self.candidate.name)
        on_disk = sorted(p.name for p in self.state.layout.releases(CHANNEL).iterdir())
        assert on_disk == sorted(kept), "a release neither kept nor judged is left"
        assert list(self.state.layout.staging(CHANNEL).iterdir()) == []
        assert not self.state.layout.journal(CHANNEL).exists()
        for capture in pending_captures(where):  # only whole captures are there to ship
            data = capture.read()
            assert hashlib.sha256(data).hexdigest() == capture.sha256
            decode_capture(data)
        self.captures = len(pending_captures(where))
        result = CliRunner().invoke(agent_main, ["--state-dir", str(where), "status", "--json"])
        assert result.exit_code == 0, result.output
        channel = json.loads(result.stdout)["channels"][CHANNEL]
        assert channel["active"]["version"] == self.active
        shown = channel.get("candidate")
        assert (shown or {}).get("version") == (self.candidate.version if self.candidate
                                                else None)
        if shown is not None:
            assert shown["stage"] in ("shadow", "ramp")

    @property
    def candidate_version(self) -> str | None:
        return None if self.candidate is None else self.candidate.version


def each_cut(setup: Setup, before: Disk, log: Path, check: Callable[[int, str, Cut], None]
             ) -> list[Cut]:
    cuts = []
    for i, last, disk in power_cuts(before, log):
        where = setup.tmp_path / "cut"
        disk.materialize(where)
        try:
            cut = Cut(where)
            check(i, last, cut)
        except AssertionError as e:
            raise AssertionError(f"cut {i} after the fsync of {last}: {e}") from e
        cuts.append(cut)
    return cuts


def test_power_cut_anywhere_in_shadow_ramp_and_switch_serves_old_or_new(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    setup = Setup(tmp_path, keys, models)
    setup.install(models.good, "1.0.0", 1)
    staged = setup.bundle(models.twin, "2.0.0", 2,
                          shadow(10, ramp="50,100", step_requests=5,
                                 capture="low-margin:0.99"))
    before, log = setup.traced(staged)
    switched: list[bool] = []

    def check(i: int, last: str, cut: Cut) -> None:
        assert cut.active in ("1.0.0", "2.0.0")
        assert not (switched and switched[-1]) or cut.active == "2.0.0", "went back"
        if cut.active == "1.0.0":  # before the switch: judged again, or not staged yet
            assert cut.candidate_version in (None, "2.0.0")
            assert cut.candidate is None or cut.candidate.first_stage == "shadow"
            if cut.candidate is None:
                assert cut.record.highest_sequence == 1
        else:
            assert cut.candidate is None  # activated: nothing left to judge
        switched.append(cut.active == "2.0.0")

    cuts = each_cut(setup, before, log, check)
    assert cuts[0].active == "1.0.0" and cuts[0].candidate is None
    assert any(c.candidate_version == "2.0.0" for c in cuts)
    assert cuts[-1].active == "2.0.0" and cuts[-1].captures > 0


def test_power_cut_anywhere_in_a_refusal_never_lets_the_candidate_answer_or_come_back(
    tmp_path: Path, keys: Keyring, models: StagedModels
) -> None:
    setup = Setup(tmp_path, keys, models)
    setup.install(models.good, "1.0.0", 1)
    bad = setup.bundle(models.nan, "2.0.0", 2, shadow(20, capture="nonfinite,disagreement"))
    before, log = setup.traced(bad)
    staged: list[bool] = []

    def check(i: int, last: str, cut: Cut) -> None:
        assert cut.active == "1.0.0"
        assert cut.candidate_version in (None, "2.0.0")
        if cut.candidate is None and any(staged):  # refused: it is never offered back
            assert cut.record.highest_sequence >= 2, "the refused candidate may come back"
        staged.append(cut.candidate is not None)

    cuts = each_cut(setup, before, log, check)
    assert any(staged) and cuts[-1].candidate is None
    assert cuts[-1].record.highest_sequence == 2 and cuts[-1].captures > 0


@pytest.mark.parametrize("newer_staged", [True, False], ids=["staged", "at-once"])
def test_power_cut_while_a_newer_release_replaces_a_candidate(
    tmp_path: Path, keys: Keyring, models: StagedModels, newer_staged: bool
) -> None:
    setup = Setup(tmp_path, keys, models)
    setup.install(models.good, "1.0.0", 1)
    setup.install(models.twin, "2.0.0", 2, shadow(1000))
    newer = setup.bundle(models.twin, "3.0.0", 3, shadow(1000) if newer_staged else None)

    def check(i: int, last: str, cut: Cut) -> None:
        if cut.active == "3.0.0":
            assert not newer_staged and cut.candidate is None
        else:
            assert cut.active == "1.0.0"
            assert cut.candidate_version in ("2.0.0", "3.0.0", None)

    # the traced run installs 3.0.0; a staged one is then judged (forever: 1000 requests are
    # more than the run sends) until the run ends, so install it without the server
    os.sync()
    before = Disk.snapshot(setup.state_dir)
    log = tmp_path / "trace" / "fsync.log"
    log.parent.mkdir()
    env = {**os.environ, **trace_env(log, setup.state_dir)}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("satchel-agent")), "--state-dir",
         str(setup.state_dir), "install", str(newer)],
        env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    cuts = each_cut(setup, before, log, check)
    assert cuts[0].candidate_version == "2.0.0"
    last = cuts[-1]
    assert (last.candidate_version, last.active) == (
        ("3.0.0", "1.0.0") if newer_staged else (None, "3.0.0"))
