"""Smoke tests on the device: load the bundle's model with the real runtime, run the sample
inputs, compare with the reference outputs, time it and watch its memory.

Every measured figure goes into the report, pass or fail. Nothing here touches the state
directory; the installer writes the report where it belongs.

Memory is the growth of the process's peak resident set (VmHWM in /proc/self/status) over
the resident set measured just before the model is loaded (runtime already imported, sample
data already read), so it covers loading and every run. The kernel's peak counter is reset
first (writing "5" to /proc/self/clear_refs), so that an earlier peak cannot hide this one;
where it cannot be reset the figure is the peak since process start, an upper bound.

In a process that has worked before (a model loaded and freed, in a long-running agent), the
allocator would reuse the memory it kept without showing it as growth, and the figure would
be too low. So before the baseline is read, the allocator gives its free memory back to the
kernel (glibc's malloc_trim): a model then grows the resident set as it would in a fresh
process, and the budget is judged in-process, on the very session that will serve. Where
that cannot be done (no glibc, no resettable peak) and a smoke test sets `max_memory_mb`,
the test runs in a fresh child process (`python -m satchel.agent.install.smoketest`). Each
report says how its memory figure was taken.

Inside the service, a passing session is handed to its inference server
(`agent.install.handoff`), so a release is loaded once and never twice in memory.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from satchel.agent.config import DEFAULT_CONFIG, AgentConfig
from satchel.agent.install.handoff import SessionHandoff, current_handoff
from satchel.agent.runtimes import LoadedModel, ModelRuntimeError, get_runtime
from satchel.agent.runtimes.accel import CPU, Acceleration
from satchel.agent.runtimes.samples import encoded_feeds, run_feeds
from satchel.bundles.manifest import Manifest, ModelEntry, SmokeTest, parse_manifest
from satchel.bundles.smoke import accuracy_failures, compare_outputs, percentile, smoke_kinds

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")
_RESET_PEAK_RSS = b"5"  # clear_refs command that resets VmHWM to the current RSS (Linux 4.0+)
# Why a smoke test's timed latency runs stopped (its report's latency_ms "stopped"): all the
# runs it asks for were made, or its time bound passed once the minimum count was made.
STOPPED_AT_COUNT = "count"
STOPPED_AT_TIME = "time"


@dataclass(frozen=True)
class SmokeReport:
    """The verdict over every smoke test of a bundle, and every figure measured."""

    passed: bool
    failures: tuple[str, ...]  # one line each, "model: reason"
    tests: tuple[dict[str, Any], ...] = field(default=())
    # a release with variants: {name: {"state": "ready"|"dropped", "reason", "p95_ms", ...}}
    # (agent/variants/install.py); a variant that fails is dropped, not a failure
    variants: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = {"passed": self.passed, "failures": list(self.failures), "tests": list(self.tests)}
        if self.variants:
            d["variants"] = self.variants
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SmokeReport:
        return cls(bool(d["passed"]), tuple(d["failures"]), tuple(d["tests"]),
                   dict(d.get("variants") or {}))

    def summary(self) -> str:
        """One line: the failures, or the headline figures of a pass."""
        if not self.passed:
            return "; ".join(self.failures)
        parts = []
        for t in self.tests:
            latency = t.get("latency_ms") or {}
            agreement = t.get("agreement") or {}
            parts.append(
                f"{t['model']}: max abs error {agreement.get('max_abs_error', 0):.3g}, "
                f"p95 {latency.get('p95', 0):.3g} ms"
            )
        dropped = [f"variant {n} dropped: {v.get('reason')}" for n, v in self.variants.items()
                   if v.get("state") == "dropped"]
        return "; ".join(parts + dropped) or "no smoke test in bundle; model loads"


class SmokeRunner(Protocol):
    """Runs a bundle's smoke tests against its unpacked payloads in `files`."""

    def run(self, manifest: Manifest, files: Path) -> SmokeReport:
        """Return the report; a failing model is a failed report, not an exception."""
        ...


# --- memory ---------------------------------------------------------------------------------


def _status_kib(name: str) -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None on a C library without it (musl, macOS)."""
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # the process's own libc
    except (OSError, AttributeError):
        return None
    return trim


def release_free_memory() -> bool:
    """Hand the allocator's free memory back to the kernel, so that memory reused later shows
    as growth of the resident set. True when it could be done."""
    gc.collect()
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def can_reset_peak_rss() -> bool:
    """True when this kernel lets the process reset its own peak-RSS counter."""
    try:
        _CLEAR_REFS.write_bytes(_RESET_PEAK_RSS)
    except OSError:
        return False
    return _status_kib("VmHWM") is not None


class PeakMemory:
    """Peak resident-set growth from `start()` on, in MiB (None where it cannot be measured)."""

    def __init__(self) -> None:
        self.method = "unavailable"
        self.trimmed = False  # the allocator's free memory went back first (see above)
        self._baseline: int | None = None

    def start(self) -> None:
        trimmed = release_free_memory()
        resettable = can_reset_peak_rss()
        self._baseline = _status_kib("VmRSS")
        if self._baseline is not None:
            self.method = "vmhwm-reset" if resettable else "vmhwm-since-start"
            self.trimmed = trimmed

    def growth_mb(self) -> float | None:
        peak = _status_kib("VmHWM")
        if self._baseline is None or peak is None:
            return None
        return max(0, peak - self._baseline) / 1024.0


# --- running one smoke test -----------------------------------------------------------------


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Raises ValueError / OSError for a file that is not a plain-array .npz."""
    with np.load(path, allow_pickle=False) as data:
        return {name: np.asarray(data[name]) for name in data.files}


def _json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (reports are strict JSON)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def run_smoke_test(
    model: ModelEntry, test: SmokeTest | None, files: Path, threads: int | None = None,
    acceleration: Acceleration = CPU, latency_s: float = DEFAULT_CONFIG.smoke_latency_s,
    min_latency_runs: int = DEFAULT_CONFIG.smoke_min_latency_runs,
) -> dict[str, Any]:
    """Run one smoke test (or, with `test` None, only load the model) and return its figures.

    Never raises for a bad model: load and run errors become failures in the result.
    """
    result, loaded = _run_keeping_session(model, test, files, threads, acceleration,
                                          (latency_s, min_latency_runs))
    if loaded is not None:
        loaded.close()
    return result


def _run_keeping_session(
    model: ModelEntry, test: SmokeTest | None, files: Path, threads: int | None,
    acceleration: Acceleration = CPU, bound: tuple[float, int] | None = None,
) -> tuple[dict[str, Any], LoadedModel | None]:
    """`run_smoke_test`, returning the loaded session too (None when it did not load or
    failed); the caller closes it."""
    result: dict[str, Any] = {"model": model.name, "runtime": model.runtime, "failures": []}
    failures: list[str] = result["failures"]
    memory = PeakMemory()
    loaded: LoadedModel | None = None
    try:
        adapter = get_runtime(model.runtime)
        result["runtime_version"] = adapter.version()
        if test is not None:
            inputs = _load_npz(files / test.inputs)
            reference = _load_npz(files / test.reference)
        memory.start()
        started = time.perf_counter()
        if model.signature is not None:
            loaded = adapter.load(files / model.file, threads=threads, signature=model.signature,
                                  acceleration=acceleration)
        else:
            loaded = adapter.load(files / model.file, threads=threads, acceleration=acceleration)
        result["load_ms"] = (time.perf_counter() - started) * 1000.0
        if test is not None:
            _measure(loaded, test, inputs, reference, result, bound or _DEFAULT_BOUND)
    except ModelRuntimeError as e:
        failures.append(str(e))
    except (OSError, ValueError, KeyError) as e:
        failures.append(f"smoke test data unusable: {e}")
    peak = memory.growth_mb()
    budget = test.max_memory_mb if test is not None else None
    result["memory_mb"] = {"peak_growth": peak, "budget": budget, "method": memory.method,
                           "free_memory_returned": memory.trimmed}
    if budget is not None and "load_ms" in result:
        if peak is None:
            failures.append("memory budget set but peak memory cannot be measured here")
        elif peak > budget:
            failures.append(f"peak memory {peak:.1f} MiB > budget {budget:.4g} MiB")
    result["passed"] = not failures
    if failures and loaded is not None:
        loaded.close()
        loaded = None
    return result, loaded


def _measure(
    loaded: LoadedModel,
    test: SmokeTest,
    inputs: dict[str, np.ndarray],
    reference: dict[str, np.ndarray],
    result: dict[str, Any],
    bound: tuple[float, int],
) -> None:
    """Accuracy over every sample, then latency. Raises ModelRuntimeError, ValueError."""
    feeds = encoded_feeds(loaded, inputs)
    result["samples"] = len(feeds)
    outputs, _ = run_feeds(loaded, feeds)
    declared = {s.name: s.shape for s in loaded.outputs}
    agreement = compare_outputs(outputs, reference, smoke_kinds(test), declared)
    result["agreement"] = _json_safe(agreement.to_dict())
    result["thresholds"] = {
        "max_abs_error": test.max_abs_error,
        "min_cosine": test.min_cosine,
        "min_top1_agreement": test.min_top1_agreement,
        "allow_nonfinite": test.allow_nonfinite,
        "outputs": [c.to_dict() for c in test.outputs],
    }
    result["failures"].extend(accuracy_failures(agreement, test))
    # Timed exactly as `satchel bundle build` times it on the build host: the first feed.
    feed = feeds[0]
    timings, stopped = _timed_runs(loaded, feed, test, *bound)
    p95 = percentile(timings, 95)
    result["latency_ms"] = {
        "p50": percentile(timings, 50),
        "p95": p95,
        "budget_p95": test.p95_latency_budget_ms,
        "warmup_runs": test.warmup_runs,
        "runs": len(timings),  # timed runs made
        "runs_asked": test.latency_runs,
        "stopped": stopped,  # STOPPED_AT_COUNT or STOPPED_AT_TIME
        "time_bound_s": bound[0],
        "min_runs": bound[1],
    }
    budget = test.p95_latency_budget_ms
    if budget is not None and p95 > budget:
        result["failures"].append(f"p95 latency {p95:.3g} ms > budget {budget:.4g} ms")


def _timed_runs(
    loaded: LoadedModel, feed: dict[str, np.ndarray], test: SmokeTest, latency_s: float,
    min_runs: int,
) -> tuple[list[float], str]:
    """Latency in ms of timed runs of `feed` after the test's warm-up runs: the
    `latency_runs` it asks for, but none begun once `latency_s` seconds of timed runs have
    passed and `min_runs` were made (a slow model's extra repetitions are bounded in time,
    as the build bounds its host's). Returns them and why they stopped."""
    for _ in range(test.warmup_runs):
        loaded.run(feed)
    latencies: list[float] = []
    spent = 0.0
    while len(latencies) < test.latency_runs:
        if spent >= latency_s and len(latencies) >= min_runs:
            return latencies, STOPPED_AT_TIME
        start = time.perf_counter()
        loaded.run(feed)
        took = time.perf_counter() - start
        latencies.append(took * 1000.0)
        spent += took
    return latencies, STOPPED_AT_COUNT


_DEFAULT_BOUND = (DEFAULT_CONFIG.smoke_latency_s, DEFAULT_CONFIG.smoke_min_latency_runs)


def run_all(
    manifest: Manifest, files: Path, threads: int | None = None,
    handoff: SessionHandoff | None = None, acceleration: Acceleration = CPU,
    bound: tuple[float, int] = _DEFAULT_BOUND,
) -> SmokeReport:
    """Run every smoke test of `manifest`; a model with no smoke test is at least loaded.

    With a `handoff`, the session of the model the server serves (the first), once its smoke
    test ran, is kept there when the whole report passes, for the server to take. `bound`:
    (seconds of timed latency runs, minimum count of them), see `_timed_runs`.
    """
    models = {m.name: m for m in manifest.models}
    planned: list[tuple[ModelEntry, SmokeTest | None]] = [
        (models[t.model], t) for t in manifest.smoke_tests
    ]
    tested = {t.model for t in manifest.smoke_tests}
    planned += [(m, None) for m in manifest.models if m.name not in tested]
    served = manifest.models[0].name if manifest.models else None
    kept: LoadedModel | None = None
    tests = []
    try:
        for model, test in planned:
            result, loaded = _run_keeping_session(model, test, files, threads, acceleration,
                                                  bound)
            tests.append(result)
            if loaded is None:
                continue
            # warmed up by its smoke test: the one session worth serving (one per model)
            if handoff is not None and kept is None and test is not None and model.name == served:
                kept = loaded
            else:
                loaded.close()
        failures = tuple(f"{t['model']}: {reason}" for t in tests for reason in t["failures"])
        variants: dict[str, Any] = {}
        if manifest.variants is not None:  # a failing variant is dropped, not a failure
            from satchel.agent.variants.install import judge_variants

            failures, variants = judge_variants(manifest, tests)
        if kept is not None and handoff is not None and not failures:
            handoff.keep((manifest.name, manifest.version, manifest.sequence), threads, kept)
            kept = None
    finally:
        if kept is not None:
            kept.close()
    return SmokeReport(passed=not failures, failures=failures, tests=tuple(tests),
                       variants=variants)


# --- runners --------------------------------------------------------------------------------


def _label(report: SmokeReport, isolation: str) -> SmokeReport:
    for test in report.tests:
        if isinstance(test.get("memory_mb"), dict):
            test["memory_mb"]["isolation"] = isolation
    return report


class InProcessSmokeRunner:
    """Runs smoke tests in this process, handing a passing session to `handoff` (if any)."""

    def __init__(
        self, config: AgentConfig = DEFAULT_CONFIG, handoff: SessionHandoff | None = None
    ) -> None:
        self.config = config
        self.handoff = handoff

    def run(self, manifest: Manifest, files: Path) -> SmokeReport:
        report = run_all(manifest, files, self.config.runtime_threads, self.handoff,
                         Acceleration.of(self.config), _bound_of(self.config))
        return _label(report, "in-process")


class ChildSmokeRunner:
    """Runs smoke tests in a fresh `python -m satchel.agent.install.smoketest` process."""

    def __init__(self, config: AgentConfig = DEFAULT_CONFIG) -> None:
        self.config = config

    def run(self, manifest: Manifest, files: Path) -> SmokeReport:
        import subprocess  # only here: 10 ms of imports an in-process smoke test does not need

        command = [sys.executable, "-m", "satchel.agent.install.smoketest", str(files)]
        if self.config.runtime_threads is not None:
            command += ["--threads", str(self.config.runtime_threads)]
        command += ["--latency-s", repr(self.config.smoke_latency_s),
                    "--min-latency-runs", str(self.config.smoke_min_latency_runs)]
        acceleration = Acceleration.of(self.config)
        if acceleration != CPU:
            command += ["--acceleration", json.dumps(acceleration.to_dict())]
        try:
            done = subprocess.run(
                command,
                input=manifest.to_bytes(),
                capture_output=True,
                timeout=self.config.smoke_child_timeout_s,
                check=False,
            )
            if done.returncode != 0:
                why = done.stderr.decode(errors="replace").strip().splitlines()
                raise RuntimeError(why[-1] if why else f"exit code {done.returncode}")
            return _label(SmokeReport.from_dict(json.loads(done.stdout)), "child")
        except (OSError, RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as e:
            reason = f"smoke test process failed: {e}"
            return SmokeReport(False, (reason,), ())


def _bound_of(config: AgentConfig) -> tuple[float, int]:
    return config.smoke_latency_s, config.smoke_min_latency_runs


def measures_honestly_in_process() -> bool:
    """True when this process can judge a memory budget itself: its peak counter resets
    and its allocator gives free memory back (Linux with glibc)."""
    return _malloc_trim() is not None and can_reset_peak_rss()


class AutoSmokeRunner:
    """In-process (the session may then serve), unless a smoke test sets a memory budget
    that this process cannot measure honestly: then in a child process."""

    def __init__(
        self, config: AgentConfig = DEFAULT_CONFIG, handoff: SessionHandoff | None = None
    ) -> None:
        self.in_process = InProcessSmokeRunner(config, handoff)
        self.child = ChildSmokeRunner(config)

    def run(self, manifest: Manifest, files: Path) -> SmokeReport:
        budgets = any(t.max_memory_mb is not None for t in manifest.smoke_tests)
        isolate = budgets and not measures_honestly_in_process()
        return (self.child if isolate else self.in_process).run(manifest, files)


def default_runner(config: AgentConfig = DEFAULT_CONFIG) -> SmokeRunner:
    """The runner `config.smoke_isolation` asks for: "auto", "in-process" or "child"; the
    first two hand a passing session to this process's server when it serves."""
    if config.smoke_isolation == "child":
        return ChildSmokeRunner(config)
    if config.smoke_isolation == "in-process":
        return InProcessSmokeRunner(config, current_handoff())
    return AutoSmokeRunner(config, current_handoff())


def _child_main(argv: list[str]) -> int:
    """`python -m satchel.agent.install.smoketest FILES [--threads N] [--acceleration JSON]
    [--latency-s S --min-latency-runs N]`: manifest on stdin, report on stdout."""
    options = dict(zip(argv[1::2], argv[2::2], strict=False))
    threads = int(options["--threads"]) if "--threads" in options else None
    acceleration = (Acceleration.from_dict(json.loads(options["--acceleration"]))
                    if "--acceleration" in options else CPU)
    bound = (float(options.get("--latency-s", _DEFAULT_BOUND[0])),
             int(options.get("--min-latency-runs", _DEFAULT_BOUND[1])))
    manifest = parse_manifest(sys.stdin.buffer.read())
    report = run_all(manifest, Path(argv[0]), threads, acceleration=acceleration, bound=bound)
    sys.stdout.write(json.dumps(report.to_dict(), allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
