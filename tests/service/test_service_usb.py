"""USB sneakernet on the device: a trusted plan installs and leaves a signed report; an
untrusted or expired plan, a stick pulled out mid-read, a bundle that is not the one named,
all leave the device as it was. The watcher of `run` processes each plan once."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest

from satchel.agent.config import AgentConfig
from satchel.agent.errors import PlanRefusedError, StickError
from satchel.agent.event_queue import EventQueue
from satchel.agent.health.stats import HealthStats
from satchel.agent.state import DeviceState
from satchel.agent.sync.credentials import device_key
from satchel.agent.sync.trust_roots import trusted_root
from satchel.agent.sync.usb import StickOutcome, UsbWatcher, done_plans, find_sticks, process_stick
from satchel.bundles.errors import RootRotationError
from satchel.bundles.keys import SigningKey
from satchel.bundles.plan import Report, verify_report
from tests.factory.keys import Keyring, next_root
from tests.factory.trees import tree_snapshot
from tests.service.devices import FAST, Device, Models, make_device
from tests.service.sticks import make_stick, with_parent_dir


def _no_health(_key: object) -> HealthStats:
    return HealthStats()


def _process(device: Device, stick: Path) -> StickOutcome:
    return process_stick(device.state_dir, stick, EventQueue(device.state_dir, FAST),
                         _no_health, config=FAST)


def _active_version(device: Device) -> str | None:
    release = DeviceState(device.state_dir).active_release("vision")
    return release.version if release is not None else None


def _report_of(outcome: StickOutcome, device: Device) -> Report:
    assert outcome.report is not None
    return verify_report(outcome.report.read_bytes(), device_key(device.state_dir).public)


def _snapshot(device: Device) -> tuple[bytes, object, list[str]]:
    state = DeviceState(device.state_dir)
    return state.layout.trust.read_bytes(), state.status(), state.channels()


def test_a_trusted_plan_installs_and_leaves_a_signed_report(
    tmp_path: Path, device: Device, models: Models
) -> None:
    stick = tmp_path / "stick"
    make_stick(stick, device.keys, [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)])

    outcome = _process(device, stick)

    assert outcome.installed == ["vision 1.0.0"] and outcome.failed == []
    assert _active_version(device) == "1.0.0"
    (report_file,) = (stick / "reports" / "dev-1").iterdir()
    report = verify_report(report_file.read_bytes(), device_key(device.state_dir).public)
    assert report_file.name == f"{report.report_id}.json" and report.plan_id == "plan-1"
    body = report.checkin
    assert body["status"]["channels"]["vision"]["active"] == {"version": "1.0.0",
                                                              "sequence": 10}
    kinds = [e["kind"] for e in body["events"]]
    assert kinds == ["downloaded", "verified", "smoke_test", "activated"]
    smoke = body["events"][2]
    assert smoke["passed"] is True and smoke["deployment_id"] == 4
    assert {"max_abs_error", "p95_ms", "tests"} <= set(smoke["figures"])
    assert "vision" in body["health"]
    assert not list((device.state_dir / "usb-staging").iterdir())


def test_a_usb_only_device_empties_its_queue_into_the_report(
    tmp_path: Path, device: Device, models: Models
) -> None:
    make_stick(tmp_path / "stick", device.keys,
               [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)])

    _process(device, tmp_path / "stick")

    assert EventQueue(device.state_dir).pending() == []  # the stick carried them


def test_a_plan_signed_by_an_untrusted_key_is_refused_and_nothing_changes(
    tmp_path: Path, device: Device, models: Models
) -> None:
    stick = tmp_path / "stick"
    make_stick(stick, device.keys, [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)],
               signer=SigningKey.generate())
    before = _snapshot(device)

    with pytest.raises(PlanRefusedError, match="refused"):
        _process(device, stick)

    assert _snapshot(device) == before
    assert not (stick / "reports").exists()
    assert EventQueue(device.state_dir).pending() == []


def test_an_expired_plan_is_refused(tmp_path: Path, device: Device, models: Models) -> None:
    stick = tmp_path / "stick"
    make_stick(stick, device.keys, [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)],
               expires_in_s=-1)
    before = _snapshot(device)

    with pytest.raises(PlanRefusedError, match="expired"):
        _process(device, stick)

    assert _snapshot(device) == before


def test_a_plan_for_other_devices_installs_nothing_but_reports(
    tmp_path: Path, device: Device, models: Models
) -> None:
    stick = tmp_path / "stick"
    make_stick(stick, device.keys, [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)],
               devices=("dev-9",))

    outcome = _process(device, stick)

    assert (outcome.installed, outcome.failed) == ([], [])
    assert DeviceState(device.state_dir).channels() == []
    assert outcome.report is not None and outcome.report.is_file()


def test_a_release_not_above_the_active_one_is_skipped(
    tmp_path: Path, device: Device, models: Models
) -> None:
    device.cli("install", str(device.bundle(models.other, "2.0.0", 20)))
    stick = tmp_path / "stick"
    make_stick(stick, device.keys, [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)])

    outcome = _process(device, stick)

    assert outcome.skipped == ["vision 1.0.0"]
    assert _active_version(device) == "2.0.0"


def test_a_bundle_other_than_the_plan_names_is_not_installed(
    tmp_path: Path, device: Device, models: Models
) -> None:
    stick = tmp_path / "stick"
    plan = make_stick(stick, device.keys,
                      [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)])
    (stick / plan.assignments[0].file).write_bytes(
        device.bundle(models.other, "1.0.0", 10).read_bytes()  # signed, but another file
    )
    before = _snapshot(device)

    outcome = _process(device, stick)

    (failed,) = outcome.failed
    assert "not the bundle the plan names" in failed[1]
    assert _snapshot(device) == before
    kinds = [e["kind"] for e in EventQueue(device.state_dir).pending()]
    assert kinds == []  # usb-only: delivered in the report on the stick
    report = _report_of(outcome, device)
    assert [e["kind"] for e in report.checkin["events"]] == ["install_failed"]


def test_a_stick_pulled_out_mid_read_leaves_the_device_unchanged(
    tmp_path: Path, device: Device, models: Models
) -> None:
    stick = tmp_path / "stick"
    bundle = device.bundle(models.good, "1.0.0", 10)
    plan = make_stick(stick, device.keys, [(bundle, "1.0.0", 10)])
    on_stick = stick / plan.assignments[0].file
    data = bundle.read_bytes()
    on_stick.write_bytes(data[: len(data) // 2])  # the first half was read, then it was gone
    before = _snapshot(device)

    outcome = _process(device, stick)

    assert _snapshot(device) == before
    assert outcome.installed == [] and "nothing installed" in outcome.failed[0][1]
    assert not list((device.state_dir / "usb-staging").iterdir())


def test_a_stick_that_cannot_be_read_at_all_changes_nothing(
    tmp_path: Path, device: Device, models: Models
) -> None:
    stick = tmp_path / "stick"
    plan = make_stick(stick, device.keys,
                      [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)])
    (stick / plan.assignments[0].file).unlink()  # gone between the plan and the bundle
    before = _snapshot(device)

    with pytest.raises(StickError, match="cannot open"):
        _process(device, stick)

    assert _snapshot(device) == before
    assert done_plans(device.state_dir) == []  # tried again when the stick is back


def test_the_sticks_trust_roots_are_applied_before_its_plan(
    tmp_path: Path, device: Device, models: Models
) -> None:
    keys = device.keys
    new_signing = SigningKey.generate()
    v2 = next_root(keys.root, root_keys=keys.root_keys, signing_keys=[new_signing],
                   signed_by=keys.root_keys)
    stick = tmp_path / "stick"
    bundle = device.bundle(models.good, "1.0.0", 10, signer=new_signing)
    make_stick(stick, keys, [(bundle, "1.0.0", 10)], signer=new_signing,
               roots=[keys.root_json, v2])

    outcome = _process(device, stick)

    assert outcome.trust_version == (1, 2) and outcome.installed == ["vision 1.0.0"]
    assert trusted_root(device.state_dir).version == 2


def test_a_forged_root_on_the_stick_is_refused_and_the_root_kept(
    tmp_path: Path, device: Device, models: Models
) -> None:
    stranger = SigningKey.generate()
    forged = next_root(device.keys.root, root_keys=[stranger], signing_keys=[stranger],
                       signed_by=[stranger])
    stick = tmp_path / "stick"
    make_stick(stick, device.keys, [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)],
               signer=stranger, roots=[device.keys.root_json, forged])
    before = _snapshot(device)

    with pytest.raises(RootRotationError):
        _process(device, stick)

    assert _snapshot(device) == before


def test_the_watcher_processes_each_plan_once(
    tmp_path: Path, device: Device, models: Models
) -> None:
    media = tmp_path / "media"
    stick = media / "user" / "STICK"
    make_stick(stick, device.keys, [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)])
    watcher = UsbWatcher(device.state_dir, [media], EventQueue(device.state_dir, FAST),
                         _no_health, threading.Event(), config=FAST)

    first = watcher.scan_once()
    again = watcher.scan_once()
    make_stick(stick, device.keys, [(device.bundle(models.other, "2.0.0", 20), "2.0.0", 20)],
               plan_id="plan-2")
    newer = watcher.scan_once()

    assert [o.plan_id for o in first] == ["plan-1"] and again == []
    assert [o.installed for o in newer] == [["vision 2.0.0"]]
    assert len(list((stick / "reports" / "dev-1").iterdir())) == 2
    assert done_plans(device.state_dir) == ["plan-1", "plan-2"]


def test_the_watcher_does_not_retry_a_refused_plan_every_scan(
    tmp_path: Path, device: Device, models: Models
) -> None:
    stick = tmp_path / "media" / "STICK"
    make_stick(stick, device.keys, [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)],
               signer=SigningKey.generate())
    watcher = UsbWatcher(device.state_dir, [tmp_path / "media"],
                         EventQueue(device.state_dir, FAST), _no_health, threading.Event(),
                         config=FAST)

    assert watcher.scan_once() == [] and watcher.scan_once() == []
    assert DeviceState(device.state_dir).channels() == []


def test_sticks_are_found_below_the_mount_roots_only_as_deep_as_configured(
    tmp_path: Path,
) -> None:
    for where in ("a", "b/c", "d/e/f"):
        with_parent_dir(tmp_path / where / "plan.json").write_text("{}")

    assert find_sticks([tmp_path], 2) == [tmp_path / "a", tmp_path / "b" / "c"]
    assert find_sticks([tmp_path / "missing"], 2) == []


def test_usb_command_exit_codes_and_one_line_refusal(
    tmp_path: Path, keys: Keyring, models: Models
) -> None:
    good = make_device(tmp_path, keys, "dev-1")
    stick = tmp_path / "stick"
    make_stick(stick, keys, [(good.bundle(models.good, "1.0.0", 10), "1.0.0", 10)])
    done = good.cli("usb", str(stick))
    assert "installed vision 1.0.0" in done.stdout and "report written to" in done.stdout

    other = make_device(tmp_path, keys, "dev-2")
    forged = tmp_path / "forged"
    make_stick(forged, keys, [(good.bundle(models.good, "1.0.0", 10), "1.0.0", 10)],
               devices=("dev-2",), signer=SigningKey.generate())
    refused = other.cli("usb", str(forged), check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: USB plan on") and refused.stderr.count("\n") == 1
    assert DeviceState(other.state_dir).channels() == []


def test_usb_report_carries_events_of_an_enrolled_device_but_keeps_them_queued(
    tmp_path: Path, device: Device, models: Models
) -> None:
    from satchel.agent.sync.credentials import new_credentials, save_credentials

    save_credentials(device.state_dir, new_credentials("http://127.0.0.1:9", "dev-1",
                                                       "sat_dev_x", "/c"))
    stick = tmp_path / "stick"
    make_stick(stick, device.keys, [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)])

    outcome = _process(device, stick)

    queued = EventQueue(device.state_dir).pending()
    report = _report_of(outcome, device)
    assert [e["id"] for e in queued] == [e["id"] for e in report.checkin["events"]]
    assert AgentConfig().usb_plans_remembered > 0


def test_usb_command_refuses_a_stick_whose_reports_link_into_the_state_dir(
    tmp_path: Path, keys: Keyring, models: Models
) -> None:
    device = make_device(tmp_path, keys, "dev-1")
    stick = tmp_path / "stick"
    make_stick(stick, keys, [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)])
    with_parent_dir(stick / "reports" / "dev-1").symlink_to(device.state_dir)
    before = _state_files(device), tree_snapshot(stick)

    refused = device.cli("usb", str(stick), check=False)

    assert refused.returncode == 1
    assert refused.stderr == ("error: stick path reports/dev-1 is a link; refusing to follow "
                              "it out of the stick\n")
    assert (_state_files(device), tree_snapshot(stick)) == before


def _state_files(device: Device) -> dict[str, object]:
    """Every path of the state dir but the (empty) lock file that every command takes."""
    return {k: v for k, v in tree_snapshot(device.state_dir).items() if k != "lock"}


def test_the_watcher_refuses_a_stick_with_a_link_once_and_leaves_it(
    tmp_path: Path, device: Device, models: Models, caplog: pytest.LogCaptureFixture
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    stick = tmp_path / "media" / "STICK"
    make_stick(stick, device.keys, [(device.bundle(models.good, "1.0.0", 10), "1.0.0", 10)])
    (stick / "reports").symlink_to(outside)
    watcher = UsbWatcher(device.state_dir, [tmp_path / "media"],
                         EventQueue(device.state_dir, FAST), _no_health, threading.Event(),
                         config=FAST)
    before = tree_snapshot(device.state_dir)

    with caplog.at_level(logging.ERROR, logger="satchel.agent.sync.usb"):
        assert watcher.scan_once() == [] and watcher.scan_once() == []

    assert [r.getMessage() for r in caplog.records] == [
        "stick path reports is a link; refusing to follow it out of the stick"
    ]  # refused once, not tried again every scan
    assert tree_snapshot(device.state_dir) == before and list(outside.iterdir()) == []
