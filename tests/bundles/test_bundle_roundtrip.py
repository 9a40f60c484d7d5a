"""Honest bundles: what goes in comes out, byte for byte; builds are reproducible; keys load
only with the right passphrase."""

from __future__ import annotations

import base64
import hashlib
import io
import random
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from satchel.bundles.config import DEFAULT_PACK
from satchel.bundles.errors import KeyFileError, WrongTypeError
from satchel.bundles.keys import PublicKey, SigningKey
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.reader import read_unverified, verify_bundle
from tests.factory.bundles import BuiltBundle, build_test_bundle, default_manifest
from tests.factory.device import NOW, Device
from tests.factory.keys import Keyring
from tests.factory.tar import member_names
from tests.factory.zstd_frames import MiB

DEEP = "/".join(f"level{i}" for i in range(7)) + "/" + "w" * 90 + ".bin"  # depth 8, ~150 chars


def test_multi_file_bundle_round_trips_byte_for_byte(
    tmp_path: Path, keys: Keyring, device: Device
) -> None:
    rng = random.Random(42)
    payloads = {
        "model.onnx": rng.randbytes(MiB + 1),  # crosses one streaming chunk
        "empty.bin": b"",
        "one.bin": b"\x01",
        "smoke/inputs.npz": rng.randbytes(5000),
        "smoke/reference.npz": bytes(70_000),
        "labels/en/classes.txt": b"cat\ndog\n",
        DEEP: b"deep",
    }
    built = build_test_bundle(tmp_path / "multi.satchel", keys=keys, payloads=payloads)
    assert member_names(built.data)[2:] == [f"payload/{p}.zst" for p in payloads]
    files = device.install(built.data)
    assert files == payloads
    for entry in built.manifest.files:
        assert entry.size == len(payloads[entry.path])
        assert entry.sha256 == hashlib.sha256(payloads[entry.path]).hexdigest()


def test_verified_bundle_reports_manifest_signers_and_members(
    bundle: BuiltBundle, keys: Keyring, device: Device
) -> None:
    verified = device.unpack(bundle.data)
    assert verified.manifest == bundle.manifest
    assert verified.manifest_bytes == bundle.manifest_bytes
    assert verified.signers == frozenset({keys.signing.keyid})
    assert [m.entry.path for m in verified.members] == list(bundle.payloads)


def test_unverified_read_for_inspection_needs_no_trust(bundle: BuiltBundle) -> None:
    manifest, signatures = read_unverified(io.BytesIO(bundle.data))
    assert manifest == bundle.manifest
    assert len(signatures) == 1


def test_same_inputs_build_the_same_bundle_bytes(tmp_path: Path, keys: Keyring) -> None:
    payloads = [Payload("model.onnx", random.Random(1).randbytes(300_000)),
                Payload("smoke/inputs.npz", b"i"), Payload("smoke/reference.npz", b"r")]
    manifest = default_manifest("vision", "1.0.0", 1, [p.path for p in payloads])
    outputs = []
    for i in range(2):
        path = tmp_path / f"{i}.satchel"
        with open(path, "wb") as f:
            write_bundle(f, manifest, payloads, keys.signing_keys, DEFAULT_PACK)
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1]
    verify_bundle(io.BytesIO(outputs[0]), keys.root, NOW)


def test_payload_with_an_unsafe_path_cannot_be_packed(tmp_path: Path, keys: Keyring) -> None:
    manifest = default_manifest("vision", "1.0.0", 1, ["model.onnx"])
    with open(tmp_path / "b.satchel", "wb") as f, pytest.raises(WrongTypeError) as info:
        write_bundle(f, manifest, [Payload("../model.onnx", b"x")], keys.signing_keys)
    assert "safe relative path" in str(info.value)


# --- keys ----------------------------------------------------------------------------------


def test_passphrase_protected_key_loads_only_with_its_passphrase() -> None:
    key = SigningKey.generate()
    pem = key.to_pem(b"correct horse")
    assert b"ENCRYPTED" in pem
    assert SigningKey.from_pem(pem, b"correct horse").keyid == key.keyid
    for wrong in (b"wrong horse", None, b""):
        with pytest.raises(KeyFileError) as info:
            SigningKey.from_pem(pem, wrong)
        assert "\n" not in str(info.value)


def test_passphrase_given_for_a_plain_key_is_refused() -> None:
    with pytest.raises(KeyFileError):
        SigningKey.from_pem(SigningKey.generate().to_pem(), b"unexpected")


@pytest.mark.parametrize(
    "pem", [b"", b"garbage", b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"]
)
def test_key_file_that_is_not_a_pem_key_is_refused(pem: bytes) -> None:
    with pytest.raises(KeyFileError):
        SigningKey.from_pem(pem)
    with pytest.raises(KeyFileError):
        PublicKey.from_pem(pem)


def test_key_that_is_not_ed25519_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    private = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(KeyFileError):
        SigningKey.from_pem(private)
    with pytest.raises(KeyFileError):
        PublicKey.from_pem(public)


def test_key_id_is_the_sha256_of_the_raw_public_key() -> None:
    key = SigningKey.generate()
    assert key.keyid == hashlib.sha256(key.public.raw).hexdigest()
    assert PublicKey.from_pem(key.public.to_pem()) == key.public


def test_plain_signing_key_is_read_without_loading_cryptography(tmp_path: Path) -> None:
    # `satchel bundle build` reads its key before running the model: the library's memory
    # should not add to the peak the model makes (issue 14)
    key = SigningKey.generate()
    (tmp_path / "signing.key").write_bytes(key.to_pem())
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from satchel.bundles.keys import SigningKey\n"
        f"k = SigningKey.from_pem(Path({str(tmp_path / 'signing.key')!r}).read_bytes())\n"
        "print('cryptography' in sys.modules, k.keyid, 'cryptography' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", key.keyid, "True"]


@pytest.mark.parametrize("pem", [
    b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n",  # cut short
    b"-----BEGIN PRIVATE KEY-----\n" + base64.b64encode(b"\x30" * 48)
    + b"\n-----END PRIVATE KEY-----\n",  # the right length, not the key's DER
])
def test_private_key_pem_that_is_not_a_plain_ed25519_key_is_refused(pem: bytes) -> None:
    with pytest.raises(KeyFileError):
        SigningKey.from_pem(pem)


def test_seed_read_key_signs_as_the_key_it_was_written_from() -> None:
    key = SigningKey.generate()
    again = SigningKey.from_pem(key.to_pem())
    assert again.keyid == key.keyid
    assert again.sign(b"manifest") == key.sign(b"manifest")  # Ed25519 is deterministic
    assert again.to_pem() == key.to_pem()
