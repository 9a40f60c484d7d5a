"""The TUF attack catalogue over USB: a device running the real `satchel-agent usb` code
(`agent.sync.usb.process_stick`) on a stick an attacker crafted or rewrote.

Each test installs release 1.0.0 (sequence 10) first. A refused stick changes nothing on the
device; a refused bundle changes nothing either, and the signed report the device leaves on
the stick carries the one-line refusal, which is exactly the installer's named error.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from satchel.agent.errors import (
    DeviceClassError,
    PlanRefusedError,
    SequenceRollbackError,
)
from satchel.agent.sync.credentials import device_key
from satchel.agent.sync.usb import StickOutcome, process_stick
from satchel.bundles.errors import (
    ExpiredError,
    PayloadHashError,
    PayloadSizeError,
    RootRotationError,
    SignatureError,
    ThresholdError,
    UnknownKeyError,
)
from satchel.bundles.keys import SigningKey
from satchel.bundles.plan import verify_report
from satchel.bundles.stickfs import StickLinkError
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import make_root, sign_root
from tests.factory.device import assert_one_line
from tests.factory.keys import Keyring, make_keys
from tests.factory.spans import flip_byte
from tests.factory.tar import pack_members, read_members
from tests.factory.trees import tree_snapshot
from tests.reliability.figures import Recorder
from tests.reliability.kit import (
    CFG,
    Site,
    installer_refusal,
    make_site,
    no_health,
    one_refusal,
    successor_root,
)
from tests.reliability.sticks import Stick, assign_file, assignment
from tests.service.devices import Models

AREA = "TUF attack, USB"


def _process(site: Site, stick: Stick) -> StickOutcome:
    return process_stick(site.state, stick.path, site.events(), no_health, config=CFG)


def _report_events(site: Site, outcome: StickOutcome) -> list[dict[str, Any]]:
    assert outcome.report is not None
    report = verify_report(outcome.report.read_bytes(), device_key(site.state).public)
    return list(report.checkin["events"])


class Usb:
    """A USB-only device serving 1.0.0 (sequence 10), and a stick for the attacker."""

    def __init__(self, site: Site, stick: Stick, v1: Path) -> None:
        self.site, self.stick, self.v1 = site, stick, v1

    def attack(self) -> dict[str, Any]:
        """Process the stick; assert nothing changed on the device; return the one refusal
        of the report written onto the stick."""
        before = self.site.snapshot()
        outcome = _process(self.site, self.stick)
        assert self.site.snapshot() == before
        assert self.site.active() == ("1.0.0", 10)
        assert outcome.installed == [] and len(outcome.failed) == 1
        assert list((self.site.state / "usb-staging").iterdir()) == []
        refusal = one_refusal(_report_events(self.site, outcome))
        assert refusal["reason"] == outcome.failed[0][1]
        return refusal

    def refused_plan(self, cause: type[Exception]) -> PlanRefusedError:
        """Process the stick; assert the plan is refused for `cause` and nothing changed,
        not even a report written."""
        before, reports = self.site.snapshot(), self.stick.reports()
        with pytest.raises(PlanRefusedError) as info:
            _process(self.site, self.stick)
        assert type(info.value.__cause__) is cause, repr(info.value.__cause__)
        assert_one_line(info.value)
        assert self.site.snapshot() == before and self.stick.reports() == reports
        return info.value


def _usb(site: Site, models: Models, stick_dir: Path) -> Usb:
    v1 = site.bundle(models.good, "1.0.0", 10)
    site.install(v1)
    stick = Stick(stick_dir)
    stick.roots(site.keys.root_json)
    return Usb(site, stick, v1)


@pytest.fixture
def usb(site: Site, models: Models, tmp_path: Path) -> Usb:
    return _usb(site, models, tmp_path / "stick")


def _signed_plan(usb: Usb, data: bytes, version: str = "2.0.0", sequence: int = 20,
                 **kwargs: Any) -> None:
    usb.stick.plan([assign_file(usb.stick, data, version, sequence, **kwargs)],
                   usb.site.keys.signing_keys)


# --- arbitrary software installation -----------------------------------------------------


def test_bundle_signed_by_an_unknown_key_is_refused(usb: Usb, models: Models,
                                                    measured: Recorder) -> None:
    forged = usb.site.bundle(models.other, "2.0.0", 20, signers=[SigningKey.generate()])
    _signed_plan(usb, forged.read_bytes())

    refusal = usb.attack()

    assert refusal["kind"] == "install_refused"
    assert refusal["reason"] == installer_refusal(usb.site, forged, UnknownKeyError)
    measured.row(AREA, "arbitrary software: bundle signed by an unknown key", 1,
                 "refused: UnknownKeyError")


def test_plan_signed_by_an_unknown_key_is_refused(usb: Usb, models: Models,
                                                  measured: Recorder) -> None:
    genuine = usb.site.bundle(models.other, "2.0.0", 20)
    usb.stick.plan([assign_file(usb.stick, genuine.read_bytes(), "2.0.0", 20)],
                   [SigningKey.generate()])

    usb.refused_plan(UnknownKeyError)

    measured.row(AREA, "arbitrary software: plan signed by an unknown key", 1,
                 "refused: PlanRefusedError (UnknownKeyError)")


# --- rollback -----------------------------------------------------------------------------


def test_rollback_to_an_older_sequence_is_refused(usb: Usb, models: Models,
                                                  measured: Recorder) -> None:
    older = usb.site.bundle(models.other, "0.9.0", 5)
    _signed_plan(usb, older.read_bytes(), "0.9.0", 5)  # says what it is: skipped
    before = usb.site.snapshot()
    assert _process(usb.site, usb.stick).skipped == ["vision 0.9.0"]
    assert usb.site.snapshot() == before
    _signed_plan(usb, older.read_bytes(), "0.9.0", 30)  # lies about its sequence

    refusal = usb.attack()

    assert "plan names vision 0.9.0 (sequence 30)" in refusal["reason"]  # OfferMismatchError
    installer_refusal(usb.site, older, SequenceRollbackError)  # the installer refuses it too
    measured.row(AREA, "rollback: older sequence (honest entry skipped, lying one refused)",
                 2, "refused: OfferMismatchError (installer: SequenceRollbackError)")


def test_rollback_to_an_equal_sequence_is_refused(usb: Usb, models: Models,
                                                  measured: Recorder) -> None:
    same = usb.site.bundle(models.other, "1.0.1", 10)
    _signed_plan(usb, same.read_bytes(), "1.0.1", 11)

    refusal = usb.attack()

    assert "plan names vision 1.0.1 (sequence 11)" in refusal["reason"]  # OfferMismatchError
    installer_refusal(usb.site, same, SequenceRollbackError)  # the installer refuses it too
    measured.row(AREA, "rollback: equal sequence, other content", 1,
                 "refused: OfferMismatchError (installer: SequenceRollbackError)")


def test_replayed_old_stick_installs_nothing(
    usb: Usb, models: Models, tmp_path: Path, measured: Recorder
) -> None:
    _signed_plan(usb, usb.v1.read_bytes(), "1.0.0", 10)  # the stick that brought 1.0.0
    newer = Stick(tmp_path / "newer")
    newer.roots(usb.site.keys.root_json)
    v2 = usb.site.bundle(models.other, "2.0.0", 20)
    newer.plan([assign_file(newer, v2.read_bytes(), "2.0.0", 20)],
               usb.site.keys.signing_keys, plan_id="plan-2")
    assert _process(usb.site, newer).installed == ["vision 2.0.0"]
    before = usb.site.snapshot()

    outcome = _process(usb.site, usb.stick)  # replayed: old plan, old genuine bundle

    assert outcome.skipped == ["vision 1.0.0"] and outcome.installed == []
    assert usb.site.snapshot() == before and usb.site.active() == ("2.0.0", 20)
    assert installer_refusal(usb.site, usb.v1, SequenceRollbackError)
    measured.row(AREA, "rollback: replayed old plan with its old genuine bundle", 1,
                 "skipped; installer refuses it: SequenceRollbackError")


def test_replayed_old_trust_root_is_ignored_and_a_forged_one_refused(
    usb: Usb, models: Models, measured: Recorder
) -> None:
    keys = usb.site.keys
    v2 = successor_root(keys, keys.signing_keys)
    usb.stick.roots(keys.root_json, v2)
    _signed_plan(usb, usb.v1.read_bytes(), "1.0.0", 10)
    _process(usb.site, usb.stick)
    assert usb.site.root_version() == 2
    old = Stick(usb.stick.path.parent / "old")
    old.roots(keys.root_json)  # only v1: ignored, the device stays on v2
    old.plan([], keys.signing_keys, plan_id="old")
    before = usb.site.snapshot()
    assert _process(usb.site, old).trust_version == (2, 2)
    assert usb.site.snapshot() == before
    stranger = SigningKey.generate()
    forged = Stick(usb.stick.path.parent / "forged")
    forged.roots(keys.root_json, v2,
                 sign_root(make_root(3, [stranger.public], [stranger.public]), [stranger]))
    forged.plan([], [stranger], plan_id="forged", trust_root_version=3)

    with pytest.raises(RootRotationError) as info:
        _process(usb.site, forged)

    assert_one_line(info.value)
    assert usb.site.snapshot() == before and usb.site.root_version() == 2
    measured.row(AREA, "rollback: old trust root ignored; forged successor root refused", 2,
                 "refused: RootRotationError")


# --- indefinite freeze --------------------------------------------------------------------


def test_expired_plan_is_refused(usb: Usb, models: Models, measured: Recorder) -> None:
    genuine = usb.site.bundle(models.other, "2.0.0", 20)
    now = utcnow()
    usb.stick.plan([assign_file(usb.stick, genuine.read_bytes(), "2.0.0", 20)],
                   usb.site.keys.signing_keys, created=now - timedelta(days=2),
                   expires=now - timedelta(days=1))

    usb.refused_plan(ExpiredError)

    measured.row(AREA, "freeze: expired plan", 1, "refused: PlanRefusedError (ExpiredError)")


def test_expired_manifest_is_refused(usb: Usb, models: Models, measured: Recorder) -> None:
    now = utcnow()
    stale = usb.site.bundle(models.other, "2.0.0", 20, created=now - timedelta(days=2),
                            expires=now - timedelta(days=1))
    _signed_plan(usb, stale.read_bytes())

    refusal = usb.attack()

    assert refusal["reason"] == installer_refusal(usb.site, stale, ExpiredError)
    measured.row(AREA, "freeze: expired manifest", 1, "refused: ExpiredError")


def test_stale_trust_root_is_refused(usb: Usb, models: Models, measured: Recorder) -> None:
    keys = usb.site.keys
    stale_root = successor_root(keys, keys.signing_keys, expires=utcnow() - timedelta(hours=1))
    usb.stick.roots(keys.root_json, stale_root)  # the newest root the attacker lets through
    usb.stick.plan([], keys.signing_keys, plan_id="roots-only")
    _process(usb.site, usb.stick)
    assert usb.site.root_version() == 2
    genuine = usb.site.bundle(models.other, "2.0.0", 20)
    _signed_plan(usb, genuine.read_bytes())

    refusal = usb.attack()

    assert "a new root.json is needed" in refusal["reason"]
    assert refusal["reason"] == installer_refusal(usb.site, genuine, ExpiredError)
    measured.row(AREA, "freeze: stale (expired) trust root, no newer one on the stick", 1,
                 "refused: ExpiredError")


def test_untrusted_clock_refuses_what_expired_before_the_newest_signed_time_seen(
    tmp_path: Path, keys: Keyring, models: Models, measured: Recorder
) -> None:
    site = make_site(tmp_path / "noclock", keys, trusted_clock=False)
    usb = _usb(site, models, tmp_path / "stick")  # 1.0.0 signed now: newest signed time
    now = utcnow()
    frozen = site.bundle(models.other, "2.0.0", 20, created=now - timedelta(days=30),
                         expires=now - timedelta(days=1))
    usb.stick.plan([assign_file(usb.stick, frozen.read_bytes(), "2.0.0", 20)],
                   keys.signing_keys, created=now - timedelta(days=30),
                   expires=now + timedelta(days=1))

    refusal = usb.attack()

    assert "newest signed time this device has seen" in refusal["reason"]
    assert refusal["reason"] == installer_refusal(site, frozen, ExpiredError)
    usb.stick.plan([assign_file(usb.stick, frozen.read_bytes(), "2.0.0", 20)],
                   keys.signing_keys, created=now - timedelta(days=30),
                   expires=now - timedelta(days=1))
    usb.refused_plan(ExpiredError)  # judged on the newest signed time, not its own clock
    measured.row(AREA, "freeze: no trustworthy clock, manifest and plan expired before the "
                 "newest signed time seen", 2, "refused: ExpiredError")


# --- endless data -------------------------------------------------------------------------


def test_bundle_bigger_than_the_plan_says_is_cut_at_the_declared_size(
    usb: Usb, models: Models, measured: Recorder
) -> None:
    data = usb.site.bundle(models.other, "2.0.0", 20).read_bytes()
    entry = assign_file(usb.stick, data, "2.0.0", 20)
    with open(usb.stick.path / entry.file, "ab") as f:
        f.write(b"\0" * 1_000_000)
    usb.stick.plan([entry], usb.site.keys.signing_keys)

    refusal = usb.attack()

    assert refusal["kind"] == "install_failed"
    assert f"{len(data) + 1} bytes" in refusal["reason"]  # read one byte past, no further
    measured.row(AREA, "endless data: bundle bigger than the plan's size", 1,
                 "refused: copy stops at size + 1 byte")


# --- slow retrieval -----------------------------------------------------------------------


def test_bundle_file_that_blocks_forever_is_refused_at_once(
    usb: Usb, models: Models, measured: Recorder
) -> None:
    data = usb.site.bundle(models.other, "2.0.0", 20).read_bytes()
    entry = assign_file(usb.stick, data, "2.0.0", 20)
    target = usb.stick.path / entry.file
    target.unlink()
    os.mkfifo(target)  # opening it for reading waits for a writer that never comes
    usb.stick.plan([entry], usb.site.keys.signing_keys)
    result: list[Any] = []
    worker = threading.Thread(target=lambda: result.append(usb.attack()), daemon=True)

    worker.start()
    worker.join(30)

    if worker.is_alive():  # release the reader so the thread ends, then fail
        os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK))
        worker.join(10)
        pytest.fail("the agent hung on a bundle file that never delivers a byte")
    (refusal,) = result
    assert "not a regular file" in refusal["reason"]
    measured.row(AREA, "slow retrieval: a bundle file that never delivers (FIFO)", 1,
                 "refused at once: not a regular file")


# --- mix-and-match ------------------------------------------------------------------------


def test_plan_naming_one_bundle_beside_another_is_refused(
    usb: Usb, models: Models, measured: Recorder
) -> None:
    named = usb.site.bundle(models.other, "2.0.0", 20).read_bytes()
    other = usb.site.bundle(models.good, "2.0.0", 20).read_bytes()
    entry = assign_file(usb.stick, named, "2.0.0", 20)
    (usb.stick.path / entry.file).write_bytes(other)  # same name, another release's bytes
    usb.stick.plan([entry], usb.site.keys.signing_keys)

    refusal = usb.attack()

    assert "not the bundle the plan names" in refusal["reason"]
    measured.row(AREA, "mix-and-match: plan of one release, bundle file of another", 1,
                 "refused: sha256 differs from the plan")


def test_manifest_of_one_release_with_payloads_of_another_is_refused(
    usb: Usb, models: Models, measured: Recorder
) -> None:
    a = read_members(usb.site.bundle(models.other, "2.0.0", 20).read_bytes())
    b = read_members(usb.site.bundle(models.good, "2.0.0", 20).read_bytes())
    mixed = usb.site.work / "mixed.satchel"
    mixed.write_bytes(pack_members(a[:2] + b[2:]))
    _signed_plan(usb, mixed.read_bytes())
    same_size = all(len(x.data) == len(y.data) for x, y in zip(a[2:], b[2:], strict=True))

    refusal = usb.attack()

    error = PayloadHashError if same_size else PayloadSizeError
    assert refusal["reason"] == installer_refusal(usb.site, mixed, error)
    measured.row(AREA, "mix-and-match: manifest of one release, payloads of another", 1,
                 f"refused: {error.__name__}")


def test_plan_entry_whose_sha256_names_another_bundle_is_refused(
    usb: Usb, measured: Recorder
) -> None:
    old = usb.v1.read_bytes()  # the entry says 2.0.0 (sequence 20); the sha256 is 1.0.0's
    usb.stick.plan([assignment("2.0.0", 20, usb.stick.put(old), len(old))],
                   usb.site.keys.signing_keys)

    refusal = usb.attack()

    assert "is vision 1.0.0 (sequence 10)" in refusal["reason"]  # OfferMismatchError
    assert (refusal["version"], refusal["sequence"]) == ("1.0.0", 10)  # the manifest's facts
    installer_refusal(usb.site, usb.v1, SequenceRollbackError)  # the installer refuses it too
    measured.row(AREA, "mix-and-match: plan entry whose sha256 names another (older) bundle",
                 1, "refused: OfferMismatchError (installer: SequenceRollbackError)")


# --- malicious mirror ---------------------------------------------------------------------


def test_stick_serving_altered_bytes_is_refused(usb: Usb, models: Models,
                                                measured: Recorder) -> None:
    data = usb.site.bundle(models.other, "2.0.0", 20).read_bytes()
    entry = assign_file(usb.stick, data, "2.0.0", 20)
    (usb.stick.path / entry.file).write_bytes(flip_byte(data, len(data) // 2))
    usb.stick.plan([entry], usb.site.keys.signing_keys)

    refusal = usb.attack()

    assert "not the bundle the plan names" in refusal["reason"]
    measured.row(AREA, "malicious mirror: stick bundle altered after export", 1,
                 "refused: sha256 differs from the plan")


def test_stick_with_altered_plan_is_refused(usb: Usb, models: Models,
                                            measured: Recorder) -> None:
    data = usb.site.bundle(models.other, "2.0.0", 20).read_bytes()
    _signed_plan(usb, data)
    plan_file = usb.stick.path / "plan.json"
    plan_file.write_bytes(plan_file.read_bytes().replace(b'"sequence":20', b'"sequence":99'))

    usb.refused_plan(SignatureError)

    measured.row(AREA, "malicious mirror: plan altered after signing", 1,
                 "refused: PlanRefusedError (SignatureError)")


# --- wrong software -----------------------------------------------------------------------


def test_bundle_for_another_device_class_is_refused(usb: Usb, models: Models,
                                                    measured: Recorder) -> None:
    other = usb.site.bundle(models.other, "2.0.0", 20, device_classes=("doorbell",))
    _signed_plan(usb, other.read_bytes())

    refusal = usb.attack()

    assert refusal["reason"] == installer_refusal(usb.site, other, DeviceClassError)
    measured.row(AREA, "wrong software: bundle for another device class", 1,
                 "refused: DeviceClassError")


# --- links out of the stick ------------------------------------------------------------------


def _genuine_stick(usb: Usb, models: Models) -> str:
    """A stick that would install 2.0.0 and leave a report; returns the bundle's path on it."""
    entry = assign_file(usb.stick, usb.site.bundle(models.other, "2.0.0", 20).read_bytes(),
                        "2.0.0", 20)
    usb.stick.plan([entry], usb.site.keys.signing_keys)
    return entry.file


def _link(usb: Usb, rel: str, target: Path | str, *, keep: bool = False) -> str:
    """Make `rel` on the stick a link to `target` (where the genuine file goes if `keep`)."""
    usb.stick.link(rel, target, keep_at=Path(target) if keep else None)
    return rel


# case -> (usb, the bundle's path on the stick, a directory outside it) -> the path linked
LINKS: dict[str, Callable[[Usb, str, Path], str]] = {
    "reports/ linked to a directory outside the stick":
        lambda usb, bundle, out: _link(usb, "reports", out),
    "reports/dev-1 linked to the device's own state directory":
        lambda usb, bundle, out: _link(usb, "reports/dev-1", usb.site.state),
    "bundle file linked to the genuine bundle outside the stick":
        lambda usb, bundle, out: _link(usb, bundle, out / "2.0.0.satchel", keep=True),
    "endless data: bundle file linked to /dev/zero":
        lambda usb, bundle, out: _link(usb, bundle, "/dev/zero"),
    "plan.json linked to the genuine plan outside the stick":
        lambda usb, bundle, out: _link(usb, "plan.json", out / "plan.json", keep=True),
    "trust/roots/ linked to the genuine roots outside the stick":
        lambda usb, bundle, out: _link(usb, "trust/roots", out / "roots", keep=True),
    "reports/ linked inside the stick (to bundles/)":
        lambda usb, bundle, out: _link(usb, "reports", "bundles"),
    "bundle file linked to the genuine bundle elsewhere on the stick":
        lambda usb, bundle, out: _link(usb, bundle, usb.stick.path / "stash.satchel",
                                       keep=True),
}


@pytest.mark.parametrize("case", sorted(LINKS))
def test_link_on_the_stick_is_refused_and_nothing_read_or_written_through_it(
    usb: Usb, models: Models, tmp_path: Path, case: str, measured: Recorder
) -> None:
    bundle = _genuine_stick(usb, models)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "notes.txt").write_text("the technician's own files")
    linked = LINKS[case](usb, bundle, outside)
    before = _everything(usb, outside)

    with pytest.raises(StickLinkError) as info:
        _process(usb.site, usb.stick)

    assert str(info.value) == (f"stick path {linked} is a link; refusing to follow it out of "
                               "the stick")
    assert_one_line(info.value)
    assert _everything(usb, outside) == before  # the device, the stick, what is outside
    assert usb.site.active() == ("1.0.0", 10)
    measured.row(AREA, f"stick links: {case}", 1, "refused: StickLinkError, nothing written")


def _everything(usb: Usb, outside: Path) -> tuple[object, ...]:
    """The whole state dir (queues and history too), the stick and the directory outside."""
    return (tree_snapshot(usb.site.state), tree_snapshot(usb.stick.path),
            tree_snapshot(outside))


# --- key compromise -----------------------------------------------------------------------


def test_one_stolen_key_under_a_threshold_of_two_is_refused(
    tmp_path: Path, models: Models, measured: Recorder
) -> None:
    keys = make_keys(tmp_path / "t2", signing_count=2, signing_threshold=2)
    usb = _usb(make_site(tmp_path / "t2", keys), models, tmp_path / "stick")
    stolen = keys.signing_keys[0]
    forged = usb.site.bundle(models.other, "2.0.0", 20, signers=[stolen])
    usb.stick.plan([assign_file(usb.stick, forged.read_bytes(), "2.0.0", 20)],
                   keys.signing_keys)

    refusal = usb.attack()  # a plan signed by both, naming a bundle signed by one

    assert refusal["reason"] == installer_refusal(usb.site, forged, ThresholdError)
    usb.stick.plan([assign_file(usb.stick, forged.read_bytes(), "2.0.0", 20)], [stolen])
    usb.refused_plan(ThresholdError)  # a plan signed by the stolen key alone
    measured.row(AREA, "key compromise: one stolen key under a signing threshold of 2 "
                 "(bundle, then plan)", 2, "refused: ThresholdError")


def test_revoked_signing_key_is_refused_after_rotation_through_the_stick(
    usb: Usb, models: Models, measured: Recorder
) -> None:
    keys = usb.site.keys
    compromised, fresh = keys.signing, SigningKey.generate()
    usb.stick.roots(keys.root_json, successor_root(keys, [fresh]))  # revokes the old key
    usb.stick.plan([], [fresh], plan_id="rotation", trust_root_version=2)
    _process(usb.site, usb.stick)
    assert usb.site.root_version() == 2  # from trust/roots/2.root.json
    forged = usb.site.bundle(models.other, "2.0.0", 20, signers=[compromised])
    usb.stick.plan([assign_file(usb.stick, forged.read_bytes(), "2.0.0", 20)], [fresh],
                   trust_root_version=2)

    refusal = usb.attack()

    assert refusal["reason"] == installer_refusal(usb.site, forged, UnknownKeyError)
    usb.stick.plan([], [compromised], plan_id="by-the-thief")
    usb.refused_plan(UnknownKeyError)
    good = usb.site.bundle(models.other, "2.0.0", 20, signers=[fresh])
    usb.stick.plan([assign_file(usb.stick, good.read_bytes(), "2.0.0", 20)], [fresh],
                   plan_id="plan-3", trust_root_version=2)
    assert _process(usb.site, usb.stick).installed == ["vision 2.0.0"]
    measured.row(AREA, "root rotation: revoked signing key (new root from trust/roots/)", 2,
                 "refused: UnknownKeyError (bundle), PlanRefusedError (plan)")
