"""A device judging a candidate from start to end, in one process, for the power-cut tests of
staged activation (tests/agent/test_agent_powercut_staging.py run it under the fsync tracer).

    python -m tests.agent.staged_run STATE_DIR [BUNDLE...]

Installs each BUNDLE with the real installer, then (when the device has a candidate) starts
the real inference server and sends it field requests until the candidate is activated or
refused: every durable write of staged activation happens here (the candidate record, the
stage figures, captures, the activation switch, the refusal).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from satchel.agent.config import AgentConfig
from satchel.agent.install.installer import install
from satchel.agent.server import AgentServer, MemoryEventSink
from satchel.agent.staging.record import read_candidate
from satchel.agent.state import Layout
from tests.agent.staged import CHANNEL, field_inputs
from tests.server.servers import FAST

TIMEOUT_S = 60.0


def main(state_dir: Path, bundles: list[Path]) -> int:
    config = AgentConfig(lock_wait_s=10.0)
    for bundle in bundles:
        install(state_dir, bundle, config=config)
    if read_candidate(Layout(state_dir), CHANNEL) is None:
        return 0
    import json

    import requests

    server = AgentServer(state_dir, listen="127.0.0.1:0", unix_socket=None,
                         event_sink=MemoryEventSink(), config=FAST,
                         agent_config=config).start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while server.registry.candidate(CHANNEL) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        for x in field_inputs(2000, seed=5):
            if read_candidate(Layout(state_dir), CHANNEL) is None:
                break
            if time.monotonic() > deadline:
                return 2
            body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                "data": x.ravel().tolist()}]}
            requests.post(f"{server.url}/v2/models/{CHANNEL}/infer", data=json.dumps(body),
                          timeout=10).raise_for_status()
        while read_candidate(Layout(state_dir), CHANNEL) is not None:
            if time.monotonic() > deadline:
                return 2
            time.sleep(0.02)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]))
