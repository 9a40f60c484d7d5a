"""Installing, keeping, rolling back and reporting releases, through `satchel-agent`."""

from __future__ import annotations

import json
import platform
import stat
import threading

import pytest

from satchel.agent.errors import LockBusyError
from satchel.agent.install.installer import install, rollback
from satchel.agent.install.lock import device_lock
from satchel.agent.state import DeviceState


def test_install_activates_a_verified_smoke_tested_release(device, make_bundle):
    out = device.run("install", str(make_bundle(version="1.0.0", sequence=5))).ok()

    assert "activated kws 1.0.0 (sequence 5)" in out.stdout
    assert device.status() == {
        "device_id": "dev-1",
        "device_class": "test-board",
        "channels": {"kws": {
            "active": {"version": "1.0.0", "sequence": 5},
            "releases": [{"version": "1.0.0", "sequence": 5}],
            "state": "probation",  # just activated: its health is being watched
            "stage": "probation",
            "candidate": None,  # no release judged in shadow or ramp (agent.staging)
        }},
    }
    device.verify_active()


@pytest.mark.parametrize("model", ["onnx", "tflite", "tflite-int8"])
def test_every_runtime_is_smoke_tested_with_the_real_interpreter(device, make_bundle, model):
    device.run("install", str(make_bundle(model=model))).ok()

    report = device.state.active_release("kws").report()
    test = report["tests"][0]
    assert report["passed"] and test["runtime"] == ("tflite" if "tflite" in model else
                                                    "onnxruntime")
    # [8, 16] samples: one feed of 8 rows where the batch is dynamic (ONNX), else 8 feeds
    assert test["samples"] == (1 if model == "onnx" else 8)
    assert test["agreement"]["outputs"][0]["values"] == 8 * 4
    assert test["agreement"]["nonfinite"] == 0
    assert test["latency_ms"]["runs"] == 5 and test["latency_ms"]["p95"] > 0
    assert test["memory_mb"]["peak_growth"] is not None


def test_status_json_is_deterministic_sorted_json(device, make_bundle):
    device.run("install", str(make_bundle())).ok()

    first = device.status_bytes()
    assert first == device.status_bytes()
    assert first.decode() == json.dumps(json.loads(first), sort_keys=True, indent=2) + "\n"


def test_only_the_last_three_good_releases_are_kept(device, make_bundle):
    for seq in range(1, 6):
        device.run("install", str(make_bundle(version=f"1.{seq}", sequence=seq))).ok()

    releases = device.status()["channels"]["kws"]["releases"]
    assert [r["sequence"] for r in releases] == [5, 4, 3]
    on_disk = sorted(p.name for p in (device.state_dir / "channels/kws/releases").iterdir())
    assert on_disk == ["3-1.3", "4-1.4", "5-1.5"]
    assert not any((device.state_dir / "channels/kws/staging").iterdir())


def test_pruned_releases_do_not_reopen_rollback(device, make_bundle):
    for seq in range(1, 5):
        device.run("install", str(make_bundle(version=f"1.{seq}", sequence=seq))).ok()

    line = device.run("install", str(make_bundle(version="1.1b", sequence=1))).refusal()

    assert "sequence 1, not newer than 4" in line


def test_rollback_goes_to_the_previous_release_and_drops_the_bad_one(device, make_bundle):
    device.run("install", str(make_bundle(version="1.0", sequence=1))).ok()
    device.run("install", str(make_bundle(version="2.0", sequence=2, model="onnx-v2"))).ok()
    generation = device.state.generation()

    out = device.run("rollback", "kws", "--reason", "field report: wrong labels").ok()

    assert "rolled back kws to 1.0" in out.stdout
    info = device.status()["channels"]["kws"]
    assert info["active"] == {"version": "1.0", "sequence": 1}
    assert info["releases"] == [{"version": "1.0", "sequence": 1}]
    assert info["state"] == "rolled-back"
    assert device.state.generation() > generation
    assert device.verify_active().version == "1.0"
    event = device.history()[-1]
    assert event["event"] == "rolled-back" and "wrong labels" in event["reason"]


def test_release_rolled_away_from_cannot_be_installed_again(device, make_bundle):
    device.run("install", str(make_bundle(version="1.0", sequence=1))).ok()
    bad = make_bundle(version="2.0", sequence=2)
    device.run("install", str(bad)).ok()
    device.run("rollback", "kws").ok()
    before = device.status_bytes()

    line = device.run("install", str(bad)).refusal()

    assert "not newer than 2" in line
    assert device.status_bytes() == before


def test_rollback_without_a_previous_release_is_refused(device, make_bundle):
    device.run("install", str(make_bundle())).ok()
    before, tree = device.status_bytes(), device.tree()

    line = device.run("rollback", "kws").refusal()

    assert "no earlier release" in line
    assert device.status_bytes() == before and device.tree() == tree
    assert device.history()[-1]["event"] == "refused"


def test_rollback_of_an_unknown_channel_is_refused(device):
    assert "no active release" in device.run("rollback", "nope").refusal()


def test_rollback_api_returns_the_release_now_active(device, make_bundle):
    install(device.state_dir, make_bundle(version="1.0", sequence=1))
    install(device.state_dir, make_bundle(version="2.0", sequence=2))

    release = rollback(device.state_dir, "kws", "health: error rate 0.5 > 0.05")

    assert (release.channel, release.version, release.sequence) == ("kws", "1.0", 1)
    assert (release.path / "model.onnx").is_file()
    assert DeviceState(device.state_dir).previous_release("kws") is None


def test_device_state_view_for_the_inference_server(device, make_bundle):
    state = DeviceState(device.state_dir)
    assert state.channels() == [] and state.active_release("kws") is None
    assert state.generation() == 0

    install(device.state_dir, make_bundle(version="1.0", sequence=1))
    install(device.state_dir, make_bundle(version="2.0", sequence=2, name="vision"))
    install(device.state_dir, make_bundle(version="1.1", sequence=3))

    assert state.channels() == ["kws", "vision"]
    active, previous = state.active_release("kws"), state.previous_release("kws")
    assert (active.version, previous.version) == ("1.1", "1.0")
    assert active.manifest.name == "kws" and active.activated_at.tzinfo is not None
    assert active.path.name == "files" and (active.path / "smoke/inputs.npz").is_file()
    assert state.generation() == 3


def test_channels_are_independent(device, make_bundle):
    device.run("install", str(make_bundle(name="kws", sequence=10))).ok()
    device.run("install", str(make_bundle(name="vision", sequence=1))).ok()

    channels = device.status()["channels"]
    assert sorted(channels) == ["kws", "vision"]
    assert channels["vision"]["active"]["sequence"] == 1


def test_install_json_reports_every_figure(device, make_bundle):
    out = device.run("install", "--json", str(make_bundle())).ok()

    result = json.loads(out.stdout)
    assert result["installed"] and result["channel"] == "kws" and result["previous"] is None
    test = result["report"]["tests"][0]
    for figure in ("agreement", "latency_ms", "memory_mb", "load_ms", "thresholds"):
        assert figure in test


def test_install_json_reports_a_refusal_too(device, make_bundle):
    device.run("install", str(make_bundle(sequence=2))).ok()

    out = device.run("install", "--json", str(make_bundle(sequence=2)))

    assert out.refusal().startswith("error: bundle kws")
    assert json.loads(out.stdout) == {"installed": False, "report": None,
                                      "error": out.stderr.strip().removeprefix("error: ")}


def test_history_records_activations_and_refusals(device, make_bundle):
    device.run("install", str(make_bundle(sequence=2))).ok()
    device.run("install", str(make_bundle(sequence=1))).refusal()

    events = device.history()
    assert [e["event"] for e in events] == ["activated", "refused"]
    assert "not newer" in events[1]["reason"]
    assert "refused" in device.run("history").ok().stdout


def test_history_is_bounded(device, make_bundle, tmp_path):
    from satchel.agent.config import AgentConfig
    from satchel.agent.install import history
    from satchel.bundles.events import HISTORY_REFUSED

    config = AgentConfig(history_entries=5)
    for i in range(12):
        history.record_event(device.state.layout, HISTORY_REFUSED, config, reason=f"r{i}")

    kept = history.read_history(device.state.layout)
    assert [e["reason"] for e in kept] == [f"r{i}" for i in range(7, 12)]


def test_init_writes_identity_trust_and_a_private_device_key(tmp_path, keys):
    state_dir = tmp_path / "fresh"
    from tests.agent.devices import Device

    out = Device(state_dir).run(
        "init", "--trust", str(_write(tmp_path / "root.json", keys.root_json)),
        "--device-id", "gw-7", "--device-class", "rpi4", "--json",
    ).ok()

    identity = json.loads(out.stdout)
    assert identity["device_id"] == "gw-7" and identity["architecture"] == platform.machine()
    assert identity["trusted_clock"] is True
    assert stat.S_IMODE((state_dir / "device.key").stat().st_mode) == 0o600
    assert (state_dir / "root.json").read_bytes() == keys.root_json


def test_init_refuses_to_overwrite_a_device(device, keys, tmp_path):
    trust = _write(tmp_path / "root.json", keys.root_json)
    before = device.tree()

    line = device.run("init", "--trust", str(trust), "--device-id", "other",
                      "--device-class", "x").refusal()

    assert "already holds device dev-1" in line and device.tree() == before


def test_init_refuses_a_trust_root_that_is_not_signed(tmp_path, keys):
    from tests.agent.devices import Device

    doc = json.loads(keys.root_json)
    doc["signed"]["version"] = 2
    trust = _write(tmp_path / "root.json", json.dumps(doc).encode())

    Device(tmp_path / "s").run("init", "--trust", str(trust), "--device-id", "a",
                                "--device-class", "b").refusal()

    assert not (tmp_path / "s" / "device.json").exists()


def test_commands_on_an_uninitialised_state_dir_say_what_to_do(tmp_path):
    from tests.agent.devices import Device

    line = Device(tmp_path / "empty").run("status").refusal()

    assert "not set up" in line and "init" in line


def test_console_script_exit_codes_and_help(device, make_bundle):
    assert device.spawn("--help").ok().stdout.count("install") >= 1
    for command in ("init", "install", "status", "rollback", "history"):
        assert device.spawn(command, "--help").exit_code == 0
    assert device.spawn("install").exit_code == 2  # missing argument: usage error
    assert device.spawn("frobnicate").exit_code == 2
    device.spawn("install", str(make_bundle())).ok()
    line = device.spawn("install", str(make_bundle())).refusal()  # same sequence again
    assert "rollback refused" in line
    assert json.loads(device.spawn("status", "--json").ok().stdout)["channels"]["kws"]


def test_missing_bundle_file_is_one_line(device, tmp_path):
    line = device.run("install", str(tmp_path / "nope.satchel")).refusal()
    assert "cannot read bundle" in line


def test_installs_and_rollbacks_are_serialized_by_the_device_lock(device, make_bundle):
    from satchel.agent.config import AgentConfig

    bundle = make_bundle()
    quick = AgentConfig(lock_wait_s=0.2)
    with device_lock(device.state.layout.lock, 1, 0.01):
        with pytest.raises(LockBusyError):
            install(device.state_dir, bundle, config=quick)
        status = device.run("status", "--json").ok()  # readers never wait for the lock
        assert json.loads(status.stdout)["channels"] == {}

    results: list[object] = []
    worker = threading.Thread(target=lambda: results.append(install(device.state_dir, bundle)))
    with device_lock(device.state.layout.lock, 1, 0.01):
        worker.start()
        worker.join(0.3)
        assert worker.is_alive() and device.state.channels() == []  # waiting for the lock
    worker.join(30)
    assert results and device.active() == ("1.0.0", 1)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
