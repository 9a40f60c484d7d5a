"""Each `satchel-agent` command, run in a fresh interpreter, loads only what it uses (issue 14).

A technician waits for `status`; a device installs on a slow CPU. So `status`, `history`,
`rollback` and `--help` load no ML runtime, no numpy, no HTTP client and no inference server;
`install` of an ONNX bundle loads onnxruntime (its smoke test) but neither TFLite, nor the
HTTP client, nor the server; `usb` loads no HTTP client and no server. The lists are checked
on `sys.modules` at exit, so an import added at the top of a module cannot creep back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from satchel.agent.cli import DEFAULT_LISTEN
from tests.agent.devices import SPAWN_TIMEOUT_S

# Runs the real console entry point, then writes every loaded module's name at exit (atexit,
# or os._exit for the install's fast path).
PROBE = """
import atexit, json, os, sys
def write_modules():
    with open(os.environ["PROBE_MODULES"], "w") as f:
        json.dump(sorted(sys.modules), f)
atexit.register(write_modules)
real_exit = os._exit
def exit_now(code):  # the install's fast path ends without the interpreter's teardown
    write_modules()
    real_exit(code)
os._exit = exit_now
from satchel.agent.quickstatus import main
sys.argv = ["satchel-agent", *json.loads(os.environ["PROBE_ARGS"])]
main()
"""

HTTP_CLIENT = ["requests", "urllib3", "http.client"]
SERVER = ["satchel.agent.server", "http.server", "socketserver", "satchel.agent.service"]
RUNTIMES = ["onnxruntime", "ai_edge_litert", "tflite_runtime", "satchel.agent.runtimes"]
NUMERIC = ["numpy"]
BUNDLE_FORMAT = ["zstandard", "cryptography"]  # nothing to verify or unpack

READ_ONLY = HTTP_CLIENT + SERVER + RUNTIMES + NUMERIC

# What only some bundles need (issue 14): loaded when a manifest asks for it, never for a
# plain bundle, nor by status. (agent.variants.settings is the `[variants]` settings table,
# part of every AgentConfig; agent.staging itself holds only the candidate file's name.)
ENCRYPTION = ["satchel.bundles.crypt", "satchel.bundles.cryptbundle", "satchel.bundles.cryptinfo",
              "satchel.bundles.recipients", "satchel.agent.install.decrypt"]
DELTAS = ["satchel.bundles.delta", "satchel.bundles.delta_manifest",
          "satchel.agent.install.delta"]
VARIANTS = ["satchel.bundles.variants", "satchel.agent.variants.install",
            "satchel.agent.variants.select", "satchel.agent.variants.serving",
            "satchel.agent.variants.state", "satchel.agent.variants.status",
            "satchel.agent.variants.metrics"]
STAGING = ["satchel.bundles.activation", "satchel.bundles.captures", "satchel.agent.captures",
           "satchel.agent.staging.record", "satchel.agent.staging.lifecycle",
           "satchel.agent.staging.stager"]
OPTIONAL_FEATURES = ENCRYPTION + DELTAS + VARIANTS + STAGING


def loaded_by(tmp_path: Path, *args: str) -> tuple[set[str], subprocess.CompletedProcess[str]]:
    out = tmp_path / f"modules-{len(list(tmp_path.glob('modules-*')))}.json"
    env = {**os.environ, "PROBE_MODULES": str(out), "PROBE_ARGS": json.dumps(list(args))}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=SPAWN_TIMEOUT_S, check=False)
    return set(json.loads(out.read_text())), done


def offenders(modules: set[str], forbidden: list[str]) -> list[str]:
    return sorted(m for m in modules
                  if any(m == f or m.startswith(f + ".") for f in forbidden))


@pytest.fixture
def installed(device, make_bundle):
    """A device with two kws releases, so that rollback has somewhere to go."""
    device.run("install", str(make_bundle(version="1.0.0", sequence=1))).ok()
    device.run("install", str(make_bundle(version="1.1.0", sequence=2))).ok()
    return device


def test_help_loads_nothing_heavy(tmp_path):
    modules, done = loaded_by(tmp_path, "--help")

    assert done.returncode == 0, done.stderr
    assert offenders(modules, READ_ONLY + BUNDLE_FORMAT + ["satchel.agent.state"]) == []


@pytest.mark.parametrize("args", [["status", "--json"], ["history"]], ids=["status", "history"])
def test_status_and_history_load_no_runtime_client_or_server(tmp_path, installed, args):
    modules, done = loaded_by(tmp_path, "--state-dir", str(installed.state_dir), *args)

    assert done.returncode == 0, done.stderr
    assert offenders(modules, READ_ONLY + BUNDLE_FORMAT) == []


# What the console entry point's fast path (agent.quickstatus) answers `status` and `history`
# with: the interpreter, json, os and datetime; not even click or the agent's own modules.
FULL_CLI = ["click", "satchel.agent.cli", "satchel.agent.config", "satchel.agent.state",
            "satchel.agent.install", "satchel.bundles", "dataclasses", "logging", "typing"]


@pytest.mark.parametrize("args", [["status"], ["status", "--json"], ["history"],
                                  ["history", "--json", "--limit", "5", "--channel", "kws"]],
                         ids=["status", "status-json", "history", "history-json"])
def test_status_and_history_of_a_clean_device_load_only_the_fast_path(tmp_path, installed,
                                                                      args):
    modules, done = loaded_by(tmp_path, "--state-dir", str(installed.state_dir), *args)

    assert done.returncode == 0, done.stderr
    assert offenders(modules, READ_ONLY + BUNDLE_FORMAT + FULL_CLI + OPTIONAL_FEATURES) == []


def test_rollback_loads_no_runtime_client_or_server(tmp_path, installed):
    modules, done = loaded_by(tmp_path, "--state-dir", str(installed.state_dir),
                              "rollback", "kws")

    assert done.returncode == 0, done.stderr
    assert installed.status()["channels"]["kws"]["active"]["version"] == "1.0.0"
    assert offenders(modules, READ_ONLY) == []


def test_install_of_an_onnx_bundle_loads_onnxruntime_only(tmp_path, device, make_bundle):
    modules, done = loaded_by(tmp_path, "--state-dir", str(device.state_dir),
                              "install", str(make_bundle()))

    assert done.returncode == 0, done.stderr
    assert "onnxruntime" in modules  # the smoke test ran on the real runtime
    assert offenders(modules, HTTP_CLIENT + SERVER + ["ai_edge_litert", "tflite_runtime",
                                                      "satchel.agent.runtimes.tflite"]) == []
    # Nor what it can do without (issue 14): the agent's version is read without
    # importlib.metadata (~25 ms), keys are raw (no PEM/SSH modules), timestamps are parsed
    # without _strptime, and TOML only when a settings file is there; neither difflib (a
    # suggestion for a mistyped setting), subprocess (a child-process smoke test) nor secrets;
    # nor click and the command line's definitions (agent.quickinstall runs a plain install).
    assert offenders(modules, ["importlib.metadata", "_strptime", "tomllib",
                               "cryptography.hazmat.primitives.serialization", "difflib",
                               "subprocess", "secrets", "click", "satchel.agent.cli"]) == []


def test_install_of_a_plain_bundle_loads_no_encryption_delta_variant_or_staging_module(
        tmp_path, device, make_bundle):
    first = make_bundle(version="1.0.0", sequence=1)
    upgrade = make_bundle(version="1.1.0", sequence=2)  # replaces an active release

    for bundle in (first, upgrade):
        modules, done = loaded_by(tmp_path, "--state-dir", str(device.state_dir),
                                  "install", str(bundle))

        assert done.returncode == 0, done.stderr
        assert offenders(modules, OPTIONAL_FEATURES) == []
    assert device.status()["channels"]["kws"]["active"]["version"] == "1.1.0"


def test_usb_loads_no_http_client_or_server(tmp_path, device):
    stick = tmp_path / "stick"
    stick.mkdir()

    modules, done = loaded_by(tmp_path, "--state-dir", str(device.state_dir), "usb", str(stick))

    assert done.returncode == 1 and done.stderr.startswith("error: ")  # an empty stick
    assert "satchel.agent.sync.usb" in modules
    assert offenders(modules, HTTP_CLIENT + SERVER) == []


def test_help_shows_the_servers_own_default_address():
    from satchel.agent.server.config import DEFAULT_LISTEN as SERVER_DEFAULT_LISTEN

    assert DEFAULT_LISTEN == SERVER_DEFAULT_LISTEN


def test_a_service_with_no_manager_loads_no_http_client_or_metrics_library():
    """A USB-only device never talks to a manager: its service loads the LAN client (and
    requests, 14 MB) only once it is enrolled, and prometheus_client only when scraped."""
    probe = ("import json, sys; import satchel.agent.service; "
             "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=SPAWN_TIMEOUT_S, check=True)
    modules = set(json.loads(done.stdout))
    assert offenders(modules, ["requests", "urllib3", "prometheus_client"]) == []
