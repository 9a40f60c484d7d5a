"""How many waiting infer requests a pool worker runs at once, learnt per model from what
running them cost.

Running waiting requests as one batch is not always cheaper per request than running them
one by one. A model whose weights onnxruntime maps from the file and may not prepack (one
tensor holds over 1/8 of them: agent.runtimes.onnx) packs the whole weight matrix again in
every batched product, so small batches cost more per row than single runs; a model with
prepacked weights gains from two rows on (bench/batch_costs.py). So the pool does not guess: per
(channel, version) it keeps the mean cost per request of each batch size it has run (an
exponentially weighted mean of wall time, parsing and answering included), and with n
requests at hand takes all n when a batch of n has been cheaper per request than single
runs, else one, leaving the rest to the next free worker. A size never run yet is tried
once; every `explore_every`-th choice tries the other option, so the means follow the load.
Pure: no threads, no clock; the pool measures and calls it under its own lock.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

EXPLORE_EVERY = 64  # choices between tries of the option the means advise against
WEIGHT = 0.2  # weight of the newest cost in each mean
MAX_MODELS = 64  # (channel, version) keys remembered; more clears them all


@dataclass
class _Costs:
    per_request_s: dict[int, float] = field(default_factory=dict)  # batch size -> mean
    choices: int = 0


class BatchChooser:
    """Per model, how many of the requests at hand one run takes (see the module)."""

    def __init__(self, max_batch: int, *, explore_every: int = EXPLORE_EVERY,
                 weight: float = WEIGHT) -> None:
        if max_batch < 1 or explore_every < 2 or not 0 < weight <= 1:
            raise ValueError("a batch chooser needs max_batch >= 1, explore_every >= 2 and "
                             "0 < weight <= 1")
        self.max_batch = max_batch
        self._explore_every = explore_every
        self._weight = weight
        self._models: dict[Hashable, _Costs] = {}

    def size(self, model: Hashable, at_hand: int) -> int:
        """How many of the `at_hand` requests (the oldest one included) to run at once."""
        n = min(at_hand, self.max_batch)
        if n <= 1:
            return 1
        costs = self._costs(model)
        costs.choices += 1
        batch = costs.per_request_s.get(n)
        if batch is None:
            return n  # learn what a batch of n costs
        single = costs.per_request_s.get(1)
        if single is None:
            return 1  # learn what a single run costs
        advised = n if batch < single else 1
        if costs.choices % self._explore_every == 0:
            return 1 if advised == n else n
        return advised

    def ran(self, model: Hashable, requests: int, seconds: float) -> None:
        """`requests` requests for `model` ran together in `seconds` (wall time)."""
        if requests < 1 or seconds < 0:
            return
        per_request = seconds / requests
        means = self._costs(model).per_request_s
        old = means.get(requests)
        means[requests] = per_request if old is None else (
            old + self._weight * (per_request - old))

    def _costs(self, model: Hashable) -> _Costs:
        costs = self._models.get(model)
        if costs is None:
            if len(self._models) >= MAX_MODELS:
                self._models.clear()
            costs = self._models[model] = _Costs()
        return costs
