"""Bundles of a real model whose smoke test passes on the device (or, on request, fails on
accuracy): references are the model's own outputs, computed by the agent's runtime."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from satchel.agent.runtimes import get_runtime, runtime_for_file
from satchel.bundles.keys import SigningKey
from satchel.bundles.manifest import (
    Compatibility,
    HealthPolicy,
    Manifest,
    ModelEntry,
    SmokeTest,
    TensorInfo,
)
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.timeutil import utcnow
from tests.factory.bundles import TEST_PACK


def npz_bytes(arrays: dict[str, Any]) -> bytes:
    """`arrays` as the bytes of an .npz file, as a smoke test's inputs or references."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def smoke_tested_bundle(
    out: Path,
    signer: SigningKey,
    model_file: Path,
    inputs: Any,
    *,
    channel: str,
    version: str,
    sequence: int,
    policy: HealthPolicy,
    wrong_reference: bool = False,
) -> Path:
    """A signed bundle of the real model `model_file` whose smoke test runs `inputs` (an array
    for its first input) against the model's own outputs, so it passes on the device; with
    `wrong_reference` the references are off by 5, so the smoke test fails on accuracy."""
    runtime = runtime_for_file(model_file)
    model = get_runtime(runtime).load(model_file)
    reference = model.run({model.inputs[0].name: inputs})
    if wrong_reference:
        reference = {k: v + 5.0 for k, v in reference.items()}
    payload_name = f"model{model_file.suffix}"
    manifest = Manifest(
        name=channel,
        version=version,
        sequence=sequence,
        created=utcnow(),
        files=(),
        models=(ModelEntry(
            name="main",
            runtime=runtime,
            file=payload_name,
            inputs=tuple(TensorInfo(s.name, s.datatype, s.shape) for s in model.inputs),
            outputs=tuple(TensorInfo(s.name, s.datatype, s.shape) for s in model.outputs),
        ),),
        smoke_tests=(SmokeTest(
            "main", "smoke/inputs.npz", "smoke/reference.npz", max_abs_error=1e-3,
            warmup_runs=1, latency_runs=3,
        ),),
        health_policy=policy,
        compatibility=Compatibility(),
    )
    payloads = [
        Payload(payload_name, model_file),
        Payload("smoke/inputs.npz", npz_bytes({model.inputs[0].name: inputs})),
        Payload("smoke/reference.npz", npz_bytes(reference)),
    ]
    with open(out, "wb") as f:
        write_bundle(f, manifest, payloads, [signer], TEST_PACK)
    return out
