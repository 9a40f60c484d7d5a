"""`process_*` of the manager: the `satchel serve` process and its workers, added up.

A scrape is answered by one worker, but an operator asks how much memory and CPU the manager
takes: the resident and virtual memory, CPU seconds and open descriptors of the serving
process and each of its workers are summed, the start time is the serving process's. Without
`satchel serve` (an external WSGI server, the tests) it is this process alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import ProcessCollector
from prometheus_client.metrics_core import Metric

from satchel.manager.metrics.multiproc import SERVE_PID_ENV

_SUMMED = {"process_virtual_memory_bytes", "process_resident_memory_bytes",
           "process_cpu_seconds_total", "process_open_fds"}
_PROC = Path("/proc")


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in (_PROC / str(pid) / "task").glob("*/children"):
        try:
            found += [int(p) for p in task.read_text().split()]
        except (OSError, ValueError):
            continue
    return found


def serving_pids() -> list[int]:
    """The serving process and its children (the workers); this process when unknown."""
    root = int(os.environ.get(SERVE_PID_ENV) or os.getpid())
    if not (_PROC / str(root)).is_dir():
        root = os.getpid()
    return [root, *_children(root)]


def _constant(pid: int) -> Callable[[], int]:
    return lambda: pid


class ProcessGroupCollector:
    """prometheus_client's ProcessCollector over several processes, added up."""

    def collect(self) -> Iterator[Metric]:
        pids = serving_pids()
        per_pid = [list(ProcessCollector(pid=_constant(p), registry=None).collect())
                   for p in pids]
        if not per_pid[0]:
            return  # no /proc: nothing to report
        for family in per_pid[0]:
            samples = family.samples
            if samples and samples[0].name in _SUMMED:
                total = sum(s.value for other in per_pid for f in other if f.name == family.name
                            for s in f.samples)
                samples = [samples[0]._replace(value=total)]
            merged = Metric(family.name, family.documentation, family.type)
            merged.samples = samples
            yield merged
