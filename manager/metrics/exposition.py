"""The Prometheus text exposition format 0.0.4: a registry snapshot and the fleet gauges as
the text `/metrics` answers. Every counter and histogram series carries the `worker` label."""

from __future__ import annotations

from collections.abc import Iterable

from satchel.manager.metrics.registry import LATENCY_BUCKETS_S, Labels, Snapshot

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION = "satchel_http_request_duration_seconds"  # the one histogram: request latency

Gauges = dict[str, list[tuple[Labels, float]]]  # gauge name -> (labels, value) per series


def render(snapshot: Snapshot, gauges: Gauges, worker: str) -> str:
    """The text exposition of every counter and histogram of `snapshot` (labelled with
    `worker`), the process start time, and `gauges`."""
    own = (("worker", worker),)
    lines: list[str] = []
    for name in sorted(snapshot.counters):
        lines.append(f"# TYPE {name} counter")
        for labels, value in sorted(snapshot.counters[name].items()):
            lines.append(f"{name}{_labels(own + labels)} {_num(value)}")
    lines.append(f"# TYPE {DURATION} histogram")
    for labels, h in sorted(snapshot.histograms.items()):
        for i, bound in enumerate(LATENCY_BUCKETS_S):
            le = (("le", _num(bound)),)
            lines.append(f"{DURATION}_bucket{_labels(own + labels + le)} {_num(h[i])}")
        inf = (("le", "+Inf"),)
        lines.append(f"{DURATION}_bucket{_labels(own + labels + inf)} {_num(h[-1])}")
        lines.append(f"{DURATION}_sum{_labels(own + labels)} {h[-2]!r}")
        lines.append(f"{DURATION}_count{_labels(own + labels)} {_num(h[-1])}")
    lines.append("# TYPE satchel_process_start_time_seconds gauge")
    lines.append(f"satchel_process_start_time_seconds{_labels(own)} {snapshot.started!r}")
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
