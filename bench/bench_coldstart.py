"""Cold start of the command lines, against the interpreter and RAUC measured in the same run.

Goals (issue 14): `satchel-agent status` within 2x of `python -c pass`; `satchel-agent install`
of a small bundle within 1.5x of `python -c 'import onnxruntime'` plus its smoke test (the
smoke test's share is taken from the install's own `--json` figures). Every command runs in
a fresh process; the commands are interleaved round by round (so a burst of load on the
shared machine hits all of them alike) and the median of the rounds is kept. The anchor of
a device install is `rauc install` of a small plain bundle into a file-backed slot, in a
sandbox (bench/rauc_anchor.py); where RAUC cannot run, the result says why.
Each command's CPU time (user + system, `NAME_cpu`) is kept beside its wall time: the
neighbours on a shared machine inflate it far less, and the ratios are given in both.

Run: `python -m bench.bench_coldstart [--rounds 7]`; prints JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import Quiet, wait_for_quiet
from bench.rauc_anchor import RaucSandbox, RaucUnavailable
from satchel.manager.modelgen import INPUT_NAME, make_mlp_weights, onnx_mlp, sample_inputs

BIN = Path(sys.executable).parent
PYTHON = sys.executable
AGENT = str(BIN / "satchel-agent")
ADMIN = str(BIN / "satchel")
GOAL_STATUS_VS_PASS = 2.0  # status <= 2x `python -c pass`
GOAL_INSTALL_VS_RUNTIME = 1.5  # install <= 1.5x (`import onnxruntime` + smoke test)


def bytecode_cached_env(work: Path) -> dict[str, str]:
    """The environment of every measured process: bytecode cached (in `work`), as on a
    device where the wheel's modules are compiled once, whatever the caller's
    PYTHONDONTWRITEBYTECODE says."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    return env


ENV: dict[str, str] = dict(os.environ)


def _run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=ENV,
                          **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed: {done.stderr.strip()[-300:]}")
    return done


def _children_cpu_s() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _timed(command: list[str]) -> dict[str, float]:
    """Wall and CPU seconds of one run of `command` (CPU: user + system of the process, which
    the neighbours on a shared machine do not inflate as they do wall time)."""
    cpu, start = _children_cpu_s(), time.perf_counter()
    _run(command)
    return {"wall": time.perf_counter() - start, "cpu": _children_cpu_s() - cpu}


class Setup:
    """Keys, a small signed bundle built by `satchel bundle build`, and devices."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.keys = work / "keys"
        _run([ADMIN, "keys", "init", str(self.keys)])
        weights = make_mlp_weights(64, 128, 10, seed=0)
        model = onnx_mlp(weights, work / "model.onnx")
        np.savez(work / "samples.npz", **{INPUT_NAME: sample_inputs(64, 8, seed=1)})
        self.bundle = work / "small.satchel"
        _run([ADMIN, "bundle", "build", "--name", "coldstart", "--version", "1.0",
              "--model", str(model), "--samples", str(work / "samples.npz"),
              "--key", str(self.keys / "signing.key"), "-o", str(self.bundle)])
        self.pristine = work / "pristine"
        _run([AGENT, "--state-dir", str(self.pristine), "init", "--trust",
              str(self.keys / "root.json"), "--device-id", "bench", "--device-class", "bench"])
        self.serving = work / "serving"  # a device with one channel installed, for status
        shutil.copytree(self.pristine, self.serving)
        _run([AGENT, "--state-dir", str(self.serving), "install", str(self.bundle)])
        self.round = 0

    def fresh_device(self) -> Path:
        self.round += 1
        state = self.work / f"device-{self.round}"
        shutil.copytree(self.pristine, state)
        return state

    def fresh_keydir(self) -> Path:
        self.round += 1
        return self.work / f"keys-{self.round}"


def install_once(setup: Setup) -> dict[str, float]:
    """One `satchel-agent install --json` on a fresh device: wall time and its own phases."""
    state = setup.fresh_device()
    cpu, start = _children_cpu_s(), time.perf_counter()
    done = _run([AGENT, "--state-dir", str(state), "install", "--json", str(setup.bundle)])
    wall = time.perf_counter() - start
    cpu = _children_cpu_s() - cpu
    shutil.rmtree(state)
    result = json.loads(done.stdout)
    phases = result.get("seconds", {})
    test = result["report"]["tests"][0]
    return {"wall": wall, "cpu": cpu, "smoke_test": phases.get("smoke_test", 0.0),
            "session_load": test.get("load_ms", 0.0) / 1000.0,
            **{f"phase_{k}": v for k, v in phases.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-coldstart-"))
    ENV.clear()
    ENV.update(bytecode_cached_env(work))
    try:
        setup = Setup(work)
        rauc: RaucSandbox | None = None
        rauc_bundle: Path | None = None
        rauc_note = ""
        try:
            rauc = RaucSandbox(work, 1 << 20).__enter__()
            rauc_bundle = rauc.bundle(setup.work / "model.onnx", "small")
        except RaucUnavailable as e:
            rauc, rauc_note = None, str(e)
        commands: dict[str, Callable[[], float | dict[str, float]]] = {
            "python_pass": lambda: _timed([PYTHON, "-c", "pass"]),
            "python_import_onnxruntime": lambda: _timed([PYTHON, "-c", "import onnxruntime"]),
            "agent_status": lambda: _timed([AGENT, "--state-dir", str(setup.serving), "status"]),
            "agent_help": lambda: _timed([AGENT, "--help"]),
            "agent_install": lambda: install_once(setup),
            "admin_help": lambda: _timed([ADMIN, "--help"]),
            "admin_keys_init": lambda: _timed([ADMIN, "keys", "init", str(setup.fresh_keydir())]),
            "admin_bundle_verify": lambda: _timed(
                [ADMIN, "bundle", "verify", str(setup.bundle), "--trust",
                 str(setup.keys / "root.json")]),
        }
        if rauc is not None and rauc_bundle is not None:
            bundle = rauc_bundle
            sandbox = rauc
            commands["rauc_install"] = lambda: sandbox.install(bundle)
        for run in commands.values():  # warm the page cache and bytecode caches
            run()
        others_before = wait_for_quiet(timeout_s=60)
        samples: dict[str, list[Any]] = {name: [] for name in commands}
        with Quiet() as quiet:
            for _ in range(args.rounds):
                for name, run in commands.items():
                    samples[name].append(run())
        if rauc is not None:
            rauc.__exit__()
        print(json.dumps(summarise(samples, args.rounds, quiet, others_before, rauc_note),
                         indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarise(samples: dict[str, list[Any]], rounds: int, quiet: Quiet, others_before: float,
              rauc_note: str) -> dict[str, Any]:
    ms: dict[str, float] = {}
    for name, values in samples.items():
        if values and isinstance(values[0], dict):
            for key in values[0]:
                ms[f"{name}_{key}"] = round(statistics.median(v[key] for v in values) * 1000, 1)
        else:
            ms[name] = round(statistics.median(values) * 1000, 1)
    for name in list(ms):  # wall time keeps the command's own name; CPU is NAME_cpu
        if name.endswith("_wall"):
            ms[name.removesuffix("_wall")] = ms.pop(name)
    status_ratio = ms["agent_status"] / ms["python_pass"]
    install_anchor = ms["python_import_onnxruntime"] + ms["agent_install_smoke_test"]
    install_ratio = ms["agent_install"] / install_anchor
    # The same in CPU time, which a busy shared machine distorts far less than wall time;
    # the smoke test's share is its own (wall) figure from `--json`, single-threaded.
    status_cpu_ratio = ms["agent_status_cpu"] / ms["python_pass_cpu"]
    install_cpu_ratio = ms["agent_install_cpu"] / (ms["python_import_onnxruntime_cpu"]
                                                   + ms["agent_install_smoke_test"])
    result: dict[str, Any] = {
        "bench": "coldstart",
        "rounds": rounds,
        "median_ms": ms,
        "ratios": {
            "status_vs_python_pass": round(status_ratio, 2),
            "help_vs_python_pass": round(ms["agent_help"] / ms["python_pass"], 2),
            "install_vs_import_onnxruntime_plus_smoke_test": round(install_ratio, 2),
            "cpu_status_vs_python_pass": round(status_cpu_ratio, 2),
            "cpu_install_vs_import_onnxruntime_plus_smoke_test": round(install_cpu_ratio, 2),
        },
        "goals": {
            "status_vs_python_pass": {"goal": f"<= {GOAL_STATUS_VS_PASS}",
                                      "ok": status_ratio <= GOAL_STATUS_VS_PASS},
            "install_vs_import_onnxruntime_plus_smoke_test": {
                "goal": f"<= {GOAL_INSTALL_VS_RUNTIME}",
                "ok": install_ratio <= GOAL_INSTALL_VS_RUNTIME},
            "cpu_status_vs_python_pass": {"goal": f"<= {GOAL_STATUS_VS_PASS}",
                                          "ok": status_cpu_ratio <= GOAL_STATUS_VS_PASS},
            "cpu_install_vs_import_onnxruntime_plus_smoke_test": {
                "goal": f"<= {GOAL_INSTALL_VS_RUNTIME}",
                "ok": install_cpu_ratio <= GOAL_INSTALL_VS_RUNTIME},
        },
        "machine": {**quiet.report(), "others_share_before": round(others_before, 3)},
    }
    if "rauc_install" in ms:
        result["ratios"]["install_vs_rauc_install"] = round(
            ms["agent_install"] / ms["rauc_install"], 2)
    else:
        result["rauc"] = f"not measured: {rauc_note}"
    return result


if __name__ == "__main__":
    main()
