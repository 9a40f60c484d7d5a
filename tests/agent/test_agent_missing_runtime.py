"""A bundle whose runtime is not installed is refused in one line that names the extra to
install, and the device is left as it was (issue 15).

The runtime is made missing the way a device without it is: its import fails in a fresh
`satchel-agent` process (`sys.modules[name] = None` before anything runs), not by a fake of
the installer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.agent.devices import SPAWN_TIMEOUT_S
from tests.factory.outcome import Outcome

# The real console entry point, in a process where the named modules cannot be imported.
WITHOUT = """
import json, os, sys
for name in json.loads(os.environ["MISSING_MODULES"]):
    sys.modules[name] = None  # `import name` now raises ImportError, as on a bare device
from satchel.agent.cli import main
sys.argv = ["satchel-agent", *json.loads(os.environ["AGENT_ARGS"])]
main()
"""


def without(missing: list[str], *args: str) -> Outcome:
    env = {**os.environ, "MISSING_MODULES": json.dumps(missing), "AGENT_ARGS": json.dumps(args)}
    done = subprocess.run([sys.executable, "-c", WITHOUT], env=env, capture_output=True,
                          text=True, timeout=SPAWN_TIMEOUT_S, check=False)
    return Outcome(done.returncode, done.stdout, done.stderr)


@pytest.mark.parametrize(("model", "missing", "extra"), [
    ("onnx", ["onnxruntime"], "satchel[agent-onnx]"),
    ("tflite", ["ai_edge_litert", "tflite_runtime"], "satchel[agent-tflite]"),
], ids=["onnxruntime", "tflite"])
def test_bundle_for_a_runtime_not_installed_is_refused_naming_the_extra(
    device, make_bundle, model, missing, extra
):
    device.run("install", str(make_bundle(version="1.0.0", sequence=1))).ok()
    status, tree = device.status_bytes(), device.tree()

    line = without(missing, "--state-dir", str(device.state_dir), "install",
                   str(make_bundle(version="2.0.0", sequence=2, model=model))).refusal()

    assert f"pip install '{extra}'" in line
    assert "not installed" in line
    assert device.tree() == tree and device.status_bytes() == status
    assert device.history()[-1]["event"] == "refused"


def test_a_missing_runtime_does_not_stop_bundles_of_the_other_one(device, make_bundle):
    done = without(["ai_edge_litert", "tflite_runtime"], "--state-dir", str(device.state_dir),
                   "install", str(make_bundle()))

    assert done.ok().stdout.startswith("activated kws 1.0.0")
