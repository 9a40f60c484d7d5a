"""`satchel --url URL ...`: the fleet commands on a manager's REST API, against a real
`satchel serve` on 127.0.0.1. A whole rollout driven remotely (a USB-only device included:
the plan signed on the admin's machine, the stick installed by `satchel-agent usb`, its
report brought back through the API) prints what the local commands print; wrong, missing
or exposed credentials and an unreachable manager are refused in one line."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from satchel.bundles import plan as stick
from satchel.bundles.keys import SigningKey
from tests.cli.invoke import Cli
from tests.cli.remote_manager import RemoteManager
from tests.factory.bundles import build_test_bundle
from tests.factory.keys import make_keys

AGENT = Path(sys.executable).with_name("satchel-agent")
DEVICE_CLASS = "cam-v2"  # the class `int8_bundle` is built for
SPAWN_TIMEOUT_S = 180


@pytest.fixture
def manager(tmp_path: Path, sqlite_template: Path, shared_keydir: Path) -> Iterator[RemoteManager]:
    m = RemoteManager(tmp_path, sqlite_template, shared_keydir / "root.json")
    yield m
    m.stop()


def _agent(state: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}
    done = subprocess.run(
        [str(AGENT), "--state-dir", str(state), *(str(a) for a in args)],
        capture_output=True, text=True, timeout=SPAWN_TIMEOUT_S, check=False, env=env,
    )
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done


def _same_json(m: RemoteManager, *args: str) -> dict:
    """The command's --json output, remote first (it may touch the token), then local:
    they must be the same document."""
    remote = m.remote(*args, "--json").json()
    assert m.local(*args, "--json").json() == remote
    return dict(remote)


def test_a_whole_rollout_driven_remotely_matches_the_local_commands(
    manager: RemoteManager, int8_bundle: Path, shared_keydir: Path, tmp_path: Path
) -> None:
    m = manager
    enroll = m.remote("token", "create", "--enroll", "--device-class", DEVICE_CLASS).ok()
    assert enroll.stdout.splitlines()[-1].startswith("sat_enroll_")
    ci = m.remote("token", "create", "--admin", "--name", "ci", "--json").json()
    assert ci["kind"] == "admin" and ci["token"].startswith("sat_admin_")

    added = m.remote("bundle", "add", int8_bundle).ok().stdout.splitlines()
    assert added[0].startswith("stored: detector 1.2.3 (sequence 42, ")
    sha = added[-1]
    assert m.remote("bundle", "add", int8_bundle).ok().stdout.startswith("already stored: ")

    state = tmp_path / "site-0"
    _agent(state, "init", "--trust", shared_keydir / "root.json", "--device-id", "site-0",
           "--device-class", DEVICE_CLASS)
    m.remote("device", "add", "site-0", "--device-class", DEVICE_CLASS,
             "--public-key", state / "device.pub").ok()
    other = SigningKey.generate().public.to_pem().decode()
    m.remote("device", "add", "site-1", "--device-class", DEVICE_CLASS,
             "--public-key", other).ok()
    assert m.remote("device", "tag", "site-1", "north").ok().stdout == "site-1: north\n"

    created = m.remote("deploy", "create", "--bundle", "detector:1.2.3",
                       "--device", "site-0", "--device", "site-1", "--waves", "1,100%").ok()
    deployment = created.stdout.splitlines()[-1]
    assert "to 2 device(s) in waves 1+1: active" in created.stdout
    assert m.remote("deploy", "pause", deployment).ok().stdout == (
        f"deployment {deployment} is paused\n")
    paused = m.remote("usb", "export", tmp_path / "stick", "--key",
                      shared_keydir / "signing.key", "--deployment", deployment).refusal()
    assert paused == f"error: deployment {deployment} is paused; only an active one exports"
    assert m.remote("deploy", "resume", deployment).ok().stdout == (
        f"deployment {deployment} is active\n")

    usb = tmp_path / "stick"
    exported = m.remote("usb", "export", usb, "--key", shared_keydir / "signing.key",
                        "--deployment", deployment).ok()
    assert "1 assignment(s) for 1 device(s), 1 bundle(s) written" in exported.stdout
    assert (usb / stick.bundle_file(sha)).read_bytes() == int8_bundle.read_bytes()
    assert (usb / stick.ROOT_FILE).read_bytes() == (shared_keydir / "root.json").read_bytes()

    installed = _agent(state, "usb", usb)
    assert "installed detector 1.2.3" in installed.stdout

    imported = m.remote("usb", "import", usb).ok()
    assert imported.stdout == "1 report(s) imported, 0 already imported, 0 refused\n"
    again = m.remote("usb", "import", usb).ok()
    assert again.stdout == "0 report(s) imported, 1 already imported, 0 refused\n"

    shown = _same_json(m, "device", "show", "site-0")
    assert shown["last_via"] == "usb"
    assert shown["channels"]["detector"]["active"] == {"version": "1.2.3", "sequence": 42}
    assert m.remote("device", "show", "site-0").ok().stdout == (
        m.local("device", "show", "site-0").ok().stdout)
    status = _same_json(m, "deploy", "status", deployment)
    canary = next(t for t in status["targets"] if t["device_id"] == "site-0")
    assert (canary["state"], canary["reason"]) == ("activated", "in probation")
    assert m.remote("deploy", "status", deployment).ok().stdout == (
        m.local("deploy", "status", deployment).ok().stdout)

    aborted = m.remote("deploy", "abort", deployment, "--reason", "enough").ok()
    assert aborted.stdout == f"deployment {deployment} is aborted\n"
    for listing in (["bundle", "list"], ["device", "list"], ["deploy", "list"],
                    ["token", "list"]):
        _same_json(m, *listing)
        assert m.remote(*listing).ok().stdout == m.local(*listing).ok().stdout
    assert m.remote("device", "list", "--json", token=ci["token"]).json() == (
        m.local("device", "list", "--json").json())


def test_remote_refusals_are_the_local_ones(manager: RemoteManager, tmp_path: Path) -> None:
    stranger = make_keys(tmp_path / "x")
    foreign = build_test_bundle(tmp_path / "foreign.satchel", keys=stranger)

    for args in (["device", "show", "no-such-device"], ["deploy", "status", "999"],
                 ["deploy", "pause", "999"], ["deploy", "create", "--bundle", "nothing:1"],
                 ["deploy", "list", "--state", "bogus"], ["token", "revoke", "999"],
                 ["device", "tag", "no-such-device", "north"],
                 ["bundle", "add", str(foreign.path)],
                 ["usb", "export", str(tmp_path / "stick"), "--key",
                  str(stranger.directory / "signing.key")]):
        remote = manager.remote(*args).refusal()
        assert remote == manager.local(*args).refusal(), args

    assert manager.local("bundle", "list").ok().stdout == "no bundles\n"  # nothing stored
    assert not (tmp_path / "stick").exists()  # nothing written


def test_revoked_admin_token_is_refused_from_then_on(manager: RemoteManager) -> None:
    spare = manager.remote("token", "create", "--admin", "--json").json()
    manager.remote("device", "list", token=spare["token"]).ok()

    manager.remote("token", "revoke", str(spare["id"])).ok()

    refused = manager.remote("device", "list", token=spare["token"]).refusal()
    assert refused.startswith(f"error: the manager at {manager.url} refused the admin token")


def test_wrong_token_is_refused_in_one_line(manager: RemoteManager) -> None:
    before = manager.local("device", "list", "--json").json()

    refused = manager.remote("device", "add", "intruder", "--device-class", DEVICE_CLASS,
                             "--public-key", "ab" * 32, token="sat_admin_not-a-real-token")

    assert refused.refusal().startswith(
        f"error: the manager at {manager.url} refused the admin token")
    assert manager.local("device", "list", "--json").json() == before


def test_wrong_token_is_refused_by_the_console_script(manager: RemoteManager) -> None:
    out = manager.cli.spawn("--url", manager.url, "bundle", "list",
                            env={"SATCHEL_TOKEN": "sat_admin_wrong"})

    assert out.refusal().startswith(f"error: the manager at {manager.url} refused")


def test_credentials_file_readable_by_others_is_refused(
    manager: RemoteManager, tmp_path: Path
) -> None:
    creds = tmp_path / "credentials"
    creds.write_text(manager.token + "\n")
    creds.chmod(0o644)

    refused = manager.cli.run("--url", manager.url, "--token-file", creds, "device", "list")

    assert refused.refusal() == (
        f"error: credentials file {creds} is readable by others (mode 0644); "
        f"run `chmod 600 {creds}`")
    creds.chmod(0o600)
    manager.cli.run("--url", manager.url, "--token-file", creds, "device", "list").ok()


def test_default_credentials_file_is_used_and_checked(
    manager: RemoteManager, tmp_path: Path
) -> None:
    config_home = tmp_path / "config"
    env = {"XDG_CONFIG_HOME": str(config_home), "SATCHEL_URL": manager.url}
    missing = manager.cli.run("device", "list", env=env).refusal()
    assert missing.startswith("error: no admin token for --url: set SATCHEL_TOKEN")
    creds = config_home / "satchel" / "credentials"
    creds.parent.mkdir(parents=True)
    creds.write_text(manager.token)
    creds.chmod(0o640)
    assert "readable by others (mode 0640)" in manager.cli.run("device", "list", env=env).refusal()
    creds.chmod(0o600)

    assert manager.cli.run("device", "list", env=env).ok().stdout == "no devices\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_manager_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"

    out = Cli(tmp_path).spawn("--url", url, "deploy", "list",
                              env={"SATCHEL_TOKEN": "sat_admin_whatever"})

    assert out.refusal() == f"error: cannot reach the manager at {url}: connection refused"


def test_a_url_that_is_not_http_is_refused(tmp_path: Path) -> None:
    out = Cli(tmp_path).run("--url", "ftp://example", "device", "list",
                            env={"SATCHEL_TOKEN": "x"})

    assert out.refusal() == "error: --url 'ftp://example' is not an http:// or https:// URL"


@pytest.mark.parametrize("command", ["serve", "db", "trust", "user"])
def test_local_only_commands_refuse_url_as_a_usage_error(tmp_path: Path, command: str) -> None:
    out = Cli(tmp_path).run("--url", "http://127.0.0.1:9", command, "--help")

    assert out.usage_error().splitlines() == [
        f"error: `satchel {command}` works on the local database only; drop --url "
        "(and SATCHEL_URL)"
    ]


def test_device_list_pages_through_the_whole_fleet(manager: RemoteManager) -> None:
    for i in range(3):
        manager.remote("device", "add", f"cam-{i}", "--device-class", DEVICE_CLASS,
                       "--public-key", SigningKey.generate().public.to_pem().decode()).ok()

    listed = manager.remote("device", "list", "--device-class", DEVICE_CLASS, "--json").json()

    assert [d["device_id"] for d in listed["devices"]] == ["cam-0", "cam-1", "cam-2"]
    assert json.dumps(listed) == json.dumps(
        manager.local("device", "list", "--device-class", DEVICE_CLASS, "--json").json())


class _NotAManager(http.server.BaseHTTPRequestHandler):
    """Answers every request as a web server that is not Satchel's: a redirect elsewhere for
    /moved/..., an HTML page otherwise; remembers the Authorization headers it was sent."""

    seen: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.seen.append(self.headers.get("Authorization"))
        if self.path.startswith("/moved/"):
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/api/v1/devices")
            self.end_headers()
            return
        body = b"<html>hello</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def not_a_manager() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _NotAManager)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _NotAManager.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_redirect_is_not_followed_with_the_token(not_a_manager: str, tmp_path: Path) -> None:
    out = Cli(tmp_path).run("--url", f"{not_a_manager}/moved", "device", "list",
                            env={"SATCHEL_TOKEN": "sat_admin_secret"})

    assert out.refusal() == (
        f"error: the manager at {not_a_manager}/moved redirects to "
        "http://127.0.0.1:9/api/v1/devices; give --url the address it names")
    assert _NotAManager.seen == ["Bearer sat_admin_secret"]  # asked once, at the address given


def test_a_server_that_is_not_a_manager_is_one_line(not_a_manager: str, tmp_path: Path) -> None:
    out = Cli(tmp_path).run("--url", not_a_manager, "bundle", "list",
                            env={"SATCHEL_TOKEN": "sat_admin_secret"})

    assert out.refusal() == f"error: the manager at {not_a_manager} answered with malformed JSON"


def test_a_token_that_cannot_be_a_header_is_refused(tmp_path: Path) -> None:
    out = Cli(tmp_path).run("--url", "http://127.0.0.1:9", "device", "list",
                            env={"SATCHEL_TOKEN": "sat_admin_x\r\nX-Evil: 1"})

    assert out.refusal() == (
        "error: the admin token in SATCHEL_TOKEN is malformed (not printable ASCII)")


def test_a_report_from_an_unknown_device_is_refused_as_locally(
    manager: RemoteManager, tmp_path: Path
) -> None:
    report = stick.Report(
        report_id=uuid.uuid4().hex, device_id="ghost",
        created=datetime.now(timezone.utc).replace(microsecond=0),
        checkin={"status": {"device_id": "ghost", "device_class": DEVICE_CLASS, "channels": {}}},
        plan_id=None,
    )
    where = tmp_path / "stick" / report.path
    where.parent.mkdir(parents=True)
    where.write_bytes(stick.sign_report(report, SigningKey.generate()))

    remote = manager.remote("usb", "import", tmp_path / "stick")
    local = manager.local("usb", "import", tmp_path / "stick")

    assert remote.refusal() == local.refusal() == (
        f"error: report {report.path} refused: device ghost is not known here "
        "(enroll it or `satchel device add`)")
    assert remote.stdout == local.stdout == "0 report(s) imported, 0 already imported, 1 refused\n"
