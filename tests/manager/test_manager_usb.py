"""USB sneakernet on the manager side: a signed plan out, signed device reports back in,
recorded exactly like LAN check-ins; a stick imported twice records nothing twice."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from satchel.bundles import plan as stick
from satchel.bundles.errors import SignatureError
from satchel.bundles.keys import SigningKey
from satchel.bundles.trust import load_root
from satchel.manager.cli import main
from satchel.manager.config import ManagerConfig
from satchel.manager.models import Event, UsbReport
from satchel.manager.store import BundleStore
from tests.factory.trees import tree_snapshot
from tests.manager.disks import fill, tmpfs
from tests.manager.helpers import Fleet, SimDevice, event


def _satchel(config: ManagerConfig, *args: str):
    env = {"SATCHEL_DATABASE_URL": config.database_url, "SATCHEL_CONFIG": ""}
    return CliRunner().invoke(main, ["--data-dir", str(config.data_dir), *args], env=env)


def _register(fleet: Fleet, device_id: str) -> SimDevice:
    """A USB-only device: registered by its public key, no LAN credential."""
    device = SimDevice(device_id, "edge-box", SigningKey.generate())
    r = fleet.client.post(
        "/api/v1/devices",
        headers=fleet.admin,
        json={
            "device_id": device_id,
            "device_class": "edge-box",
            "public_key": device.key.public.to_pem().decode(),
        },
    )
    assert r.status_code == 201
    return device


def write_report(
    path: Path,
    device: SimDevice,
    events: list[dict],
    plan_id: str | None,
    key: SigningKey | None = None,
    created: datetime | None = None,
) -> Path:
    """What `satchel-agent usb PATH` leaves on the stick, signed by the device key."""
    report = stick.Report(
        report_id=uuid.uuid4().hex,
        device_id=device.device_id,
        created=created or datetime.now(timezone.utc).replace(microsecond=0),
        checkin=device.body(events),
        plan_id=plan_id,
    )
    target = path / report.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(stick.sign_report(report, key or device.key))
    return target


def _events(fleet: Fleet) -> list[tuple[str, str, str]]:
    db = fleet.app.extensions["satchel"].db
    return db.run(lambda s: sorted((e.device_id, e.event_id, e.via) for e in s.query(Event)))


@pytest.fixture
def exported(fleet: Fleet, config: ManagerConfig, tmp_path: Path):
    devices = [_register(fleet, f"site-{i}") for i in range(3)]
    built = fleet.bundle("1.0.0", 1)
    dep = fleet.deploy("vision:1.0.0", device_classes=["edge-box"], waves="1,100%")
    usb = tmp_path / "stick"
    r = _satchel(
        config, "usb", "export", str(usb), "--key", str(fleet.keys.directory / "signing.key")
    )
    assert r.exit_code == 0, r.output
    return devices, built, dep, usb


def test_export_writes_trust_bundles_and_a_signed_plan(fleet: Fleet, exported) -> None:
    devices, built, dep, usb = exported
    sha = hashlib.sha256(built.data).hexdigest()
    assert (usb / stick.ROOT_FILE).read_bytes() == fleet.keys.root_json
    assert (usb / stick.root_file(1)).read_bytes() == fleet.keys.root_json
    assert (usb / stick.bundle_file(sha)).read_bytes() == built.data
    root = load_root((usb / stick.ROOT_FILE).read_bytes())
    plan = stick.verify_plan((usb / stick.PLAN_FILE).read_bytes(), root, datetime.now(timezone.utc))
    (a,) = plan.assignments
    assert (a.channel, a.version, a.sequence, a.bundle_sha256, a.deployment_id) == (
        "vision",
        "1.0.0",
        1,
        sha,
        dep["id"],
    )
    assert a.devices == ("site-0",)  # the canary wave only, so far
    assert plan.for_device("site-0", "edge-box") == [a]
    assert plan.for_device("site-1", "edge-box") == []
    assert (usb / stick.REPORTS_DIR).is_dir()


def test_tampered_plan_fails_verification(fleet: Fleet, exported) -> None:
    *_, usb = exported
    doc = json.loads((usb / stick.PLAN_FILE).read_bytes())
    doc["signed"]["assignments"][0]["devices"].append("intruder")
    root = load_root(fleet.keys.root_json)
    with pytest.raises(SignatureError):
        stick.verify_plan(json.dumps(doc).encode(), root, datetime.now(timezone.utc))


def test_import_records_reports_like_checkins_and_advances_the_wave(
    fleet: Fleet, config: ManagerConfig, exported
) -> None:
    devices, built, dep, usb = exported
    plan_id = json.loads((usb / stick.PLAN_FILE).read_bytes())["signed"]["plan_id"]
    canary = devices[0]
    canary.run("vision", "1.0.0", 1)
    sent = [
        event("verified"),
        event("smoke_test", passed=True, figures={"p95_ms": 2.5}),
        event("activated"),
    ]
    write_report(usb, canary, sent, plan_id)
    r = _satchel(config, "usb", "import", str(usb))
    assert r.exit_code == 0, r.output
    assert "1 report(s) imported" in r.stdout
    assert _events(fleet) == sorted(("site-0", e["id"], "usb") for e in sent)
    shown = fleet.client.get("/api/v1/devices/site-0", headers=fleet.admin).json
    assert shown["last_via"] == "usb"
    assert shown["channels"]["vision"]["active"]["sequence"] == 1
    status = fleet.status(dep["id"])
    assert status["current_wave"] == 1  # the canary's report released the next wave
    # the next stick carries the rest of the fleet
    again = _satchel(
        config, "usb", "export", str(usb), "--key", str(fleet.keys.directory / "signing.key")
    )
    assert "1 already there" in again.stdout
    root = load_root(fleet.keys.root_json)
    plan = stick.verify_plan((usb / stick.PLAN_FILE).read_bytes(), root, datetime.now(timezone.utc))
    assert plan.assignments[0].devices == ("site-1", "site-2")


def test_importing_the_same_stick_twice_records_nothing_twice(
    fleet: Fleet, config: ManagerConfig, exported
) -> None:
    devices, _, _, usb = exported
    write_report(usb, devices[0], [event("downloaded")], None)
    write_report(usb, devices[1], [event("downloaded"), event("verified")], None)
    assert _satchel(config, "usb", "import", str(usb)).exit_code == 0
    before = _events(fleet)
    second = _satchel(config, "usb", "import", str(usb))
    assert second.exit_code == 0 and "0 report(s) imported, 2 already imported" in second.stdout
    assert _events(fleet) == before and len(before) == 3
    db = fleet.app.extensions["satchel"].db
    assert db.run(lambda s: s.query(UsbReport).count()) == 2


def test_tampered_or_foreign_reports_are_refused_and_others_still_imported(
    fleet: Fleet, config: ManagerConfig, exported
) -> None:
    devices, _, _, usb = exported
    good = write_report(usb, devices[0], [event("downloaded")], None)
    tampered = write_report(usb, devices[1], [event("downloaded")], None)
    doc = json.loads(tampered.read_bytes())
    doc["signed"]["checkin"]["events"][0]["kind"] = "activated"
    tampered.write_bytes(json.dumps(doc).encode())
    write_report(usb, devices[2], [event("downloaded")], None, key=SigningKey.generate())
    stranger = SimDevice("stranger", "edge-box", SigningKey.generate())
    write_report(usb, stranger, [event("downloaded")], None)
    r = _satchel(config, "usb", "import", str(usb), "--json")
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1 and "refused" in r.stderr
    result = json.loads(r.stdout)
    assert result["imported"] == [good.relative_to(usb).as_posix()]
    reasons = " ".join(x["reason"] for x in result["refused"])
    assert len(result["refused"]) == 3
    assert "does not match" in reasons and "not known here" in reasons
    assert [e[0] for e in _events(fleet)] == ["site-0"]


def test_report_under_the_wrong_device_directory_is_refused(
    fleet: Fleet, config: ManagerConfig, exported
) -> None:
    devices, _, _, usb = exported
    path = write_report(usb, devices[0], [event("downloaded")], None)
    moved = usb / "reports" / "site-1" / path.name
    moved.parent.mkdir(parents=True, exist_ok=True)
    path.rename(moved)
    r = _satchel(config, "usb", "import", str(usb))
    assert r.exit_code == 1 and "should be reports/site-0/" in r.stderr
    assert _events(fleet) == []


def test_export_refuses_a_key_outside_the_trust_root(
    fleet: Fleet, config: ManagerConfig, tmp_path: Path
) -> None:
    stray = tmp_path / "stray.key"
    stray.write_bytes(SigningKey.generate().to_pem())
    r = _satchel(config, "usb", "export", str(tmp_path / "stick"), "--key", str(stray))
    assert r.exit_code == 1 and "not a signing key" in r.stderr
    assert not (tmp_path / "stick" / stick.PLAN_FILE).exists()


# --- links on the stick ---------------------------------------------------------------------


def _link(usb: Path, rel: str, target: Path) -> str:
    """Move what is at `rel` on the stick to `target` and leave a link to it in its place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(usb / rel, target)
    (usb / rel).symlink_to(target)
    return rel


def _tree(*roots: Path) -> tuple[dict[str, object], ...]:
    return tuple(tree_snapshot(r) for r in roots)


def _refused_link(r: Result, rel: str) -> None:
    assert r.exit_code == 1, r.output
    assert r.stderr == (
        f"error: stick path {rel} is a link; refusing to follow it out of the stick\n"
    )


# case -> (stick, a genuine report on it, a directory outside) -> the path made a link
IMPORT_LINKS = {
    "reports/ linked outside the stick": lambda usb, report, out: _link(
        usb, "reports", out / "reports"),
    "reports/<device> linked outside the stick": lambda usb, report, out: _link(
        usb, "reports/site-0", out / "site-0"),
    "a report file linked outside the stick": lambda usb, report, out: _link(
        usb, report.relative_to(usb).as_posix(), out / report.name),
    "reports/<device> linked inside the stick": lambda usb, report, out: _link(
        usb, "reports/site-0", usb / "stash" / "site-0"),
}


@pytest.mark.parametrize("case", sorted(IMPORT_LINKS))
def test_import_refuses_a_link_under_reports_and_records_nothing(
    fleet: Fleet, config: ManagerConfig, exported, tmp_path: Path, case: str
) -> None:
    devices, _, _, usb = exported
    report = write_report(usb, devices[0], [event("downloaded")], None)  # genuine
    outside = tmp_path / "outside"
    outside.mkdir()
    linked = IMPORT_LINKS[case](usb, report, outside)
    before = _tree(usb, outside)

    r = _satchel(config, "usb", "import", str(usb))

    _refused_link(r, linked)
    assert _events(fleet) == []
    db = fleet.app.extensions["satchel"].db
    assert db.run(lambda s: s.query(UsbReport).count()) == 0
    assert _tree(usb, outside) == before


# case -> (stick after one export, a directory outside) -> the path made a link
EXPORT_LINKS = {
    "bundles/ linked outside the stick": lambda usb, out: _link(usb, "bundles", out / "b"),
    "a bundle file linked outside the stick": lambda usb, out: _link(
        usb, next(p for p in (usb / "bundles").iterdir()).relative_to(usb).as_posix(),
        out / "x.satchel"),
    "plan.json linked outside the stick": lambda usb, out: _link(
        usb, "plan.json", out / "plan.json"),
    "trust/ linked outside the stick": lambda usb, out: _link(usb, "trust", out / "trust"),
    "reports/ linked inside the stick": lambda usb, out: _link(
        usb, "reports", usb / "stash" / "reports"),
}


@pytest.mark.parametrize("case", sorted(EXPORT_LINKS))
def test_export_refuses_a_link_where_it_writes_and_writes_nothing(
    fleet: Fleet, config: ManagerConfig, exported, tmp_path: Path, case: str
) -> None:
    *_, usb = exported
    fleet.bundle("1.0.0", 1, name="audio")
    fleet.deploy("audio:1.0.0", device_classes=["edge-box"], waves="1,100%")
    outside = tmp_path / "outside"
    outside.mkdir()
    linked = EXPORT_LINKS[case](usb, outside)
    before = _tree(usb, outside)

    r = _satchel(config, "usb", "export", str(usb), "--key", str(_signing_key(fleet)))

    _refused_link(r, linked)
    assert _tree(usb, outside) == before


# --- an export that fails half-way ------------------------------------------------------------


def _signing_key(fleet: Fleet) -> Path:
    return fleet.keys.directory / "signing.key"


def _two_more_bundles(fleet: Fleet, config: ManagerConfig) -> tuple[int, Path]:
    """Deploy audio and then kws to the canary: the next export copies audio, then kws.
    Returns the size of audio and the store file of kws."""
    audio = fleet.bundle("1.0.0", 1, name="audio")
    fleet.deploy("audio:1.0.0", device_classes=["edge-box"], waves="1,100%")
    kws = fleet.bundle("1.0.0", 1, name="kws")
    fleet.deploy("kws:1.0.0", device_classes=["edge-box"], waves="1,100%")
    store_file = BundleStore(config.store_dir).path_for(hashlib.sha256(kws.data).hexdigest())
    return len(audio.data), store_file


def _break_missing(store_file: Path) -> str:
    store_file.unlink()
    return "is not in the store"


def _break_unreadable(store_file: Path) -> str:
    store_file.unlink()
    store_file.symlink_to("/proc/self/mem")  # a regular file whose first read fails: EIO
    return "Input/output error"


@pytest.mark.parametrize("breaks", [_break_missing, _break_unreadable],
                         ids=["bundle missing from the store", "bundle unreadable (EIO)"])
def test_export_failing_half_way_leaves_the_stick_as_it_was(
    fleet: Fleet, config: ManagerConfig, exported, breaks: Callable[[Path], str]
) -> None:
    devices, _, _, usb = exported
    write_report(usb, devices[0], [event("downloaded")], None)  # brought back, not imported
    reason = breaks(_two_more_bundles(fleet, config)[1])
    before = _tree(usb)

    r = _satchel(config, "usb", "export", str(usb), "--key", str(_signing_key(fleet)))

    assert r.exit_code == 1 and r.stderr.count("\n") == 1 and reason in r.stderr, r.output
    assert _tree(usb) == before  # the old plan, its bundle and the report; no audio bundle


def test_export_filling_the_stick_half_way_leaves_it_as_it_was(
    fleet: Fleet, config: ManagerConfig, exported, tmp_path: Path
) -> None:
    *_, usb = exported
    audio_size, kws = _two_more_bundles(fleet, config)
    with tmpfs(tmp_path / "mnt", "1m") as stick:
        shutil.copytree(usb, stick, dirs_exist_ok=True)
        page = os.statvfs(stick).f_bsize
        room = -(-audio_size // page) + 1  # pages: audio fits, and a trust root rewritten
        assert -(-kws.stat().st_size // page) > 1  # ...but not kws after it
        filler = fill(stick)
        os.truncate(filler, filler.stat().st_size - room * page)
        assert os.statvfs(stick).f_bavail == room
        before = _tree(stick)

        r = _satchel(config, "usb", "export", str(stick), "--key", str(_signing_key(fleet)))

        assert r.exit_code == 1 and r.stderr.count("\n") == 1, r.output
        assert "No space left on device" in r.stderr
        assert _tree(stick) == before  # no audio bundle: the plan on it still holds
        filler.unlink()
        again = _satchel(config, "usb", "export", str(stick), "--key", str(_signing_key(fleet)))
        assert again.exit_code == 0, again.output
        assert "2 bundle(s) written, 1 already there" in again.stdout
        assert sorted(p.name for p in stick.iterdir()) == ["bundles", "plan.json", "reports",
                                                           "trust"]
