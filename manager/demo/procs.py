"""Running the `satchel` and `satchel-agent` commands and the long-lived processes of the demo."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

BIN = Path(sys.executable).parent


class DemoError(Exception):
    """A demo step failed; the message says which and why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Runner:
    """Runs commands, keeps a transcript, and owns the background processes it started."""

    workdir: Path
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    transcript: list[tuple[list[str], str]] = field(default_factory=list)

    def run(self, *args: str, stdin: str | None = None, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [str(BIN / args[0]), *args[1:]]
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True,
                              cwd=self.workdir, env={**self.env, **(env or {})}, timeout=120)
        self.transcript.append((list(args), proc.stdout + proc.stderr))
        if check and proc.returncode != 0:
            last = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:] or ["?"]
            raise DemoError(f"`{' '.join(args[:3])} ...` failed: {last[0]}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def last_line(self, *args: str, stdin: str | None = None) -> str:
        return self.run(*args, stdin=stdin).stdout.strip().splitlines()[-1]

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the child
        cmd = [str(BIN / args[0]), *args[1:]]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                env={**self.env, **(env or {})}, start_new_session=True)
        self.procs.append(proc)

    def stop_all(self, keep: int = 0) -> None:
        """Stop every background process except the first `keep` (SIGTERM, then SIGKILL)."""
        victims = self.procs[keep:]
        for p in victims:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + 10
        for p in victims:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = self.procs[:keep]


def wait_http(url: str, timeout: float = 30.0) -> None:
    """Wait until `url` answers at all (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            requests.get(url, timeout=1)
            return
        except requests.RequestException:
            time.sleep(0.1)
    raise DemoError(f"{url} did not come up within {timeout:.0f} s")


def wait_for(what: str, check: Any, timeout: float, interval: float = 0.25) -> Any:
    """Poll `check()` until it returns something truthy; raise DemoError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise DemoError(f"timed out after {timeout:.0f} s waiting for {what}")
