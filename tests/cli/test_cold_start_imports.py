"""`satchel` imports only what a command uses: the key and bundle commands start without
Flask, SQLAlchemy, Alembic or requests (and, but for `bundle build` and `model quantize`,
without numpy or an ML runtime), and the fleet commands with `--url` without the web server
or the database. Each case runs in a fresh interpreter and lists what it imported, so a
heavy import cannot creep back through a module-level `import`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest

from satchel.manager.cli import COMMANDS, main
from satchel.manager.commands.lazy import LazyGroup
from tests.factory.bundles import build_test_bundle
from tests.factory.keys import Keyring

WEB_AND_DATABASE = ("flask", "werkzeug", "sqlalchemy", "alembic", "requests", "waitress",
                    "granian", "psycopg", "jinja2")
ML = ("numpy", "onnx", "onnxruntime", "ai_edge_litert", "tflite_runtime", "tqdm")
LIGHT = WEB_AND_DATABASE + ML
SPAWN_TIMEOUT_S = 120

# Runs `satchel ARGS...` as the console script does, then writes the top-level names of
# every module imported to the file named by the first argument (also when it exits 1 or 2).
_PROBE = """
import atexit, json, sys
out, sys.argv = sys.argv[1], ["satchel", *sys.argv[2:]]
def _dump():
    with open(out, "w") as f:
        json.dump(sorted({name.split(".")[0] for name in sys.modules}), f)
atexit.register(_dump)
from satchel.manager.cli import main
main()
"""


def _imported(tmp_path: Path, *args: str | Path, env: dict[str, str] | None = None,
              ) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    listing = tmp_path / "modules.json"
    listing.unlink(missing_ok=True)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(listing), *(str(a) for a in args)],
        capture_output=True, text=True, timeout=SPAWN_TIMEOUT_S, check=False,
        env={**clean, **(env or {})}, stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done, set(json.loads(listing.read_text()))


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["keys", "--help"],
        ["keys", "init", "--help"],
        ["bundle", "--help"],
        ["bundle", "build", "--help"],
        ["bundle", "inspect", "--help"],
        ["bundle", "verify", "--help"],
        ["model", "--help"],
        ["model", "quantize", "--help"],
        ["deploy", "--help"],
        ["device", "--help"],
        ["token", "--help"],
        ["usb", "--help"],
    ],
    ids=" ".join,
)
def test_help_loads_no_web_database_or_ml_module(tmp_path: Path, args: list[str]) -> None:
    done, modules = _imported(tmp_path, *args)

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: ")
    assert modules.isdisjoint(LIGHT), sorted(modules & set(LIGHT))


def test_keys_init_loads_no_web_database_or_ml_module(tmp_path: Path) -> None:
    done, modules = _imported(tmp_path, "keys", "init", tmp_path / "keys")

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "keys" / "root.json").is_file()
    assert modules.isdisjoint(LIGHT), sorted(modules & set(LIGHT))


def test_bundle_inspect_and_verify_load_no_web_database_or_ml_module(
    tmp_path: Path, keys: Keyring
) -> None:
    bundle = build_test_bundle(tmp_path / "b.satchel", keys=keys).path

    inspected, inspect_modules = _imported(tmp_path, "bundle", "inspect", bundle, "--json")
    verified, verify_modules = _imported(
        tmp_path, "bundle", "verify", bundle, "--trust", keys.directory / "root.json"
    )

    assert inspected.returncode == 0 and json.loads(inspected.stdout)["manifest"]["name"]
    assert verified.returncode == 0 and verified.stdout.startswith("OK: ")
    assert inspect_modules.isdisjoint(LIGHT), sorted(inspect_modules & set(LIGHT))
    assert verify_modules.isdisjoint(LIGHT), sorted(verify_modules & set(LIGHT))


def test_a_refused_bundle_check_loads_nothing_more(tmp_path: Path, keys: Keyring) -> None:
    junk = tmp_path / "junk.satchel"
    junk.write_bytes(b"not a tar")

    done, modules = _imported(
        tmp_path, "bundle", "verify", junk, "--trust", keys.directory / "root.json"
    )

    assert done.returncode == 1 and done.stderr.startswith("error: ")
    assert modules.isdisjoint(LIGHT), sorted(modules & set(LIGHT))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "args",
    [["device", "list"], ["deploy", "status", "1"], ["bundle", "list", "--json"],
     ["token", "create", "--enroll"]],
    ids=" ".join,
)
def test_remote_fleet_commands_load_no_web_server_or_database(
    tmp_path: Path, args: list[str]
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"

    done, modules = _imported(tmp_path, "--url", url, *args, env={"SATCHEL_TOKEN": "sat_admin_x"})

    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot reach the manager at {url}: ")
    assert done.stderr.count("\n") == 1
    assert modules.isdisjoint(LIGHT), sorted(modules & set(LIGHT))


def test_the_lazy_table_says_what_each_command_says() -> None:
    ctx = click.Context(main)
    for name, entry in COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is not None and command.get_short_help_str(limit=1000) == entry.short_help
    listed, loaded = LazyGroup("satchel", lazy=COMMANDS), LazyGroup("satchel", lazy=COMMANDS)
    for name in COMMANDS:
        loaded.get_command(click.Context(loaded), name)

    assert listed.get_help(click.Context(listed)) == loaded.get_help(click.Context(loaded))
    assert not listed.commands  # listing imported nothing


def test_remote_usb_commands_load_no_web_server_or_database(
    tmp_path: Path, keys: Keyring
) -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    (tmp_path / "stick").mkdir()
    env = {"SATCHEL_TOKEN": "sat_admin_x"}

    for args in (["usb", "import", tmp_path / "stick"],
                 ["usb", "export", tmp_path / "stick", "--key", keys.directory / "signing.key"]):
        done, modules = _imported(tmp_path, "--url", url, *args, env=env)

        assert done.returncode == 1
        assert done.stderr == f"error: cannot reach the manager at {url}: connection refused\n"
        assert modules.isdisjoint(LIGHT), sorted(modules & set(LIGHT))
