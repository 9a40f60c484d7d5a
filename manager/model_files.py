"""The files a model consists of: its own file, and for ONNX the external data files it loads
from beside it (`model.onnx` + `model.onnx.data`, as large exports write them).

onnxruntime resolves external data relative to the model's directory and refuses paths that
leave it; a bundle carries those files under the same relative paths beside its model file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from satchel.bundles.errors import WrongTypeError
from satchel.bundles.manifest import check_payload_path
from satchel.manager.errors import BuildError
from satchel.manager.onnx_graph import GraphSummary, OnnxFormatError, read_graph_summary

_RESERVED = ("smoke",)  # top-level payload folders the build itself writes


@dataclass(frozen=True)
class ModelFiles:
    """A model file and the data files (relative paths) that travel beside it."""

    model: Path
    data_files: tuple[str, ...] = ()
    graph: GraphSummary | None = field(default=None, compare=False)  # ONNX only

    @property
    def folder(self) -> Path:
        return self.model.parent

    def total_bytes(self) -> int:
        """Size of the model with every data file."""
        return self.model.stat().st_size + sum(
            (self.folder / f).stat().st_size for f in self.data_files
        )


def model_files(path: Path) -> ModelFiles:
    """The model at `path` and its external data files.

    Raises BuildError (one line) when a data file is missing, is not a plain relative path
    inside the model's folder, or the model cannot be parsed.
    """
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        return ModelFiles(path)
    graph = onnx_graph(path)
    checked = tuple(_checked_location(path, loc) for loc in graph.external_locations)
    return ModelFiles(path, checked, graph)


def onnx_graph(path: Path) -> GraphSummary:
    """What the build reads of an ONNX model before loading it: operators, initializer types,
    external data files; the weights are stepped over, never read. Raises BuildError."""
    try:
        return read_graph_summary(path)
    except OSError as e:
        raise BuildError(f"cannot read {path.name}: {e.strerror or e}") from e
    except OnnxFormatError as e:
        raise BuildError(f"{path.name} is not a readable ONNX model: {e}") from e


def _checked_location(model: Path, location: str) -> str:
    pure = PurePosixPath(location)
    if not location or pure.is_absolute() or ".." in pure.parts or "\\" in location:
        raise BuildError(
            f"{model.name}: external data location {location[:80]!r} must be a file beside the "
            "model (a relative path with no '..')"
        )
    try:
        check_payload_path(location)
    except WrongTypeError as e:
        raise BuildError(f"{model.name}: external data location {location[:80]!r}: {e}") from e
    if pure.parts[0] in _RESERVED or location.lower() in ("model.onnx", "model.tflite"):
        raise BuildError(
            f"{model.name}: external data location {location!r} clashes with a name the bundle "
            "uses (smoke/..., model.onnx); save the weights under another file name"
        )
    data = model.parent / location
    if not data.is_file():
        raise BuildError(
            f"{model.name}: its external data file {location!r} is missing (it must lie beside "
            "the model)"
        )
    if not data.resolve().is_relative_to(model.parent.resolve()):
        raise BuildError(f"{model.name}: external data file {location!r} lies outside its folder")
    return location
