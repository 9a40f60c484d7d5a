"""Fixtures for the device agent: real models, signed test bundles, a set-up device (`keys` is
the suite's, from tests/conftest.py).

Bundles come from `bundle_maker` (written exactly as `satchel bundle build` writes them, from
real ONNX / TFLite models of `tests.factory.model_makers`); a `devices.Device` wraps a state
directory initialised by the real `init`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from satchel.agent.provision import init_device
from tests.agent.bundle_maker import HIDDEN, IN_DIM, OUT_DIM, SAMPLES, BundleMaker, Model
from tests.agent.devices import DEVICE_CLASS, Device
from tests.factory.keys import Keyring
from tests.factory.model_makers import (
    INPUT_NAME,
    OUTPUT_NAME,
    make_mlp_weights,
    mlp_forward,
    onnx_mlp,
    sample_inputs,
    tflite_mlp,
)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Model]:
    directory = tmp_path_factory.mktemp("models")
    weights = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=3)
    x = sample_inputs(IN_DIM, SAMPLES, seed=5)
    nan_x = x.copy()
    nan_x[:, 0] = -np.abs(nan_x[:, 0]) - 0.1  # every row's first feature negative
    ref = {OUTPUT_NAME: mlp_forward(weights, x)}
    return {
        "onnx": Model(onnx_mlp(weights, directory / "mlp.onnx"), {INPUT_NAME: x}, ref),
        "onnx-v2": Model(
            onnx_mlp(make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=4), directory / "v2.onnx"),
            {INPUT_NAME: x},
            {OUTPUT_NAME: mlp_forward(make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=4), x)},
        ),
        "onnx-nan": Model(
            onnx_mlp(weights, directory / "nan.onnx", nan_for_negative_first_feature=True),
            {INPUT_NAME: nan_x},
            {OUTPUT_NAME: mlp_forward(weights, nan_x)},
        ),
        "tflite": Model(tflite_mlp(weights, directory / "mlp.tflite"), {INPUT_NAME: x}, ref),
        "tflite-int8": Model(
            tflite_mlp(weights, directory / "int8.tflite", int8=True), {INPUT_NAME: x}, ref
        ),
    }


@pytest.fixture
def make_bundle(tmp_path: Path, keys: Keyring, models: dict[str, Model]) -> BundleMaker:
    directory = tmp_path / "bundles"
    directory.mkdir()
    return BundleMaker(directory, keys, models)


@pytest.fixture
def device(tmp_path: Path, keys: Keyring) -> Device:
    state_dir = tmp_path / "state"
    init_device(state_dir, keys.root_json, "dev-1", DEVICE_CLASS)
    return Device(state_dir)
