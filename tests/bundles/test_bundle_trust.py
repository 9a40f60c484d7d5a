"""The trust root: provisioning a root.json, and rotating it as in TUF (threshold of the old
root's keys, one version at a time, never backwards), including signing-key revocation."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from satchel.bundles.canonical import encode_canonical
from satchel.bundles.envelope import sign_envelope
from satchel.bundles.errors import (
    BundleError,
    ExpiredError,
    MalformedJSONError,
    MissingFieldError,
    RootRotationError,
    SignatureError,
    ThresholdError,
    UnknownKeyError,
    WrongTypeError,
)
from satchel.bundles.keys import SigningKey
from satchel.bundles.trust import Root, check_root_expiry, load_root, update_root, update_root_chain
from tests.factory.bundles import build_test_bundle
from tests.factory.device import NOW, Device
from tests.factory.keys import Keyring, make_keys, next_root


def _refuse_rotation(trusted: Root, data: bytes) -> RootRotationError:
    """Assert `data` is refused as a successor of `trusted`, which stays as it was."""
    before = (trusted.version, dict(trusted.keys), dict(trusted.roles), trusted.signers)
    with pytest.raises(BundleError) as info:
        update_root(trusted, data)
    assert type(info.value) is RootRotationError, f"{type(info.value).__name__}: {info.value}"
    assert "\n" not in str(info.value)
    assert (trusted.version, trusted.keys, trusted.roles, trusted.signers) == before
    return info.value


# --- provisioning --------------------------------------------------------------------------


def test_provisioned_root_lists_the_signing_keys(keys: Keyring) -> None:
    root = load_root(keys.root_json)
    assert root.version == 1
    assert set(root.signing_keys()) == {keys.signing.keyid}
    assert root.signers == frozenset({keys.root_keys[0].keyid})


def test_tampered_root_json_is_refused(keys: Keyring) -> None:
    attacker = SigningKey.generate()
    doc = json.loads(keys.root_json)
    doc["signed"]["keys"][attacker.keyid] = attacker.public.to_dict()
    doc["signed"]["roles"]["signing"]["keyids"].append(attacker.keyid)
    with pytest.raises(BundleError) as info:
        load_root(encode_canonical(doc))
    assert type(info.value) is SignatureError


def test_root_json_signed_by_a_signing_key_is_refused(keys: Keyring) -> None:
    data = next_root(
        keys.root,
        root_keys=keys.root_keys,
        signing_keys=keys.signing_keys,
        signed_by=keys.signing_keys,
        version=1,
    )
    with pytest.raises(UnknownKeyError):
        load_root(data)


def test_root_json_below_its_own_root_threshold_is_refused(tmp_path: Path) -> None:
    keys = make_keys(tmp_path, root_count=3, root_threshold=2)
    data = next_root(
        keys.root,
        root_keys=keys.root_keys,
        signing_keys=keys.signing_keys,
        signed_by=keys.root_keys[:1],
        version=1,
        root_threshold=2,
    )
    with pytest.raises(ThresholdError):
        load_root(data)


Edit = Callable[[dict[str, Any]], Any]
MALFORMED_ROOTS: list[tuple[str, Edit, type[BundleError]]] = [
    ("no-version", lambda s: s.pop("version"), MissingFieldError),
    ("version-string", lambda s: s.update(version="1"), WrongTypeError),
    ("version-zero", lambda s: s.update(version=0), WrongTypeError),
    ("not-a-root", lambda s: s.update(_type="manifest"), WrongTypeError),
    ("threshold-above-keys", lambda s: s["roles"]["signing"].update(threshold=2), WrongTypeError),
    ("threshold-zero", lambda s: s["roles"]["signing"].update(threshold=0), WrongTypeError),
    ("no-signing-role", lambda s: s["roles"].pop("signing"), WrongTypeError),
    ("unknown-key", lambda s: s["roles"]["signing"]["keyids"].append("ab" * 32), WrongTypeError),
    ("expires-word", lambda s: s.update(expires="soon"), WrongTypeError),
]


@pytest.mark.parametrize(
    ("edit", "error"), [pytest.param(e, err, id=i) for i, e, err in MALFORMED_ROOTS]
)
def test_malformed_root_json_is_refused(
    keys: Keyring, edit: Edit, error: type[BundleError]
) -> None:
    signed = keys.root.to_signed()
    edit(signed)
    with pytest.raises(BundleError) as info:
        load_root(sign_envelope(signed, keys.root_keys))
    assert type(info.value) is error


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"signed":{}}', b"\xff"])
def test_root_json_that_is_not_an_envelope_is_refused(data: bytes) -> None:
    with pytest.raises(MalformedJSONError):
        load_root(data)


def test_expired_root_is_reported(tmp_path: Path) -> None:
    keys = make_keys(tmp_path, expires=NOW - timedelta(days=1))
    with pytest.raises(ExpiredError):
        check_root_expiry(keys.root, NOW)
    check_root_expiry(keys.root, NOW - timedelta(days=2))


# --- rotation ------------------------------------------------------------------------------


def test_rotation_signed_by_the_old_root_is_accepted(keys: Keyring) -> None:
    extra = SigningKey.generate()
    data = next_root(
        keys.root,
        root_keys=keys.root_keys,
        signing_keys=[*keys.signing_keys, extra],
        signed_by=keys.root_keys,
    )
    new = update_root(keys.root, data)
    assert new.version == 2
    assert set(new.signing_keys()) == {keys.signing.keyid, extra.keyid}


def test_rotation_not_signed_by_the_old_root_threshold_is_refused(tmp_path: Path) -> None:
    keys = make_keys(tmp_path, root_count=2, root_threshold=2)
    data = next_root(
        keys.root,
        root_keys=keys.root_keys,
        signing_keys=keys.signing_keys,
        signed_by=keys.root_keys[:1],
    )
    err = _refuse_rotation(keys.root, data)
    assert "not signed by 2 of the current root keys" in str(err)


def test_rotation_signed_only_by_the_new_root_keys_is_refused(keys: Keyring) -> None:
    usurper = SigningKey.generate()
    data = next_root(
        keys.root, root_keys=[usurper], signing_keys=[usurper], signed_by=[usurper]
    )
    _refuse_rotation(keys.root, data)


def test_rotation_not_signed_by_its_own_new_root_key_is_refused(keys: Keyring) -> None:
    successor = SigningKey.generate()
    data = next_root(
        keys.root,
        root_keys=[successor],
        signing_keys=keys.signing_keys,
        signed_by=keys.root_keys,  # the old key hands over, the new one never signs
    )
    err = _refuse_rotation(keys.root, data)
    assert "its own root keys" in str(err)


def test_rotation_that_skips_a_version_is_refused(keys: Keyring) -> None:
    data = next_root(
        keys.root,
        root_keys=keys.root_keys,
        signing_keys=keys.signing_keys,
        signed_by=keys.root_keys,
        version=3,
    )
    err = _refuse_rotation(keys.root, data)
    assert "skips version 2" in str(err)


@pytest.mark.parametrize("version", [1, 2], ids=["same-version", "older-version"])
def test_root_rollback_is_refused(keys: Keyring, version: int) -> None:
    v2 = update_root(
        keys.root,
        next_root(
            keys.root,
            root_keys=keys.root_keys,
            signing_keys=keys.signing_keys,
            signed_by=keys.root_keys,
        ),
    )
    v3 = update_root(
        v2,
        next_root(v2, root_keys=keys.root_keys, signing_keys=keys.signing_keys,
                  signed_by=keys.root_keys),
    )
    old = next_root(
        v3,
        root_keys=keys.root_keys,
        signing_keys=keys.signing_keys,
        signed_by=keys.root_keys,
        version=version,
    )
    err = _refuse_rotation(v3, old)
    assert "rollback" in str(err)


def test_rotated_root_revokes_a_signing_key(tmp_path: Path, keys: Keyring) -> None:
    replacement = SigningKey.generate()
    v2 = update_root(
        keys.root,
        next_root(
            keys.root,
            root_keys=keys.root_keys,
            signing_keys=[replacement],
            signed_by=keys.root_keys,
        ),
    )
    old_bundle = build_test_bundle(tmp_path / "old.satchel", keys=keys)
    new_bundle = build_test_bundle(tmp_path / "new.satchel", keys=keys, signers=[replacement])
    before = Device(tmp_path / "v1", keys.root)
    assert before.install(old_bundle.data) == old_bundle.payloads
    before.refuses(new_bundle.data, UnknownKeyError)
    after = Device(tmp_path / "v2", v2)
    after.refuses(old_bundle.data, UnknownKeyError)
    assert after.install(new_bundle.data) == new_bundle.payloads


def test_chain_of_three_root_versions_with_root_key_rotation_is_accepted(
    tmp_path: Path, keys: Keyring
) -> None:
    root2, root3 = SigningKey.generate(), SigningKey.generate()
    signing2, signing3 = SigningKey.generate(), SigningKey.generate()
    doc2 = next_root(
        keys.root, root_keys=[root2], signing_keys=[signing2],
        signed_by=[keys.root_keys[0], root2],
    )
    v2 = load_root(doc2)  # parse only, to build on
    doc3 = next_root(v2, root_keys=[root3], signing_keys=[signing3], signed_by=[root2, root3])
    _refuse_rotation(keys.root, doc3)  # v1 cannot jump to v3
    newest = update_root_chain(keys.root, [doc3, doc2])  # order of arrival does not matter
    assert newest.version == 3
    assert set(newest.signing_keys()) == {signing3.keyid}
    assert update_root_chain(newest, [doc2, doc3]) is newest  # nothing newer: unchanged
    device = Device(tmp_path, newest)
    device.refuses(build_test_bundle(tmp_path / "a.satchel", keys=keys).data, UnknownKeyError)
    fresh = build_test_bundle(tmp_path / "b.satchel", keys=keys, signers=[signing3])
    assert device.install(fresh.data) == fresh.payloads


def test_chain_with_a_forged_middle_root_is_refused(keys: Keyring) -> None:
    usurper = SigningKey.generate()
    forged2 = next_root(keys.root, root_keys=[usurper], signing_keys=[usurper], signed_by=[usurper])
    v2 = load_root(forged2)
    doc3 = next_root(v2, root_keys=[usurper], signing_keys=[usurper], signed_by=[usurper])
    with pytest.raises(RootRotationError):
        update_root_chain(keys.root, [forged2, doc3])
