"""Both `/metrics` endpoints as Prometheus takes them: a real `satchel serve` and a real
`satchel-agent run` on 127.0.0.1, checked by `promtool check metrics` (Debian's prometheus
package), with prometheus_client's Content-Type; a two-worker manager scraped again and again
gives one counter that counts every request, whichever worker answered; the example alert
rules pass `promtool check rules` and their unit tests; and no command that must start fast
imports prometheus_client."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from prometheus_client import CONTENT_TYPE_LATEST

from tests.factory.keys import Keyring
from tests.service.devices import make_device, make_models, positive_inputs
from tests.service.procs import AgentProcess

PROMTOOL = shutil.which("promtool")
DOCS = Path(__file__).resolve().parents[1] / "docs"
BIN = Path(sys.executable).parent
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed")
HELP_AND_TYPE = re.compile(r"^# (HELP|TYPE) (\S+)", re.M)


def promtool(*args: str, text: str | None = None, cwd: Path | None = None,
             ) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=text, capture_output=True, text=True,
                          timeout=60, check=False, cwd=cwd)


def _every_family_has_help_and_type(text: str) -> None:
    seen: dict[str, set[str]] = {}
    for kind, name in HELP_AND_TYPE.findall(text):
        seen.setdefault(name, set()).add(kind)
    assert seen and all(kinds == {"HELP", "TYPE"} for kinds in seen.values()), seen


def _sample(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


@contextmanager
def _serve(tmp_path: Path, sqlite_template: Path, *args: str,
           env: dict[str, str] | None = None) -> Iterator[str]:
    data_dir = tmp_path / "manager"
    data_dir.mkdir(exist_ok=True)
    shutil.copyfile(sqlite_template, data_dir / "satchel.db")
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("SATCHEL_", "PROMETHEUS_"))}
    proc = subprocess.Popen(
        [str(BIN / "satchel"), "--data-dir", str(data_dir), "serve", "--port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        env={**clean, **(env or {})},
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "listening on" in line, line
        yield line.split("listening on ")[1].split()[0]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@needs_promtool
def test_manager_metrics_pass_promtool(tmp_path: Path, sqlite_template: Path) -> None:
    with _serve(tmp_path, sqlite_template) as url:
        requests.get(f"{url}/api/v1/devices", timeout=30)
        r = requests.get(f"{url}/metrics", timeout=30)

    checked = promtool("check", "metrics", text=r.text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert r.headers["Content-Type"] == CONTENT_TYPE_LATEST
    _every_family_has_help_and_type(r.text)
    for family in ("process_resident_memory_bytes", "process_cpu_seconds_total",
                   "satchel_devices_not_seen", "satchel_device_channels", "satchel_wave_halted",
                   "satchel_deployments"):
        assert f"# TYPE {family} " in r.text, family
    assert re.search(r'^satchel_build_info\{version="[^"]+"\} 1\.0$', r.text, re.M)
    assert _sample(r.text, "satchel_http_requests_total", code="401",
                   endpoint="/api/v1/devices", method="GET") == 1


@needs_promtool
def test_agent_metrics_pass_promtool(tmp_path: Path, keys: Keyring) -> None:
    device = make_device(tmp_path, keys)
    (tmp_path / "models").mkdir()
    models = make_models(tmp_path / "models")
    device.cli("install", str(device.bundle(models.good, "1.0.0", 10)))
    agent = AgentProcess(device.state_dir)
    try:
        agent.infer("vision", positive_inputs(2, seed=1))
        r = agent.http.get(f"{agent.url}/metrics", timeout=10)
    finally:
        agent.stop()

    checked = promtool("check", "metrics", text=r.text)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert r.headers["Content-Type"] == CONTENT_TYPE_LATEST
    _every_family_has_help_and_type(r.text)
    assert "# TYPE process_resident_memory_bytes gauge" in r.text
    assert re.search(r'^satchel_build_info\{version="[^"]+"\} 1\.0$', r.text, re.M)
    assert _sample(r.text, "satchel_inferences_total",
                   channel="vision", version="1.0.0", sequence="10") == 1
    assert _sample(r.text, "satchel_http_requests_total", endpoint="infer", code="200") == 1


@pytest.mark.parametrize("server", ["waitress", "granian"])
def test_two_workers_give_one_counter_that_counts_every_request(
    tmp_path: Path, sqlite_template: Path, server: str
) -> None:
    if server == "granian":
        pytest.importorskip("granian")
    shared = tmp_path / "prometheus"
    shared.mkdir()
    (shared / "counter_999999.db").write_bytes(b"a previous run's counts")
    requests_made, seen = 0, []
    with _serve(tmp_path, sqlite_template, "--workers", "2", "--server", server,
                env={"PROMETHEUS_MULTIPROC_DIR": str(shared)}) as url:
        assert not (shared / "counter_999999.db").exists()
        for _ in range(8):
            for _ in range(5):  # a new connection each: the kernel spreads them over workers
                requests.get(f"{url}/api/v1/devices", timeout=30)
                requests_made += 1
            text = requests.get(f"{url}/metrics", timeout=30).text
            seen.append(_sample(text, "satchel_http_requests_total", code="401",
                                endpoint="/api/v1/devices", method="GET"))
        # Which worker accepts a connection is the kernel's choice: on a busy machine one may
        # take every sequential one. Concurrent connections, until both have counted some.
        deadline = time.monotonic() + 60
        while len(list(shared.glob("counter_*.db"))) < 2 and time.monotonic() < deadline:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(lambda _: requests.get(f"{url}/api/v1/devices", timeout=30),
                              range(8)))
            requests_made += 8
        text = requests.get(f"{url}/metrics", timeout=30).text
        final = _sample(text, "satchel_http_requests_total", code="401",
                        endpoint="/api/v1/devices", method="GET")
        counted_by = {p.name for p in shared.glob("counter_*.db")}

    assert seen == [float(n) for n in range(5, 41, 5)]  # one series, every request
    assert final == requests_made
    assert "worker=" not in text
    assert len(counted_by) == 2, counted_by  # both workers answered some


@needs_promtool
def test_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(DOCS / "satchel-alerts.rules.yml"))
    tested = promtool("test", "rules", "satchel-alerts.test.yml", cwd=DOCS)

    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert tested.returncode == 0, tested.stdout + tested.stderr
    for alert in ("SatchelRollbackRateHigh", "SatchelDevicesNotSeen", "SatchelWaveHalted",
                  "SatchelCheckinLatencyP99High"):
        assert f"alert: {alert}" in (DOCS / "satchel-alerts.rules.yml").read_text()


_PROBE = """
import atexit, json, sys
out, script, sys.argv = sys.argv[1], sys.argv[2], [sys.argv[2], *sys.argv[3:]]
atexit.register(lambda: json.dump(sorted(sys.modules), open(out, "w")))
if script == "satchel":
    from satchel.manager.cli import main
else:
    from satchel.agent.cli import main
main()
"""


@pytest.mark.parametrize("args", [
    ["satchel", "--help"],
    ["satchel", "keys", "--help"],
    ["satchel-agent", "--help"],
    ["satchel-agent", "status", "--json"],
], ids=" ".join)
def test_fast_commands_do_not_import_prometheus_client(
    tmp_path: Path, keys: Keyring, args: list[str]
) -> None:
    device = make_device(tmp_path, keys)
    listing = tmp_path / "modules.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}
    env["SATCHEL_AGENT_STATE_DIR"] = str(device.state_dir)
    done = subprocess.run([sys.executable, "-c", _PROBE, str(listing), *args],
                          capture_output=True, text=True, timeout=120, check=False, env=env)

    assert done.returncode == 0, done.stderr
    assert not [m for m in json.loads(listing.read_text()) if m.startswith("prometheus_client")]
