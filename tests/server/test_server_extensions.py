"""The Open Inference Protocol's extensions as tritonclient uses them: statistics, the
repository index, kept releases addressed by version, request parameters (the request id,
classification, per-output binary data), BYTES tensors, and the access log's request ids."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from satchel.bundles.logsetup import JsonFormatter
from tests.factory.model_makers import make_mlp_weights, mlp_forward
from tests.server.clients import infer_body
from tests.server.devices import CHANNEL, HIDDEN, IN_DIM, OUT_DIM, Device, Models, positive_inputs
from tests.server.servers import ServerFactory, wait_for
from tests.server.string_models import NAMES, UNKNOWN, WORDS, OneChannelState, words_release

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

WEIGHTS_1 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=1)
WEIGHTS_2 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=2)


def _client(url: str) -> Any:
    return httpclient.InferenceServerClient(url.removeprefix("http://"))


@pytest.fixture
def served(device: Device, models: Models, start_server: ServerFactory) -> str:
    device.install(models.good, version="1.0.0", sequence=1)
    return start_server().url


@pytest.fixture
def three_kept(device: Device, models: Models, start_server: ServerFactory) -> str:
    """3.0.0 active on probation, 2.0.0 (other weights) loaded beside it as the rollback
    target, 1.0.0 kept on disk only."""
    device.install(models.good, version="1.0.0", sequence=1)
    device.install(models.other, version="2.0.0", sequence=2)
    device.install(models.good, version="3.0.0", sequence=3)
    url = start_server().url
    wait_for(lambda: requests.get(f"{url}/v2/models/{CHANNEL}").json().get("versions")
             == ["3.0.0"])
    return url


@pytest.fixture
def words(device: Device, tmp_path: Path, start_server: ServerFactory) -> str:
    return start_server(state=OneChannelState(words_release(tmp_path / "words"))).url


def _vision_input(x: np.ndarray, *, binary: bool = True) -> Any:
    tensor = httpclient.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    return tensor


# --- statistics ---------------------------------------------------------------------------


def test_statistics_count_what_the_release_answered(served: str) -> None:
    client = _client(served)
    before_ms = int(time.time() * 1000)
    rows = 0
    try:
        for n, binary in ((1, True), (3, False), (2, True)):
            client.infer(CHANNEL, [_vision_input(positive_inputs(n), binary=binary)])
            rows += n
        bad = requests.post(f"{served}/v2/models/{CHANNEL}/infer", json={"inputs": [
            {"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
        assert bad.status_code == 400
        for stats in (
            client.get_inference_statistics(CHANNEL),
            client.get_inference_statistics(CHANNEL, "1.0.0"),
            client.get_inference_statistics(),
        ):
            (model,) = stats["model_stats"]
            assert model["name"] == CHANNEL and model["version"] == "1.0.0"
            assert model["inference_count"] == rows
            assert model["execution_count"] == 3
            assert before_ms <= model["last_inference"] <= int(time.time() * 1000)
            phases = model["inference_stats"]
            assert phases["success"]["count"] == 3 and phases["fail"]["count"] == 1
            for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
                assert phases[phase]["count"] == 3 and phases[phase]["ns"] > 0
            assert phases["success"]["ns"] >= phases["compute_infer"]["ns"]
            assert sum(b["compute_infer"]["count"] for b in model["batch_stats"]) == 3
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.get_inference_statistics("nope")
    finally:
        client.close()


# --- repository index and kept releases -----------------------------------------------------


def test_repository_index_lists_every_kept_release_with_its_state(three_kept: str) -> None:
    client = _client(three_kept)
    try:
        index = client.get_model_repository_index()
    finally:
        client.close()
    by_version = {entry["version"]: entry for entry in index}
    assert all(entry["name"] == CHANNEL for entry in index) and len(index) == 3
    assert by_version["3.0.0"]["state"] == "READY"
    assert by_version["2.0.0"]["state"] == "READY"  # the rollback target, loaded
    assert by_version["1.0.0"]["state"] == "UNAVAILABLE"
    assert "not loaded" in by_version["1.0.0"]["reason"]
    ready = requests.post(f"{three_kept}/v2/repository/index", json={"ready": True}).json()
    assert sorted(entry["version"] for entry in ready) == ["2.0.0", "3.0.0"]


@pytest.mark.parametrize(
    ("body", "status"),
    [(b'{"ready": "yes"}', 400), (b"[1]", 400), (b"{", 400), (b" " * (65 * 1024), 413)],
)
def test_bad_repository_index_request_gets_json_error(served: str, body: bytes,
                                                      status: int) -> None:
    response = requests.post(f"{served}/v2/repository/index", data=body)
    assert response.status_code == status and response.json()["error"]
    assert requests.post(f"{served}/v2/repository/index").json() == [
        {"name": CHANNEL, "version": "1.0.0", "state": "READY", "reason": ""}]


def test_kept_releases_are_addressable_by_version(three_kept: str) -> None:
    client = _client(three_kept)
    x = positive_inputs(2)
    try:
        old = client.get_model_metadata(CHANNEL, model_version="1.0.0")  # from its manifest
        assert old["versions"] == ["1.0.0"] and old["platform"] == "onnxruntime_onnx"
        assert old["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, IN_DIM]}]
        assert client.get_model_metadata(CHANNEL, model_version="2.0.0")["versions"] == ["2.0.0"]
        assert client.is_model_ready(CHANNEL, "2.0.0")
        assert not client.is_model_ready(CHANNEL, "1.0.0")

        result = client.infer(CHANNEL, [_vision_input(x)], model_version="2.0.0")
        assert result.get_response()["model_version"] == "2.0.0"
        np.testing.assert_allclose(result.as_numpy("logits"), mlp_forward(WEIGHTS_2, x),
                                   atol=1e-4)
        result = client.infer(CHANNEL, [_vision_input(x)])
        assert result.get_response()["model_version"] == "3.0.0"

        with pytest.raises(InferenceServerException, match="kept on this device but not loaded"):
            client.infer(CHANNEL, [_vision_input(x)], model_version="1.0.0")
        with pytest.raises(InferenceServerException, match="no version '9.9.9' on this device"):
            client.infer(CHANNEL, [_vision_input(x)], model_version="9.9.9")
        with pytest.raises(InferenceServerException, match="no version '9.9.9' on this device"):
            client.get_model_metadata(CHANNEL, model_version="9.9.9")
    finally:
        client.close()
    response = requests.post(f"{three_kept}/v2/models/{CHANNEL}/versions/1.0.0/infer",
                             data=infer_body(x))
    assert response.status_code == 409 and "\n" not in response.json()["error"]


# --- request parameters ---------------------------------------------------------------------


def test_request_id_is_echoed_and_unknown_parameters_are_ignored(served: str) -> None:
    x = positive_inputs(2)
    body = {
        "id": "req-42",
        "parameters": {"priority": 3, "timeout": 100, "something_new": {"a": 1}},
        "inputs": [{"name": "input", "shape": [2, IN_DIM], "datatype": "FP32",
                    "data": x.ravel().tolist(), "parameters": {"note": "hello"}}],
        "outputs": [{"name": "logits", "parameters": {"what": True}}],
    }
    response = requests.post(f"{served}/v2/models/{CHANNEL}/infer", json=body)
    assert response.status_code == 200
    doc = response.json()
    assert doc["id"] == "req-42"
    got = np.array(doc["outputs"][0]["data"], np.float32).reshape(2, OUT_DIM)
    np.testing.assert_allclose(got, mlp_forward(WEIGHTS_1, x), atol=1e-4)


def test_classification_answers_the_top_classes_of_each_row(served: str) -> None:
    x = positive_inputs(3)
    expected = mlp_forward(WEIGHTS_1, x)
    best = np.argsort(-expected, axis=1)[:, :2]
    client = _client(served)
    try:
        for binary in (True, False):
            wanted = [httpclient.InferRequestedOutput("logits", binary_data=binary,
                                                      class_count=2)]
            result = client.infer(CHANNEL, [_vision_input(x)], outputs=wanted)
            top = result.as_numpy("logits")
            assert top.shape == (3, 2)
            for row in range(3):
                for rank in range(2):
                    text = top[row, rank]
                    score, index = (text.decode() if isinstance(text, bytes) else text).split(":")
                    assert int(index) == best[row, rank]
                    assert float(score) == pytest.approx(expected[row, best[row, rank]],
                                                         abs=1e-4)
    finally:
        client.close()


# --- BYTES tensors --------------------------------------------------------------------------


def test_bytes_tensors_round_trip_through_a_string_model(words: str) -> None:
    client = _client(words)
    text = np.array(["cat", "dog", "fish", "bird", "héllo"], dtype=object)
    expected_labels = [0, 1, -1, 2, -1]
    expected_names = [NAMES.get(label, UNKNOWN) for label in expected_labels]
    try:
        meta = client.get_model_metadata(WORDS)
        assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
        for binary in (True, False):
            tensor = httpclient.InferInput("text", [len(text)], "BYTES")
            tensor.set_data_from_numpy(text, binary_data=binary)
            wanted = [httpclient.InferRequestedOutput(name, binary_data=binary)
                      for name in ("label", "name")]
            result = client.infer(WORDS, [tensor], outputs=wanted)
            assert result.as_numpy("label").tolist() == expected_labels
            names = [n.decode() if isinstance(n, bytes) else n
                     for n in result.as_numpy("name").tolist()]
            assert names == expected_names
            assert result.get_output("name")["datatype"] == "BYTES"
    finally:
        client.close()
    nested = {"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                          "data": [["cat"], ["dog"]]}]}
    doc = requests.post(f"{words}/v2/models/{WORDS}/infer", json=nested).json()
    assert {o["name"]: o["data"] for o in doc["outputs"]} == {
        "label": [0, 1], "name": ["Cat", "Dog"]}


BAD_BYTES = {
    "numbers_as_strings": (json.dumps({"inputs": [
        {"name": "text", "shape": [2], "datatype": "BYTES", "data": [1, 2]}]}).encode(), None),
    "too_few_strings": (json.dumps({"inputs": [
        {"name": "text", "shape": [3], "datatype": "BYTES", "data": ["a", "b"]}]}).encode(),
        None),
    "length_past_the_data": (b"\x09\x00\x00\x00cat", 7),
    "not_utf8": (b"\x02\x00\x00\x00\xff\xfe", 6),
}


@pytest.mark.parametrize("case", sorted(BAD_BYTES))
def test_bad_bytes_input_gets_one_line_400(words: str, case: str) -> None:
    body, binary_size = BAD_BYTES[case]
    headers = {}
    if binary_size is not None:
        header = json.dumps({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                         "parameters": {"binary_data_size": binary_size}}]})
        headers["Inference-Header-Content-Length"] = str(len(header))
        body = header.encode() + body
    response = requests.post(f"{words}/v2/models/{WORDS}/infer", data=body, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error and "\n" not in error
    good = {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["cat"]}]}
    assert requests.post(f"{words}/v2/models/{WORDS}/infer", json=good).status_code == 200


def test_bytes_into_a_float_model_says_which_datatypes_it_takes(served: str) -> None:
    client = _client(served)
    try:
        tensor = httpclient.InferInput("input", [1, IN_DIM], "BYTES")
        tensor.set_data_from_numpy(np.array([["x"] * IN_DIM], dtype=object))
        with pytest.raises(InferenceServerException, match="takes input FP32"):
            client.infer(CHANNEL, [tensor])
    finally:
        client.close()
    body = {"inputs": [{"name": "input", "shape": [1, IN_DIM], "datatype": "BYTES",
                        "data": ["x"] * IN_DIM}]}
    response = requests.post(f"{served}/v2/models/{CHANNEL}/infer", json=body)
    assert response.status_code == 400
    assert response.json()["error"] == (
        f"input 'input' is BYTES, but model '{CHANNEL}' takes input FP32")


# --- the access log -------------------------------------------------------------------------


@pytest.fixture
def access_records() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("satchel.agent.server.access")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_access_lines_carry_each_requests_id(
    served: str, access_records: list[logging.LogRecord]
) -> None:
    requests.post(f"{served}/v2/models/{CHANNEL}/infer",
                  data=infer_body(positive_inputs(1), id="infer-7"))
    requests.get(f"{served}/v2/health/ready", headers={"X-Request-ID": "probe-1"})
    requests.get(f"{served}/v2/models/{CHANNEL}")
    wait_for(lambda: len(access_records) >= 3)
    lines = [json.loads(JsonFormatter().format(r)) for r in access_records[:3]]
    assert [line["request_id"] for line in lines[:2]] == ["infer-7", "probe-1"]
    assert lines[2]["request_id"]  # made up when the request carries none
    assert [(line["method"], line["status"]) for line in lines] == [
        ("POST", 200), ("GET", 200), ("GET", 200)]
    assert lines[0]["path"] == f"/v2/models/{CHANNEL}/infer"
