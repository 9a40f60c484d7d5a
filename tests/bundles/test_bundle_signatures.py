"""Attacks on who signed a bundle: unknown keys, too few signatures, tampered manifests."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from satchel.bundles.errors import (
    BundleError,
    MalformedJSONError,
    PayloadHashError,
    SignatureError,
    ThresholdError,
    TooLargeError,
    UnknownKeyError,
)
from satchel.bundles.keys import SigningKey
from tests.factory.bundles import BuiltBundle, build_test_bundle, sign_manifest
from tests.factory.device import Device
from tests.factory.keys import Keyring, make_keys
from tests.factory.spans import flip_byte, span_of
from tests.factory.tar import read_members, rewrite_member


def test_honest_bundle_is_accepted(bundle: BuiltBundle, device: Device) -> None:
    assert device.install(bundle.data) == bundle.payloads


def test_bundle_signed_by_a_key_not_in_the_trust_root_is_refused(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    stranger = SigningKey.generate()
    forged = build_test_bundle(tmp_path / "forged.satchel", keys=keys, signers=[stranger])
    err = device.refuses(forged.data, UnknownKeyError)
    assert stranger.keyid[:12] in str(err)


def test_bundle_signed_by_the_root_key_instead_of_a_signing_key_is_refused(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    # The root key is trusted, but only to sign root.json: roles do not mix.
    misused = build_test_bundle(tmp_path / "b.satchel", keys=keys, signers=keys.root_keys)
    device.refuses(misused.data, UnknownKeyError)


def test_bundle_with_fewer_signatures_than_the_threshold_is_refused(tmp_path: Path) -> None:
    keys = make_keys(tmp_path, signing_count=2, signing_threshold=2)
    device = Device(tmp_path, keys.root)
    one = build_test_bundle(tmp_path / "one.satchel", keys=keys, signers=keys.signing_keys[:1])
    err = device.refuses(one.data, ThresholdError)
    assert "1 valid signature" in str(err) and "2 required" in str(err)
    both = build_test_bundle(tmp_path / "both.satchel", keys=keys)
    assert device.install(both.data) == both.payloads


def test_threshold_is_not_met_by_an_untrusted_second_signature(tmp_path: Path) -> None:
    keys = make_keys(tmp_path, signing_count=2, signing_threshold=2)
    device = Device(tmp_path, keys.root)
    signers = [keys.signing_keys[0], SigningKey.generate()]
    mixed = build_test_bundle(tmp_path / "mixed.satchel", keys=keys, signers=signers)
    device.refuses(mixed.data, ThresholdError)


def test_the_same_signature_listed_twice_counts_once(tmp_path: Path) -> None:
    keys = make_keys(tmp_path, signing_count=2, signing_threshold=2)
    device = Device(tmp_path, keys.root)
    one = build_test_bundle(tmp_path / "one.satchel", keys=keys, signers=keys.signing_keys[:1])
    entries = json.loads(read_members(one.data)[1].data)
    doubled = rewrite_member(one.data, "manifest.sig", json.dumps(entries * 2).encode())
    device.refuses(doubled, ThresholdError)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_tampered_manifest_under_its_old_signature_is_refused(
    bundle: BuiltBundle, device: Device, where: str
) -> None:
    span = span_of(bundle.data, "manifest.json", "data")
    offset = {"first": span.start, "middle": (span.start + span.stop) // 2, "last": span.stop - 1}
    device.refuses(flip_byte(bundle.data, offset[where], 0x01), SignatureError)


def test_manifest_edited_to_a_later_sequence_under_its_old_signature_is_refused(
    bundle: BuiltBundle, device: Device
) -> None:
    edited = bundle.manifest_bytes.replace(b'"sequence":1', b'"sequence":9')
    assert edited != bundle.manifest_bytes
    device.refuses(rewrite_member(bundle.data, "manifest.json", edited), SignatureError)


def test_signature_of_another_manifest_is_refused(
    tmp_path: Path, keys: Keyring, bundle: BuiltBundle, device: Device
) -> None:
    other = build_test_bundle(tmp_path / "other.satchel", keys=keys, version="2.0.0")
    sig = read_members(other.data)[1].data
    device.refuses(rewrite_member(bundle.data, "manifest.sig", sig), SignatureError)


def test_signed_head_of_one_bundle_over_payloads_of_another_is_refused(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    payloads = {
        "model.onnx": b"first model" * 100,
        "smoke/inputs.npz": b"i",
        "smoke/reference.npz": b"r",
    }
    first = build_test_bundle(tmp_path / "a.satchel", keys=keys, payloads=payloads)
    payloads["model.onnx"] = b"other model" * 100
    second = build_test_bundle(tmp_path / "b.satchel", keys=keys, payloads=payloads, sequence=2)
    head = read_members(second.data)[:2]
    spliced = rewrite_member(first.data, "manifest.json", head[0].data)
    spliced = rewrite_member(spliced, "manifest.sig", head[1].data)
    device.refuses(spliced, PayloadHashError)


def test_bundle_without_signatures_is_refused(bundle: BuiltBundle, device: Device) -> None:
    device.refuses(rewrite_member(bundle.data, "manifest.sig", b"[]"), SignatureError)


@pytest.mark.parametrize(
    "entry",
    [
        {"keyid": "00" * 32},
        {"keyid": "00" * 32, "sig": "!!not base64!!"},
        {"keyid": "00" * 32, "sig": base64.b64encode(b"short").decode()},
        {"keyid": 7, "sig": base64.b64encode(bytes(64)).decode()},
        {"keyid": "00" * 32, "sig": base64.b64encode(bytes(64)).decode(), "extra": 1},
        {"keyid": "AB" * 32, "sig": base64.b64encode(bytes(64)).decode()},
        {"keyid": "\n" * 64, "sig": base64.b64encode(bytes(64)).decode()},
    ],
    ids=["no-sig", "not-base64", "wrong-length", "keyid-not-string", "extra-field",
         "keyid-uppercase", "keyid-newlines"],
)
def test_malformed_signature_entry_is_refused(
    bundle: BuiltBundle, device: Device, entry: dict[str, object]
) -> None:
    sig = json.dumps([entry]).encode()
    device.refuses(rewrite_member(bundle.data, "manifest.sig", sig), SignatureError)


def test_non_canonical_base64_signature_is_refused(
    bundle: BuiltBundle, keys: Keyring, device: Device
) -> None:
    # 64 bytes of base64 leave 4 unused bits in the last character; setting them must not
    # yield a second valid spelling of the same signature.
    entry = json.loads(sign_manifest(bundle.manifest_bytes, keys.signing_keys))[0]
    text = entry["sig"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = text[-3]
    entry["sig"] = text[:-3] + alphabet[alphabet.index(last) | 0x0F] + "=="
    assert base64.b64decode(entry["sig"]) == base64.b64decode(text)
    sig = json.dumps([entry]).encode()
    device.refuses(rewrite_member(bundle.data, "manifest.sig", sig), SignatureError)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        pytest.param(b"not json", MalformedJSONError, id="not-json"),
        pytest.param(b"\xff\xfe[]", MalformedJSONError, id="not-utf8"),
        pytest.param(b'[{"keyid":"a","keyid":"b"}]', MalformedJSONError, id="duplicate-keys"),
        pytest.param(b"[NaN]", MalformedJSONError, id="nan"),
        pytest.param(b'{"keyid": "x", "sig": "y"}', SignatureError, id="not-a-list"),
        pytest.param(b'["sig"]', SignatureError, id="entry-not-an-object"),
    ],
)
def test_manifest_sig_that_is_not_a_json_list_of_entries_is_refused(
    bundle: BuiltBundle, device: Device, content: bytes, error: type[BundleError]
) -> None:
    device.refuses(rewrite_member(bundle.data, "manifest.sig", content), error)


def test_too_many_signatures_are_refused(bundle: BuiltBundle, device: Device) -> None:
    entry = {"keyid": "00" * 32, "sig": base64.b64encode(bytes(64)).decode()}
    sig = json.dumps([entry] * 33).encode()
    device.refuses(rewrite_member(bundle.data, "manifest.sig", sig), SignatureError)


def test_oversized_manifest_sig_is_refused(bundle: BuiltBundle, device: Device) -> None:
    padded = b" " * (256 * 1024 + 1)
    device.refuses(rewrite_member(bundle.data, "manifest.sig", padded), TooLargeError)
