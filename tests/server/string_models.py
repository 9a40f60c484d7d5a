"""A model that takes strings, served from a device state that names it: a real ONNX graph
(ai.onnx.ml LabelEncoders: a word to its class, the class back to a canonical name) run by
the real onnxruntime. Bundles cannot carry BYTES tensors yet (the manifest's datatypes have
no BYTES), so its release is handed to the server by a state view of one channel."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from satchel.agent.state import Release
from satchel.bundles.manifest import HealthPolicy, Manifest, ModelEntry, TensorInfo
from satchel.bundles.timeutil import utcnow

WORDS = "words"
CLASSES = {"cat": 0, "dog": 1, "bird": 2}
NAMES = {0: "Cat", 1: "Dog", 2: "Bird"}
UNKNOWN = "unknown"


def words_model(path: Path) -> Path:
    """text (string [N]) -> label (int64 [N], -1 for an unknown word), name (string [N])."""
    encode = helper.make_node(
        "LabelEncoder", ["text"], ["label"], domain="ai.onnx.ml",
        keys_strings=list(CLASSES), values_int64s=list(CLASSES.values()), default_int64=-1,
    )
    decode = helper.make_node(
        "LabelEncoder", ["label"], ["name"], domain="ai.onnx.ml",
        keys_int64s=list(NAMES), values_strings=list(NAMES.values()), default_string=UNKNOWN,
    )
    graph = helper.make_graph(
        [encode, decode], "words",
        [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("name", TensorProto.STRING, [None])],
    )
    model = helper.make_model(graph, opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def words_release(directory: Path, version: str = "1.0.0") -> Release:
    """An active release of the words model, long past its probation."""
    words_model(directory / "model.onnx")
    manifest = Manifest(
        name=WORDS, version=version, sequence=1, created=utcnow(), files=(),
        models=(ModelEntry(
            name="main", runtime="onnxruntime", file="model.onnx",
            inputs=(TensorInfo("text", "BYTES", (-1,)),),
            outputs=(TensorInfo("label", "INT64", (-1,)), TensorInfo("name", "BYTES", (-1,))),
        ),),
        smoke_tests=(),
        health_policy=HealthPolicy(probation_s=60.0),
    )
    return Release(WORDS, version, 1, directory, manifest, utcnow() - timedelta(days=1))


@dataclass
class OneChannelState:
    """The device state as the server reads it: one channel, one release."""

    release: Release

    def channels(self) -> list[str]:
        return [self.release.channel]

    def active_release(self, channel: str) -> Release | None:
        return self.release if channel == self.release.channel else None

    def previous_release(self, channel: str) -> Release | None:
        return None

    def kept_releases(self, channel: str) -> list[Release]:
        return [self.release] if channel == self.release.channel else []

    def generation(self) -> int:
        return 1
