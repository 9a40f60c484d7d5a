"""Inference without the HTTP plumbing: infer requests run (batched when they can be),
counted into the release's health and statistics; the server metadata and the metrics
text. What the server says about its models is `catalog`'s."""

from __future__ import annotations

import importlib.metadata
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeAlias

import numpy as np

from satchel.agent.health.stats import HealthBook, has_nonfinite
from satchel.agent.runtimes import InferenceError, check_feeds
from satchel.agent.server import protocol, tensors
from satchel.agent.server.catalog import ModelCatalog
from satchel.agent.server.config import ServerConfig
from satchel.agent.server.errors import (
    BadRequestError,
    InferenceFailedError,
    RequestError,
)
from satchel.agent.server.metrics import MetricsSnapshot, render
from satchel.agent.server.registry import ModelRegistry, ServingModel
from satchel.agent.server.stats import InferenceStats, RequestTimes
from satchel.agent.variants.metrics import variant_infos


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


class InferCall(NamedTuple):
    """One infer request as it arrived: the model it names and its (encoded) body. (A tuple:
    made twice per request, where a frozen dataclass costs 3-4x the time.)"""

    channel: str
    version: str | None
    body: bytes
    header_length: int | None  # Inference-Header-Content-Length; None: the body is JSON
    content_encoding: str = "identity"
    queued_ns: int = 0  # nanoseconds it waited for a worker of the pool
    decode_ns: int = 0  # nanoseconds spent undoing its Content-Encoding


class InferAnswer(NamedTuple):
    body: bytes
    json_length: int | None  # length of the JSON header when outputs follow as binary
    request_id: str | None  # the request's `id`, echoed


# An infer request's answer, or the error it gets.
InferOutcome: TypeAlias = InferAnswer | RequestError


class _Prepared(NamedTuple):  # a tuple: made per request (see InferCall)
    position: int  # in the calls of `infer_many`
    channel: str
    serving: ServingModel
    request: protocol.InferRequest
    nonfinite_input: bool
    queued_ns: int
    input_ns: int  # decoding, parsing and checking the request


def batchable(serving: ServingModel) -> bool:
    """Whether requests to this release may run as one batch: every input and output has a
    first dimension the model leaves free (-1), the ONNX way of declaring a batch axis.
    TFLite models (whose runtime resizes the first dimension per call) run one by one."""
    model = serving.model
    if serving.flexible_batch or not model.inputs:
        return False
    for specs in (model.inputs, model.outputs):  # loops: asked twice per request
        for spec in specs:
            if not spec.shape or spec.shape[0] != -1:
                return False
    return True


def _rows(inputs: dict[str, np.ndarray]) -> int | None:
    """The batch size every input agrees on, or None."""
    sizes = {a.shape[0] if a.ndim else None for a in inputs.values()}
    return sizes.pop() if len(sizes) == 1 else None


def _inferences(serving: ServingModel, inputs: dict[str, np.ndarray]) -> int:
    """Inferences a request holds: its rows when the model has a batch axis, else one."""
    if serving.flexible_batch or batchable(serving):
        return _rows(inputs) or 1
    return 1


def _check_datatypes(
    channel: str, specs: Sequence[Any], inputs: dict[str, np.ndarray]
) -> None:
    """Raises BadRequestError naming the datatypes the model takes when an input's differs."""
    for spec in specs:
        given = inputs.get(spec.name)
        if given is not None and tensors.datatype_of(given) != spec.datatype:
            takes = ", ".join(f"{s.name} {s.datatype}" for s in specs)
            raise BadRequestError(
                f"input {spec.name!r} is {tensors.datatype_of(given)}, but model {channel!r}"
                f" takes {takes}"
            )


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
        self.stats = InferenceStats()
        self.catalog = ModelCatalog(registry, self.stats)
        self.requests = RequestCounter()
        self._poke = on_probation_inference
        self._config = config
        self._clock = clock
        self._version = agent_version()

    @property
    def config(self) -> ServerConfig:
        return self._config

    def server_metadata(self) -> dict[str, Any]:
        return protocol.server_metadata(self._version)

    def is_ready(self) -> bool:
        """Ready once the first load is done and every channel of the state is served."""
        registry = self.registry
        if not registry.loaded_once.is_set():
            return False
        return all(registry.get(c.channel) is not None for c in registry.channel_info())

    def serving(self, channel: str, version: str | None) -> ServingModel:
        """The loaded release answering `channel` (and `version`, when given).

        Raises NotFoundError, NotLoadedError, NotReadyError (see `ModelCatalog.serving`).
        """
        return self.catalog.serving(channel, version)

    def infer(
        self, channel: str, version: str | None, body: bytes, header_length: int | None
    ) -> tuple[bytes, int | None]:
        """Run one infer request; returns the response body and its JSON header length
        (None when the body is all JSON).

        Raises NotFoundError, NotLoadedError, NotReadyError, BadRequestError
        (InferenceFailedError when the runtime failed on a request that fitted the model;
        counted as an error).
        """
        (outcome,) = self.infer_many([InferCall(channel, version, body, header_length)])
        if isinstance(outcome, RequestError):
            raise outcome
        return outcome.body, outcome.json_length

    def infer_many(self, calls: Sequence[InferCall]) -> list[InferOutcome]:
        """Run infer requests that arrived together; each one's outcome, in order: its
        response body and JSON header length, or the RequestError it is answered with.

        Requests for the same release whose inputs differ only in their batch dimension
        run as one batch (see `batchable`); what each is answered, and what its release's
        health counts, is what running it alone gives.
        """
        if len(calls) == 1:  # a lone request (the common case): nothing to group
            prepared_or_error = self._prepare_call(0, calls[0])
            if isinstance(prepared_or_error, RequestError):
                return [prepared_or_error]
            return [self._run_one(prepared_or_error)]
        outcomes: list[InferOutcome | None] = [None] * len(calls)
        groups: dict[tuple[object, ...], list[_Prepared]] = {}
        for i, call in enumerate(calls):
            prepared = self._prepare_call(i, call)
            if isinstance(prepared, RequestError):
                outcomes[i] = prepared
                continue
            groups.setdefault(_batch_key(prepared), []).append(prepared)
        for group in groups.values():
            for prepared, outcome in self._run_group(group):
                outcomes[prepared.position] = outcome
        return [o if o is not None else InferenceFailedError("not run") for o in outcomes]

    def _prepare_call(self, index: int, call: InferCall) -> _Prepared | RequestError:
        """The release answering `call`, its request parsed and checked; or the error it is
        answered with (counted as failed when it reached a release)."""
        try:
            serving = self.serving(call.channel, call.version)
        except RequestError as e:
            return e
        if call.version is None:  # a release in its ramp answers its share (agent.staging)
            staging = self.registry.candidate(call.channel)
            if staging is not None:
                serving = staging.route() or serving
        started = time.perf_counter_ns()
        try:
            return self._prepare(index, call, serving, started)
        except RequestError as e:
            self.stats.failed(serving.key, call.queued_ns + call.decode_ns
                              + time.perf_counter_ns() - started, self._now_ms())
            return e

    def _prepare(
        self, index: int, call: InferCall, serving: ServingModel, started_ns: int
    ) -> _Prepared:
        """Parse and check one call against the release serving it. Raises RequestError."""
        config = self._config
        request = protocol.parse_infer_request(
            call.body, call.header_length,
            max_elements=config.max_elements, max_json_bytes=config.max_json_bytes,
        )
        if serving.variants is not None:  # which of the release's variants answers
            serving = serving.variants.pick(serving, request.parameters)
        model = serving.model
        _check_datatypes(call.channel, model.inputs, request.inputs)
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
        nonfinite_input = has_nonfinite(request.inputs)
        input_ns = call.decode_ns + time.perf_counter_ns() - started_ns
        return _Prepared(index, call.channel, serving, request, nonfinite_input,
                         call.queued_ns, input_ns)

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
        started_ns = time.perf_counter_ns()
        try:
            produced = serving.model.run(feeds)
        except InferenceError:  # one request may be at fault: each runs alone, as it would
            return [(p, self._run_one(p)) for p in group]
        infer_ns = time.perf_counter_ns() - started_ns
        total = sum(r for r in rows if r is not None)
        if any(np.ndim(a) == 0 or len(a) != total for a in produced.values()):
            return [(p, self._run_one(p)) for p in group]  # not a batch axis after all
        self.stats.executed(serving.key, total, infer_ns)
        answered = []
        offset = 0
        for prepared, count in zip(group, rows, strict=True):
            assert count is not None
            mine = {name: a[offset : offset + count] for name, a in produced.items()}
            offset += count
            answered.append((prepared, self._answer(prepared, mine, started, infer_ns)))
        return answered

    def _run_one(self, prepared: _Prepared) -> InferOutcome:
        serving = prepared.serving
        started = time.perf_counter()
        started_ns = time.perf_counter_ns()
        try:
            produced = serving.model.run(prepared.request.inputs)
        except InferenceError as e:
            infer_ns = time.perf_counter_ns() - started_ns
            self._record(serving, started, error=True, nonfinite=False,
                         nonfinite_input=prepared.nonfinite_input)
            self.stats.failed(serving.key, prepared.queued_ns + prepared.input_ns + infer_ns,
                              self._now_ms())
            staging = self.registry.candidate(prepared.channel)
            if staging is not None and serving.key == staging.serving.key:  # any variant
                staging.record_answer(error=True, nonfinite=False,
                                      nonfinite_input=prepared.nonfinite_input,
                                      latency_ms=infer_ns / 1e6)
            return InferenceFailedError(f"inference failed: {e}")
        infer_ns = time.perf_counter_ns() - started_ns
        inferences = _inferences(serving, prepared.request.inputs)
        self.stats.executed(serving.key, inferences, infer_ns)
        return self._answer(prepared, produced, started, infer_ns, inferences)

    def _answer(
        self, prepared: _Prepared, produced: dict[str, np.ndarray], started: float,
        infer_ns: int, inferences: int | None = None,
    ) -> InferOutcome:
        serving = prepared.serving
        nonfinite = has_nonfinite(produced)
        self._record(serving, started, error=False, nonfinite=nonfinite,
                     nonfinite_input=prepared.nonfinite_input)
        staging = self.registry.candidate(prepared.channel)
        if staging is not None:  # a release judged in shadow or ramp (agent.staging)
            latency_ms = (time.perf_counter() - started) * 1000
            inputs = prepared.request.inputs
            if serving.key == staging.serving.key:  # the candidate, whichever variant
                staging.record_answer(error=False, nonfinite=nonfinite,
                                      nonfinite_input=prepared.nonfinite_input,
                                      latency_ms=latency_ms, inputs=inputs, outputs=produced)
            else:
                staging.offer(inputs, produced, latency_ms, serving.key)
        output_started = time.perf_counter_ns()
        request = prepared.request
        try:
            outputs = protocol.select_outputs(request, produced)
        except RequestError as e:
            self.stats.failed(serving.key, prepared.queued_ns + prepared.input_ns + infer_ns
                              + time.perf_counter_ns() - output_started, self._now_ms())
            return e
        body, json_length = protocol.encode_infer_response(
            prepared.channel, serving.key.version, request.id, outputs,
            {"variant": serving.variant} if serving.variant is not None else None,
            finite=not nonfinite,
        )
        times = RequestTimes(prepared.queued_ns, prepared.input_ns, infer_ns,
                             time.perf_counter_ns() - output_started)
        if inferences is None:
            inferences = _inferences(serving, request.inputs)
        self.stats.succeeded(serving.key, times, inferences, self._now_ms())
        return InferAnswer(body, json_length, request.id)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def metrics_text(self) -> str:
        return render(MetricsSnapshot(
            releases=self.book.all_totals(),
            channels=self.registry.channel_info(),
            http_requests=self.requests.snapshot(),
            variants=variant_infos(self.registry.slots()),
        ))

    def _record(
        self, serving: ServingModel, started: float, *, error: bool, nonfinite: bool,
        nonfinite_input: bool,
    ) -> None:
        latency_ms = (time.perf_counter() - started) * 1000
        if serving.variants is not None and serving.variants.record(
            serving, latency_ms, error=error, nonfinite=nonfinite,
            nonfinite_input=nonfinite_input,
        ):
            return  # a variant but the default: judged on its own (agent/variants/serving.py)
        self.book.record(
            serving.key, latency_ms, error=error, nonfinite=nonfinite,
            nonfinite_input=nonfinite_input,
        )
        if serving.on_probation(self._clock()):
            self._poke()
