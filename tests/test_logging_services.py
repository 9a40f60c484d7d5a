"""The log options of the real services: `satchel serve` and `satchel-agent run` as
processes on 127.0.0.1, with `--log-level` and `--log-format`, and under journald (stderr is
the stream `$JOURNAL_STREAM` names)."""

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
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.factory.keys import Keyring
from tests.service.devices import make_device

BIN = Path(sys.executable).parent
START_TIMEOUT_S = 60
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")
_SERVING = re.compile(r"serving on (http://[0-9.:]+)")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("SATCHEL_") and k != "JOURNAL_STREAM"}
    return {**env, **extra}


def _journal(path: Path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def _manager(data_dir: Path, stderr: Path, *args: str, journald: bool = False) -> Iterator[str]:
    """`satchel --data-dir DIR [args before serve] serve --port 0 ...`; yields its URL."""
    env = _clean_env(**({"JOURNAL_STREAM": _journal(stderr)} if journald else {}))
    before, _, after = " ".join(args).partition("serve")
    with stderr.open("a") as err:
        proc = subprocess.Popen(
            [str(BIN / "satchel"), "--data-dir", str(data_dir), *before.split(), "serve",
             "--port", "0", "--server", "waitress", *after.split()],
            stdout=subprocess.PIPE, stderr=err, text=True, env=env,
        )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert "listening on" in line, (line, stderr.read_text())
        yield line.split("listening on ")[1].split()[0]
    finally:
        _stop(proc)


def _data_dir(tmp_path: Path, sqlite_template: Path) -> Path:
    data_dir = tmp_path / "manager"
    data_dir.mkdir()
    shutil.copyfile(sqlite_template, data_dir / "satchel.db")
    return data_dir


def test_manager_json_access_line_carries_the_request_id(
    tmp_path: Path, sqlite_template: Path
) -> None:
    stderr = tmp_path / "stderr"
    with _manager(_data_dir(tmp_path, sqlite_template), stderr,
                  "serve", "--log-format", "json") as url:
        r = requests.get(f"{url}/api/v1/devices", headers={"X-Request-Id": "trace-16"},
                         timeout=30)
        fresh = requests.get(f"{url}/api/v1/bundles", timeout=30).headers["X-Request-Id"]

    lines = [json.loads(line) for line in stderr.read_text().splitlines()]  # all JSON
    (entry,) = [x for x in lines if x.get("path") == "/api/v1/devices"]
    assert r.headers["X-Request-Id"] == "trace-16"
    assert entry["request_id"] == "trace-16" and entry["status"] == 401
    assert entry["logger"] == "satchel.access" and entry["level"] == "info" and "ts" in entry
    (other,) = [x for x in lines if x.get("path") == "/api/v1/bundles"]
    assert other["request_id"] == fresh


def test_manager_level_warning_writes_no_access_lines(
    tmp_path: Path, sqlite_template: Path
) -> None:
    stderr = tmp_path / "stderr"
    with _manager(_data_dir(tmp_path, sqlite_template), stderr, "--log-level", "warning",
                  "serve") as url:
        requests.get(f"{url}/api/v1/devices", timeout=30)

    assert "/api/v1/devices" not in stderr.read_text()


def test_manager_under_journald_prefixes_priorities_and_no_timestamp(
    tmp_path: Path, sqlite_template: Path
) -> None:
    stderr = tmp_path / "stderr"
    stderr.write_text("")
    with _manager(_data_dir(tmp_path, sqlite_template), stderr, "serve", journald=True) as url:
        requests.get(f"{url}/api/v1/devices", timeout=30)

    lines = stderr.read_text().splitlines()
    access = [x for x in lines if "/api/v1/devices" in x]
    assert access and access[0].startswith("<6>INFO satchel.access: GET /api/v1/devices 401")
    assert all(re.match(r"<[0-7]>", x) for x in lines), lines
    assert not any(TIMESTAMP.search(x) for x in lines), lines


def _agent(state_dir: Path, stderr: Path, *args: str, journald: bool = False,
           ) -> subprocess.Popen[str]:
    env = _clean_env(**({"JOURNAL_STREAM": _journal(stderr)} if journald else {}))
    with stderr.open("a") as err:
        return subprocess.Popen(
            [str(BIN / "satchel-agent"), "--state-dir", str(state_dir), *args, "run",
             "--listen", "127.0.0.1:0", "--no-socket"],
            stdout=subprocess.DEVNULL, stderr=err, text=True, env=env,
        )


def _wait_serving(proc: subprocess.Popen[str], stderr: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        match = _SERVING.search(stderr.read_text())
        if match:
            return match.group(1)
        time.sleep(0.05)
    raise AssertionError(f"the agent did not start:\n{stderr.read_text()}")


def test_agent_json_lines_at_debug_level(tmp_path: Path, keys: Keyring) -> None:
    device = make_device(tmp_path, keys)
    stderr = tmp_path / "stderr"
    proc = _agent(device.state_dir, stderr, "--log-level", "debug", "--log-format", "json")
    try:
        url = _wait_serving(proc, stderr)
        requests.get(f"{url}/v2/health/live", timeout=10)
    finally:
        _stop(proc)

    lines = [json.loads(line) for line in stderr.read_text().splitlines()]  # all JSON
    assert any(x["msg"].startswith("serving on") and x["level"] == "info" for x in lines)
    assert all(x["logger"] and "ts" in x for x in lines)


def test_agent_under_journald_prefixes_priorities_and_no_timestamp(
    tmp_path: Path, keys: Keyring
) -> None:
    device = make_device(tmp_path, keys)
    stderr = tmp_path / "stderr"
    stderr.write_text("")
    proc = _agent(device.state_dir, stderr, journald=True)
    try:
        _wait_serving(proc, stderr)
    finally:
        _stop(proc)

    lines = stderr.read_text().splitlines()
    assert any(x.startswith("<6>INFO satchel.agent.") and "serving on" in x for x in lines)
    assert all(re.match(r"<[0-7]>", x) for x in lines), lines
    assert not any(TIMESTAMP.search(x) for x in lines), lines


def test_agent_config_file_sets_the_log_format(tmp_path: Path, keys: Keyring) -> None:
    device = make_device(tmp_path, keys)
    config = tmp_path / "agent.toml"
    config.write_text('[agent]\nlog_format = "json"\nlog_level = "info"\n')
    stderr = tmp_path / "stderr"
    proc = _agent(device.state_dir, stderr, "--config", str(config))
    try:
        _wait_serving(proc, stderr)
    finally:
        _stop(proc)

    assert all(line.startswith("{") for line in stderr.read_text().splitlines())
