"""The SPEC's sample layout, written again on purpose for the catalogue's own checks: the
models are checked against it without the product's `satchel.agent.runtimes.samples`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from satchel.agent.runtimes import TensorSpec


def fits(shape: Sequence[int], declared: Sequence[int]) -> bool:
    return len(shape) == len(declared) and all(
        want == -1 or want == got for want, got in zip(declared, shape, strict=True)
    )


def split_feeds(samples: Mapping[str, np.ndarray], specs: Sequence[TensorSpec]) -> list[dict]:
    """Feeds from an npz in the SPEC layout; fails the test when the layout is not followed."""
    single: dict[str, np.ndarray] = {}
    stacked: dict[str, np.ndarray] = {}
    for spec in specs:
        array = np.asarray(samples[spec.name])
        if fits(array.shape, spec.shape):
            single[spec.name] = array
        elif array.ndim == len(spec.shape) + 1 and fits(array.shape[1:], spec.shape):
            stacked[spec.name] = array
        else:
            pytest.fail(f"{spec.name}: shape {array.shape} fits neither {spec.shape} nor N x it")
    counts = {len(array) for array in stacked.values()}
    assert len(counts) <= 1, f"stacked inputs disagree on the feed count: {counts}"
    count = counts.pop() if counts else 1
    return [{**single, **{k: v[i] for k, v in stacked.items()}} for i in range(count)]
