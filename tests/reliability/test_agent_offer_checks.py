"""What the agent checks about an offer before the installer sees it, and what a broken trust
endpoint may not stop.

Mix-and-match: a LAN offer or a USB plan entry names channel, version and sequence beside the
bundle's sha256; a genuinely signed bundle of another release under that sha256 is refused
(OfferMismatchError) before the installer runs, reported with the manifest's own facts, and
the device is left as it was. A stick file that is not the planned bundle is a named
StickBundleMismatchError. A manager whose trust-root endpoint fails (an endless or missing
document, a refused root) still gets its offers installed, verified against the root the
device has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from satchel.agent.errors import OfferMismatchError, StickBundleMismatchError, StickError
from satchel.agent.sync.credentials import device_key
from satchel.agent.sync.enroll import enroll_device
from satchel.agent.sync.install_events import LAN, BundleOrigin, check_offered
from satchel.agent.sync.usb import copy_from_stick, process_stick
from satchel.bundles.keys import SigningKey
from satchel.bundles.plan import verify_report
from satchel.bundles.trust import make_root, sign_root
from tests.factory.device import assert_one_line
from tests.reliability.kit import (
    CFG,
    CHANNEL,
    Site,
    no_health,
    one_refusal,
    sha256_of,
    successor_root,
)
from tests.reliability.rogue import ENDLESS, RogueManager, Served
from tests.reliability.sticks import Stick, assign_file, assignment
from tests.service.devices import Models

# (what the bundle's manifest says, what the offer or plan entry announces): one field lies
LIES = {
    "version": (("vision", "2.1.0", 20), ("vision", "2.0.0", 20)),
    "sequence": (("vision", "2.0.0", 25), ("vision", "2.0.0", 20)),
    "channel": (("audio", "2.0.0", 20), ("vision", "2.0.0", 20)),
}


def _facts(event: dict[str, Any]) -> tuple[str, str, int]:
    return event["channel"], event["version"], event["sequence"]


def _serving_v1(site: Site, models: Models) -> None:
    site.install(site.bundle(models.good, "1.0.0", 10))


def _enrolled(site: Site, rogue: RogueManager, models: Models) -> None:
    _serving_v1(site, models)
    enroll_device(site.state, rogue.url, "sat_enroll_rogue", config=CFG)


def _assert_mismatch_refused(refusal: dict[str, Any], actual: tuple[str, str, int],
                             announced: tuple[str, str, int], source: str) -> None:
    assert refusal["kind"] == "install_refused"
    assert _facts(refusal) == actual  # the manifest's facts, not the announced ones
    channel, version, sequence = actual
    assert f"is {channel} {version} (sequence {sequence})" in refusal["reason"]
    channel, version, sequence = announced
    assert f"{source} names {channel} {version} (sequence {sequence})" in refusal["reason"]


# --- LAN ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lie", sorted(LIES))
def test_offer_naming_another_release_than_the_manifest_is_refused_before_install(
    site: Site, rogue: RogueManager, models: Models, lie: str
) -> None:
    actual, announced = LIES[lie]
    _enrolled(site, rogue, models)
    loop = site.loop()
    genuine = site.bundle(models.other, actual[1], actual[2], channel=actual[0])
    before = site.snapshot()
    rogue.offer(*announced, genuine.read_bytes())

    loop.once()
    rogue.offers = []
    loop.once()

    # The bundle is genuine and installable: only the offer check kept it out.
    assert site.snapshot() == before and site.active() == ("1.0.0", 10)
    assert site.state.joinpath("downloads").exists() is False or not any(
        site.state.joinpath("downloads").iterdir())
    events = rogue.events()
    refusal = one_refusal(events)
    _assert_mismatch_refused(refusal, actual, announced, "the manager's offer")
    assert refusal["bundle_sha256"] == sha256_of(genuine) and refusal["deployment_id"] == 7
    assert [e["kind"] for e in events if e.get("bundle_sha256") == sha256_of(genuine)] == [
        "downloaded", "install_refused"]  # never verified, never smoke-tested
    (downloaded,) = [e for e in events if e["kind"] == "downloaded"]
    assert _facts(downloaded) == actual


def test_honest_offer_is_installed_and_its_events_name_the_manifests_release(
    site: Site, rogue: RogueManager, models: Models
) -> None:
    _enrolled(site, rogue, models)
    loop = site.loop()
    v2 = site.bundle(models.other, "2.0.0", 20)
    rogue.offer(CHANNEL, "2.0.0", 20, v2.read_bytes())

    loop.once()
    rogue.offers = []
    loop.once()

    assert site.active() == ("2.0.0", 20)
    events = [e for e in rogue.events() if e.get("bundle_sha256") == sha256_of(v2)]
    assert [e["kind"] for e in events] == ["downloaded", "verified", "smoke_test", "activated"]
    assert {_facts(e) for e in events} == {(CHANNEL, "2.0.0", 20)}


def test_offer_of_a_file_that_is_not_a_bundle_is_refused_with_the_offers_facts(
    site: Site, rogue: RogueManager, models: Models
) -> None:
    _enrolled(site, rogue, models)
    loop = site.loop()
    before = site.snapshot()
    rogue.offer(CHANNEL, "2.0.0", 20, b"not a tar file at all" * 100)

    loop.once()
    rogue.offers = []
    loop.once()

    assert site.snapshot() == before and site.active() == ("1.0.0", 10)
    refusal = one_refusal(rogue.events())
    assert refusal["kind"] == "install_refused"
    assert _facts(refusal) == (CHANNEL, "2.0.0", 20)


# --- USB ----------------------------------------------------------------------------------


@pytest.mark.parametrize("lie", sorted(LIES))
def test_plan_entry_naming_another_release_than_the_manifest_is_refused_before_install(
    site: Site, models: Models, tmp_path: Path, lie: str
) -> None:
    actual, announced = LIES[lie]
    _serving_v1(site, models)
    stick = Stick(tmp_path / "stick")
    stick.roots(site.keys.root_json)
    genuine = site.bundle(models.other, actual[1], actual[2], channel=actual[0])
    data = genuine.read_bytes()
    entry = assignment(announced[1], announced[2], stick.put(data), len(data))
    assert entry.channel == announced[0]
    stick.plan([entry], site.keys.signing_keys)
    before = site.snapshot()

    outcome = process_stick(site.state, stick.path, site.events(), no_health, config=CFG)

    assert site.snapshot() == before and site.active() == ("1.0.0", 10)
    assert outcome.installed == [] and len(outcome.failed) == 1
    assert not any((site.state / "usb-staging").iterdir())
    assert outcome.report is not None
    report = verify_report(outcome.report.read_bytes(), device_key(site.state).public)
    refusal = one_refusal(list(report.checkin["events"]))
    _assert_mismatch_refused(refusal, actual, announced, "the USB plan")
    assert refusal["reason"] == outcome.failed[0][1]


@pytest.mark.parametrize("lie", sorted(LIES))
def test_offer_check_raises_a_named_one_line_error(lie: str) -> None:
    actual, announced = LIES[lie]
    offered = BundleOrigin(*announced, "ab" * 32, 7, LAN)

    with pytest.raises(OfferMismatchError) as info:
        check_offered(offered, BundleOrigin(*actual, "ab" * 32, 7, LAN))

    assert_one_line(info.value)
    check_offered(offered, offered)  # the release offered passes


def test_stick_file_that_is_not_the_planned_bundle_raises_a_named_stick_error(
    site: Site, models: Models, tmp_path: Path
) -> None:
    stick = Stick(tmp_path / "stick")
    named = site.bundle(models.other, "2.0.0", 20).read_bytes()
    other = site.bundle(models.good, "2.0.0", 20).read_bytes()
    entry = assign_file(stick, named, "2.0.0", 20)
    (stick.path / entry.file).write_bytes(other)
    staging = site.state / "usb-staging"

    with pytest.raises(StickBundleMismatchError) as info:
        copy_from_stick(stick.path / entry.file, staging, entry, CFG)

    assert isinstance(info.value, StickError)
    assert_one_line(info.value)
    assert "not the bundle the plan names" in str(info.value)
    assert "export the stick again" in str(info.value)
    assert list(staging.iterdir()) == []


def test_planned_size_the_device_does_not_accept_raises_a_named_stick_error(
    site: Site, tmp_path: Path
) -> None:
    stick = Stick(tmp_path / "stick")
    entry = assignment("2.0.0", 20, stick.put(b"x"), CFG.max_bundle_bytes + 1)

    with pytest.raises(StickBundleMismatchError) as info:
        copy_from_stick(stick.path / entry.file, site.state / "usb-staging", entry, CFG)

    assert_one_line(info.value)
    assert "does not accept" in str(info.value)


# --- a broken trust endpoint does not block installs --------------------------------------


def _forged_root(site: Site) -> bytes:
    stranger = SigningKey.generate()
    return sign_root(make_root(2, [stranger.public], [k.public for k in site.keys.signing_keys]),
                     [stranger])


BROKEN_TRUST = {
    "endless root document": (lambda site: {2: Served(b"{", mode=ENDLESS)},
                              "trust_update_failed"),
    "missing root document": (lambda site: {}, "trust_update_failed"),
    "forged root document": (lambda site: {2: _forged_root(site)}, "trust_update_refused"),
}


@pytest.mark.parametrize("fault", sorted(BROKEN_TRUST))
def test_broken_trust_endpoint_does_not_block_offers(
    site: Site, rogue: RogueManager, models: Models, fault: str
) -> None:
    roots, kind = BROKEN_TRUST[fault]
    _enrolled(site, rogue, models)
    loop = site.loop()
    rogue.roots, rogue.trust_version = roots(site), 2
    v2 = site.bundle(models.other, "2.0.0", 20)
    rogue.offer(CHANNEL, "2.0.0", 20, v2.read_bytes())

    loop.once()  # must not raise: the trust failure is reported, the offer goes on
    rogue.offers = []
    loop.once()
    loop.once()  # the endpoint is still broken: reported once per version, not every round

    assert site.active() == ("2.0.0", 20)
    assert site.root_version() == 1
    trust_events = [e for e in rogue.events() if e["kind"].startswith("trust_")]
    assert [e["kind"] for e in trust_events] == [kind]
    assert "\n" not in trust_events[0]["reason"]
    assert "activated" in [e["kind"] for e in rogue.events()]


def test_trust_endpoint_that_recovers_is_walked_forward(
    site: Site, rogue: RogueManager, models: Models
) -> None:
    _enrolled(site, rogue, models)
    loop = site.loop()
    rogue.roots, rogue.trust_version = {}, 2
    loop.once()
    assert site.root_version() == 1

    rogue.roots = {2: successor_root(site.keys, site.keys.signing_keys)}
    loop.once()
    loop.once()

    assert site.root_version() == 2
    kinds = [e["kind"] for e in rogue.events() if e["kind"].startswith("trust_")]
    assert kinds == ["trust_update_failed", "trust_updated"]
