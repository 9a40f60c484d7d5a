"""Devices of the agent tests: a state directory set up by the real `init`, driven through
`satchel-agent` in-process (click's runner, fast) or as a real subprocess (for crash tests and
the console script), and the check that an active release is exactly what was signed."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from satchel.agent.cli import main
from satchel.agent.config import CRASH_AT_ENV, STATE_DIR_ENV
from satchel.agent.state import FILES_DIR, MANIFEST_FILE, SIGNATURES_FILE, DeviceState
from satchel.bundles.envelope import check_threshold
from satchel.bundles.keys import parse_signatures
from satchel.bundles.manifest import Manifest, parse_manifest
from satchel.bundles.trust import load_root
from tests.factory.outcome import Outcome

AGENT_SCRIPT = Path(sys.executable).with_name("satchel-agent")
SPAWN_TIMEOUT_S = 120  # a hung subprocess fails its test instead of the whole run
DEVICE_CLASS = "test-board"


class Device:
    """A state directory set up by the real `init`, and ways to drive `satchel-agent` on it."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.state = DeviceState(state_dir)

    def run(self, *args: str) -> Outcome:
        """`satchel-agent --state-dir DIR ARGS...` in-process."""
        result = CliRunner().invoke(main, ["--state-dir", str(self.state_dir), *args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return Outcome(result.exit_code, result.stdout, result.stderr)

    def spawn(self, *args: str, crash_at: str | None = None,
              env: dict[str, str] | None = None) -> Outcome:
        """The installed console script as a real subprocess (state dir from the env var)."""
        full_env = {**os.environ, STATE_DIR_ENV: str(self.state_dir), **(env or {})}
        full_env.pop(CRASH_AT_ENV, None)
        if crash_at:
            full_env[CRASH_AT_ENV] = crash_at
        done = subprocess.run([str(AGENT_SCRIPT), *args], capture_output=True, text=True,
                              env=full_env, timeout=SPAWN_TIMEOUT_S, check=False)
        return Outcome(done.returncode, done.stdout, done.stderr)

    def status_bytes(self) -> bytes:
        return self.run("status", "--json").ok().stdout.encode()

    def status(self) -> dict[str, Any]:
        return json.loads(self.status_bytes())

    def active(self, channel: str = "kws") -> tuple[str, int] | None:
        info = self.status()["channels"].get(channel)
        return None if info is None else (info["active"]["version"], info["active"]["sequence"])

    def tree(self) -> dict[str, str]:
        """Every file under the state dir (but the lock, history and event queue, which
        record what happened) -> sha256 of its bytes."""
        out: dict[str, str] = {}
        for path in sorted(self.state_dir.rglob("*")):
            rel = str(path.relative_to(self.state_dir))
            if rel == "events" or rel.startswith("events/"):
                continue
            if path.is_file() and rel not in ("lock", "history.json"):
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                out[rel] = "dir"
        return out

    def verify_active(self, channel: str = "kws") -> Manifest:
        """Re-hash every file of the channel's active release against its signed manifest
        and return that manifest; fails the test on any difference or extra file."""
        return verify_active_release(self.state_dir, channel)

    def history(self) -> list[dict[str, Any]]:
        return json.loads(self.run("history", "--json", "--limit", "1000").ok().stdout)


def verify_active_release(state_dir: Path, channel: str) -> Manifest:
    """Re-hash every file of the channel's active release against its signed manifest and
    return that manifest; fails the test on any difference or extra file."""
    release = DeviceState(state_dir).active_release(channel)
    assert release is not None, f"channel {channel} serves nothing"
    manifest_bytes = (release.directory / MANIFEST_FILE).read_bytes()
    root = load_root((state_dir / "root.json").read_bytes())
    signatures = parse_signatures(json.loads((release.directory / SIGNATURES_FILE).read_bytes()), 8)
    check_threshold(manifest_bytes, signatures, root.signing_keys(), root.signing_role, "test")
    manifest = parse_manifest(manifest_bytes)
    files = release.directory / FILES_DIR
    on_disk = sorted(str(p.relative_to(files)) for p in files.rglob("*") if p.is_file())
    assert on_disk == sorted(f.path for f in manifest.files)
    for entry in manifest.files:
        data = (files / entry.path).read_bytes()
        assert len(data) == entry.size and hashlib.sha256(data).hexdigest() == entry.sha256, (
            f"{entry.path} of {channel} {release.version} is not what was signed"
        )
    return manifest
