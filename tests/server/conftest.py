"""Fixtures for the inference server: a real device state (initialised, bundles installed by
the real installer with real smoke tests), real models, and a real server on 127.0.0.1. The
helpers they use live in `devices`, `servers` and `clients`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from satchel.agent.server import MemoryEventSink
from tests.factory.keys import Keyring
from tests.factory.model_makers import make_mlp_weights, onnx_mlp, tflite_mlp
from tests.server.devices import HIDDEN, IN_DIM, OUT_DIM, Device, Models, make_device
from tests.server.servers import ServerFactory, server_factory


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    d = tmp_path_factory.mktemp("models")
    w1 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=1)
    w2 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=2)
    return Models(
        good=onnx_mlp(w1, d / "good.onnx"),
        other=onnx_mlp(w2, d / "other.onnx"),
        nan=onnx_mlp(w2, d / "nan.onnx", nan_for_negative_first_feature=True),
        tflite=tflite_mlp(w1, d / "good.tflite"),
    )


@pytest.fixture
def device(tmp_path: Path, keys: Keyring) -> Device:
    return make_device(tmp_path, keys)


@pytest.fixture
def events() -> MemoryEventSink:
    return MemoryEventSink()


@pytest.fixture
def start_server(device: Device, events: MemoryEventSink) -> Iterator[ServerFactory]:
    """Start an AgentServer on 127.0.0.1 (port 0) and a Unix socket; stopped at teardown."""
    with server_factory(device, events) as start:
        yield start
