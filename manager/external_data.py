"""Store a large single-file ONNX model's weights as ONNX external data, for the bundle.

onnxruntime copies the weights of a single-file model out of its protobuf (peak: the model
twice in memory, at build, install and serving alike), but maps an external data file and
uses its pages in place. So the build ships a single-file model above a size
(`BuildDefaults.external_data_min_bytes`) as `model.onnx` (the graph) + `model.onnx.data`
(every large initializer's bytes, each at an aligned offset), as SPEC "Samples" allows: the
weights are bit for bit the same, the bundle lists and hashes both files, and the device
loads them from one folder (issue 14). The build writes neither: it packs the graph from
memory and the data file from ranges of the model file (`plan_external`, `Pieces`), and runs
the model file as it is, whose weights onnxruntime maps in place too
(agent/runtimes/onnx_weights.py).

The rewrite walks the protobuf wire format over a memory map (bundles/protowire.py):
each initializer of the main graph whose `raw_data` is large enough becomes the same tensor
with `data_location: EXTERNAL` and `external_data` {location, offset, length}; every other
byte is copied as it was. Initializers in subgraphs or held as typed fields stay inline;
a model this cannot rewrite plainly (a graph field given twice, tensors already external)
is shipped as it came.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from satchel.bundles.pack import Pieces
from satchel.bundles.protowire import (
    LENGTH,
    Field,
    WireError,
    encode_varint,
    fields,
    key,
    length_delimited,
    varint_field,
)
from satchel.manager.onnx_graph import OnnxFormatError, read_graph_summary

DATA_FILE = "model.onnx.data"  # beside model.onnx in the bundle
TENSOR_MIN_BYTES = 1024  # initializers smaller than this stay inline (as onnx's own default)
ALIGNMENT = 64 * 1024  # offset of each tensor in the data file: a multiple of the largest
# page and mapping granularity in use, so onnxruntime can map each tensor in place
_COPY_BYTES = 8 * 1024 * 1024  # copied per step from the model to the data file

_MODEL_GRAPH, _GRAPH_INITIALIZER = 7, 5
_TENSOR_SEGMENT, _TENSOR_RAW_DATA, _TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION = 3, 9, 13, 14
_LOCATION_EXTERNAL = 1
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


@dataclass(frozen=True)
class Externalized:
    """What the rewrite wrote."""

    model: Path  # the graph, with every moved tensor pointing into `data`
    data: Path
    tensors: int  # initializers moved to the data file
    data_bytes: int  # their bytes (the data file is larger by the alignment padding)


@dataclass(frozen=True)
class _Move:
    field_start: int  # the initializer field (key, length, content) in the source
    start: int  # its content
    end: int
    raw_start: int  # its raw_data's content
    raw_end: int


@dataclass(frozen=True)
class ExternalPlan:
    """A single-file model as the two files it ships as, not written: the graph's bytes, and
    the data file as the ranges of the source it is made of (packed straight from the source:
    bundles/pack.py `Pieces`)."""

    graph: bytes  # model.onnx: every moved tensor points into the data file
    data: Pieces  # model.onnx.data: each moved raw_data of the source at an aligned offset
    tensors: int  # initializers moved to the data file

    @property
    def data_bytes(self) -> int:
        """The moved tensors' bytes (the data file is larger by the alignment padding)."""
        return sum(end - start for start, end, _ in self.data.pieces)


def plan_external(source: Path, *, tensor_min_bytes: int = TENSOR_MIN_BYTES,
                  alignment: int = ALIGNMENT) -> ExternalPlan | None:
    """`model.onnx` and `model.onnx.data` for the single-file model at `source`; None when no
    initializer is worth moving or the model is not one this rewrites plainly. Reads the
    protobuf's field headers through a memory map; the weights are never read.
    Raises OSError, OnnxFormatError."""
    with open(source, "rb") as f:
        if f.seek(0, 2) == 0:
            return None
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return _plan(view, Path(source), tensor_min_bytes, alignment)
            finally:
                view.release()


def externalize(source: Path, folder: Path, *, tensor_min_bytes: int = TENSOR_MIN_BYTES,
                alignment: int = ALIGNMENT) -> Externalized | None:
    """Write `folder/model.onnx` and `folder/model.onnx.data` from the single-file model at
    `source` (`plan_external`); None (nothing written) when the plan is None. The files are
    their writer's own, read back at once: not fsync'd. Raises OSError, OnnxFormatError."""
    plan = plan_external(source, tensor_min_bytes=tensor_min_bytes, alignment=alignment)
    if plan is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)
    model_path, data_path = folder / "model.onnx", folder / DATA_FILE
    model_path.write_bytes(plan.graph)
    with open(source, "rb") as src, open(data_path, "wb") as out:
        for start, end, at in plan.data.pieces:
            _copy(src, out, start, end, at)
        out.truncate(plan.data.size)
    return Externalized(model_path, data_path, plan.tensors, plan.data_bytes)


def _plan(data: memoryview, source: Path, tensor_min_bytes: int,
          alignment: int) -> ExternalPlan | None:
    graphs = [f for f in _fields(data, 0, len(data))
              if f.number == _MODEL_GRAPH and f.wire == LENGTH]
    if len(graphs) != 1:
        return None  # no graph, or one given in parts that protobuf merges: leave it be
    graph_key, graph_start, graph_end = graphs[0].field_start, graphs[0].start, graphs[0].end
    moves = list(_moves(data, graph_start, graph_end, tensor_min_bytes))
    if not moves:
        return None
    offsets, offset = [], 0
    for move in moves:
        offset = -(-offset // alignment) * alignment
        offsets.append(offset)
        offset += move.raw_end - move.raw_start
    tensors = [_external_tensor(data, move, at) for move, at in zip(moves, offsets, strict=True)]
    graph_len = (graph_end - graph_start) + sum(
        len(new) - (m.end - m.field_start) for m, new in zip(moves, tensors, strict=True))
    graph = bytearray(data[:graph_key])
    graph += key(_MODEL_GRAPH, LENGTH) + encode_varint(graph_len)
    pos = graph_start
    for move, tensor in zip(moves, tensors, strict=True):
        graph += data[pos:move.field_start]
        graph += tensor
        pos = move.end
    graph += data[pos:]
    pieces = tuple((m.raw_start, m.raw_end, at) for m, at in zip(moves, offsets, strict=True))
    return ExternalPlan(bytes(graph), Pieces(source, pieces, offset), len(moves))


def _copy(source: BinaryIO, out: BinaryIO, start: int, end: int, at: int) -> None:
    """source[start:end] to `out` at offset `at`: in the kernel where it can (the weights'
    pages never enter this process), else read and written."""
    out.seek(at)
    out.flush()
    while start < end:
        step = min(_COPY_BYTES, end - start)
        try:
            done = os.copy_file_range(source.fileno(), out.fileno(), step, start)
        except (AttributeError, OSError):
            done = 0
        if done <= 0:
            source.seek(start)
            chunk = source.read(step)
            if not chunk:
                raise OSError(f"the model ended at byte {start}, before {end}")
            out.write(chunk)
            out.flush()
            done = len(chunk)
        start += done


def _moves(data: memoryview, start: int, end: int, tensor_min_bytes: int) -> Iterator[_Move]:
    """The main graph's initializers whose raw_data moves to the data file, in file order."""
    for initializer in _fields(data, start, end):
        if initializer.number != _GRAPH_INITIALIZER or initializer.wire != LENGTH:
            continue
        raw: tuple[int, int] | None = None
        plain = True
        for f in _fields(data, initializer.start, initializer.end):
            if f.number == _TENSOR_RAW_DATA and f.wire == LENGTH:
                plain = plain and raw is None  # raw_data given twice: the last wins; leave it
                raw = (f.start, f.end)
            elif f.number in (_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _TENSOR_SEGMENT):
                plain = False
        if plain and raw is not None and raw[1] - raw[0] >= tensor_min_bytes:
            yield _Move(initializer.field_start, initializer.start, initializer.end, *raw)


def _external_tensor(data: memoryview, move: _Move, offset: int) -> bytes:
    """The initializer field with its raw_data replaced by a pointer into the data file."""
    body = bytearray()
    for f in _fields(data, move.start, move.end):
        if not (f.number == _TENSOR_RAW_DATA and f.wire == LENGTH):
            body += data[f.field_start:f.end]  # every other field, byte for byte
    for name, value in (("location", DATA_FILE), ("offset", str(offset)),
                        ("length", str(move.raw_end - move.raw_start))):
        entry = (length_delimited(_ENTRY_KEY, name.encode())
                 + length_delimited(_ENTRY_VALUE, value.encode()))
        body += length_delimited(_TENSOR_EXTERNAL_DATA, entry)
    body += varint_field(_TENSOR_DATA_LOCATION, _LOCATION_EXTERNAL)
    return length_delimited(_GRAPH_INITIALIZER, bytes(body))


def _fields(data: memoryview, pos: int, end: int) -> Iterator[Field]:
    """Every field of the message in data[pos:end] (bundles/protowire.py). Raises
    OnnxFormatError."""
    try:
        yield from fields(data, pos, end)
    except WireError as e:
        raise OnnxFormatError(str(e)) from e


@contextmanager
def shipped_model(model: Path, min_bytes: int, work_dir: Path) -> Iterator[Path]:
    """The model file to build from: `model` itself, or, when it is a single-file ONNX model
    larger than `min_bytes`, the same model with its weights as external data, written to a
    temporary folder in `work_dir` and removed on leaving. A model that cannot be rewritten
    (or read: the build then says why) is built as it is."""
    if not _worth_externalizing(model, min_bytes):
        yield model
        return
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{model.stem}.", suffix=".external",
                                       dir=work_dir))
    except OSError:
        yield model
        return
    try:
        try:
            done = externalize(model, folder)
        except (OSError, OnnxFormatError):
            done = None
        yield done.model if done is not None else model
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def shipped_plan(model: Path, min_bytes: int) -> ExternalPlan | None:
    """How `satchel bundle build` ships `model`: None as it is, or, when it is a single-file
    ONNX model larger than `min_bytes`, as `plan_external` splits it. A model that cannot be
    split (or read: the build then says why) is shipped as it is."""
    if not _worth_externalizing(model, min_bytes):
        return None
    try:
        return plan_external(model)
    except (OSError, OnnxFormatError):
        return None


def _worth_externalizing(model: Path, min_bytes: int) -> bool:
    try:
        if model.suffix.lower() != ".onnx" or model.stat().st_size <= min_bytes:
            return False
        return not read_graph_summary(model).external_locations  # already split: as it is
    except (OSError, OnnxFormatError):
        return False
