"""What each endpoint answers, without the HTTP plumbing: metadata, readiness, inference
(counted into the release's health), and the metrics text."""

from __future__ import annotations

import importlib.metadata
import threading
import time
from collections.abc import Callable
from typing import Any

from satchel.agent.health.stats import HealthBook, has_nonfinite
from satchel.agent.runtimes import InferenceError, check_feeds
from satchel.agent.server import protocol
from satchel.agent.server.config import ServerConfig
from satchel.agent.server.errors import (
    BadRequestError,
    InferenceFailedError,
    NotFoundError,
    NotReadyError,
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
        serving = self.serving(channel, version)
        config = self._config
        request = protocol.parse_infer_request(
            body, header_length,
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
        client_nonfinite = has_nonfinite(request.inputs)
        started = time.perf_counter()
        try:
            produced = model.run(request.inputs)
        except InferenceError as e:
            self._record(serving, started, error=True, nonfinite=False,
                         nonfinite_input=client_nonfinite)
            raise InferenceFailedError(f"inference failed: {e}") from None
        self._record(serving, started, error=False, nonfinite=has_nonfinite(produced),
                     nonfinite_input=client_nonfinite)
        outputs = protocol.select_outputs(request, produced)
        return protocol.encode_infer_response(
            channel, serving.key.version, request.id, outputs
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
