"""INT8 quantization of ONNX models, judged as `satchel bundle build --reference` judges them.

Dynamic quantization (weights int8 for Conv and uint8 for MatMul, so that CPUs without VNNI
give the same outputs: `quantize_dynamic_portable`; activations quantized at run time) needs
no data; static
quantization (QDQ, activations calibrated) uses a samples file, each of its feeds one
calibration batch. The samples are read by the rules `bundle build` reads them by
(`agent/runtimes/samples.py`), generated ones when none are given. The int8 model is then
compared with the float one on those feeds, every output, by the comparison of
`bundles/smoke.py`, and judged against the checks `bundle build --reference` sets by default,
so the report tells beforehand whether the build will take the int8 model.

onnx and onnxruntime.quantization take about 0.6 s and 1 s to import: the steps that use them
import them, so the CLI and a refusal found before those steps do not pay for them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from satchel.agent.runtimes import LoadedModel, ModelRuntimeError, TensorSpec, get_runtime
from satchel.agent.runtimes.base import first_line
from satchel.agent.runtimes.samples import encoded_feeds, generate_samples, run_feeds
from satchel.bundles.durable import atomic_writer
from satchel.bundles.manifest import OutputCheck
from satchel.bundles.smoke import DEFAULT_CHECKS, Agreement, CheckDefaults, compare_outputs, judge
from satchel.manager.build import BuildRequest, detect_quantization, resolve_checks
from satchel.manager.errors import BuildError
from satchel.manager.model_files import model_files

FLOAT_MODELS = ("none", "float16")  # what detect_quantization calls a model not yet quantized
_ORT_LOG_WARNING, _ORT_LOG_ERROR = 2, 3  # onnxruntime's default native log severity, and ours
_COPY_CHUNK = 4 * 1024 * 1024  # bytes per read when copying the int8 model into place


@dataclass(frozen=True)
class QuantizeDefaults:
    """The limits of `quantize_onnx`."""

    generated_samples: int = 64  # feeds made when no calibration samples are given
    seed: int = 0  # of the generated feeds
    single_file_max_bytes: int = 2**31 - 1  # protobuf's limit; larger models keep external data
    checks: CheckDefaults = DEFAULT_CHECKS  # the report judges by bundle build's defaults


class QuantizeError(Exception):
    """Quantization failed or its inputs are unusable; the message says why in one line."""


@dataclass(frozen=True)
class QuantizeReport:
    """Sizes of both models, how closely every int8 output follows the float one, and why
    `bundle build --reference` would refuse the int8 model with its default checks (`failures`,
    empty when it would take it)."""

    mode: str  # "dynamic" or "static"
    float_bytes: int  # the model with all its external data files
    int8_bytes: int  # likewise
    ratio: float  # float_bytes / int8_bytes
    samples: int  # sample rows compared: a feed of a dynamic-batch input holds several
    feeds: int  # sample feeds compared (each one calibration batch when static)
    agreement: Agreement
    checks: tuple[OutputCheck, ...]
    failures: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def max_abs_error(self) -> float:
        return self.agreement.max_abs_error

    @property
    def mean_cosine(self) -> float | None:
        """The lowest mean row cosine of the vector outputs; None without one."""
        return self.agreement.mean_cosine

    @property
    def top1_agreement(self) -> float | None:
        """The lowest top-1 agreement of the class and label outputs; None without one."""
        return self.agreement.top1_agreement

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready values."""
        return {
            "mode": self.mode,
            "float_bytes": self.float_bytes,
            "int8_bytes": self.int8_bytes,
            "ratio": self.ratio,
            "samples": self.samples,
            "feeds": self.feeds,
            "max_abs_error": self.max_abs_error,
            "mean_cosine": self.mean_cosine,
            "top1_agreement": self.top1_agreement,
            "agreement": self.agreement.to_dict(),
            "checks": [c.to_dict() for c in self.checks],
            "passed": self.passed,
            "failures": list(self.failures),
        }


def quantize_onnx(
    src: Path,
    dst: Path,
    calibration: Mapping[str, np.ndarray] | None = None,
    *,
    samples: Mapping[str, np.ndarray] | None = None,
    defaults: QuantizeDefaults = QuantizeDefaults(),
) -> QuantizeReport:
    """Quantize the ONNX model `src` to INT8 and write it to `dst`.

    Without `calibration`: dynamic quantization (int8 weights), compared on `samples` (real
    inputs, as `bundle build --samples` takes them) or else on generated feeds.
    With it (samples as `bundle build --samples` takes them: per input one feed, or several
    stacked on a new first axis): static QDQ quantization, per tensor, each feed one
    calibration batch. `dst` (one file below 2 GB, else with its `.data` file) is written
    durably, and only when quantization succeeded.

    Raises QuantizeError: the model cannot be loaded, is already quantized, has nothing to
    quantize, the samples do not fit it, or quantization or writing failed.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise QuantizeError(f"model file not found: {src}")
    mode = "dynamic" if calibration is None else "static"
    with _quiet_onnxruntime():
        float_model = _load(src)
        try:
            _refuse_quantized(src, float_model)
            given = calibration if calibration is not None else samples
            samples = _samples(float_model.inputs, given, defaults)
            feeds = _feeds(float_model, samples)
            hint = "" if given is not None else "; give real inputs with --samples"
            expected = _run(float_model, feeds, "the float model", hint)
            rows = _rows(float_model.inputs, feeds)
        finally:
            float_model.close()
        float_bytes = _total_bytes(src)
        external = float_bytes > defaults.single_file_max_bytes
        with tempfile.TemporaryDirectory(prefix="satchel-quantize-") as tmp:
            quantized = _quantized_copy(src, Path(tmp), dst.name, mode, feeds, external, defaults)
            int8_model = _load(quantized)
            try:
                _refuse_unchanged(src, quantized, int8_model, mode)
                outputs = _run(int8_model, _feeds(int8_model, samples), "the int8 model")
                declared = {s.name: tuple(s.shape) for s in int8_model.outputs}
            finally:
                int8_model.close()
            agreement, checks, failures = _judge(
                src, quantized, outputs, expected, declared, defaults
            )
            int8_bytes = _total_bytes(quantized)
            _install(quantized, dst)
    return QuantizeReport(
        mode=mode,
        float_bytes=float_bytes,
        int8_bytes=int8_bytes,
        ratio=float_bytes / int8_bytes,
        samples=rows,
        feeds=agreement.samples,
        agreement=agreement,
        checks=checks,
        failures=failures,
    )


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """Keep onnxruntime's quantizer off the terminal: its Python warnings (a "consider
    pre-processing" hint on every run, notes on tensors it leaves alone) name tools and tensors
    a Satchel user has no use for, and the sessions it opens to calibrate log natively. What
    matters reaches the user as an error or in the report."""
    quantizer = os.path.join("onnxruntime", "quantization", "")

    def keep(record: logging.LogRecord) -> bool:
        return quantizer not in record.pathname

    try:
        import onnxruntime as ort
    except ImportError:  # _load says so in one line
        ort = None
    root = logging.getLogger()
    root.addFilter(keep)
    if ort is not None:
        ort.set_default_logger_severity(_ORT_LOG_ERROR)
    try:
        yield
    finally:
        root.removeFilter(keep)
        if ort is not None:
            ort.set_default_logger_severity(_ORT_LOG_WARNING)


def _load(path: Path) -> LoadedModel:
    try:
        return get_runtime("onnxruntime").load(path)
    except ModelRuntimeError as e:
        raise QuantizeError(str(e)) from e


def _total_bytes(path: Path) -> int:
    try:
        return model_files(path).total_bytes()
    except BuildError as e:
        raise QuantizeError(str(e)) from e


def _refuse_quantized(src: Path, model: LoadedModel) -> None:
    found = detect_quantization(src, model)
    if found not in FLOAT_MODELS:
        raise QuantizeError(f"{src.name} is already quantized ({found}); nothing to do")


_WEIGHTED = ("MatMul", "Gemm", "Conv", "ConvTranspose")


def _refuse_unchanged(src: Path, quantized: Path, model: LoadedModel, mode: str) -> None:
    if detect_quantization(quantized, model) in FLOAT_MODELS:
        why = "it has no MatMul/Gemm/Conv weights to quantize"
        if _weights_only_in_subgraphs(src):
            why = (
                "its MatMul/Gemm/Conv layers are inside If/Loop/Scan branches, which "
                "onnxruntime's quantizer does not reach"
            )
        raise QuantizeError(f"{mode} quantization left {src.name} as it was: {why}")


def _weights_only_in_subgraphs(path: Path) -> bool:
    """True when the model's weighted layers all sit inside control-flow subgraphs."""
    import onnx  # the manager extra carries onnx; imported only to explain a refusal

    graph = onnx.load(str(path), load_external_data=False).graph
    if any(n.op_type in _WEIGHTED for n in graph.node):
        return False
    return any(_has_weighted(sub) for n in graph.node for sub in _subgraphs(n))


def _subgraphs(node: Any) -> list[Any]:
    """The graphs held in a node's attributes (If branches, Loop and Scan bodies)."""
    found: list[Any] = []
    for attr in node.attribute:
        found += [attr.g] if attr.HasField("g") else list(attr.graphs)
    return found


def _has_weighted(graph: Any) -> bool:
    return any(
        n.op_type in _WEIGHTED or any(_has_weighted(sub) for sub in _subgraphs(n))
        for n in graph.node
    )


def _samples(
    specs: Sequence[TensorSpec],
    calibration: Mapping[str, np.ndarray] | None,
    defaults: QuantizeDefaults,
) -> Mapping[str, np.ndarray]:
    """The calibration samples, or generated ones. Raises QuantizeError when the samples do
    not name exactly the model's inputs."""
    if calibration is None:
        return generate_samples(specs, defaults.generated_samples, defaults.seed)
    expected = sorted(s.name for s in specs)
    if sorted(calibration) != expected:
        raise QuantizeError(
            f"calibration inputs {sorted(calibration)} do not match the model's {expected}"
        )
    return calibration


def _feeds(model: LoadedModel, samples: Mapping[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    try:
        return encoded_feeds(model, samples)
    except ModelRuntimeError as e:
        raise QuantizeError(f"samples do not fit the model: {e}") from e


def _run(
    model: LoadedModel, feeds: list[dict[str, np.ndarray]], which: str, hint: str = ""
) -> dict[str, np.ndarray]:
    try:
        return run_feeds(model, feeds)[0]
    except ModelRuntimeError as e:
        raise QuantizeError(f"running {which} on the samples failed: {e}{hint}") from e


def _rows(specs: Sequence[TensorSpec], feeds: list[dict[str, np.ndarray]]) -> int:
    """Sample rows in `feeds`: as many per feed as its first input's batch, when dynamic."""
    first = specs[0] if specs else None
    if first is None or not first.shape or first.shape[0] != -1:
        return len(feeds)
    return sum(int(np.shape(feed[first.name])[0]) for feed in feeds)


def _judge(
    reference: Path,
    quantized: Path,
    outputs: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    declared: dict[str, tuple[int, ...]],
    defaults: QuantizeDefaults,
) -> tuple[Agreement, tuple[OutputCheck, ...], tuple[str, ...]]:
    """Compare and judge the int8 outputs as `bundle build --reference` would, with the
    checks it sets when the user sets none. Raises QuantizeError."""
    request = BuildRequest(name="quantize", version="0", model=quantized, reference=reference)
    try:
        checks = resolve_checks(request, expected, declared, defaults.checks)
        agreement = compare_outputs(outputs, expected, {c.name: c.kind for c in checks})
    except (BuildError, ValueError) as e:
        raise QuantizeError(f"cannot compare the int8 model with the float one: {e}") from e
    failures = [
        f"the float model gives NaN/Inf on output {name!r} for these samples; "
        "a reference must be finite"
        for name, values in sorted(expected.items())
        if not np.all(np.isfinite(values))
    ]
    failures += judge(agreement, checks)
    return agreement, checks, tuple(failures)


# --- quantizing a copy ----------------------------------------------------------------------


def _quantized_copy(
    src: Path,
    tmp: Path,
    name: str,
    mode: str,
    feeds: list[dict[str, np.ndarray]],
    external: bool,
    defaults: QuantizeDefaults,
) -> Path:
    """Quantize a prepared copy of `src` into `tmp`/int8/`name` (its data file, if any, named
    after it as it will lie beside the output). Raises QuantizeError."""
    prepared, quantized = tmp / "float" / "model.onnx", tmp / "int8" / name
    prepared.parent.mkdir()
    quantized.parent.mkdir()
    try:
        _prepare(src, prepared, external)
        if mode == "static":
            _quantize_static(prepared, quantized, feeds, external)
        else:
            _quantize_dynamic(prepared, quantized, external)
        if external:
            _as_one_file_if_small(quantized, defaults.single_file_max_bytes)
    except Exception as e:  # onnx and onnxruntime.quantization raise anything, numpy's included
        raise QuantizeError(f"{mode} quantization of {src.name} failed: {first_line(e)}") from e
    return quantized


def _prepare(src: Path, dst: Path, external: bool) -> None:
    """Copy `src` with its weights as initializers, where the quantizer looks for them.

    Exporters such as Paddle's keep weights in Constant nodes, and onnxruntime quantizes a
    MatMul or Gemm only when its weight is an initializer.
    """
    import onnx

    proto = onnx.load(str(src))  # with its external data
    _constants_as_initializers(proto.graph)
    onnx.save_model(
        proto, str(dst), save_as_external_data=external, location=f"{dst.name}.data"
    )


def _constants_as_initializers(graph: Any) -> int:
    """Turn the graph's Constant nodes holding a tensor `value` into initializers of the same
    name; return how many. Constants that are graph outputs stay nodes."""
    graph_outputs = {o.name for o in graph.output}
    kept, moved = [], 0
    for node in graph.node:
        value = _constant_tensor(node)
        if value is None or node.output[0] in graph_outputs:
            kept.append(node)
            continue
        tensor = graph.initializer.add()
        tensor.CopyFrom(value)
        tensor.name = node.output[0]
        moved += 1
    if moved:
        del graph.node[:]
        graph.node.extend(kept)
    return moved


def _constant_tensor(node: Any) -> Any:
    """The tensor a Constant node holds in `value`, else None."""
    import onnx

    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx") or len(node.output) != 1:
        return None
    for attribute in node.attribute:
        if attribute.name == "value" and attribute.type == onnx.AttributeProto.TENSOR:
            return attribute.t
    return None


# The ops onnxruntime's dynamic quantization turns into integer ops (its IntegerOpsRegistry)
# but Conv: their weights are uint8, Conv's int8 (see `quantize_dynamic_portable`).
_UINT8_WEIGHT_OPS = ("MatMul", "Attention", "LSTM", "Gather", "EmbedLayerNormalization",
                     "Transpose")


def quantize_dynamic_portable(src: Path, dst: Path, external: bool = False) -> None:
    """Dynamic INT8 quantization of `src` into `dst` whose outputs are the same on every CPU.

    onnxruntime's default (int8 weights everywhere) runs MatMulInteger as uint8 x int8 with
    VPMADDUBSW on x86 CPUs without VNNI (AVX2, AVX-512F without VNNI), whose 16-bit sums
    saturate: measured under `qemu-x86_64 -cpu Haswell`, one-value scores moved by 16% of
    their range and box scores by more than 0.02, where a VNNI CPU computed them within 1.5%.
    So the model built and judged on one host fails the device's smoke test on another, or
    worse, is judged on a host that hides it. MatMul and the other integer ops therefore get
    uint8 weights (uint8 x uint8 kernels do not saturate); Conv keeps int8 weights (its kernel
    does not saturate, and uint8 ones measured worse: a mask 6.2% of its range off). Same
    figures to the last bit on both CPUs for every family in tests/catalogue.
    Raises what onnxruntime.quantization raises."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="satchel-quantize-", dir=dst.parent) as tmp:
        convs = Path(tmp) / "conv.onnx"
        quantize_dynamic(src, convs, weight_type=QuantType.QInt8, op_types_to_quantize=["Conv"],
                         use_external_data_format=external)
        quantize_dynamic(convs, dst, weight_type=QuantType.QUInt8,
                         op_types_to_quantize=list(_UINT8_WEIGHT_OPS),
                         use_external_data_format=external)


def _quantize_dynamic(src: Path, dst: Path, external: bool) -> None:
    quantize_dynamic_portable(src, dst, external)


def _quantize_static(
    src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], external: bool
) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Feeds(CalibrationDataReader):
        """Each sample feed is one calibration batch."""

        def __init__(self) -> None:
            self._feeds: Iterator[dict[str, np.ndarray]] = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._feeds, None)

    quantize_static(
        src,
        dst,
        _Feeds(),
        quant_format=QuantFormat.QDQ,
        per_channel=False,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        use_external_data_format=external,
    )


def _as_one_file_if_small(path: Path, max_bytes: int) -> None:
    """Fold the external data of the model at `path` back into it when it fits one file."""
    import onnx

    files = model_files(path)
    if not files.data_files or files.total_bytes() > max_bytes:
        return
    proto = onnx.load(str(path))
    for name in files.data_files:
        (files.folder / name).unlink()
    onnx.save_model(proto, str(path))


def _install(quantized: Path, dst: Path) -> None:
    """Copy the int8 model to `dst` durably, its data files first. Raises QuantizeError."""
    try:
        files = model_files(quantized)
        for name in files.data_files:
            _copy_durably(files.folder / name, dst.parent / name)
        _copy_durably(quantized, dst)
    except BuildError as e:
        raise QuantizeError(str(e)) from e
    except OSError as e:
        raise QuantizeError(f"cannot write {dst}: {e.strerror or e}") from e


def _copy_durably(src: Path, dst: Path) -> None:
    with open(src, "rb") as f, atomic_writer(dst) as out:
        shutil.copyfileobj(f, out, _COPY_CHUNK)
