"""The API is discoverable: /api/v1/openapi.json answers anyone (it is one constant document
and holds no secret), /api/v1/docs renders it with a renderer the manager serves itself, and
every other resource still answers 401 without credentials.

The page is also loaded in a real Chromium (Debian's, skipped when missing) whose every
request to another origin is refused and recorded: there must be none.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.manager.helpers import Fleet
from tests.manager.live_server import LiveServer

CHROMIUM = Path("/usr/bin/chromium")
PUBLIC = {("GET", "/openapi.json"), ("GET", "/docs")}
TOKEN_RE = re.compile(r"sat_(admin|dev|enroll)_[A-Za-z0-9_-]{6,}")
IDS = {"device_id": "cam-1", "sha256": "0" * 64, "deployment_id": "1", "version": "1",
       "token_id": "1"}


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in doc["paths"].items()
            for method, op in item.items() if method != "parameters"]


def test_openapi_document_is_readable_without_credentials(fleet: Fleet) -> None:
    anonymous = fleet.client.get("/api/v1/openapi.json")

    assert anonymous.status_code == 200
    assert anonymous.mimetype == "application/json"
    doc = json.loads(anonymous.get_data())
    assert doc["openapi"].startswith("3.")
    assert {"/devices", "/bundles", "/deployments", "/openapi.json", "/docs"} <= set(doc["paths"])
    # one document for everyone: nothing in it depends on who asks
    assert fleet.client.get("/api/v1/openapi.json", headers=fleet.admin).get_data() == \
        anonymous.get_data()


def test_openapi_document_holds_no_secret(fleet: Fleet) -> None:
    device = fleet.enroll("cam-1")
    enroll_token = fleet.enrollment_token()
    text = fleet.client.get("/api/v1/openapi.json").get_data(as_text=True)
    config = fleet.app.extensions["satchel"].config

    assert TOKEN_RE.search(text) is None
    for secret in (fleet.admin_token, device.token, enroll_token, fleet.app.secret_key):
        assert str(secret) not in text
    assert str(config.data_dir) not in text
    assert not config.database_url or config.database_url not in text


def test_every_other_documented_operation_answers_401_without_credentials(
    fleet: Fleet,
) -> None:
    doc = fleet.client.get("/api/v1/openapi.json").json
    checked = 0
    for method, path, op in _operations(doc):
        if (method, path) in PUBLIC:
            assert op["security"] == []
            continue
        assert op["security"], (method, path)
        url = "/api/v1" + re.sub(r"\{(\w+)\}", lambda m: IDS[m.group(1)], path)
        r = fleet.client.open(url, method=method)
        assert r.status_code == 401, (method, path, r.status_code)
        assert r.json["error"]["code"] == "unauthorized"
        checked += 1
    assert checked >= 20


def test_reference_page_is_public_and_loads_only_from_the_manager(fleet: Fleet) -> None:
    page = fleet.client.get("/api/v1/docs")

    assert page.status_code == 200 and page.mimetype == "text/html"
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "connect-src 'self'" in csp and "http" not in csp and "*" not in csp
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assets.remove("data:,")  # no favicon to ask for
    assert len(assets) == 4 and "/api/v1/openapi.json" in assets  # css, 2 scripts, the doc
    for url in assets:
        assert url.startswith("/") and not url.startswith("//"), url
        r = fleet.client.get(url)
        assert r.status_code == 200, url
        r.close()
    assert 'data-spec-url="/api/v1/openapi.json"' in html
    assert "<script>" not in html  # everything it runs is a file of the manager (CSP)


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")
def test_reference_page_renders_every_operation_in_chromium_with_no_outside_request(
    fleet: Fleet, live_server: LiveServer
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    operations = len(_operations(fleet.client.get("/api/v1/openapi.json").json))
    outside: list[str] = []
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--headless", "--no-sandbox", "--disable-gpu",
                                          "--disable-background-networking"])
        try:
            context = browser.new_context()

            def route(r: Any) -> None:
                url = r.request.url
                if url.startswith(live_server.url + "/") or url.startswith("data:"):
                    r.continue_()
                else:
                    outside.append(url)
                    r.abort()

            context.route("**/*", route)
            page = context.new_page()
            page.set_default_timeout(15_000)
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(live_server.url + "/api/v1/docs")
            page.wait_for_selector(".opblock")
            shown = page.locator(".opblock").count()
            title = page.locator(".info .title").inner_text()
        finally:
            browser.close()

    assert outside == [], f"the reference asked for something outside the manager: {outside}"
    assert shown == operations
    assert "Satchel manager API" in title
    assert problems == []
