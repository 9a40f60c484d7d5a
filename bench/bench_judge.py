"""The per-copy cost of the shadow stage's comparison: the full smoke-test comparison
(`compare_outputs` + `accuracy_failures`, every figure) against the compiled `SmokeJudge`
(only the figures the thresholds in force read), on passing pairs of one field request.

`python -m bench.bench_judge [--copies N] [--repeats R]` prints one JSON object: per case,
the CPU time of this thread per copy in microseconds (the best of R repeats of N copies, so
a phase another program disturbed does not count), for both paths, and their ratio.
Not a timed assertion: figures for docs and reports.

`python -m bench.bench_judge --staging-full [bench_staging args]` runs `bench.bench_staging`
with the shadow stage forced onto the full comparison for every copy (as before the judge),
to compare its shadow cost with a plain `python -m bench.bench_staging` run.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from satchel.bundles.judge import SmokeJudge
from satchel.bundles.manifest import SmokeTest
from satchel.bundles.smoke import accuracy_failures, compare_outputs, default_check

RNG = np.random.default_rng(0)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _near(a: np.ndarray, scale: float) -> np.ndarray:
    return (a + RNG.normal(0, scale, a.shape)).astype(a.dtype)


def _cases() -> list[tuple[str, SmokeTest, dict[str, str], dict[str, np.ndarray],
                           dict[str, np.ndarray]]]:
    """(name, smoke test, kinds, candidate outputs, active outputs) of one request each."""
    legacy = SmokeTest("main", "i.npz", "r.npz", max_abs_error=1e-3)
    cases = []
    probs = _softmax(RNG.standard_normal((1, 10)))
    # bench_staging's release: an MLP's 10 class scores, a legacy max_abs_error test
    cases.append(("mlp_classes10_legacy", legacy, {"probs": "classes"},
                  {"probs": _near(probs, 1e-5)}, {"probs": probs}))
    shapes: list[tuple[str, str, np.ndarray, float]] = [
        ("classes1000", "classes", _softmax(RNG.standard_normal((1, 1000))), 1e-5),
        ("embedding512", "embedding", RNG.standard_normal((1, 512)).astype(np.float32), 1e-3),
        ("boxes100x4", "tensor", RNG.uniform(0, 320, (1, 100, 4)).astype(np.float32), 0.1),
        ("mask128x128", "tensor", RNG.uniform(0, 1, (1, 1, 128, 128)).astype(np.float32), 1e-3),
        ("score", "score", np.full((1, 1), 0.3, np.float32), 1e-4),
        ("fp16_classes10", "classes", _softmax(RNG.standard_normal((1, 10))).astype(np.float16),
         1e-4),
    ]
    for name, kind, ref, noise in shapes:
        test = SmokeTest("main", "i.npz", "r.npz",
                         outputs=(default_check("y", kind, with_reference=True),))
        cases.append((f"{name}_default", test, {"y": kind}, {"y": _near(ref, noise)},
                      {"y": ref}))
    labels = RNG.integers(0, 80, (1, 5))
    test = SmokeTest("main", "i.npz", "r.npz",
                     outputs=(default_check("y", "labels", with_reference=True),))
    cases.append(("labels5_default", test, {"y": "labels"}, {"y": labels.copy()},
                  {"y": labels}))
    return cases


def _cpu_us(fn: Callable[[], object], copies: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.thread_time_ns()
        for _ in range(copies):
            fn()
        best = min(best, (time.thread_time_ns() - started) / copies / 1000)
    return best


def run(copies: int, repeats: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, test, kinds, out, ref in _cases():
        judge = SmokeJudge(test, kinds)

        def full(out: dict[str, np.ndarray] = out, ref: dict[str, np.ndarray] = ref,
                 test: SmokeTest = test, kinds: dict[str, str] = kinds) -> list[str]:
            return accuracy_failures(compare_outputs(out, ref, kinds), test)

        assert full() == [] and judge.failures(out, ref) == [], name  # passing pairs
        before = _cpu_us(full, copies, repeats)

        def fast(judge: SmokeJudge = judge, out: dict[str, np.ndarray] = out,
                 ref: dict[str, np.ndarray] = ref) -> list[str]:
            return judge.failures(out, ref)

        after = _cpu_us(fast, copies, repeats)
        results[name] = {"full_us": round(before, 1), "judge_us": round(after, 1),
                         "speedup": round(before / after, 1)}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--copies", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--staging-full", nargs=argparse.REMAINDER, metavar="ARGS",
                        help="run bench_staging (with ARGS) with the shadow stage on the full "
                             "comparison for every copy, as before the compiled judge")
    args = parser.parse_args(argv)
    if args.staging_full is not None:
        from bench import bench_staging

        SmokeJudge.passes = lambda self, outputs, reference: False  # type: ignore[method-assign]
        bench_staging.main(args.staging_full)
        return
    print(json.dumps(run(args.copies, args.repeats), indent=2))


if __name__ == "__main__":
    main()
