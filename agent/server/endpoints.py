"""The Open Inference Protocol's endpoints over HTTP: a request (head and body) routed to
the `InferenceService`, answered as a `Response`; every error as `{"error": "..."}` with its
status. Infer requests are not answered here: they become an `InferCall` that the
inference pool runs (and batches), and `infer_response` turns its outcome into the answer.
"""

from __future__ import annotations

import json
import logging
import re
import zlib

from satchel.agent.server.errors import (
    BadRequestError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RequestError,
)
from satchel.agent.server.http import (
    RequestHead,
    Response,
    error_response,
    json_response,
    route_params,
)
from satchel.agent.server.inference import InferCall, InferenceService, InferOutcome
from satchel.agent.server.metrics import content_type as metrics_content_type
from satchel.agent.server.protocol import HEADER_LENGTH

log = logging.getLogger(__name__)

INFER = "infer"
_MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
# First match wins: "/v2/models/stats" is the statistics of every model, not a model.
_ROUTES: list[tuple[re.Pattern[str], str, str]] = [
    (re.compile(r"/v2/?"), "GET", "server_metadata"),
    (re.compile(r"/v2/health/live"), "GET", "live"),
    (re.compile(r"/v2/health/ready"), "GET", "ready"),
    (re.compile(r"/v2/models/stats"), "GET", "stats"),
    (re.compile(r"/v2/repository/index"), "POST", "repository_index"),
    (re.compile(_MODEL), "GET", "model_metadata"),
    (re.compile(_MODEL + r"/stats"), "GET", "stats"),
    (re.compile(_MODEL + r"/ready"), "GET", "model_ready"),
    (re.compile(_MODEL + r"/infer"), "POST", INFER),
    (re.compile(r"/metrics"), "GET", "metrics"),
]


_ROUTED_MAX = 256  # (method, path) pairs whose route is remembered
_routed: dict[tuple[str, str], tuple[str, dict[str, str | None]]] = {}


def route(method: str, path: str) -> tuple[str, dict[str, str | None]]:
    """The endpoint and its parameters (callers must not change them: found routes are
    remembered, as trying ten regular expressions per request costs about a third of a
    small model's run). Raises NotFoundError, MethodNotAllowedError."""
    found = _routed.get((method, path))
    if found is None:
        found = _route(method, path)
        if len(_routed) >= _ROUTED_MAX:  # any path can be asked: the memory stays bounded
            _routed.clear()
        _routed[(method, path)] = found
    return found


def _route(method: str, path: str) -> tuple[str, dict[str, str | None]]:
    allowed = []
    for pattern, route_method, endpoint in _ROUTES:
        match = pattern.fullmatch(path)
        if match is None:
            continue
        if route_method == method or (method == "HEAD" and route_method == "GET"):
            return endpoint, route_params(match.groupdict())
        allowed.append(route_method)
    if allowed:
        raise MethodNotAllowedError(
            f"{method} is not allowed on {path}", {"Allow": ", ".join(sorted(set(allowed)))}
        )
    raise NotFoundError(f"no endpoint {path}")


class Endpoints:
    """Answers every endpoint but infer at once (they take microseconds)."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    def answer(self, head: RequestHead, body: bytes) -> tuple[str, Response | InferCall]:
        """(endpoint, its response or the infer call to run). Never raises: a request that
        breaks the handler is answered 500 and its connection closed."""
        endpoint = "other"
        try:
            endpoint, params = route(head.method, head.path)
            return endpoint, self._dispatch(endpoint, params, head, body)
        except RequestError as e:
            return endpoint, error_response(e.status, str(e), e.headers)
        except Exception as e:  # a bug must cost one request, never the server
            log.exception("request %s %s failed", head.method, head.target[:200])
            return endpoint, error_response(500, f"internal error: {type(e).__name__}",
                                            close=True)

    def _dispatch(
        self, endpoint: str, params: dict[str, str | None], head: RequestHead, body: bytes
    ) -> Response | InferCall:
        service = self.service
        catalog = service.catalog
        name, version = params.get("name"), params.get("version")
        if endpoint == "live":
            return json_response(200, {"live": True})
        if endpoint == "ready":
            ready = service.is_ready()
            return json_response(200 if ready else 503, {"ready": ready})
        if endpoint == "server_metadata":
            return json_response(200, service.server_metadata())
        if endpoint == "metrics":
            return Response(200, service.metrics_text().encode("utf-8"),
                            metrics_content_type())
        if endpoint == "stats":
            return json_response(200, catalog.model_stats(name, version))
        if endpoint == "repository_index":
            limit = service.config.max_index_body_bytes
            return json_response(200, catalog.repository_index(_ready_only(body, limit)))
        assert name is not None
        if endpoint == "model_metadata":
            return json_response(200, catalog.model_metadata(name, version))
        if endpoint == "model_ready":
            return json_response(200, catalog.model_ready(name, version))
        service.serving(name, version)  # an unknown model is answered here, not queued
        return InferCall(
            name, version, body, _header_length(head),
            (head.headers.get("content-encoding") or "identity").strip().lower(),
        )


def _ready_only(body: bytes, limit: int) -> bool:
    """The repository index request's `ready` flag (an empty body asks for everything).
    Raises BadRequestError, PayloadTooLargeError (a body over `limit` bytes)."""
    if len(body) > limit:
        raise PayloadTooLargeError(f"a repository index request is at most {limit} bytes")
    if not body.strip():
        return False
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequestError("the repository index request must be a JSON object") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("ready", False), bool):
        raise BadRequestError("the repository index request's 'ready' must be true or false")
    return bool(doc.get("ready", False))


def _header_length(head: RequestHead) -> int | None:
    value = head.headers.get(HEADER_LENGTH.lower())
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequestError(f"{HEADER_LENGTH} must be an integer") from None


def decode_body(body: bytes, encoding: str, limit: int) -> bytes:
    """The request body with its Content-Encoding (identity, gzip, deflate) undone.

    Raises BadRequestError, PayloadTooLargeError (decompressed past `limit`).
    """
    if encoding == "identity":
        return body
    wbits = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}.get(encoding)
    if wbits is None:
        raise BadRequestError(f"Content-Encoding {encoding[:20]!r} is not supported")
    decompressor = zlib.decompressobj(wbits)
    try:
        data = decompressor.decompress(body, limit + 1)
    except zlib.error as e:
        raise BadRequestError(f"request body is not valid {encoding}: {e}") from None
    if len(data) > limit:
        raise PayloadTooLargeError(f"decompressed request body is over {limit} bytes")
    return data


def infer_response(outcome: InferOutcome) -> Response:
    """The answer to an infer call: its body (JSON, or JSON then binary tensors) or its
    error."""
    if isinstance(outcome, RequestError):
        return error_response(outcome.status, str(outcome), outcome.headers)
    if outcome.json_length is None:
        return Response(200, outcome.body, request_id=outcome.request_id)
    return Response(200, outcome.body, "application/octet-stream",
                    {HEADER_LENGTH: str(outcome.json_length)}, request_id=outcome.request_id)
