"""The dashboard in a real Chromium against a real `satchel serve` (two workers) on 127.0.0.1.

A fleet is seeded through the REST API (enrollment tokens, check-ins with states, health and
events, a bundle upload, a deployment) and a USB stick report is imported; then an admin logs
in, reads the fleet, starts a deployment, pauses it, and sees a rollback for a NaN rate a
device reports appear on its page and on its charts (the rolled-back release's line in its own
colour, the breach ringed and labelled). Every page is saved as a screenshot at laptop
(1366x768), tablet (768x1024) and phone (390 px wide) sizes into tests/screenshots/, and at
each nothing may stick out sideways.

Needs Debian's `chromium` (/usr/bin/chromium) and the `playwright` Python package; skipped
with the reason when either is missing. Playwright's own browser download is never used.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from satchel.manager import db as database
from satchel.manager.config import load_config
from satchel.manager.services import tokens, trust, users
from satchel.manager.usb import import_stick
from tests.factory.keys import make_keys
from tests.manager.helpers import Fleet, event
from tests.web.forms import ADMIN_PASSWORD, ADMIN_USER
from tests.web.seed import (
    CHANNEL,
    HttpClient,
    Seeded,
    after_rollback,
    checkin,
    health,
    rollback_stats,
    rolled_back_events,
    seed,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1366, "height": 768}
TABLET = {"width": 768, "height": 1024}
PHONE = {"width": 390, "height": 844}
SCREENSHOTS = Path(__file__).resolve().parents[1] / "screenshots"
SATCHEL = Path(sys.executable).with_name("satchel")
STOP_TIMEOUT_S = 20
WAIT_MS = 15_000  # milliseconds Playwright waits for a page or an element

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed (pip install playwright)"
)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (apt-get install chromium)",
    ),
]


@dataclass
class Served:
    url: str
    fleet: Fleet
    seeded: Seeded
    proc: subprocess.Popen[str]


def _prepare(data_dir: Path, root_json: bytes) -> str:
    """Migrate the database, import the trust root, add the admin user; return an admin
    API token (what `satchel db upgrade`, `trust import`, `user add`, `token create` do)."""
    config = load_config(data_dir=data_dir, database_url="", log_requests=False)
    database.upgrade(config)
    db = database.open_database(config)
    try:
        db.run(lambda s: trust.import_roots(s, [root_json]))
        db.run(lambda s: users.create_user(s, ADMIN_USER, ADMIN_PASSWORD))
        return db.run(lambda s: tokens.create_admin_token(s, "browser-tests").token)
    finally:
        db.dispose()


def _import_usb(data_dir: Path, stick: Path) -> None:
    config = load_config(data_dir=data_dir, database_url="", log_requests=False)
    db = database.open_database(config)
    try:
        result = import_stick(
            db,
            stick,
            datetime.now(timezone.utc),
            config.max_reports_per_import,
            config.max_report_bytes,
            config.max_events_per_checkin,
        )
        assert result.imported and not result.refused, result.to_dict()
    finally:
        db.dispose()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("browser")
    keys = make_keys(tmp)
    data_dir = tmp / "data"
    admin_token = _prepare(data_dir, keys.root_json)
    env = {
        **os.environ,
        "SATCHEL_DATABASE_URL": "",
        "SATCHEL_CONFIG": "",
        "SATCHEL_LOG_REQUESTS": "false",
        "SATCHEL_POLL_INTERVAL_S": "60",
    }
    proc = subprocess.Popen(
        [
            str(SATCHEL),
            "--data-dir",
            str(data_dir),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--workers",
            "2",
            "--threads",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "listening on" not in line:
            proc.kill()
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"satchel serve did not start: {line!r} {err}")
        url = line.split("listening on ")[1].split()[0]
        fleet = Fleet(None, HttpClient(url), keys, tmp, admin_token)  # type: ignore[arg-type]
        seeded = seed(fleet)
        _import_usb(data_dir, seeded.stick)
        yield Served(url, fleet, seeded, proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    """A fresh browser profile (no cookie) at laptop size, refusing any request that would
    leave 127.0.0.1: the dashboard must work with no internet."""
    context = browser.new_context(viewport=LAPTOP)
    outside: list[str] = []

    def route(r: Any) -> None:
        if r.request.url.startswith(served.url) or r.request.url.startswith("data:"):
            r.continue_()
        else:
            outside.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    p = context.new_page()
    p.set_default_timeout(WAIT_MS)
    yield p
    context.close()
    assert outside == [], f"the dashboard asked for assets outside the manager: {outside}"


def log_in(page: Any, served: Served, path: str = "/") -> None:
    page.goto(served.url + path)
    page.fill("input[name=username]", ADMIN_USER)
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("header nav")


def shoot(page: Any, name: str) -> None:
    """Save the page at laptop, tablet and phone sizes; at each, nothing may stick out
    sideways (tables stack into labelled rows or scroll inside their own box)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for label, size in (("laptop", LAPTOP), ("tablet", TABLET), ("phone", PHONE)):
        page.set_viewport_size(size)
        page.screenshot(path=str(SCREENSHOTS / f"{name}-{label}.png"), full_page=True)
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{name} is {overflow}px wider than a {label} screen"
    page.set_viewport_size(LAPTOP)


def deployment_state(served: Served, deployment_id: int) -> str:
    return str(served.fleet.status(deployment_id)["state"])


def test_admin_starts_and_pauses_a_deployment_then_sees_a_rollback(
    page: Any, served: Served
) -> None:
    log_in(page, served)

    # the fleet as seeded through the API, the devices that need attention first
    attention = page.locator("table.attention-table")
    assert attention.locator("tr[data-device=cam-04]").inner_text().count("Failing") == 1
    assert "Rolled back" in attention.locator("tr[data-device=cam-05]").inner_text()
    assert "Not seen recently" in attention.locator("tr[data-device=gw-01]").inner_text()
    assert "cam-01" not in attention.inner_text()
    usb_row = page.locator("table.fleet-table tr[data-device=usb-01]").inner_text()
    assert "USB" in usb_row and "report written" in usb_row
    assert page.locator("a.count-card[data-state=ok] .count").inner_text() == "4"

    # start a deployment of 1.1.0: cam-02 as the canary, then the site's devices
    page.click("nav >> text=Deployments")
    page.select_option("select[name=bundle]", label="vision 1.1.0 (sequence 2)")
    page.fill("input[name=devices]", "cam-02")
    page.fill("input[name=tags]", "site-a")
    page.fill("input[name=waves]", "1,50%,100%")
    page.click("button:has-text('Start deployment')")
    page.wait_for_selector("text=started.")
    dep_id = int(re.search(r"/deployments/(\d+)$", page.url).group(1))  # type: ignore[union-attr]
    assert "Active" in page.locator("h1 .badge").inner_text()
    assert page.locator("tr[data-device=cam-02]").inner_text().count("Assigned") == 1
    assert deployment_state(served, dep_id) == "active"

    # pause it
    page.click("button#pause")
    page.wait_for_selector("text=is now paused")
    assert "Paused" in page.locator("h1 .badge").inner_text()
    assert page.locator("button#resume").is_visible()
    assert deployment_state(served, dep_id) == "paused"

    # the canary had already started: its health samples of 1.1.0 show NaN outputs, and its
    # health policy rolls 1.1.0 back for a NaN rate of 0.30 (12 of 40 inferences)
    cam2 = served.seeded.devices["cam-02"]
    after_rollback(cam2)
    reason = "health: nan rate 0.30 > 0.00 over 40 inferences"
    events = rolled_back_events(
        "1.1.0",
        2,
        "1.0.0",
        reason=reason,
        stats=rollback_stats(40, nonfinite=12),
        health_before=[health(20, nan=4), health(20, nan=8)],
    )
    checkin(served.fleet, cam2, events)

    page.goto(f"{served.url}/devices/cam-02")
    assert "Rolled back" in page.locator("h1 .badge").inner_text()
    assert reason in page.locator(".why-line").inner_text()
    timeline = page.locator("ol.timeline li.k-rolled_back")
    assert timeline.count() == 1 and reason in timeline.inner_text()
    channel = page.locator(f"#channel-{CHANNEL}")
    markers = channel.locator("svg.chart .rollback-marker")
    assert markers.count() == 3  # one on each health chart
    assert reason in markers.first.locator("title").text_content()
    assert channel.locator(".chart-legend").inner_text().split("\n") == [
        "1.0.0",
        "1.1.0 (rolled back)",
    ]
    nan_chart = channel.locator("svg.chart").nth(2)
    assert "NaN/Inf rate" in nan_chart.locator("title").first.text_content()
    bad_line = nan_chart.locator("g[data-series='1.1.0 (rolled back)']")
    assert bad_line.locator("path.point").count() == 3  # two samples and the rollback's
    assert "30%" in bad_line.locator("path.point").last.locator("title").text_content()
    assert nan_chart.locator("text.breach-label").text_content() == (
        "NaN/Inf 30% > 0%: 1.1.0 rolled back"
    )
    y_top = nan_chart.locator("text.y-label").last.text_content() or ""
    assert float(y_top.rstrip("%")) >= 30  # the axis reaches the breach, not 0%
    assert "Top-1 agreement" in channel.locator("table.releases-table").inner_text()
    assert "38.2 dB" in channel.locator("table.releases-table").inner_text()
    shoot(page, "device-rolled-back-nan")

    # the last 15 minutes of data: the rollback and its breach fill the chart
    channel.locator("nav.windows >> text=15 min").click()
    page.wait_for_url("**window=15m**")
    nan_chart = page.locator(f"#channel-{CHANNEL} svg.chart").nth(2)
    assert nan_chart.locator("text.breach-label").count() == 1
    assert nan_chart.locator("g[data-series='1.0.0'] path.point").count() == 0  # hours ago
    shoot(page, "device-rolled-back-nan-15min")

    # the deployment shows the canary failed, and stays paused
    page.goto(f"{served.url}/deployments/{dep_id}")
    row = page.locator("tr[data-device=cam-02]").inner_text()
    assert "Failed" in row and "rolled back" in row
    assert "Paused" in page.locator("h1 .badge").inner_text()
    shoot(page, "deployment-paused")
    assert deployment_state(served, dep_id) == "paused"


def test_every_page_at_laptop_and_tablet_size(page: Any, served: Served) -> None:
    page.goto(served.url + "/login")
    shoot(page, "login")
    log_in(page, served)
    shoot(page, "fleet")
    page.click("a.count-card[data-state=failing]")
    assert page.locator("table.fleet-table tbody tr").count() == 1
    shoot(page, "fleet-failing")
    for device in ("cam-05", "cam-04", "usb-01", "new-01"):
        page.goto(f"{served.url}/devices/{device}")
        shoot(page, f"device-{device}")
    icon = page.locator("link[rel=icon]").get_attribute("href")
    served_icon = page.request.get(served.url + icon)
    assert served_icon.ok and served_icon.headers["content-type"].startswith("image/svg+xml")
    page.goto(served.url + "/bundles")
    shoot(page, "bundles")
    page.click("table.bundles-table >> text=1.0.0")
    assert "Trusted" in page.locator("text=Trusted").first.inner_text()
    shoot(page, "bundle")
    page.goto(served.url + "/deployments")
    shoot(page, "deployments")
    page.goto(f"{served.url}/deployments/{served.seeded.first_deployment}")
    assert "Completed" in page.locator("h1 .badge").inner_text()
    shoot(page, "deployment")
    page.goto(served.url + "/tokens")
    shoot(page, "tokens")
    page.fill("#enroll-form input[name=device_class]", "edge-box")
    page.click("button:has-text('Create enrollment token')")
    token = page.locator("#new-token").inner_text()
    assert token.startswith("sat_enroll_")
    shoot(page, "tokens-new")
    page.reload()  # shown once: a reload (a GET) never shows it again
    assert token not in page.content()


def test_pages_redirect_to_login_and_back(page: Any, served: Served) -> None:
    page.goto(served.url + "/deployments")
    assert "/login" in page.url
    assert page.locator("header nav").count() == 0
    page.fill("input[name=username]", ADMIN_USER)
    page.fill("input[name=password]", "not the password")
    page.click("button:has-text('Log in')")
    assert "wrong user name or password" in page.locator(".flash-error").inner_text()
    page.fill("input[name=password]", ADMIN_PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("h1:has-text('Deployments')")
    assert page.url.endswith("/deployments")
    cookie = next(c for c in page.context.cookies() if c["name"] == "satchel_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    page.click("button:has-text('Log out')")
    page.goto(served.url + "/tokens")
    assert "/login" in page.url


def test_forged_form_from_another_page_is_refused_and_changes_nothing(
    page: Any, served: Served
) -> None:
    dep = served.fleet.deploy("vision:1.1.0", devices=["cam-03"], waves="1")
    log_in(page, served)
    forged = (
        f'<form id="f" method="post" action="{served.url}/deployments/{dep["id"]}/pause">'
        '<input name="reason" value="x"></form>'
    )
    page.set_content(forged)
    with page.expect_navigation():
        page.evaluate("document.getElementById('f').submit()")
    assert "Form refused" in page.content()
    assert deployment_state(served, int(dep["id"])) == "active"


def test_admin_adds_a_user_and_removing_them_ends_their_login(
    browser: Any, page: Any, served: Served
) -> None:
    name, password = "grace", "another long password"
    log_in(page, served)
    page.click("nav >> text=Users")
    page.fill("#user-form input[name=username]", name)
    page.fill("#user-form input[name=new_password]", password)
    page.fill("#user-form input[name=new_password_again]", password)
    page.click("button:has-text('Add user')")
    page.wait_for_selector(f"text=User {name} added.")
    shoot(page, "users")

    # she logs in in her own browser, on whichever worker answers
    hers = browser.new_context(viewport=LAPTOP)
    other = hers.new_page()
    other.set_default_timeout(WAIT_MS)
    other.goto(served.url + "/login")
    other.fill("input[name=username]", name)
    other.fill("input[name=password]", password)
    other.click("button:has-text('Log in')")
    other.wait_for_selector("header nav")

    page.reload()
    row = page.locator(f"tr[data-user={name}]")
    assert row.locator("td").nth(1).inner_text() == "1"  # one login open
    page.once("dialog", lambda dialog: dialog.accept())  # the "remove?" confirmation
    row.locator("button:has-text('Remove')").click()
    page.wait_for_selector(f"text=User {name} removed")
    assert page.locator(f"tr[data-user={name}]").count() == 0

    other.goto(served.url + "/tokens")
    assert "/login" in other.url
    hers.close()


def test_fleet_search_and_paging(page: Any, served: Served) -> None:
    log_in(page, served)
    page.fill("form.search input[name=q]", "CANARY")  # a tag, any case
    page.click("form.search button:has-text('Search')")
    rows = page.locator("table.fleet-table tbody tr")
    assert rows.count() == 1 and rows.first.get_attribute("data-device") == "cam-01"
    assert "matching “CANARY”" in page.locator("h2").nth(1).inner_text()
    shoot(page, "fleet-search")

    page.goto(served.url + "/?per_page=25")
    page.fill("form.search input[name=q]", "cam-")
    page.select_option("form.search select[name=state]", "ok")
    page.click("form.search button:has-text('Search')")
    found = page.locator("table.fleet-table tbody tr")
    ids = [found.nth(i).get_attribute("data-device") for i in range(found.count())]
    assert ids and all(i.startswith("cam-") for i in ids)
    assert "per_page=25" in page.url and "state=ok" in page.url

    page.goto(served.url + "/?per_page=3")
    assert page.locator("table.fleet-table tbody tr").count() == 3
    first = page.locator("table.fleet-table tbody tr").first.get_attribute("data-device")
    page.click("nav.pager >> text=Next")
    assert "page=2" in page.url and "per_page=3" in page.url
    assert page.locator("table.fleet-table tbody tr").first.get_attribute("data-device") != first
    shoot(page, "fleet-page-2")


def test_a_halted_wave_says_it_halted(page: Any, served: Served) -> None:
    dep = served.fleet.deploy("vision:1.1.0", devices=["cam-01"], waves="1,100%")
    cam1 = served.seeded.devices["cam-01"]
    failed = event(
        "install_failed", CHANNEL, 2, version="1.1.0", reason="smoke test failed: NaN in y"
    )
    checkin(served.fleet, cam1, [failed])
    assert deployment_state(served, int(dep["id"])) == "halted"
    log_in(page, served, f"/deployments/{dep['id']}")
    waves = page.locator("ol.waves li .wave-line")
    assert waves.nth(0).inner_text() == "halted here: 0 of 1 healthy, 1 failed"
    assert "needs 0" not in page.locator("ol.waves").inner_text()
    assert "Halted" in page.locator("h1 .badge").inner_text()
    shoot(page, "deployment-halted")
