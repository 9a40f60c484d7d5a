"""Each dashboard page renders the seeded fleet: states, attention first, releases with their
smoke-test figures, health charts with rollbacks, bundles with signatures, waves."""

from __future__ import annotations

import re

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from tests.factory.keys import Keyring
from tests.manager.helpers import Fleet, event
from tests.web.seed import CHANNEL, Seeded, checkin

_HREF_SRC = re.compile(r'(?:href|src|action)="([^"]*)"')


def text(r: TestResponse) -> str:
    return str(r.get_data(as_text=True))


def _rows(html: str, table: str) -> list[str]:
    body = html.split(f'class="devices {table}', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<tr data-device="([^"]+)"', body)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/", "Needs attention"),
        ("/?state=ok", "cam-01"),
        ("/devices/cam-05", "Rolled back"),
        ("/devices/usb-01", "USB"),
        ("/devices/new-01", "No channel reported yet"),
        ("/bundles", "1.1.0"),
        ("/deployments", "Start a deployment"),
        ("/deployments/1", "Wave 2"),
        ("/tokens", "Enrollment tokens"),
    ],
)
def test_each_page_renders_the_seeded_fleet(
    admin: FlaskClient, seeded: Seeded, path: str, expected: str
) -> None:
    r = admin.get(path)
    assert r.status_code == 200
    assert expected in text(r)


def test_fleet_counts_devices_by_state_and_lists_those_needing_attention_first(
    admin: FlaskClient, seeded: Seeded
) -> None:
    html = text(admin.get("/"))
    counts = dict(re.findall(r'data-state="(\w+)">\s*<span class="count">(\d+)</span>', html))
    assert counts == {
        "rolled_back": "1",
        "failing": "1",
        "not_seen": "1",
        "never_seen": "1",
        "updating": "0",
        "ok": "4",
    }
    assert _rows(html, "attention-table") == ["cam-05", "cam-04", "gw-01"]
    fleet = _rows(html, "fleet-table")
    assert fleet[:4] == ["cam-05", "cam-04", "gw-01", "new-01"]
    assert sorted(fleet[4:]) == ["cam-01", "cam-02", "cam-03", "usb-01"]
    assert "health: error rate 0.11 &gt; 0.05 over 2400 inferences" in html
    assert "no LAN report for 3 days" in html


def test_fleet_says_how_each_device_syncs(admin: FlaskClient, seeded: Seeded) -> None:
    html = text(admin.get("/"))
    usb_row = html.split('<tr data-device="usb-01">')[-1].split("</tr>")[0]
    assert "USB" in usb_row and "report written" in usb_row and "UTC" in usb_row
    lan_row = html.split('<tr data-device="cam-01">')[-1].split("</tr>")[0]
    assert "LAN" in lan_row and "USB" not in lan_row


def test_fleet_filters_by_state_and_refuses_unknown_states(
    admin: FlaskClient, seeded: Seeded
) -> None:
    html = text(admin.get("/?state=failing"))
    assert _rows(html, "fleet-table") == ["cam-04"]
    assert admin.get("/?state=bogus").status_code == 400


def test_fleet_pages_through_devices(app: Flask, admin: FlaskClient, seeded: Seeded) -> None:
    from satchel.manager.web.config import CONFIG_KEY, WebConfig

    app.config[CONFIG_KEY] = WebConfig(page_size=3)
    first = _rows(text(admin.get("/")), "fleet-table")
    second = _rows(text(admin.get("/?page=2")), "fleet-table")
    past_end = _rows(text(admin.get("/?page=99")), "fleet-table")
    assert len(first) == 3 and len(second) == 3 and not set(first) & set(second)
    assert past_end == ["cam-03", "usb-01"]  # the last page


def test_device_page_shows_releases_with_their_smoke_test_figures(
    admin: FlaskClient, seeded: Seeded
) -> None:
    html = text(admin.get("/devices/cam-05"))
    releases = html.split("<h3>Releases</h3>")[1].split("</table>")[0]
    assert "1.1.0" in releases and "1.0.0" in releases
    assert "Cosine similarity (min)" in releases and "0.9998" in releases  # 1.1.0's smoke test
    assert "SQNR (worst output)" in releases and "38.2 dB" in releases
    assert "Top-1 agreement" in releases and "100%" in releases
    assert "Max abs error" in releases and "0.01" in releases  # 1.0.0's
    assert "top1 agreement" not in releases and "min_sqnr_db" not in releases  # no raw keys
    assert releases.count("Passed") == 2


def test_device_page_charts_health_and_marks_the_rollback(
    admin: FlaskClient, seeded: Seeded
) -> None:
    html = text(admin.get("/devices/cam-05"))
    charts = re.findall(r'<svg class="chart".*?</svg>\s*</figure>', html, re.S)
    assert len(charts) == 3
    for chart in charts:
        assert chart.count('class="marker rollback-marker"') == 1
        assert "health: error rate 0.40 &gt; 0.05" in chart
        running = chart.split('data-series="1.0.0">', 1)[1].split("</g>", 1)[0]
        assert running.count('class="point"') == 12  # the hourly health samples
    # the release rolled back is drawn too: its counters at the rollback (20 errors of 50)
    rolled = charts[1].split('data-series="1.1.0 (rolled back)">', 1)[1].split("</g>", 1)[0]
    assert rolled.count('class="point"') == 1 and "40%" in rolled
    assert "errors 40% &gt; 5%: 1.1.0 rolled back" in charts[1]  # the breach, labelled
    assert "breach-label" not in charts[2]  # not a NaN breach
    assert "Latency p95" in charts[0] and "Error rate" in charts[1] and "NaN/Inf" in charts[2]
    timeline = html.split('<ol class="timeline">')[1]
    assert "k-rolled_back" in timeline and "k-health" not in timeline


def test_device_without_health_events_is_charted_from_its_last_checkin(
    admin: FlaskClient, seeded: Seeded
) -> None:
    html = text(admin.get("/devices/gw-01"))
    charts = re.findall(r'<svg class="chart".*?</svg>\s*</figure>', html, re.S)
    assert [c.count('class="point"') for c in charts] == [1, 1, 1]


def test_unknown_device_is_a_404_page(admin: FlaskClient, seeded: Seeded) -> None:
    r = admin.get("/devices/nope")
    assert r.status_code == 404 and "no device" in text(r)


def test_text_a_device_reports_is_escaped_everywhere(
    admin: FlaskClient, seeded: Seeded, fleet: Fleet
) -> None:
    attack = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    cam = seeded.devices["cam-01"]
    checkin(
        fleet,
        cam,
        [event("rolled_back", CHANNEL, 1, reason=attack, figures={"<b>": attack})],
    )
    for path in ("/", "/devices/cam-01"):
        html = text(admin.get(path))
        assert "<script>alert" not in html and "<img src=x" not in html
        assert "&lt;script&gt;" in html


def test_bundle_page_shows_manifest_models_thresholds_policy_and_signatures(
    admin: FlaskClient, seeded: Seeded, keys: Keyring
) -> None:
    bundles = admin.get("/api/v1/bundles")  # the dashboard session is not an API credential
    assert bundles.status_code == 401
    listing = text(admin.get("/bundles"))
    sha = re.search(r'href="/bundles/([0-9a-f]{64})">1.0.0<', listing).group(1)  # type: ignore[union-attr]
    html = text(admin.get(f"/bundles/{sha}"))
    assert sha in html
    assert keys.signing.keyid in html and "Trusted" in html
    assert "requires 1 signature" in html
    for shown in (
        "onnxruntime",
        "model.onnx",
        "dynamic-int8",
        "FP32 [-1, 8]",
        "Max abs error",
        "0.1",
        "Probation",
        "600 s",
        "5.0%",
        "smoke/reference.npz",
    ):
        assert shown in html, shown
    assert "Deployment #1" in html


def test_bundle_missing_from_the_store_still_shows_its_manifest(
    app: Flask, admin: FlaskClient, seeded: Seeded
) -> None:
    listing = text(admin.get("/bundles"))
    sha = re.search(r'href="/bundles/([0-9a-f]{64})">1.1.0<', listing).group(1)  # type: ignore[union-attr]
    app.extensions["satchel"].store.path_for(sha).unlink()
    r = admin.get(f"/bundles/{sha}")
    assert r.status_code == 200
    assert "cannot be read" in text(r) and "model.onnx" in text(r)


def test_unknown_bundle_is_a_404_page(admin: FlaskClient, seeded: Seeded) -> None:
    assert admin.get("/bundles/" + "0" * 64).status_code == 404
    assert admin.get("/bundles/not-a-sha").status_code == 400


def test_deployment_page_shows_waves_progress_and_every_device(
    admin: FlaskClient, seeded: Seeded
) -> None:
    html = text(admin.get(f"/deployments/{seeded.first_deployment}"))
    assert "Completed" in html
    assert "1 succeeded" in html and "4 succeeded" in html  # canary wave, then the rest
    for device in ("cam-01", "cam-02", "cam-03", "cam-04", "cam-05"):
        assert f'<tr data-device="{device}">' in html
    assert 'id="pause"' not in html and 'id="abort"' not in html  # nothing left to do


def test_halted_deployment_shows_why(admin: FlaskClient, seeded: Seeded, fleet: Fleet) -> None:
    dep = fleet.deploy("vision:1.1.0", devices=["cam-02", "cam-03"], waves="1,100%")
    fleet.fail(seeded.devices["cam-02"], sequence=2, reason="max abs error 0.9 > 0.1")
    html = text(admin.get(f"/deployments/{dep['id']}"))
    assert "Halted" in html and "canary wave failed" in html
    assert "max abs error 0.9 &gt; 0.1" in html
    assert 'id="resume"' in html and 'id="pause"' not in html


def test_pages_load_nothing_from_outside_the_manager(admin: FlaskClient, seeded: Seeded) -> None:
    for path in ("/", "/devices/cam-05", "/bundles", "/deployments", "/tokens", "/login"):
        for link in _HREF_SRC.findall(text(admin.get(path))):
            assert link.startswith(("/", "#")), f"{path} links to {link}"


def test_empty_manager_renders_every_page(admin: FlaskClient) -> None:
    for path in ("/", "/bundles", "/deployments", "/tokens"):
        r = admin.get(path)
        assert r.status_code == 200, path
    assert "No device yet" in text(admin.get("/"))
