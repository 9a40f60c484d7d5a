"""Fuzzing the readers: whatever the input, only `BundleError` subclasses escape, and a bundle
that is accepted after a mutation unpacks to exactly the bytes that were signed.

The exhaustive sweep (every single-byte flip and every truncation of a real bundle) is marked
slow; the default run checks a fixed sample of it.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from satchel.bundles.canonical import encode_canonical
from satchel.bundles.envelope import sign_envelope
from satchel.bundles.errors import (
    BundleError,
    MalformedJSONError,
    MemberLayoutError,
    PayloadHashError,
    SignatureError,
    TruncatedBundleError,
    UnknownKeyError,
)
from satchel.bundles.manifest import parse_manifest
from satchel.bundles.reader import unpack_bundle, verify_bundle
from satchel.bundles.trust import load_root, update_root
from tests.factory.bundles import BuiltBundle, build_test_bundle
from tests.factory.device import NOW
from tests.factory.keys import Keyring, make_keys
from tests.factory.spans import Span, layout, span_at
from tests.factory.trees import read_tree

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CHECKSUM = 148  # offset of the ustar checksum field: 6 octal digits, NUL, space


@dataclass(repr=False)
class Target:
    """A real bundle, the keys that trust it, and a staging dir to unpack mutations into."""

    keys: Keyring
    bundle: BuiltBundle
    spans: list[Span]
    staging: Path

    def __repr__(self) -> str:  # hypothesis prints it with every failing example
        return f"Target({self.bundle.path.name}, {len(self.bundle.data)} bytes)"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    tmp = tmp_path_factory.mktemp("fuzz")
    keys = make_keys(tmp)
    bundle = build_test_bundle(tmp / "target.satchel", keys=keys)
    staging = tmp / "device" / "staging"
    staging.mkdir(parents=True)
    yield Target(keys, bundle, layout(bundle.data), staging)
    assert sorted(p.name for p in (tmp / "device").iterdir()) == ["staging"]


def _install(t: Target, data: bytes) -> BundleError | None:
    """Verify and unpack `data`; None if accepted (and then the payloads must be the signed
    ones), else the refusal (and then the staging dir must be empty)."""
    f = io.BytesIO(data)
    try:
        verified = verify_bundle(f, t.keys.root, NOW)
        unpack_bundle(f, verified, t.staging, fsync=False)
    except BundleError as e:
        assert str(e).strip() and "\n" not in str(e)
        assert not any(t.staging.iterdir())
        return e
    assert read_tree(t.staging) == t.bundle.payloads
    shutil.rmtree(t.staging)
    t.staging.mkdir()
    return None


# --- the single-byte sweep -----------------------------------------------------------------

FLIP_MASKS = (0x01, 0x10, 0xFF)  # low bit; '0' <-> ' ' and NUL <-> DLE; every bit


def _sweep_cases(size: int) -> list[tuple[str, int, int]]:
    cases = [("cut", at, 0) for at in range(size)]
    cases += [("flip", offset, mask) for offset in range(size) for mask in FLIP_MASKS]
    return cases


def _allowed(span: Span) -> tuple[type[BundleError], ...]:
    """The refusals a single flipped byte in `span` may cause."""
    if span.region in ("header", "padding", "end"):
        return (MemberLayoutError,)
    if span.member == "manifest.json":
        return (SignatureError,)
    if span.member == "manifest.sig":
        return (MalformedJSONError, SignatureError, UnknownKeyError)
    return (PayloadHashError,)


def _same_checksum_value(data: bytes, span: Span, offset: int, mask: int) -> bool:
    """The only bytes that do not matter: the checksum field's final byte (after its NUL) and
    a leading zero of it turned into a space. Its value is unchanged; stock tar agrees."""
    if span.region != "header":
        return False
    rel = offset - span.start
    field = data[span.start + CHECKSUM : span.start + rel + 1]
    leading_zero_to_space = set(field) == {ord("0")} and data[offset] ^ mask == ord(" ")
    return rel == CHECKSUM + 7 or leading_zero_to_space


def _check_case(t: Target, kind: str, offset: int, mask: int) -> str:
    data = t.bundle.data
    if kind == "cut":
        err = _install(t, data[:offset])
        assert type(err) is TruncatedBundleError, f"cut at {offset}: {err!r}"
        return err.__class__.__name__
    mutated = bytearray(data)
    mutated[offset] ^= mask
    err = _install(t, bytes(mutated))
    span = span_at(t.spans, offset)
    if err is None:
        assert _same_checksum_value(data, span, offset, mask), (
            f"flip {mask:#x} at {offset} ({span}) was accepted"
        )
        return "accepted"
    assert type(err) in _allowed(span), f"flip {mask:#x} at {offset} ({span}): {err!r}"
    return err.__class__.__name__


def _run_sweep(t: Target, cases: list[tuple[str, int, int]]) -> dict[str, int]:
    tally: dict[str, int] = {}
    for kind, offset, mask in cases:
        outcome = _check_case(t, kind, offset, mask)
        tally[outcome] = tally.get(outcome, 0) + 1
    return tally


@pytest.mark.slow
def test_every_single_byte_flip_and_truncation_is_refused_or_harmless(target: Target) -> None:
    cases = _sweep_cases(len(target.bundle.data))
    assert len(cases) >= 10_000
    tally = _run_sweep(target, cases)
    assert sum(tally.values()) == len(cases)
    assert tally.get("accepted", 0) < 100, tally


def test_sampled_single_byte_flips_and_truncations_are_refused_or_harmless(
    target: Target,
) -> None:
    cases = _sweep_cases(len(target.bundle.data))
    sample = random.Random(20260301).sample(cases, 300)
    tally = _run_sweep(target, sample)
    assert {"TruncatedBundleError", "PayloadHashError", "MemberLayoutError"} <= set(tally)


# --- random mutations of a real bundle -----------------------------------------------------

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 2**32), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 2**32), st.binary(min_size=1, max_size=600)),
    st.tuples(st.just("delete"), st.integers(0, 2**32), st.integers(1, 1200)),
    st.tuples(st.just("overwrite"), st.integers(0, 2**32), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("truncate"), st.integers(0, 2**32), st.just(0)),
    st.tuples(st.just("append"), st.just(0), st.binary(min_size=1, max_size=1100)),
)


def _apply(data: bytes, op: tuple[str, int, Any]) -> bytes:
    kind, at, arg = op
    at = at % (len(data) + 1)
    if kind == "flip":
        at = at % len(data)
        return data[:at] + bytes([data[at] ^ arg]) + data[at + 1 :]
    if kind == "insert":
        return data[:at] + arg + data[at:]
    if kind == "delete":
        return data[:at] + data[at + arg :]
    if kind == "overwrite":
        return data[:at] + arg + data[at + len(arg) :]
    if kind == "truncate":
        return data[:at]
    return data + arg


@FUZZ
@given(ops=st.lists(mutation, min_size=1, max_size=4))
def test_random_mutations_of_a_bundle_only_raise_bundle_errors(
    target: Target, ops: list[tuple[str, int, Any]]
) -> None:
    data = target.bundle.data
    for op in ops:
        if data:
            data = _apply(data, op)
    _install(target, data)


# --- manifests and trust roots, re-signed so the parsers see them --------------------------

json_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _paths(obj: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_document(draw: st.DrawFn, document: dict[str, Any]) -> Any:
    """`document` with one node replaced by a random JSON value, deleted, or given a sibling."""
    doc = encode_canonical(document)
    obj: Any = json.loads(doc)
    path = draw(st.sampled_from(_paths(obj)))
    if not path:
        return draw(json_value)
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "replace":
        parent[path[-1]] = draw(json_value)
    elif action == "delete":
        del parent[path[-1]]
    elif isinstance(parent, dict):
        parent[draw(st.text(max_size=12))] = draw(json_value)
    else:
        parent.append(draw(json_value))
    return obj


def _encode_any(obj: Any) -> bytes:
    try:
        return encode_canonical(obj)
    except MalformedJSONError:
        return b"{}"


@FUZZ
@given(data=st.data())
def test_parse_manifest_only_raises_bundle_errors(target: Target, data: st.DataObject) -> None:
    document = target.bundle.manifest.to_dict()
    raw = data.draw(
        st.one_of(
            mutated_document(document).map(_encode_any),
            st.binary(max_size=300),
            json_value.map(_encode_any),
        )
    )
    try:
        manifest = parse_manifest(raw)
    except BundleError as e:
        assert "\n" not in str(e)
    else:
        assert parse_manifest(manifest.to_bytes()) == manifest


@FUZZ
@given(data=st.data())
def test_load_and_update_root_only_raise_bundle_errors(
    target: Target, data: st.DataObject
) -> None:
    keys = target.keys
    signed = keys.root.to_signed()
    signed["version"] = 2
    choice = data.draw(st.sampled_from(["re-signed", "unsigned", "bytes"]))
    if choice == "bytes":
        raw = data.draw(st.binary(max_size=400))
    else:
        body = data.draw(mutated_document(signed))
        if choice == "re-signed" and isinstance(body, dict):
            try:
                raw = sign_envelope(body, keys.root_keys)
            except MalformedJSONError:
                raw = b"{}"
        else:
            raw = _encode_any({"signed": body, "signatures": []})
    for parse in (load_root, lambda d: update_root(keys.root, d)):
        try:
            parse(raw)
        except BundleError as e:
            assert "\n" not in str(e)


@FUZZ
@given(data=st.data())
def test_verify_bundle_with_re_signed_manifest_mutations_only_raises_bundle_errors(
    target: Target, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    mutated = data.draw(mutated_document(target.bundle.manifest.to_dict()))
    path = tmp_path_factory.mktemp("resigned") / "b.satchel"
    built = build_test_bundle(
        path, keys=target.keys, mutate_manifest=lambda _doc: _encode_any(mutated)
    )
    f = io.BytesIO(built.data)
    try:
        verified = verify_bundle(f, target.keys.root, NOW)
        unpack_bundle(f, verified, target.staging, fsync=False)
    except BundleError as e:
        assert "\n" not in str(e)
        assert not any(target.staging.iterdir())
    finally:
        shutil.rmtree(target.staging)
        target.staging.mkdir()
        shutil.rmtree(path.parent)
