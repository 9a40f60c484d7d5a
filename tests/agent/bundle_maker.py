"""Signed test bundles for the device agent, written by `bundles.pack.write_bundle` exactly as
`satchel bundle build` writes them, from real ONNX / TFLite models with smoke tests."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from satchel.bundles.keys import SigningKey
from satchel.bundles.manifest import (
    Compatibility,
    Manifest,
    ModelEntry,
    SmokeTest,
    TensorInfo,
)
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.timeutil import utcnow
from tests.factory.bundles import TEST_PACK
from tests.factory.keys import Keyring
from tests.factory.model_makers import INPUT_NAME, OUTPUT_NAME
from tests.factory.smoke_tested import npz_bytes

IN_DIM, HIDDEN, OUT_DIM = 16, 32, 4
SAMPLES = 8


@dataclass(frozen=True)
class Model:
    """A model file with smoke inputs (float32, one row per sample) and float references."""

    path: Path
    inputs: dict[str, np.ndarray]
    reference: dict[str, np.ndarray]


@dataclass(frozen=True)
class Spec:
    """What a test bundle is; every field has a sensible default."""

    name: str = "kws"
    version: str = "1.0.0"
    sequence: int = 1
    model: str = "onnx"
    smoke: dict[str, Any] = field(default_factory=dict)  # SmokeTest field overrides
    compatibility: Compatibility | None = None
    created: datetime | None = None
    expires: datetime | None = None
    sign_with: SigningKey | None = None  # default: the trusted signing key


class BundleMaker:
    """Writes signed bundles into a directory with `bundles.pack.write_bundle`."""

    def __init__(self, directory: Path, keys: Keyring, models: dict[str, Model]) -> None:
        self.directory = directory
        self.keys = keys
        self.models = models

    def __call__(self, spec: Spec = Spec(), **changes: Any) -> Path:
        spec = replace(spec, **changes)
        model = self.models[spec.model]
        runtime = "onnxruntime" if model.path.suffix == ".onnx" else "tflite"
        model_file = f"model{model.path.suffix}"
        smoke = {"max_abs_error": 0.1, "min_cosine": 0.99, "warmup_runs": 1,
                 "latency_runs": 5, **spec.smoke}
        manifest = Manifest(
            name=spec.name,
            version=spec.version,
            sequence=spec.sequence,
            created=spec.created or utcnow() - timedelta(hours=1),
            expires=spec.expires,
            files=(),
            models=(ModelEntry(
                name="model", runtime=runtime, file=model_file,
                inputs=(TensorInfo(INPUT_NAME, "FP32", (-1, IN_DIM)),),
                outputs=(TensorInfo(OUTPUT_NAME, "FP32", (-1, OUT_DIM)),),
            ),),
            smoke_tests=(SmokeTest(model="model", inputs="smoke/inputs.npz",
                                   reference="smoke/reference.npz", **smoke),),
            compatibility=spec.compatibility or Compatibility(),
        )
        payloads = [
            Payload(model_file, model.path),
            Payload("smoke/inputs.npz", npz_bytes(model.inputs)),
            Payload("smoke/reference.npz", npz_bytes(model.reference)),
        ]
        out = self.directory / f"{spec.name}-{spec.sequence}-{spec.version}.satchel"
        with open(out, "wb") as f:
            write_bundle(f, manifest, payloads, [spec.sign_with or self.keys.signing], TEST_PACK)
        return out
