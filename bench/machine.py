"""How busy the machine was while a figure was measured: every benchmark records it.

These machines are shared. A figure is only worth reporting with the share of the CPUs that
was idle while it was taken and the share that *other* processes used (the machine's busy
time minus this process and its reaped children). `Quiet` measures both; `require_quiet`
refuses a figure when others took more than a threshold, so a noisy run is rerun rather
than published.

    with Quiet() as q:
        ... run the benchmark, wait for its subprocesses ...
    result["machine"] = q.report()          # {"idle_share", "others_share", "cpus", ...}
    require_quiet(q, max_others=0.25)        # raises NoisyMachine

`wait_for_quiet()` waits (bounded) until the neighbours calm down before a run starts.
"""

from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass, field
from typing import Any

# Other processes may use at most this share of all CPUs while a figure is measured.
DEFAULT_MAX_OTHERS = 0.25


class NoisyMachine(RuntimeError):
    """Other processes used too much of the machine while a figure was measured."""


def cpu_jiffies() -> tuple[float, float]:
    """(idle + iowait, total) seconds of all CPUs since boot, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is already counted in user time
    total = sum(values[:8])
    return idle / ticks, total / ticks


def own_cpu_s() -> float:
    """CPU seconds of this process and of every child it has waited for."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass
class Quiet:
    """Context manager: the idle share and the others' share of the machine over a span."""

    extra_own_cpu_s: float = 0.0  # CPU of processes not reaped by us (e.g. a server's pids)
    _start: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0), repr=False)
    _end: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0), repr=False)

    def __enter__(self) -> Quiet:
        idle, total = cpu_jiffies()
        self._start = (idle, total, own_cpu_s())
        self._end = self._start
        return self

    def __exit__(self, *exc: object) -> None:
        idle, total = cpu_jiffies()
        self._end = (idle, total, own_cpu_s())

    @property
    def total_s(self) -> float:
        return max(1e-9, self._end[1] - self._start[1])

    @property
    def idle_share(self) -> float:
        return (self._end[0] - self._start[0]) / self.total_s

    @property
    def others_share(self) -> float:
        busy = self.total_s - (self._end[0] - self._start[0])
        ours = (self._end[2] - self._start[2]) + self.extra_own_cpu_s
        return max(0.0, min(1.0, (busy - ours) / self.total_s))

    def report(self) -> dict[str, Any]:
        return {
            "cpus": os.cpu_count() or 1,
            "idle_share": round(self.idle_share, 3),
            "others_share": round(self.others_share, 3),
            "wall_s": round(self.total_s / (os.cpu_count() or 1), 2),
        }


def others_now(window_s: float = 1.0) -> float:
    """Share of all CPUs used by other processes over the next `window_s` seconds."""
    with Quiet() as q:
        time.sleep(window_s)
    return q.others_share


def wait_for_quiet(max_others: float = DEFAULT_MAX_OTHERS, timeout_s: float = 120.0,
                   window_s: float = 2.0) -> float:
    """Wait until others use at most `max_others` of the machine; return the last share."""
    deadline = time.monotonic() + timeout_s
    share = others_now(window_s)
    while share > max_others and time.monotonic() < deadline:
        share = others_now(window_s)
    return share


def require_quiet(q: Quiet, max_others: float = DEFAULT_MAX_OTHERS) -> None:
    """Raise NoisyMachine when other processes took more than `max_others` of the CPUs."""
    if q.others_share > max_others:
        raise NoisyMachine(
            f"other processes used {q.others_share:.0%} of the machine during the run "
            f"(limit {max_others:.0%}, idle {q.idle_share:.0%}): rerun on a quieter machine"
        )
