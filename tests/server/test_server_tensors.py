"""The pure codecs behind BYTES tensors and the classification extension."""

from __future__ import annotations

import numpy as np
import pytest

from satchel.agent.server import tensors
from satchel.agent.server.errors import BadRequestError


def test_binary_bytes_round_trip_keeps_empty_and_non_ascii_strings() -> None:
    strings = np.array(["", "cat", "héllo", "a" * 300], dtype=object)
    encoded = tensors.encode_binary(strings)
    decoded = tensors.strings_from_binary(memoryview(encoded), len(strings), "text")
    assert decoded.tolist() == strings.tolist()


def test_binary_bytes_with_an_extra_element_is_refused() -> None:
    encoded = tensors.encode_binary(np.array(["a", "b"], dtype=object))
    with pytest.raises(BadRequestError, match="more than 1 elements"):
        tensors.strings_from_binary(memoryview(encoded), 1, "text")


def test_classification_of_a_vector_clips_k_to_the_classes() -> None:
    top = tensors.classify(np.array([0.1, 0.7, 0.2], np.float32), 5, "scores")
    assert [s.split(":")[1] for s in top.tolist()] == ["1", "2", "0"]


def test_classification_of_strings_is_refused() -> None:
    with pytest.raises(BadRequestError, match="no class scores"):
        tensors.classify(np.array(["a"], dtype=object), 1, "names")
