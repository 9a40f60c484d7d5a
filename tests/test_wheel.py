"""The wheel is the product: built from the sources, installed into a fresh virtual environment
outside the checkout, it migrates a database, serves the manager, builds a signed bundle of a
model it makes itself, and runs a device that installs the bundle and answers an inference
request, with no checkout on the import path and nothing fetched from the network.

The fresh environment has no pip and no third-party packages of its own: a `.pth` file adds a
directory of links to the development environment's third-party packages only (never its
editable `satchel`), so dependencies resolve offline while every `satchel` module comes from
the wheel."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPENDENCIES_PTH = "_test_dependencies.pth"  # added by the test, not by the wheel
SOURCES = ["pyproject.toml", "README.md", "docs/LICENSE", "bundles", "agent", "manager",
           "migrations"]
STEP_TIMEOUT_S = 180  # one CLI step of the installed wheel, smoke test included
SERVER_START_S = 60  # the manager or the agent answering HTTP after its start


class Installed:
    """A fresh venv holding the wheel; every command runs from a scratch directory."""

    def __init__(self, venv: Path, work: Path) -> None:
        self.venv = venv
        self.work = work
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("SATCHEL_", "PYTHON", "VIRTUAL_ENV"))}
        self.env["PATH"] = f"{venv / 'bin'}{os.pathsep}{self.env.get('PATH', '')}"

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(self.venv / "bin" / args[0]), *args[1:]], cwd=self.work,
                              env=self.env, capture_output=True, text=True,
                              timeout=STEP_TIMEOUT_S)
        assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    def start(self, *args: str) -> subprocess.Popen[str]:
        """Start a server; its output goes to a file (a pipe nobody reads could fill up)."""
        log = (self.work / f"{args[0]}-{time.monotonic_ns()}.log").open("w")
        with log:
            return subprocess.Popen([str(self.venv / "bin" / args[0]), *args[1:]],
                                    cwd=self.work, env=self.env, stdout=log,
                                    stderr=subprocess.STDOUT, text=True)


def _copy_sources(dest: Path) -> None:
    """Build from a copy: a build in the checkout would leave build/ and *.egg-info there,
    and a stale build/lib can put deleted modules into later wheels."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=ignore)
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _third_party_links(dest: Path) -> Path:
    """A directory of links to this environment's packages, leaving out Satchel's own
    (the editable install's finder, its metadata) and every `.pth` file."""
    dest.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        name = entry.name
        if name.startswith(("satchel", "__editable__", "_satchel")) or name.endswith(".pth"):
            continue
        (dest / name).symlink_to(entry)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    _copy_sources(tmp / "src")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(tmp / "dist"), str(tmp / "src")],
                   check=True, timeout=300, capture_output=True)
    (built,) = (tmp / "dist").glob("satchel-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    tmp = tmp_path_factory.mktemp("installed")
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, timeout=300, capture_output=True)
    (work := tmp / "work").mkdir()
    return Installed(venv, work)


def _site_packages(venv: Path) -> Path:
    (site,) = venv.glob("lib/python3*/site-packages")
    return site


@pytest.fixture(scope="module")
def runnable(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The installed wheel with its dependencies resolvable (after the layout was checked)."""
    links = _third_party_links(tmp_path_factory.mktemp("deps") / "site")
    (_site_packages(installed.venv) / DEPENDENCIES_PTH).write_text(f"{links}\n")
    return installed


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _http(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _until_status(process: subprocess.Popen[str], url: str, expected: int) -> None:
    """Wait until `url` answers `expected` (a server may answer 404 or 503 while it loads)."""
    deadline = time.monotonic() + SERVER_START_S
    last: int | str = "no answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited {process.returncode} (log in work/)")
        with contextlib.suppress(OSError):  # not listening yet
            last = _http(url)[0]
        if last == expected:
            return
        time.sleep(0.1)
    raise AssertionError(f"{url} answered {last}, not {expected}, within {SERVER_START_S} s")


@pytest.fixture
def serving() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_the_wheel_carries_migrations_templates_static_units_and_license(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("satchel/migrations/__init__.py", "satchel/migrations/env.py",
                   "satchel/migrations/script.py.mako",
                   "satchel/manager/templates/base.html", "satchel/manager/static/satchel.css",
                   "satchel/agent/systemd/satchel-agent.service",
                   "satchel/agent/systemd/satchel-agent.sysusers.conf",
                   "satchel/agent/systemd/satchel-agent.tmpfiles.conf",
                   "satchel/agent/systemd/satchel-agent.accelerator.conf",
                   "satchel/manager/systemd/satchel-manager.service",
                   "satchel/manager/systemd/satchel-manager.sysusers.conf",
                   "satchel/manager/systemd/satchel-manager.tmpfiles.conf"):
        assert needed in names
    assert any(n.startswith("satchel/migrations/versions/0001_") for n in names)
    (license_file,) = [n for n in names if n.endswith("/licenses/docs/LICENSE")]
    assert "Apache License" in zipfile.ZipFile(wheel).read(license_file).decode()
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text
    for extra in ("agent-onnx", "agent-tflite", "agent", "manager", "postgres", "all"):
        assert f"Provides-Extra: {extra}\n" in text


def test_every_module_and_data_file_of_the_sources_is_in_the_wheel(wheel: Path) -> None:
    """A sub-package missing from pyproject's package list would be left out silently."""
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = []
    for folder in ("bundles", "agent", "manager", "migrations"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            if f"satchel/{path.relative_to(ROOT)}" not in names:
                missing.append(str(path.relative_to(ROOT)))
    assert missing == []


def test_nothing_but_satchel_lands_at_the_top_of_site_packages(installed: Installed) -> None:
    tops = {p.name for p in _site_packages(installed.venv).iterdir()} - {DEPENDENCIES_PTH}
    (dist_info,) = [t for t in tops if t.endswith(".dist-info")]
    assert tops == {"satchel", dist_info} and dist_info.startswith("satchel-")
    assert (installed.venv / "bin" / "satchel").exists()
    assert (installed.venv / "bin" / "satchel-agent").exists()


def test_the_installed_wheel_imports_satchel_from_the_venv_not_the_checkout(
    runnable: Installed,
) -> None:
    probe = ("import json, satchel, satchel.agent, satchel.bundles, satchel.manager, "
             "satchel.migrations, satchel.manager.db as db; "
             "print(json.dumps([*satchel.__path__, satchel.agent.__file__, "
             "satchel.bundles.__file__, satchel.manager.__file__, db.migrations_dir()]))")
    paths = json.loads(runnable.run("python", "-c", probe).stdout)
    site = str(_site_packages(runnable.venv))
    assert paths and all(p.startswith(site) for p in paths), paths


def test_the_readme_finds_the_units_it_installs_in_the_installed_wheel(
    runnable: Installed,
) -> None:
    readme = (ROOT / "README.md").read_text()
    sections = re.findall(r"U=\$\(/opt/satchel/bin/python -c '([^']+)'\)\n(.*?)```", readme,
                          re.DOTALL)
    assert len(sections) == 2  # the agent's units and the manager's
    for probe, recipe in sections:
        folder = Path(runnable.run("python", "-c", probe).stdout.strip())
        assert str(folder).startswith(str(_site_packages(runnable.venv)))
        named = re.findall(r"\$U/(\S+)", recipe)
        assert named and all((folder / name).is_file() for name in named), (folder, named)


@pytest.mark.parametrize("command,variable", [("satchel", "_SATCHEL_COMPLETE"),
                                              ("satchel-agent", "_SATCHEL_AGENT_COMPLETE")])
def test_the_installed_commands_print_their_shell_completion(
    runnable: Installed, command: str, variable: str,
) -> None:
    runnable.env[variable] = "bash_source"
    try:
        script = runnable.run(command).stdout
    finally:
        del runnable.env[variable]
    function = f"_{command.replace('-', '_')}_completion"
    assert f"complete -o nosort -F {function} {command}" in script


def test_the_installed_wheel_runs_manager_admin_and_device(
    runnable: Installed, serving: list[subprocess.Popen[str]],
) -> None:
    data, keys, state = "manager-data", "keys", "device-state"
    assert "revision" in runnable.run("satchel", "--data-dir", data, "db", "upgrade").stdout

    port = _free_port()
    serving.append(runnable.start("satchel", "--data-dir", data, "serve", "--port", str(port),
                                  "--server", "waitress"))
    _until_status(serving[-1], f"http://127.0.0.1:{port}/api/v1/devices", 401)

    runnable.run("satchel", "keys", "init", keys)
    make_model = (
        "import numpy as np; from pathlib import Path; from satchel.manager import modelgen as g; "
        "g.onnx_mlp(g.make_mlp_weights(in_dim=8, hidden=16, out_dim=4), Path('model.onnx')); "
        "np.savez('samples.npz', input=g.sample_inputs(8, 16))"
    )
    runnable.run("python", "-c", make_model)
    runnable.run("satchel", "bundle", "build", "--name", "classifier", "--version", "1.0.0",
                 "--model", "model.onnx", "--samples", "samples.npz", "--sequence", "1",
                 "--key", f"{keys}/signing.key", "-o", "classifier.satchel")

    agent = ("satchel-agent", "--state-dir", state)
    runnable.run(*agent, "init", "--trust", f"{keys}/root.json", "--device-id", "cam-1",
                 "--device-class", "cam-v2")
    runnable.run(*agent, "install", "classifier.satchel")
    listen = _free_port()
    serving.append(runnable.start(*agent, "run", "--listen", f"127.0.0.1:{listen}",
                                  "--no-socket"))
    base = f"http://127.0.0.1:{listen}/v2"
    _until_status(serving[-1], f"{base}/models/classifier/ready", 200)
    request = {"inputs": [{"name": "input", "shape": [1, 8], "datatype": "FP32",
                           "data": [0.5] * 8}]}
    status, body = _http(f"{base}/models/classifier/infer", json.dumps(request).encode())
    assert status == 200, body
    (output,) = json.loads(body)["outputs"]
    assert output["name"] == "logits" and output["shape"] == [1, 4]
