"""Manifests that are correctly signed by a trusted key but must still be refused: malformed or
non-canonical JSON, unknown format versions, missing, mistyped or unexpected fields, expiry.

Each hostile manifest is re-signed by the trusted signing key, so the refusal comes from the
manifest itself and not from a broken signature.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from satchel.bundles.canonical import decode_canonical, decode_json, encode_canonical
from satchel.bundles.errors import (
    ExpiredError,
    MalformedJSONError,
    MissingFieldError,
    TooLargeError,
    UnexpectedFieldError,
    UnknownFormatVersionError,
    WrongTypeError,
)
from satchel.bundles.manifest import parse_manifest
from tests.factory.bundles import CREATED, BuiltBundle, build_test_bundle
from tests.factory.device import NOW, Device
from tests.factory.keys import Keyring
from tests.factory.tar import lie_about_size

Mutation = Callable[[dict[str, Any]], Any]


def _signed(tmp_path: Path, keys: Keyring, mutate: Mutation, **kw: Any) -> bytes:
    return build_test_bundle(tmp_path / "b.satchel", keys=keys, mutate_manifest=mutate, **kw).data


def _replace(old: bytes, new: bytes) -> Mutation:
    def mutate(doc: dict[str, Any]) -> bytes:
        raw = encode_canonical(doc)
        assert old in raw
        return raw.replace(old, new, 1)

    return mutate


# --- malformed and non-canonical JSON ------------------------------------------------------

MALFORMED = {
    "not-json": lambda doc: b"this is not json",
    "empty": lambda doc: b"",
    "not-utf8": _replace(b'"vision"', b'"vis\xffion"'),
    "utf8-bom": lambda doc: b"\xef\xbb\xbf" + encode_canonical(doc),
    "truncated": lambda doc: encode_canonical(doc)[:-1],
    "duplicate-key": _replace(b'"name":"vision"', b'"name":"evil","name":"vision"'),
    "nan": _replace(b'"max_abs_error":0.1', b'"max_abs_error":NaN'),
    "infinity": _replace(b'"max_abs_error":0.1', b'"max_abs_error":Infinity'),
    "overflowing-float": _replace(b'"max_abs_error":0.1', b'"max_abs_error":1e999'),
    "huge-integer": _replace(b'"sequence":1', b'"sequence":' + b"9" * 5000),
    "lone-surrogate": _replace(b'"name":"vision"', b'"description":"\\ud800","name":"vision"'),
    "deep-nesting": lambda doc: b'{"build":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("mutate", MALFORMED.values(), ids=MALFORMED.keys())
def test_manifest_that_is_not_strict_json_is_refused(
    tmp_path: Path, keys: Keyring, device: Device, mutate: Mutation
) -> None:
    device.refuses(_signed(tmp_path, keys, mutate), MalformedJSONError)


NON_CANONICAL = {
    "pretty-printed": lambda doc: json.dumps(doc, indent=2, sort_keys=True).encode(),
    "unsorted-keys": lambda doc: json.dumps(dict(reversed(doc.items())), separators=(",", ":"))
    .encode(),
    "spaces": lambda doc: json.dumps(doc, sort_keys=True).encode(),
    "trailing-newline": lambda doc: encode_canonical(doc) + b"\n",
    "escaped-non-ascii": lambda doc: json.dumps(
        {**doc, "description": "café"}, sort_keys=True, separators=(",", ":")
    ).encode(),
    "escaped-ascii": _replace(b'"vision"', b'"visio\\u006e"'),
    "float-exponent": _replace(b'"max_abs_error":0.1', b'"max_abs_error":1e-1'),
}


@pytest.mark.parametrize("mutate", NON_CANONICAL.values(), ids=NON_CANONICAL.keys())
def test_non_canonical_manifest_is_refused(
    tmp_path: Path, keys: Keyring, device: Device, mutate: Mutation
) -> None:
    err = device.refuses(_signed(tmp_path, keys, mutate), MalformedJSONError)
    assert "canonical" in str(err)


def test_oversized_manifest_is_refused_before_it_is_read(
    bundle: BuiltBundle, device: Device
) -> None:
    device.refuses(lie_about_size(bundle.data, "manifest.json", 4 * 1024 * 1024 + 1), TooLargeError)


# --- format version, missing, mistyped and unexpected fields -------------------------------


@pytest.mark.parametrize("version", [0, 2, 99, -1])
def test_unknown_format_version_is_refused(
    tmp_path: Path, keys: Keyring, device: Device, version: int
) -> None:
    def set_version(doc: dict[str, Any]) -> None:
        doc["format_version"] = version

    err = device.refuses(_signed(tmp_path, keys, set_version), UnknownFormatVersionError)
    assert "update the agent" in str(err)


def _delete(path: str) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        del target[last]

    return mutate


def _set(path: str, value: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = doc
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        target[int(last) if last.isdigit() else last] = value

    return mutate


REQUIRED = [
    "format_version", "name", "version", "sequence", "created", "files", "models",
    "smoke_tests", "health_policy", "compatibility",
    "files.0.path", "files.0.size", "files.0.sha256", "files.0.compressed_size",
    "files.0.compressed_sha256", "models.0.runtime", "models.0.file", "models.0.inputs",
    "models.0.inputs.0.datatype", "smoke_tests.0.reference", "health_policy.min_samples",
    "compatibility.runtimes", "compatibility.min_agent_version",
]


@pytest.mark.parametrize("field", REQUIRED)
def test_manifest_missing_a_required_field_is_refused(
    tmp_path: Path, keys: Keyring, device: Device, field: str
) -> None:
    err = device.refuses(_signed(tmp_path, keys, _delete(field)), MissingFieldError)
    assert field.rsplit(".", 1)[-1] in str(err)


WRONG_TYPES = [
    ("format_version", "1", "version-string"),
    ("format_version", 1.0, "version-float"),
    ("format_version", True, "version-bool"),
    ("name", 5, "name-number"),
    ("name", "Vision", "name-uppercase"),
    ("name", "a/b", "name-slash"),
    ("version", ["1"], "version-list"),
    ("sequence", "1", "sequence-string"),
    ("sequence", -1, "sequence-negative"),
    ("sequence", True, "sequence-bool"),
    ("sequence", 1.5, "sequence-float"),
    ("created", 1767225600, "created-number"),
    ("created", "2026-03-01 12:00:00", "created-format"),
    ("expires", "tomorrow", "expires-word"),
    ("files", {"model.onnx": 1}, "files-object"),
    ("files.0.path", "../x", "path-dotdot"),
    ("files.0.path", "/etc/x", "path-absolute"),
    ("files.0.path", ".hidden", "path-hidden"),
    ("files.0.path", "a\\b", "path-backslash"),
    ("files.0.path", "a//b", "path-empty-segment"),
    ("files.0.size", "3000", "size-string"),
    ("files.0.size", -1, "size-negative"),
    ("files.0.sha256", "XYZ", "sha256-short"),
    ("files.0.sha256", "A" * 64, "sha256-uppercase"),
    ("files.0.compressed_size", 0, "compressed-size-zero"),
    ("models", {}, "models-object"),
    ("models.0.runtime", "tensorflow", "runtime-unknown"),
    ("models.0.quantization", "int4", "quantization-unknown"),
    ("models.0.file", "not-listed.onnx", "model-file-not-listed"),
    ("models.0.inputs", [], "inputs-empty"),
    ("models.0.inputs.0.datatype", "FLOAT", "datatype-unknown"),
    ("models.0.inputs.0.shape", [1, "x"], "shape-string"),
    ("smoke_tests.0.model", "other", "smoke-model-unknown"),
    ("smoke_tests.0.min_cosine", 2.0, "cosine-above-1"),
    ("smoke_tests.0.latency_runs", 0, "latency-runs-zero"),
    ("health_policy.max_error_rate", 1.5, "error-rate-above-1"),
    ("health_policy.min_samples", 0, "min-samples-zero"),
    ("compatibility.device_classes", "edge-box", "classes-string"),
    ("compatibility.device_classes", ["a", "a"], "classes-repeated"),
    ("compatibility.runtimes", {"tensorflow": "2.0"}, "runtime-requirement-unknown"),
    ("description", 7, "description-number"),
    ("build", [], "build-list"),
]


@pytest.mark.parametrize(
    ("field", "value"), [pytest.param(f, v, id=i) for f, v, i in WRONG_TYPES]
)
def test_manifest_field_of_the_wrong_type_or_value_is_refused(
    tmp_path: Path, keys: Keyring, device: Device, field: str, value: Any
) -> None:
    device.refuses(_signed(tmp_path, keys, _set(field, value)), WrongTypeError)


def test_manifest_that_is_not_an_object_is_refused(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    device.refuses(_signed(tmp_path, keys, lambda doc: b"[]"), WrongTypeError)


def test_manifest_listing_the_same_path_twice_is_refused(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    def duplicate(doc: dict[str, Any]) -> None:
        doc["files"].append(dict(doc["files"][0]))

    device.refuses(_signed(tmp_path, keys, duplicate), WrongTypeError)


def test_manifest_where_a_file_is_also_a_directory_is_refused(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    payloads = {"model.onnx": b"m", "smoke": b"a file", "smoke/inputs.npz": b"i"}
    with pytest.raises(WrongTypeError):
        build_test_bundle(tmp_path / "b.satchel", keys=keys, payloads=payloads)

    def clash(doc: dict[str, Any]) -> None:
        doc["files"][1]["path"] = "model.onnx/inputs.npz"
        doc["smoke_tests"][0]["inputs"] = "model.onnx/inputs.npz"

    device.refuses(_signed(tmp_path, keys, clash), WrongTypeError)


UNEXPECTED = ["", "files.0", "models.0", "models.0.inputs.0", "smoke_tests.0",
              "health_policy", "compatibility"]


@pytest.mark.parametrize("where", UNEXPECTED, ids=[w or "top" for w in UNEXPECTED])
def test_manifest_with_an_unexpected_field_is_refused(
    tmp_path: Path, keys: Keyring, device: Device, where: str
) -> None:
    path = f"{where}.mode" if where else "mode"
    err = device.refuses(_signed(tmp_path, keys, _set(path, "0755")), UnexpectedFieldError)
    assert "'mode'" in str(err)


# --- expiry --------------------------------------------------------------------------------


def test_expired_manifest_is_refused(tmp_path: Path, keys: Keyring, device: Device) -> None:
    stale = build_test_bundle(tmp_path / "b.satchel", keys=keys, expires=NOW - timedelta(seconds=1))
    err = device.refuses(stale.data, ExpiredError)
    assert "expired" in str(err)


def test_manifest_expiring_exactly_now_is_refused(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    edge = build_test_bundle(tmp_path / "b.satchel", keys=keys, expires=NOW)
    device.refuses(edge.data, ExpiredError)


def test_manifest_not_yet_expired_is_accepted(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    fresh = build_test_bundle(tmp_path / "b.satchel", keys=keys, expires=NOW + timedelta(days=1))
    assert device.install(fresh.data) == fresh.payloads


def test_expired_manifest_is_refused_even_when_the_device_clock_is_set_back(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    # The clock says the bundle is still valid, but the device has already seen a signed
    # time after its expiry: the clock is not to be believed.
    expires = CREATED + timedelta(days=1)
    stale = build_test_bundle(tmp_path / "b.satchel", keys=keys, expires=expires)
    clock = CREATED + timedelta(hours=1)
    seen = expires + timedelta(days=30)
    err = device.refuses(stale.data, ExpiredError, now=clock, not_before=seen)
    assert "newest signed time" in str(err)
    device.refuses(stale.data, ExpiredError, now=clock, not_before=expires)
    assert device.install(stale.data, now=clock, not_before=expires - timedelta(seconds=1))


def test_manifest_without_expiry_never_expires(
    bundle: BuiltBundle, device: Device
) -> None:
    far = NOW + timedelta(days=3650)
    assert device.install(bundle.data, now=far, not_before=far) == bundle.payloads


# --- canonical JSON itself -----------------------------------------------------------------


def test_canonical_json_is_deterministic_and_minimal() -> None:
    a = {"b": [1, 2.5, "x"], "a": {"z": None, "y": True}, "é": "ü"}
    b = {"é": "ü", "a": {"y": True, "z": None}, "b": [1, 2.5, "x"]}
    assert encode_canonical(a) == encode_canonical(b)
    assert encode_canonical(a) == '{"a":{"y":true,"z":null},"b":[1,2.5,"x"],"é":"ü"}'.encode()
    assert decode_canonical(encode_canonical(a), "doc") == a


def test_manifest_bytes_are_a_fixed_point_of_parse_and_encode(bundle: BuiltBundle) -> None:
    parsed = parse_manifest(bundle.manifest_bytes)
    assert parsed == bundle.manifest
    assert parsed.to_bytes() == bundle.manifest_bytes


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {1, 2}, b"bytes", "\ud800"])
def test_values_without_a_canonical_encoding_are_refused(value: Any) -> None:
    with pytest.raises(MalformedJSONError):
        encode_canonical({"x": value})


def test_duplicate_keys_are_refused_at_any_depth() -> None:
    with pytest.raises(MalformedJSONError) as info:
        decode_json(b'{"a":{"b":1,"b":2}}', "doc")
    assert "'b'" in str(info.value)
