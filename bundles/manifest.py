"""The bundle manifest: what a bundle is, who may install it, what it carries, how to test it.

`Manifest.from_dict` validates strictly (unknown format version, missing fields, wrong types,
unexpected fields, dangling references: a named error each); `to_dict` is its inverse.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from satchel.bundles import FORMAT_VERSION
from satchel.bundles.canonical import decode_canonical, encode_canonical
from satchel.bundles.chunkindex import chunk_count
from satchel.bundles.config import DEFAULT_LIMITS, Limits
from satchel.bundles.errors import MissingFieldError, UnknownFormatVersionError, WrongTypeError
from satchel.bundles.identifiers import CHANNEL_RE, IDENTIFIER_RE, SHA256_RE, VERSION_RE
from satchel.bundles.schema import check_keys, get, get_float, get_int, get_str, get_str_list
from satchel.bundles.timeutil import format_time, parse_time

if TYPE_CHECKING:  # imported where a manifest uses them: a plain bundle needs none (issue 14)
    from satchel.bundles.activation import ActivationPolicy
    from satchel.bundles.cryptinfo import EncryptionInfo
    from satchel.bundles.delta_manifest import DeltaBase, FileDelta
    from satchel.bundles.variants import Variants

# 95 characters at most: with ".zst" appended a segment must fit a ustar name field (100).
SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,94}")
TENSOR_NAME_RE = re.compile(r"[^\x00-\x1f]{1,256}")
RUNTIMES = ("onnxruntime", "tflite")
DATATYPES = ("BOOL", "UINT8", "INT8", "INT16", "UINT16", "INT32", "INT64", "FP16", "FP32", "FP64")
QUANTIZATION_MODES = ("none", "dynamic-int8", "static-int8", "int8", "uint8", "float16")
# How an output is judged against its reference (bundles/smoke.py): "score" one value per feed
# (probability, flag, regression value), "classes" class scores (top-1), "labels" integer
# class ids, "embedding" a vector compared by direction, "tensor" anything else (boxes, masks,
# states, feature maps).
OUTPUT_KINDS = ("score", "classes", "labels", "embedding", "tensor")
SIGNATURE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._:/-]{0,127}")
PAYLOAD_PREFIX = "payload/"
PAYLOAD_SUFFIX = ".zst"


def check_payload_path(path: str, limits: Limits = DEFAULT_LIMITS) -> str:
    """Return `path` if it is a safe relative payload path, else raise WrongTypeError.

    Safe: '/'-separated segments of letters, digits, '.', '_', '-', not starting with '.',
    so no absolute paths, no '..', no hidden files, no backslashes or control characters.
    """
    segments = path.split("/")
    if (
        len(path) > limits.max_path_length
        or len(segments) > limits.max_path_depth
        or not all(SEGMENT_RE.fullmatch(s) for s in segments)
    ):
        raise WrongTypeError(f"payload path {path[:80]!r} is not a safe relative path")
    return path


def member_name(path: str) -> str:
    """The tar member name that carries payload `path`."""
    return f"{PAYLOAD_PREFIX}{path}{PAYLOAD_SUFFIX}"


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int  # bytes, decompressed
    sha256: str  # of the decompressed content
    compressed_size: int  # bytes of the zstd member
    compressed_sha256: str  # of the zstd member
    # The chunk index: the sha256 of each `chunk_size` bytes of the zstd member (the last one
    # shorter), so a device can check every chunk before the decompressor sees it, in one read.
    # None and () in bundles made without it.
    chunk_size: int | None = None  # bytes
    chunk_sha256: tuple[str, ...] = ()
    delta: FileDelta | None = None  # the member is a patch of the base release's file

    @property
    def indexed(self) -> bool:
        return self.chunk_size is not None

    @classmethod
    def from_dict(cls, d: Any, limits: Limits) -> FileEntry:
        w = "manifest file entry"
        check_keys(
            d, w, {"path", "size", "sha256", "compressed_size", "compressed_sha256"},
            {"chunk_size", "chunk_sha256", "delta"},
        )
        path = check_payload_path(get_str(d, "path", w), limits)
        w = f"manifest file {path!r}"
        if "delta" in d:
            from satchel.bundles.delta_manifest import FileDelta
        entry = cls(
            path=path,
            size=get_int(d, "size", w, 0, limits.max_payload_bytes),
            sha256=get_str(d, "sha256", w, SHA256_RE),
            compressed_size=get_int(d, "compressed_size", w, 1, 2**62),
            compressed_sha256=get_str(d, "compressed_sha256", w, SHA256_RE),
            delta=FileDelta.from_dict(d["delta"], w, limits.max_payload_bytes)
            if "delta" in d else None,
        )
        if "chunk_size" not in d and "chunk_sha256" not in d:
            return entry
        return replace(entry, **_chunk_index(d, w, entry.compressed_size, limits))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "compressed_size": self.compressed_size,
            "compressed_sha256": self.compressed_sha256,
        }
        if self.chunk_size is not None:
            d["chunk_size"] = self.chunk_size
            d["chunk_sha256"] = list(self.chunk_sha256)
        if self.delta is not None:
            d["delta"] = self.delta.to_dict()
        return d


def _chunk_index(d: dict[str, Any], where: str, compressed_size: int, limits: Limits) -> dict:
    """The chunk index fields of a file entry, checked to cover the member exactly."""
    for name in ("chunk_size", "chunk_sha256"):
        if name not in d:
            raise MissingFieldError(f"{where} has a chunk index without '{name}'")
    size = get_int(
        d, "chunk_size", where, limits.min_index_chunk_bytes, limits.max_index_chunk_bytes
    )
    hashes = get_str_list(d, "chunk_sha256", where, SHA256_RE, unique=False)
    want = chunk_count(compressed_size, size)
    if len(hashes) != want:
        raise WrongTypeError(
            f"{where}: 'chunk_sha256' lists {len(hashes)} chunks, its compressed size "
            f"needs {want}"
        )
    return {"chunk_size": size, "chunk_sha256": tuple(hashes)}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    datatype: str  # KServe v2 datatype name, e.g. "FP32", "INT8"
    shape: tuple[int, ...]  # -1 for a dynamic dimension

    @classmethod
    def from_dict(cls, d: Any, where: str) -> TensorInfo:
        check_keys(d, where, {"name", "datatype", "shape"})
        datatype = get_str(d, "datatype", where)
        if datatype not in DATATYPES:
            raise WrongTypeError(f"{where}: unknown datatype {datatype[:20]!r}")
        shape = get(d, "shape", list, where)
        if len(shape) > 8 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= -1 for n in shape
        ):
            raise WrongTypeError(f"{where}: 'shape' must be a list of integers >= -1")
        return cls(get_str(d, "name", where, TENSOR_NAME_RE), datatype, tuple(shape))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


def _data_files(d: dict[str, Any], where: str) -> list[str]:
    if d.get("data_files") is None:
        return []
    files = get(d, "data_files", list, where)
    if len(files) > 1000:
        raise WrongTypeError(f"{where}: 'data_files' lists too many files ({len(files)})")
    for f in files:
        if not isinstance(f, str):
            raise WrongTypeError(f"{where}: 'data_files' must be a list of paths")
        check_payload_path(f)
    if len(set(files)) != len(files):
        raise WrongTypeError(f"{where}: 'data_files' repeats an entry")
    return list(files)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    runtime: str  # "onnxruntime" | "tflite"
    file: str  # payload path of the model file
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    quantization: str = "none"  # one of QUANTIZATION_MODES
    reference_sha256: str | None = None  # float model the smoke references came from
    # Further payload files the model loads from beside its own file (ONNX external data),
    # as paths relative to the model file's directory; they travel and unpack with it.
    data_files: tuple[str, ...] = ()
    signature: str | None = None  # TFLite signature to run (models with several)

    @classmethod
    def from_dict(cls, d: Any) -> ModelEntry:
        w = "manifest model"
        check_keys(
            d,
            w,
            {"name", "runtime", "file", "inputs", "outputs", "quantization"},
            {"reference_sha256", "data_files", "signature"},
        )
        name = get_str(d, "name", w, IDENTIFIER_RE)
        w = f"manifest model {name!r}"
        runtime = get_str(d, "runtime", w)
        if runtime not in RUNTIMES:
            raise WrongTypeError(f"{w}: unknown runtime {runtime[:30]!r}")
        quantization = get_str(d, "quantization", w)
        if quantization not in QUANTIZATION_MODES:
            raise WrongTypeError(f"{w}: unknown quantization {quantization[:30]!r}")
        inputs = get(d, "inputs", list, w)
        outputs = get(d, "outputs", list, w)
        if not inputs or not outputs:
            raise WrongTypeError(f"{w}: needs at least one input and one output")
        return cls(
            name=name,
            runtime=runtime,
            file=get_str(d, "file", w),
            inputs=tuple(TensorInfo.from_dict(t, f"{w} input") for t in inputs),
            outputs=tuple(TensorInfo.from_dict(t, f"{w} output") for t in outputs),
            quantization=quantization,
            reference_sha256=get_str(d, "reference_sha256", w, SHA256_RE, nullable=True),
            data_files=tuple(_data_files(d, w)),
            signature=get_str(d, "signature", w, SIGNATURE_RE, nullable=True),
        )

    def data_paths(self) -> tuple[str, ...]:
        """Payload paths of the model's data files (beside the model file)."""
        folder = self.file.rpartition("/")[0]
        return tuple(f"{folder}/{f}" if folder else f for f in self.data_files)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "runtime": self.runtime,
            "file": self.file,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "quantization": self.quantization,
        }
        if self.reference_sha256:
            d["reference_sha256"] = self.reference_sha256
        if self.data_files:
            d["data_files"] = list(self.data_files)
        if self.signature is not None:
            d["signature"] = self.signature
        return d


@dataclass(frozen=True)
class OutputCheck:
    """How one output is judged against its reference: its kind and its thresholds.

    A None threshold is not judged. Errors are over every value of every sample feed;
    `max_rel_error` divides the largest absolute error by the reference's range (from zero
    to its farthest value; 1 for outputs that lie in [0, 1], such as probabilities).
    """

    name: str  # the output tensor's name
    kind: str  # one of OUTPUT_KINDS
    max_abs_error: float | None = None  # largest |out - ref|, in the output's units
    max_rel_error: float | None = None  # largest |out - ref| / range of the reference
    min_sqnr_db: float | None = None  # signal-to-noise ratio of out vs ref, in dB
    min_cosine: float | None = None  # smallest cosine similarity of a row (vector kinds)
    min_top1_agreement: float | None = None  # share of rows with the same top class (label)

    THRESHOLDS = ("max_abs_error", "max_rel_error", "min_sqnr_db", "min_cosine",
                  "min_top1_agreement")

    @classmethod
    def from_dict(cls, d: Any) -> OutputCheck:
        w = "manifest output check"
        check_keys(d, w, {"name", "kind"}, set(cls.THRESHOLDS))
        name = get_str(d, "name", w, TENSOR_NAME_RE)
        w = f"manifest output check {name[:60]!r}"
        kind = get_str(d, "kind", w)
        if kind not in OUTPUT_KINDS:
            raise WrongTypeError(f"{w}: unknown output kind {kind[:30]!r}")
        return cls(
            name=name,
            kind=kind,
            max_abs_error=get_float(d, "max_abs_error", w, nullable=True),
            max_rel_error=get_float(d, "max_rel_error", w, nullable=True),
            min_sqnr_db=get_float(d, "min_sqnr_db", w, -1000.0, 1000.0, nullable=True),
            min_cosine=get_float(d, "min_cosine", w, -1.0, 1.0, nullable=True),
            min_top1_agreement=get_float(d, "min_top1_agreement", w, 0.0, 1.0, nullable=True),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind}
        for key in self.THRESHOLDS:
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        return d


@dataclass(frozen=True)
class SmokeTest:
    """Sample inputs, reference outputs and the budgets a device must meet to activate.

    `outputs` judges each output by its kind (bundles/smoke.py); a bundle without them (built
    by an earlier release) is judged by the three global thresholds, on every output they fit.
    """

    model: str  # name of a ModelEntry
    inputs: str  # payload path of an .npz holding one array per model input
    reference: str  # payload path of an .npz holding one array per model output
    max_abs_error: float | None = None  # largest |out - ref| allowed
    min_cosine: float | None = None  # smallest cosine similarity per sample allowed
    min_top1_agreement: float | None = None  # fraction of samples whose argmax matches
    allow_nonfinite: bool = False  # NaN/Inf in outputs fails the test unless true
    warmup_runs: int = 3  # runs before latency is measured
    latency_runs: int = 20  # timed runs; p50/p95 are taken over these
    p95_latency_budget_ms: float | None = None  # milliseconds, measured on the device
    max_memory_mb: float | None = None  # MiB of peak resident memory growth while testing
    outputs: tuple[OutputCheck, ...] = ()  # per-output kind and thresholds

    @classmethod
    def from_dict(cls, d: Any) -> SmokeTest:
        w = "manifest smoke test"
        optional = {
            "max_abs_error",
            "min_cosine",
            "min_top1_agreement",
            "allow_nonfinite",
            "warmup_runs",
            "latency_runs",
            "p95_latency_budget_ms",
            "max_memory_mb",
            "outputs",
        }
        check_keys(d, w, {"model", "inputs", "reference"}, optional)
        raw_outputs = get(d, "outputs", list, w, nullable=True) or []
        if len(raw_outputs) > 1000:
            raise WrongTypeError(f"{w}: too many output checks ({len(raw_outputs)})")
        outputs = tuple(OutputCheck.from_dict(o) for o in raw_outputs)
        if len({o.name for o in outputs}) != len(outputs):
            raise WrongTypeError(f"{w}: the same output is checked twice")
        return cls(
            model=get_str(d, "model", w, IDENTIFIER_RE),
            inputs=get_str(d, "inputs", w),
            reference=get_str(d, "reference", w),
            max_abs_error=get_float(d, "max_abs_error", w, nullable=True),
            min_cosine=get_float(d, "min_cosine", w, -1.0, 1.0, nullable=True),
            min_top1_agreement=get_float(d, "min_top1_agreement", w, 0.0, 1.0, nullable=True),
            allow_nonfinite=bool(get(d, "allow_nonfinite", bool, w, nullable=True) or False),
            warmup_runs=get_int(d, "warmup_runs", w, 0, 10_000, nullable=True) or 0,
            latency_runs=get_int(d, "latency_runs", w, 1, 100_000, nullable=True) or 20,
            p95_latency_budget_ms=get_float(d, "p95_latency_budget_ms", w, nullable=True),
            max_memory_mb=get_float(d, "max_memory_mb", w, nullable=True),
            outputs=outputs,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model,
            "inputs": self.inputs,
            "reference": self.reference,
            "allow_nonfinite": self.allow_nonfinite,
            "warmup_runs": self.warmup_runs,
            "latency_runs": self.latency_runs,
        }
        for name in (
            "max_abs_error",
            "min_cosine",
            "min_top1_agreement",
            "p95_latency_budget_ms",
            "max_memory_mb",
        ):
            value = getattr(self, name)
            if value is not None:
                d[name] = value
        if self.outputs:
            d["outputs"] = [o.to_dict() for o in self.outputs]
        return d


@dataclass(frozen=True)
class HealthPolicy:
    """What the device watches during probation after activating; a breach rolls back."""

    probation_s: float = 600.0  # seconds after activation during which the policy applies
    min_samples: int = 20  # inferences needed before rates are judged
    max_error_rate: float = 0.05  # fraction of failed inferences
    max_nan_rate: float = 0.0  # fraction of inferences with NaN/Inf outputs
    max_p95_latency_ms: float | None = None  # milliseconds; None = not judged
    max_crash_restarts: int = 3  # service restarts inside probation that mean a crash loop

    @classmethod
    def from_dict(cls, d: Any) -> HealthPolicy:
        w = "manifest health policy"
        names = {
            "probation_s",
            "min_samples",
            "max_error_rate",
            "max_nan_rate",
            "max_p95_latency_ms",
            "max_crash_restarts",
        }
        check_keys(d, w, names - {"max_p95_latency_ms"}, {"max_p95_latency_ms"})
        return cls(
            probation_s=get_float(d, "probation_s", w, 0.0, 365 * 86400.0),
            min_samples=get_int(d, "min_samples", w, 1, 10**9),
            max_error_rate=get_float(d, "max_error_rate", w, 0.0, 1.0),
            max_nan_rate=get_float(d, "max_nan_rate", w, 0.0, 1.0),
            max_p95_latency_ms=get_float(d, "max_p95_latency_ms", w, nullable=True),
            max_crash_restarts=get_int(d, "max_crash_restarts", w, 1, 10**6),
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "probation_s": self.probation_s,
            "min_samples": self.min_samples,
            "max_error_rate": self.max_error_rate,
            "max_nan_rate": self.max_nan_rate,
            "max_crash_restarts": self.max_crash_restarts,
        }
        if self.max_p95_latency_ms is not None:
            d["max_p95_latency_ms"] = self.max_p95_latency_ms
        return d


@dataclass(frozen=True)
class Compatibility:
    device_classes: tuple[str, ...] = ()  # empty = any class
    architectures: tuple[str, ...] = ()  # platform.machine() values; empty = any
    runtimes: dict[str, str] = field(default_factory=dict)  # runtime -> minimum version
    min_agent_version: str = "0.1.0"

    @classmethod
    def from_dict(cls, d: Any) -> Compatibility:
        w = "manifest compatibility"
        check_keys(d, w, {"device_classes", "architectures", "runtimes", "min_agent_version"})
        runtimes = get(d, "runtimes", dict, w)
        for name, minimum in runtimes.items():
            if (
                name not in RUNTIMES
                or not isinstance(minimum, str)
                or not VERSION_RE.fullmatch(minimum)
            ):
                raise WrongTypeError(f"{w}: invalid runtime requirement {name[:30]!r}")
        return cls(
            device_classes=tuple(get_str_list(d, "device_classes", w, IDENTIFIER_RE)),
            architectures=tuple(get_str_list(d, "architectures", w, IDENTIFIER_RE)),
            runtimes=dict(runtimes),
            min_agent_version=get_str(d, "min_agent_version", w, VERSION_RE),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_classes": list(self.device_classes),
            "architectures": list(self.architectures),
            "runtimes": dict(self.runtimes),
            "min_agent_version": self.min_agent_version,
        }


@dataclass(frozen=True)
class Manifest:
    name: str  # the model channel
    version: str
    sequence: int  # only ever increases per channel
    created: datetime
    files: tuple[FileEntry, ...]
    models: tuple[ModelEntry, ...]
    smoke_tests: tuple[SmokeTest, ...]
    health_policy: HealthPolicy = field(default_factory=HealthPolicy)
    compatibility: Compatibility = field(default_factory=Compatibility)
    expires: datetime | None = None
    description: str = ""
    build: dict[str, Any] = field(default_factory=dict)  # figures measured at build time
    format_version: int = FORMAT_VERSION
    # Set: every payload member is ciphertext (bundles/crypt.py); files' compressed_* and
    # chunk index describe the ciphertext, size and sha256 the plaintext content.
    encryption: EncryptionInfo | None = None
    variants: Variants | None = None  # several models of the channel (bundles/variants.py)
    activation: ActivationPolicy | None = None  # staged activation (bundles/activation.py)
    delta_base: DeltaBase | None = None  # the release a delta bundle patches (docs/DELTAS.md)

    @property
    def unpacked_size(self) -> int:
        return sum(f.size for f in self.files)

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    def with_files(self, files: list[FileEntry]) -> Manifest:
        return replace(self, files=tuple(files))

    @classmethod
    def from_dict(cls, d: Any, limits: Limits = DEFAULT_LIMITS) -> Manifest:
        """Validate and parse a manifest object.

        Raises UnknownFormatVersionError, MissingFieldError, WrongTypeError,
        UnexpectedFieldError (all ManifestError).
        """
        w = "manifest"
        if not isinstance(d, dict):
            raise WrongTypeError("manifest must be a JSON object")
        if "format_version" not in d:
            raise MissingFieldError("manifest has no 'format_version' field")
        fv = d["format_version"]
        if type(fv) is not int:
            raise WrongTypeError("manifest: 'format_version' must be an integer")
        if fv != FORMAT_VERSION:
            raise UnknownFormatVersionError(
                f"manifest format version {str(fv)[:20]} is not supported (this agent reads "
                f"version {FORMAT_VERSION}); update the agent"
            )
        required = {
            "format_version",
            "name",
            "version",
            "sequence",
            "created",
            "files",
            "models",
            "smoke_tests",
            "health_policy",
            "compatibility",
        }
        check_keys(d, w, required, {"expires", "description", "build", "activation",
                                     "variants", "encryption", "delta_base"})
        files_raw = get(d, "files", list, w)
        if len(files_raw) > limits.max_files:
            raise WrongTypeError(f"manifest lists too many files ({len(files_raw)})")
        files = tuple(FileEntry.from_dict(f, limits) for f in files_raw)
        expires_raw = d.get("expires")
        if d.get("encryption"):
            from satchel.bundles.cryptinfo import EncryptionInfo
        if "activation" in d:
            from satchel.bundles.activation import parse_activation
        if d.get("variants") is not None:
            from satchel.bundles.variants import Variants
        if "delta_base" in d:
            from satchel.bundles.delta_manifest import DeltaBase
        manifest = cls(
            format_version=fv,
            name=get_str(d, "name", w, CHANNEL_RE),
            version=get_str(d, "version", w, VERSION_RE),
            sequence=get_int(d, "sequence", w),
            created=parse_time(d["created"], "manifest 'created'"),
            expires=None if expires_raw is None else parse_time(expires_raw, "manifest 'expires'"),
            files=files,
            models=tuple(ModelEntry.from_dict(m) for m in get(d, "models", list, w)),
            smoke_tests=tuple(SmokeTest.from_dict(s) for s in get(d, "smoke_tests", list, w)),
            health_policy=HealthPolicy.from_dict(d["health_policy"]),
            compatibility=Compatibility.from_dict(d["compatibility"]),
            description=get_str(d, "description", w, nullable=True) or "",
            build=get(d, "build", dict, w, nullable=True) or {},
            encryption=(
                EncryptionInfo.from_dict(d["encryption"]) if d.get("encryption") else None
            ),
            activation=parse_activation(d["activation"]) if "activation" in d else None,
            variants=None if d.get("variants") is None else Variants.from_dict(d["variants"]),
            delta_base=DeltaBase.from_dict(d["delta_base"]) if "delta_base" in d else None,
        )
        manifest.check_references()
        return manifest

    def check_references(self) -> None:
        """Check that every name the manifest uses is defined once. Raises WrongTypeError."""
        paths = [f.path for f in self.files]
        lowered = {p.lower() for p in paths}
        if len(lowered) != len(paths):
            raise WrongTypeError("manifest lists the same payload path twice")
        for p in paths:
            parents = p.lower().split("/")[:-1]
            for depth in range(1, len(parents) + 1):
                if "/".join(parents[:depth]) in lowered:
                    raise WrongTypeError(f"payload path {p!r} is inside another payload file")
        if not self.models:
            raise WrongTypeError("manifest lists no model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise WrongTypeError("manifest lists the same model name twice")
        for m in self.models:
            for p in (m.file, *m.data_paths()):
                if p not in paths:
                    raise WrongTypeError(f"model {m.name!r} names file {p!r} that is not listed")
        for s in self.smoke_tests:
            if s.model not in names:
                raise WrongTypeError(f"smoke test names unknown model {s.model!r}")
            for p in (s.inputs, s.reference):
                if p not in paths:
                    raise WrongTypeError(f"smoke test names file {p!r} that is not listed")
        if self.variants is not None:
            self.variants.check_models(names, {s.model for s in self.smoke_tests})
        patched = any(f.delta for f in self.files)
        if patched or self.delta_base is not None:
            from satchel.bundles.delta_manifest import check_delta_fields

            check_delta_fields(self.name, self.sequence, self.delta_base, patched)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format_version": self.format_version,
            "name": self.name,
            "version": self.version,
            "sequence": self.sequence,
            "created": format_time(self.created),
            "files": [f.to_dict() for f in self.files],
            "models": [m.to_dict() for m in self.models],
            "smoke_tests": [s.to_dict() for s in self.smoke_tests],
            "health_policy": self.health_policy.to_dict(),
            "compatibility": self.compatibility.to_dict(),
        }
        if self.expires is not None:
            d["expires"] = format_time(self.expires)
        if self.description:
            d["description"] = self.description
        if self.build:
            d["build"] = self.build
        if self.encryption is not None:
            d["encryption"] = self.encryption.to_dict()
        if self.activation is not None:
            d["activation"] = self.activation.to_dict()
        if self.variants is not None:
            d["variants"] = self.variants.to_dict()
        if self.delta_base is not None:
            d["delta_base"] = self.delta_base.to_dict()
        return d

    def to_bytes(self) -> bytes:
        return encode_canonical(self.to_dict())


def parse_manifest(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Manifest:
    """Parse canonical manifest bytes. Raises MalformedJSONError or ManifestError subclasses."""
    return Manifest.from_dict(decode_canonical(data, "manifest.json"), limits)
