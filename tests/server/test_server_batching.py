"""How many waiting requests a pool worker runs at once: batches only where they have been
cheaper per request than single runs, learnt per model (agent.server.batching), and the
pool following that advice."""

from __future__ import annotations

import threading
import time
from typing import cast

import pytest

from satchel.agent.server.batching import BatchChooser
from satchel.agent.server.inference import InferAnswer, InferCall, InferenceService
from satchel.agent.server.pool import InferencePool, InferJob

MODEL = ("cam", None)


def _learnt(single_s: float, batch_s: dict[int, float], **kwargs: float) -> BatchChooser:
    chooser = BatchChooser(8, **kwargs)  # type: ignore[arg-type]
    chooser.ran(MODEL, 1, single_s)
    for n, seconds in batch_s.items():
        chooser.ran(MODEL, n, seconds)
    return chooser


def test_a_lone_request_is_never_held_for_company() -> None:
    chooser = BatchChooser(8)
    assert chooser.size(MODEL, 1) == 1
    assert chooser.size(MODEL, 0) == 1


def test_an_untried_batch_size_is_tried_then_a_single_run_to_compare() -> None:
    chooser = BatchChooser(8)
    assert chooser.size(MODEL, 4) == 4  # never run: learn its cost
    chooser.ran(MODEL, 4, 0.004)
    assert chooser.size(MODEL, 4) == 1  # no single run known yet
    chooser.ran(MODEL, 1, 0.002)
    assert chooser.size(MODEL, 4) == 4  # 1 ms a request beats 2 ms


def test_a_batch_dearer_per_request_than_single_runs_is_split() -> None:
    # a model whose weights are packed again for every batched run: two rows cost 3x one
    chooser = _learnt(0.001, {2: 0.003, 8: 0.004})
    assert chooser.size(MODEL, 2) == 1
    assert chooser.size(MODEL, 8) == 8  # from eight rows the batch pays


def test_more_requests_at_hand_than_max_batch_take_max_batch() -> None:
    chooser = _learnt(0.001, {8: 0.002})
    assert chooser.size(MODEL, 30) == 8


def test_every_explore_every_th_choice_tries_the_advised_against_option() -> None:
    chooser = _learnt(0.001, {2: 0.003}, explore_every=4)
    choices = [chooser.size(MODEL, 2) for _ in range(8)]
    assert choices.count(2) == 2 and choices.count(1) == 6


def test_the_means_follow_a_model_whose_costs_change() -> None:
    chooser = _learnt(0.001, {4: 0.008})
    assert chooser.size(MODEL, 4) == 1
    for _ in range(20):
        chooser.ran(MODEL, 4, 0.001)  # e.g. a release with prepacked weights
    assert chooser.size(MODEL, 4) == 4


def test_models_are_learnt_apart() -> None:
    chooser = _learnt(0.001, {2: 0.003})
    assert chooser.size(MODEL, 2) == 1
    assert chooser.size(("cam", "2.0.0"), 2) == 2  # another release: tried afresh


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_batch": 4, "explore_every": 1},
                                    {"max_batch": 4, "weight": 0.0}])
def test_a_chooser_refuses_settings_it_cannot_work_with(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BatchChooser(**kwargs)  # type: ignore[arg-type]


# --- the pool ----------------------------------------------------------------------------


class _CostedService:
    """Stands for the inference service with a run whose wall time per call is set by the
    batch size (what onnxruntime's own costs would do, without the machine's noise). A call
    on channel "hold" waits for `gate`, so a burst can queue behind it."""

    def __init__(self, seconds: dict[int, float]) -> None:
        self.seconds = seconds
        self.batches: list[int] = []
        self.holding = threading.Event()
        self.gate = threading.Event()

    def infer_many(self, calls: list[InferCall]) -> list[InferAnswer]:
        if calls[0].channel == "hold":
            self.holding.set()
            assert self.gate.wait(10)
        else:
            self.batches.append(len(calls))
            time.sleep(self.seconds[len(calls)])
        return [InferAnswer(b"{}", None, None) for _ in calls]


def _serve_bursts(service: _CostedService, bursts: int, size: int) -> list[int]:
    """Queue `bursts` bursts of `size` requests at a one-worker pool, each behind a held
    request, one burst at a time; the batch sizes it ran them in."""
    answered = threading.Semaphore(0)

    def done(results: list[tuple[InferJob, object]]) -> None:
        for _ in results:
            answered.release()

    pool = InferencePool(cast(InferenceService, service), done, workers=1, max_batch=8,
                         max_body_bytes=1 << 20)
    pool.start()
    try:
        for _ in range(bursts):
            service.holding.clear()
            service.gate.clear()
            pool.submit(InferJob("hold", InferCall("hold", None, b"{}", None)))
            assert service.holding.wait(10)
            for i in range(size):
                pool.submit(InferJob(i, InferCall("cam", None, b"{}", None)))
            service.gate.set()
            for _ in range(size + 1):
                assert answered.acquire(timeout=10)
    finally:
        pool.stop(5)
    return service.batches


def test_the_pool_splits_bursts_of_a_model_whose_batches_cost_more() -> None:
    service = _CostedService({1: 0.002, 2: 0.012, 3: 0.018, 4: 0.024})  # 6 ms a request
    # batched, 2 ms alone
    batches = _serve_bursts(service, bursts=12, size=4)
    # the first burst tries a batch of 4, then a single run; the rest run one by one (a
    # split burst leaves 3, 2 at hand: each size is tried once, then split too)
    assert batches.count(4) == 1
    assert batches.count(1) >= 12 * 4 - 4 - 2 * 3


def test_the_pool_batches_bursts_of_a_model_whose_batches_cost_less() -> None:
    service = _CostedService({1: 0.004, 2: 0.004, 3: 0.004, 4: 0.004})  # at most 2 ms a
    # request batched, 4 ms alone
    batches = _serve_bursts(service, bursts=12, size=4)
    assert batches.count(4) >= 12 - 2
