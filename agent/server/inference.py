"""What each endpoint answers, without the HTTP plumbing: metadata, readiness, inference
(counted into the release's health), and the metrics text."""

from __future__ import annotations

import importlib.metadata
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from satchel.agent.health.stats import HealthBook, has_nonfinite
from satchel.agent.runtimes import InferenceError, check_feeds
from satchel.agent.server import protocol
from satchel.agent.server.config import ServerConfig
from satchel.agent.server.errors import (
    BadRequestError,
    InferenceFailedError,
    NotFoundError,
    NotReadyError,
    RequestError,
)
from satchel.agent.server.metrics import MetricsSnapshot, render
from satchel.agent.server.registry import ModelRegistry, ServingModel


def agent_version() -> str:
    try:
        return importlib.metadata.version("satchel")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0+unknown"


class RequestCounter:
    """HTTP requests by (endpoint, status); thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, int], int] = {}

    def add(self, endpoint: str, status: int) -> None:
        with self._lock:
            self._counts[(endpoint, status)] = self._counts.get((endpoint, status), 0) + 1

    def snapshot(self) -> dict[tuple[str, int], int]:
        with self._lock:
            return dict(self._counts)


@dataclass(frozen=True)
class InferCall:
    """One infer request as it arrived: the model it names and its (encoded) body."""

    channel: str
    version: str | None
    body: bytes
    header_length: int | None  # Inference-Header-Content-Length; None: the body is JSON
    content_encoding: str = "identity"


# An infer request's answer: (body, JSON header length or None), or the error it gets.
InferOutcome = tuple[bytes, int | None] | RequestError


@dataclass(frozen=True)
class _Prepared:
    index: int
    channel: str
    serving: ServingModel
    request: protocol.InferRequest
    nonfinite_input: bool


def batchable(serving: ServingModel) -> bool:
    """Whether requests to this release may run as one batch: every input and output has a
    first dimension the model leaves free (-1), the ONNX way of declaring a batch axis.
    TFLite models (whose runtime resizes the first dimension per call) run one by one."""
    model = serving.model
    if serving.flexible_batch or not model.inputs:
        return False
    return all(spec.shape and spec.shape[0] == -1 for spec in (*model.inputs, *model.outputs))


def _rows(inputs: dict[str, np.ndarray]) -> int | None:
    """The batch size every input agrees on, or None."""
    sizes = {a.shape[0] if a.ndim else None for a in inputs.values()}
    return sizes.pop() if len(sizes) == 1 else None


def _batch_key(prepared: _Prepared) -> tuple[object, ...]:
    """Requests with equal keys may share a batch: same release, same inputs (names, types,
    shapes but for the first dimension)."""
    inputs = tuple(
        (name, a.dtype.str, a.shape[1:]) for name, a in sorted(prepared.request.inputs.items())
    )
    return (id(prepared.serving), inputs)


class InferenceService:
    def __init__(
        self,
        registry: ModelRegistry,
        book: HealthBook,
        *,
        on_probation_inference: Callable[[], None],
        config: ServerConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.book = book
        self.requests = RequestCounter()
        self._poke = on_probation_inference
        self._config = config
        self._clock = clock
        self._version = agent_version()

    def server_metadata(self) -> dict[str, Any]:
        return protocol.server_metadata(self._version)

    def is_ready(self) -> bool:
        """Ready once the first load is done and every channel of the state is served."""
        registry = self.registry
        if not registry.loaded_once.is_set():
            return False
        return all(registry.get(c.channel) is not None for c in registry.channel_info())

    def serving(self, channel: str, version: str | None) -> ServingModel:
        """The release serving `channel` (and `version`, when given).

        Raises NotFoundError for an unknown channel or a version not serving, NotReadyError
        for a known channel with nothing loaded.
        """
        serving = self.registry.get(channel)
        if serving is None:
            if self.registry.is_known(channel):
                raise NotReadyError(f"model {channel!r} is not ready")
            raise NotFoundError(f"unknown model {channel!r}")
        if version is not None and version != serving.key.version:
            raise NotFoundError(
                f"model {channel!r} serves version {serving.key.version!r}, not {version!r}"
            )
        return serving

    def model_metadata(self, channel: str, version: str | None) -> dict[str, Any]:
        """Raises NotFoundError, NotReadyError."""
        serving = self.serving(channel, version)
        model = serving.model
        return protocol.model_metadata(
            channel, serving.key.version, model.runtime, model.inputs, model.outputs
        )

    def model_ready(self, channel: str, version: str | None) -> dict[str, Any]:
        """Raises NotFoundError, NotReadyError."""
        serving = self.serving(channel, version)
        return {"name": channel, "version": serving.key.version, "ready": True}

    def infer(
        self, channel: str, version: str | None, body: bytes, header_length: int | None
    ) -> tuple[bytes, int | None]:
        """Run one infer request; returns the response body and its JSON header length
        (None when the body is all JSON).

        Raises NotFoundError, NotReadyError, BadRequestError (InferenceFailedError when the
        runtime failed on a request that fitted the model; counted as an error).
        """
        (outcome,) = self.infer_many([InferCall(channel, version, body, header_length)])
        if isinstance(outcome, RequestError):
            raise outcome
        return outcome

    def infer_many(self, calls: Sequence[InferCall]) -> list[InferOutcome]:
        """Run infer requests that arrived together; each one's outcome, in order: its
        response body and JSON header length, or the RequestError it is answered with.

        Requests for the same release whose inputs differ only in their batch dimension
        run as one batch (see `batchable`); what each is answered, and what its release's
        health counts, is what running it alone gives.
        """
        outcomes: list[InferOutcome | None] = [None] * len(calls)
        groups: dict[tuple[object, ...], list[_Prepared]] = {}
        for i, call in enumerate(calls):
            try:
                prepared = self._prepare(i, call)
            except RequestError as e:
                outcomes[i] = e
                continue
            groups.setdefault(_batch_key(prepared), []).append(prepared)
        for group in groups.values():
            for prepared, outcome in self._run_group(group):
                outcomes[prepared.index] = outcome
        return [o if o is not None else InferenceFailedError("not run") for o in outcomes]

    def _prepare(self, index: int, call: InferCall) -> _Prepared:
        """Parse and check one call against the release serving it. Raises RequestError."""
        serving = self.serving(call.channel, call.version)
        config = self._config
        request = protocol.parse_infer_request(
            call.body, call.header_length,
            max_elements=config.max_elements, max_json_bytes=config.max_json_bytes,
        )
        model = serving.model
        try:
            check_feeds(model.inputs, request.inputs, flexible_batch=serving.flexible_batch)
        except InferenceError as e:
            raise BadRequestError(str(e)) from None
        if request.outputs is not None:
            names = {spec.name for spec in model.outputs}
            for wanted in request.outputs:
                if wanted.name not in names:
                    raise BadRequestError(
                        f"unknown output {wanted.name!r}; the model produces {sorted(names)}"
                    )
        # NaN in, NaN out is the client's doing: counted apart, never against the model.
        return _Prepared(index, call.channel, serving, request, has_nonfinite(request.inputs))

    def _run_group(
        self, group: list[_Prepared]
    ) -> list[tuple[_Prepared, InferOutcome]]:
        serving = group[0].serving
        rows = [_rows(p.request.inputs) for p in group]
        if len(group) == 1 or not batchable(serving) or None in rows:
            return [(p, self._run_one(p)) for p in group]
        names = list(group[0].request.inputs)
        feeds = {n: np.concatenate([p.request.inputs[n] for p in group]) for n in names}
        started = time.perf_counter()
        try:
            produced = serving.model.run(feeds)
        except InferenceError:  # one request may be at fault: each runs alone, as it would
            return [(p, self._run_one(p)) for p in group]
        total = sum(r for r in rows if r is not None)
        if any(np.ndim(a) == 0 or len(a) != total for a in produced.values()):
            return [(p, self._run_one(p)) for p in group]  # not a batch axis after all
        answered = []
        offset = 0
        for prepared, count in zip(group, rows, strict=True):
            assert count is not None
            mine = {name: a[offset : offset + count] for name, a in produced.items()}
            offset += count
            answered.append((prepared, self._answer(prepared, mine, started)))
        return answered

    def _run_one(self, prepared: _Prepared) -> InferOutcome:
        started = time.perf_counter()
        try:
            produced = prepared.serving.model.run(prepared.request.inputs)
        except InferenceError as e:
            self._record(prepared.serving, started, error=True, nonfinite=False,
                         nonfinite_input=prepared.nonfinite_input)
            return InferenceFailedError(f"inference failed: {e}")
        return self._answer(prepared, produced, started)

    def _answer(
        self, prepared: _Prepared, produced: dict[str, np.ndarray], started: float
    ) -> InferOutcome:
        serving = prepared.serving
        self._record(serving, started, error=False, nonfinite=has_nonfinite(produced),
                     nonfinite_input=prepared.nonfinite_input)
        try:
            outputs = protocol.select_outputs(prepared.request, produced)
        except RequestError as e:
            return e
        return protocol.encode_infer_response(
            prepared.channel, serving.key.version, prepared.request.id, outputs
        )

    def metrics_text(self) -> str:
        return render(MetricsSnapshot(
            releases=self.book.all_totals(),
            channels=self.registry.channel_info(),
            http_requests=self.requests.snapshot(),
        ))

    def _record(
        self, serving: ServingModel, started: float, *, error: bool, nonfinite: bool,
        nonfinite_input: bool,
    ) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        self.book.record(
            serving.key, latency_ms, error=error, nonfinite=nonfinite,
            nonfinite_input=nonfinite_input,
        )
        if serving.on_probation(self._clock()):
            self._poke()
