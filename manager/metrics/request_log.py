"""One request's record: counted and timed in the registry, and one line in the access log
(logger `satchel.access`, in the format `--log-format` chose) when request logging is on.

`instrument(app)` makes the record for every request Flask answers, and puts the request id in
`bundles.logsetup.REQUEST_ID` while the request runs, so every line logged meanwhile carries
it; the check-in fast path (`manager/checkin/route.py`) makes the record, through
`record_request`, for the ones it answers before Flask, so both leave the same trace.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid

from flask import Flask, Response, g, request

from satchel.bundles.logsetup import REQUEST_ID
from satchel.manager.context import state
from satchel.manager.metrics.registry import Metrics

ACCESS_LOGGER = "satchel.access"


def access_logger() -> logging.Logger:
    """The request log: one line per request, through the handlers `logsetup` installed."""
    return logging.getLogger(ACCESS_LOGGER)


def new_request_id(header: str | None) -> str:
    """The caller's X-Request-Id, or a fresh one."""
    return header or uuid.uuid4().hex[:16]


def record_request(
    metrics: Metrics,
    logger: logging.Logger | None,
    *,
    request_id: str,
    method: str,
    path: str,
    endpoint: str,
    status: int,
    elapsed: float,
    size: int | None,
    remote: str | None,
    principal: str | None,
) -> None:
    """Count and time one request (`elapsed` in seconds); log it when `logger` is given."""
    metrics.inc("satchel_http_requests_total", method=method, endpoint=endpoint, code=str(status))
    metrics.observe(elapsed, endpoint=endpoint)
    if logger is not None and logger.isEnabledFor(logging.INFO):
        duration_ms = round(elapsed * 1000, 2)
        logger.info(
            "%s %s %d %.2f ms", method, path, status, duration_ms,
            extra={
                "request_id": request_id,
                "method": method,
                "path": path,
                "endpoint": endpoint,
                "status": status,
                "duration_ms": duration_ms,
                "bytes": size,
                "remote": remote,
                "principal": principal,
            },
        )


def instrument(app: Flask, log_requests: bool) -> None:
    """Count and time every request; log one line per request when `log_requests`."""
    logger = access_logger() if log_requests else None

    @app.before_request
    def _start() -> None:
        g.request_started = time.perf_counter()
        g.request_id = new_request_id(request.headers.get("X-Request-Id"))
        g.request_id_token = REQUEST_ID.set(g.request_id)

    @app.after_request
    def _finish(response: Response) -> Response:
        elapsed = time.perf_counter() - g.get("request_started", time.perf_counter())
        principal = g.get("principal")
        who = None if principal is None else principal.device_id or f"admin:{principal.name}"
        response.headers["X-Request-Id"] = g.get("request_id", "")
        record_request(
            state().metrics,
            logger,
            request_id=g.get("request_id", ""),
            method=request.method,
            path=request.path,
            endpoint=request.url_rule.rule if request.url_rule else "unmatched",
            status=response.status_code,
            elapsed=elapsed,
            size=response.content_length,
            remote=request.remote_addr,
            principal=who,
        )
        return response

    @app.teardown_request
    def _forget(_error: BaseException | None) -> None:
        token = g.pop("request_id_token", None)
        if token is not None:
            with contextlib.suppress(ValueError):  # set in another context: nothing to undo
                REQUEST_ID.reset(token)
