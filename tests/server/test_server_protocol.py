"""The Open Inference Protocol as clients see it: every endpoint over TCP and the Unix socket,
Triton's binary tensor extension, tritonclient unchanged, and bad requests that get a 4xx
JSON error while the server goes on serving and the model's health is not charged."""

from __future__ import annotations

import gzip
import json
import socket
from dataclasses import replace

import numpy as np
import pytest
import requests

from tests.factory.model_makers import make_mlp_weights, mlp_forward
from tests.server.clients import infer_body, metric, unix_request
from tests.server.devices import CHANNEL, HIDDEN, IN_DIM, OUT_DIM, Device, Models, positive_inputs
from tests.server.servers import FAST, ServerFactory

WEIGHTS_1 = make_mlp_weights(IN_DIM, HIDDEN, OUT_DIM, seed=1)


@pytest.fixture
def served(device: Device, models: Models, start_server: ServerFactory) -> str:
    device.install(models.good, version="1.0.0", sequence=1)
    return start_server().url


def test_health_and_server_metadata_endpoints_answer(served: str) -> None:
    assert requests.get(f"{served}/v2/health/live").json() == {"live": True}
    assert requests.get(f"{served}/v2/health/ready").json() == {"ready": True}
    meta = requests.get(f"{served}/v2").json()
    assert meta["name"] == "satchel-agent"
    assert "binary_tensor_data" in meta["extensions"]


def test_model_metadata_names_the_channel_and_active_version(served: str) -> None:
    for path in (f"/v2/models/{CHANNEL}", f"/v2/models/{CHANNEL}/versions/1.0.0"):
        response = requests.get(served + path)
        assert response.status_code == 200
        assert response.json() == {
            "name": CHANNEL,
            "versions": ["1.0.0"],
            "platform": "onnxruntime_onnx",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, IN_DIM]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, OUT_DIM]}],
        }
    ready = requests.get(f"{served}/v2/models/{CHANNEL}/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True


def test_infer_with_json_data_matches_the_reference_model(served: str) -> None:
    x = positive_inputs(5)
    response = requests.post(
        f"{served}/v2/models/{CHANNEL}/infer", data=infer_body(x, id="req-7")
    )
    assert response.status_code == 200
    doc = response.json()
    assert doc["model_name"] == CHANNEL and doc["model_version"] == "1.0.0"
    assert doc["id"] == "req-7"
    (out,) = doc["outputs"]
    assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == [5, OUT_DIM]
    got = np.array(out["data"], np.float32).reshape(5, OUT_DIM)
    np.testing.assert_allclose(got, mlp_forward(WEIGHTS_1, x), atol=1e-4)


def test_infer_accepts_nested_data_and_filters_outputs(served: str) -> None:
    x = positive_inputs(2)
    body = {
        "inputs": [{"name": "input", "shape": [2, IN_DIM], "datatype": "FP32",
                    "data": x.tolist()}],
        "outputs": [{"name": "logits"}],
    }
    response = requests.post(f"{served}/v2/models/{CHANNEL}/versions/1.0.0/infer", json=body)
    assert response.status_code == 200
    assert [o["name"] for o in response.json()["outputs"]] == ["logits"]


def test_binary_tensor_data_round_trips_bit_exact(served: str) -> None:
    x = positive_inputs(3)
    header = json.dumps({
        "inputs": [{"name": "input", "shape": [3, IN_DIM], "datatype": "FP32",
                    "parameters": {"binary_data_size": x.nbytes}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    response = requests.post(
        f"{served}/v2/models/{CHANNEL}/infer",
        data=header + x.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 200
    json_length = int(response.headers["Inference-Header-Content-Length"])
    doc = json.loads(response.content[:json_length])
    (out,) = doc["outputs"]
    size = out["parameters"]["binary_data_size"]
    got = np.frombuffer(response.content[json_length : json_length + size], np.float32)
    np.testing.assert_allclose(got.reshape(3, OUT_DIM), mlp_forward(WEIGHTS_1, x), atol=1e-4)


def test_gzip_request_bodies_are_accepted(served: str) -> None:
    x = positive_inputs(1)
    response = requests.post(
        f"{served}/v2/models/{CHANNEL}/infer",
        data=gzip.compress(infer_body(x)),
        headers={"Content-Encoding": "gzip"},
    )
    assert response.status_code == 200


def test_every_endpoint_answers_on_the_unix_socket(device: Device, served: str) -> None:
    sock = device.state_dir / "agent.sock"
    for target in ("/v2/health/live", "/v2/health/ready", "/v2", f"/v2/models/{CHANNEL}",
                   f"/v2/models/{CHANNEL}/ready", "/metrics"):
        status, _, _ = unix_request(sock, "GET", target)
        assert status == 200, target
    x = positive_inputs(2)
    status, headers, body = unix_request(
        sock, "POST", f"/v2/models/{CHANNEL}/infer", infer_body(x)
    )
    assert status == 200 and headers["content-type"] == "application/json"
    got = np.array(json.loads(body)["outputs"][0]["data"], np.float32).reshape(2, OUT_DIM)
    np.testing.assert_allclose(got, mlp_forward(WEIGHTS_1, x), atol=1e-4)
    status, _, body = unix_request(sock, "GET", "/v2/models/nope")
    assert status == 404 and "error" in json.loads(body)


def test_tflite_release_serves_with_its_own_platform(
    device: Device, models: Models, start_server: ServerFactory
) -> None:
    device.install(models.tflite, version="2.0.0", sequence=1)
    url = start_server().url
    meta = requests.get(f"{url}/v2/models/{CHANNEL}").json()
    assert meta["platform"] == "tflite" and meta["versions"] == ["2.0.0"]
    x = positive_inputs(4)  # a batch the interpreter was not allocated for: it resizes
    doc = requests.post(f"{url}/v2/models/{CHANNEL}/infer", data=infer_body(x)).json()
    got = np.array(doc["outputs"][0]["data"], np.float32).reshape(4, OUT_DIM)
    np.testing.assert_allclose(got, mlp_forward(WEIGHTS_1, x), atol=1e-4)


def test_tritonclient_works_unchanged(served: str) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(served.removeprefix("http://"))
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(CHANNEL)
        assert client.get_server_metadata()["name"] == "satchel-agent"
        assert client.get_model_metadata(CHANNEL)["versions"] == ["1.0.0"]
        x = positive_inputs(4)
        for binary in (True, False):  # the client's default (binary) and plain JSON
            tensor = httpclient.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary)
            wanted = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
            for outputs in (None, wanted):
                result = client.infer(CHANNEL, [tensor], outputs=outputs, request_id="t1")
                np.testing.assert_allclose(
                    result.as_numpy("logits"), mlp_forward(WEIGHTS_1, x), atol=1e-4
                )
                assert result.get_response()["id"] == "t1"
        with pytest.raises(InferenceServerException, match="unknown model"):
            client.get_model_metadata("nope")
    finally:
        client.close()


def _good_input(**changes: object) -> dict[str, object]:
    entry: dict[str, object] = {
        "name": "input", "shape": [1, IN_DIM], "datatype": "FP32", "data": [0.5] * IN_DIM,
    }
    entry.update(changes)
    return entry


BAD_INFER_BODIES = {
    "malformed_json": b'{"inputs": [',
    "not_an_object": b"[1, 2, 3]",
    "no_inputs": b"{}",
    "empty_inputs": json.dumps({"inputs": []}).encode(),
    "unknown_input_name": json.dumps({"inputs": [_good_input(name="pixels")]}).encode(),
    "wrong_shape": json.dumps(
        {"inputs": [_good_input(shape=[1, IN_DIM - 1], data=[0.5] * (IN_DIM - 1))]}
    ).encode(),
    "data_count_mismatch": json.dumps({"inputs": [_good_input(data=[0.5] * 3)]}).encode(),
    "wrong_datatype": json.dumps(
        {"inputs": [_good_input(datatype="INT32", data=[1] * IN_DIM)]}
    ).encode(),
    "unknown_datatype": json.dumps({"inputs": [_good_input(datatype="FP8")]}).encode(),
    "ragged_data": json.dumps(
        {"inputs": [_good_input(shape=[2, 4], data=[[1.0, 2.0], [3.0]])]}
    ).encode(),
    "strings_in_data": json.dumps({"inputs": [_good_input(data=["0.5"] * IN_DIM)]}).encode(),
    "negative_dimension": json.dumps({"inputs": [_good_input(shape=[-1, IN_DIM])]}).encode(),
    "input_given_twice": json.dumps({"inputs": [_good_input(), _good_input()]}).encode(),
    "unknown_output": json.dumps(
        {"inputs": [_good_input()], "outputs": [{"name": "probabilities"}]}
    ).encode(),
    "binary_size_mismatch": json.dumps({"inputs": [_good_input(
        data=None, parameters={"binary_data_size": 7})]}).encode() + b"\0" * 7,
    "not_utf8": b"\xff\xfe{}",
}


@pytest.mark.parametrize("case", sorted(BAD_INFER_BODIES))
def test_bad_infer_request_gets_400_json_and_health_is_not_charged(
    served: str, case: str
) -> None:
    response = requests.post(f"{served}/v2/models/{CHANNEL}/infer", data=BAD_INFER_BODIES[case])
    assert response.status_code == 400
    assert isinstance(response.json()["error"], str) and response.json()["error"]
    metrics = requests.get(f"{served}/metrics").text
    assert metric(metrics, "satchel_inferences_total") == 0  # nothing was run or charged
    good = requests.post(f"{served}/v2/models/{CHANNEL}/infer", data=infer_body(
        positive_inputs(1)))
    assert good.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v2/models/nope/infer", 404),
        ("GET", "/v2/models/nope", 404),
        ("GET", "/v2/models/nope/ready", 404),
        ("GET", f"/v2/models/{CHANNEL}/versions/9.9.9", 404),
        ("POST", f"/v2/models/{CHANNEL}/versions/9.9.9/infer", 404),
        ("GET", "/v2/nothing/here", 404),
        ("GET", f"/v2/models/{CHANNEL}/infer", 405),
        ("POST", "/v2/health/live", 405),
        ("DELETE", f"/v2/models/{CHANNEL}", 405),
    ],
)
def test_wrong_paths_and_methods_get_json_errors(
    served: str, method: str, path: str, status: int
) -> None:
    response = requests.request(method, served + path, data=infer_body(positive_inputs(1)))
    assert response.status_code == status
    assert "error" in response.json()


def test_header_length_beyond_the_body_is_refused(served: str) -> None:
    response = requests.post(
        f"{served}/v2/models/{CHANNEL}/infer",
        data=infer_body(positive_inputs(1)),
        headers={"Inference-Header-Content-Length": "100000"},
    )
    assert response.status_code == 400 and "does not fit" in response.json()["error"]


def test_oversized_body_gets_413_and_the_server_goes_on(
    device: Device, models: Models, start_server: ServerFactory
) -> None:
    device.install(models.good, version="1.0.0", sequence=1)
    config = replace(FAST, max_body_bytes=1024)
    url = start_server(config=config).url
    big = infer_body(positive_inputs(64))
    response = requests.post(f"{url}/v2/models/{CHANNEL}/infer", data=big)
    assert response.status_code == 413 and "error" in response.json()
    assert requests.get(f"{url}/v2/health/live").status_code == 200


def test_garbage_on_the_wire_gets_400_json_not_a_dead_server(served: str) -> None:
    host, port = served.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01 this is not http\r\n\r\n")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    assert b'"error"' in reply
    assert requests.get(f"{served}/v2/health/live").status_code == 200


def test_finite_outputs_are_encoded_alike_both_ways_and_nonfinite_ones_as_tokens() -> None:
    from satchel.agent.server.protocol import encode_infer_response

    a = np.array([[0.1, -2.5e-7, 3e38, 7.0]], np.float32)
    b = np.array([[1, 2]], np.int64)
    outputs = [("a", a, False), ("b", b, False), ("c", a, True)]
    args = ("m", "1.0.0", "r-1", outputs, {"variant": "lite"})
    fast, fast_length = encode_infer_response(*args, finite=True)
    slow, slow_length = encode_infer_response(*args)
    assert fast_length is not None and slow_length is not None
    assert json.loads(fast[:fast_length]) == json.loads(slow[:slow_length])
    assert fast[fast_length:] == slow[slow_length:] == a.tobytes()
    body, _ = encode_infer_response("m", "1", None, [("a", np.array([np.nan, np.inf]), False)])
    assert b"[NaN,Infinity]" in body
