"""A real `satchel-agent run` process for tests: started, read, asked, stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

AGENT = Path(sys.executable).with_name("satchel-agent")
_SERVING = re.compile(r"serving on (http://\S+)")


class AgentProcess:
    """`satchel-agent --state-dir STATE run --listen 127.0.0.1:0 ...` with its log kept."""

    def __init__(self, state_dir: Path, *args: str, env: dict[str, str] | None = None,
                 start_timeout_s: float = 60.0) -> None:
        self.state_dir = state_dir
        self.lines: list[str] = []
        self._lock = threading.Lock()
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("SATCHEL_AGENT_")}
        full_env.update(env or {})
        self.proc = subprocess.Popen(
            [str(AGENT), "--state-dir", str(state_dir), "run", "--listen", "127.0.0.1:0",
             *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full_env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url = self.wait_for_log(_SERVING, start_timeout_s).group(1)
        self.http = requests.Session()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line.rstrip("\n"))

    @property
    def log(self) -> str:
        with self._lock:
            return "\n".join(self.lines)

    def wait_for_log(self, pattern: re.Pattern[str] | str, timeout_s: float = 30.0) -> Any:
        """The first match of `pattern` in the log; fails the test after `timeout_s`."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout_s
        while True:
            match = regex.search(self.log)
            if match:
                return match
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {regex.pattern!r} in the agent's log:\n{self.log}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        self.http.close()
        return self.proc.returncode

    # --- the Open Inference Protocol --------------------------------------------------------

    def model(self, channel: str) -> dict[str, Any]:
        r = self.http.get(f"{self.url}/v2/models/{channel}", timeout=10)
        return dict(r.json()) if r.status_code == 200 else {}

    def serving_version(self, channel: str) -> str | None:
        versions = self.model(channel).get("versions") or [None]
        return versions[0]

    def infer(self, channel: str, x: np.ndarray, input_name: str = "input") -> np.ndarray:
        body = {"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                            "data": x.ravel().tolist()}]}
        r = self.http.post(f"{self.url}/v2/models/{channel}/infer", data=json.dumps(body),
                           timeout=10)
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        return np.asarray(out["data"], dtype=np.float64).reshape(out["shape"])
