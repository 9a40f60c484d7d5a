"""One request's record: counted and timed in the registry, and one JSON line in the access log
when request logging is on.

`instrument(app)` makes the record for every request Flask answers; the check-in fast path
(`manager/checkin/route.py`) makes it, through `record_request`, for the ones it answers
before Flask, so both leave the same trace.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid

from flask import Flask, Response, g, request

from satchel.manager.context import state
from satchel.manager.metrics.registry import Metrics

ACCESS_LOGGER = "satchel.access"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any `extra` fields."""

    _SKIP = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in self._SKIP})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def access_logger() -> logging.Logger:
    """The structured request log (one JSON line per request on stderr)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


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
    metrics.inc("satchel_http_requests_total", method=method, endpoint=endpoint, status=str(status))
    metrics.observe(elapsed, endpoint=endpoint)
    if logger is not None:
        logger.info(
            "request",
            extra={
                "request_id": request_id,
                "method": method,
                "path": path,
                "endpoint": endpoint,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "bytes": size,
                "remote": remote,
                "principal": principal,
            },
        )


def instrument(app: Flask, log_requests: bool) -> None:
    """Count and time every request; log one JSON line per request when `log_requests`."""
    logger = access_logger() if log_requests else None

    @app.before_request
    def _start() -> None:
        g.request_started = time.perf_counter()
        g.request_id = new_request_id(request.headers.get("X-Request-Id"))

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
