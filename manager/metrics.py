"""Prometheus `/metrics` (text exposition format 0.0.4) and the structured request log.

Counters live in the process; with several server workers each scrape sees the worker that
answered it (the `worker` label tells which). Fleet gauges are read from the database at
scrape time, so they are the same whichever worker answers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterable

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, g, request

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)  # seconds
ACCESS_LOGGER = "satchel.access"

bp = Blueprint("metrics", __name__)
Labels = tuple[tuple[str, str], ...]


class Metrics:
    """Thread-safe counters and latency histograms of one manager process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.counters: dict[str, dict[Labels, float]] = defaultdict(lambda: defaultdict(float))
        self.histograms: dict[Labels, list[float]] = {}  # labels -> bucket counts + [sum, count]

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.counters[name][key] += amount

    def observe(self, seconds: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            h = self.histograms.setdefault(key, [0.0] * (len(LATENCY_BUCKETS_S) + 2))
            for i, bound in enumerate(LATENCY_BUCKETS_S):
                if seconds <= bound:
                    h[i] += 1
            h[-2] += seconds
            h[-1] += 1

    def render(self, gauges: dict[str, list[tuple[Labels, float]]]) -> str:
        """The text exposition of every counter, histogram and the given gauges."""
        worker = (("worker", str(os.getpid())),)
        lines: list[str] = []
        with self._lock:
            for name in sorted(self.counters):
                lines.append(f"# TYPE {name} counter")
                for labels, value in sorted(self.counters[name].items()):
                    lines.append(f"{name}{_labels(worker + labels)} {_num(value)}")
            name = "satchel_http_request_duration_seconds"
            lines.append(f"# TYPE {name} histogram")
            for labels, h in sorted(self.histograms.items()):
                for i, bound in enumerate(LATENCY_BUCKETS_S):
                    le = (("le", _num(bound)),)
                    lines.append(f"{name}_bucket{_labels(worker + labels + le)} {_num(h[i])}")
                inf = (("le", "+Inf"),)
                lines.append(f"{name}_bucket{_labels(worker + labels + inf)} {_num(h[-1])}")
                lines.append(f"{name}_sum{_labels(worker + labels)} {h[-2]!r}")
                lines.append(f"{name}_count{_labels(worker + labels)} {_num(h[-1])}")
        lines.append("# TYPE satchel_process_start_time_seconds gauge")
        lines.append(f"satchel_process_start_time_seconds{_labels(worker)} {self.started!r}")
        for name in sorted(gauges):
            lines.append(f"# TYPE {name} gauge")
            for labels, value in gauges[name]:
                lines.append(f"{name}{_labels(labels)} {_num(value)}")
        return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
    return "{" + inner + "}" if inner else ""


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _fleet_gauges() -> dict[str, list[tuple[Labels, float]]]:
    from satchel.manager.context import state
    from satchel.manager.models import Bundle, Deployment, Device

    def read(session: sa.orm.Session) -> dict[str, list[tuple[Labels, float]]]:
        devices = session.scalar(sa.select(sa.func.count()).select_from(Device)) or 0
        bundles = session.scalar(sa.select(sa.func.count()).select_from(Bundle)) or 0
        by_state = session.execute(
            sa.select(Deployment.state, sa.func.count()).group_by(Deployment.state)
        )
        return {
            "satchel_devices": [((), devices)],
            "satchel_bundles": [((), bundles)],
            "satchel_deployments": [((("state", s),), n) for s, n in sorted(by_state)],
        }

    return state().db.run(read)


@bp.get("/metrics")
def metrics_view() -> Response:
    from satchel.manager.context import state

    text = state().metrics.render(_fleet_gauges())
    return Response(text, mimetype="text/plain; version=0.0.4; charset=utf-8")


# --- request instrumentation -------------------------------------------------------------------


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
    from satchel.manager.context import state

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
