"""Encrypted bundles (issue 19, docs/ENCRYPTION.md): a recipient decrypts while it streams and
gets the exact files; anyone checks the signature and the ciphertext with stock tools and no
key; nobody else decrypts; altered ciphertext is refused before it is decrypted; keys.json,
which is not signed, can only make decryption fail; re-wrapping never touches what is signed.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import pytest

from satchel.bundles.crypt import (
    BundleEncryption,
    KeyFile,
    SegmentOpener,
    SegmentSealer,
    Stanza,
    wrap,
)
from satchel.bundles.cryptbundle import rewrap_bundle
from satchel.bundles.cryptinfo import KEYS_MEMBER
from satchel.bundles.errors import (
    BundleError,
    DecryptionError,
    MemberLayoutError,
    NotARecipientError,
    PayloadHashError,
    WrappedKeyError,
)
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.reader import check_payloads, verify_and_unpack, verify_bundle
from satchel.bundles.recipients import Identity
from tests.factory.bundles import TEST_PACK, default_manifest
from tests.factory.device import NOW, assert_one_line
from tests.factory.keys import Keyring
from tests.factory.spans import flip_byte, span_of
from tests.factory.tar import TarMember, insert_member, member_names, read_members
from tests.factory.tar import rewrite_member as rewrite
from tests.factory.trees import read_tree, tree_snapshot

SECRET = b"THE-SECRET-WEIGHTS-0123456789"
PAYLOADS = {
    "model.onnx": SECRET * 20 + os.urandom(2 * 1024 * 1024 + 100_000),  # 3 index chunks
    "smoke/inputs.npz": b"inputs" * 1000,
    "smoke/reference.npz": b"",
}


def encrypted_bundle(
    path: Path,
    keys: Keyring,
    recipients: list[Identity],
    payloads: dict[str, bytes] | None = None,
    name: str = "kws",
    version: str = "2.0.0",
) -> Path:
    payloads = PAYLOADS if payloads is None else payloads
    manifest = default_manifest(name, version, 1, list(payloads))
    encryption = BundleEncryption(tuple(i.recipient for i in recipients))
    with open(path, "wb") as f:
        write_bundle(f, manifest, [Payload(p, b) for p, b in payloads.items()],
                     keys.signing_keys, TEST_PACK, encryption=encryption)
    return path


@pytest.fixture
def cam7() -> Identity:
    return Identity.generate("cam-7")


@pytest.fixture
def cam8() -> Identity:
    return Identity.generate("cam-8")


@pytest.fixture
def manager_key() -> Identity:
    return Identity.generate("manager")


@pytest.fixture
def bundle(tmp_path: Path, keys: Keyring, cam7: Identity, manager_key: Identity) -> Path:
    return encrypted_bundle(tmp_path / "kws.satchel", keys, [cam7, manager_key])


def unpack(path: Path, keys: Keyring, target: Path, identities: list[Identity]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    verify_and_unpack(path, keys.root, target, NOW, identities=identities, fsync=False)


def refused(
    tmp_path: Path, data: bytes, keys: Keyring, identities: list[Identity],
    error: type[BundleError],
) -> BundleError:
    """Unpacking `data` raises exactly `error`, in one line, and changes nothing."""
    path = tmp_path / "incoming.satchel"
    path.write_bytes(data)
    staging = tmp_path / "staging"
    staging.mkdir(exist_ok=True)
    before = tree_snapshot(tmp_path)
    with pytest.raises(BundleError) as info:
        unpack(path, keys, staging, identities)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert_one_line(info.value)
    assert tree_snapshot(tmp_path) == before
    assert list(staging.iterdir()) == []
    return info.value


# --- the round trip ----------------------------------------------------------------------


def test_recipient_gets_the_exact_files_readable_by_it_alone(
    tmp_path: Path, bundle: Path, keys: Keyring, cam7: Identity
) -> None:
    target = tmp_path / "staging"
    unpack(bundle, keys, target, [cam7])
    assert read_tree(target) == PAYLOADS
    for path in PAYLOADS:
        assert (target / path).stat().st_mode & 0o777 == 0o600


def test_every_recipient_decrypts_and_the_key_order_does_not_matter(
    tmp_path: Path, bundle: Path, keys: Keyring, cam7: Identity, cam8: Identity,
    manager_key: Identity,
) -> None:
    unpack(bundle, keys, tmp_path / "a", [cam8, manager_key])
    assert read_tree(tmp_path / "a") == PAYLOADS


def test_manifest_signs_ciphertext_and_plaintext_hashes_and_whom_it_is_for(
    bundle: Path, keys: Keyring, cam7: Identity, manager_key: Identity
) -> None:
    import hashlib

    with open(bundle, "rb") as f:
        verified = verify_bundle(f, keys.root, NOW)  # no key: signature and ciphertext
    m = verified.manifest
    assert m.encryption is not None
    assert m.encryption.recipients == (
        ("cam-7", cam7.fingerprint), ("manager", manager_key.fingerprint))
    members = {str(t.name): t.data for t in read_members(bundle.read_bytes())}
    for e in m.files:
        ciphertext = members[f"payload/{e.path}.zst"]
        assert e.size == len(PAYLOADS[e.path])
        assert e.sha256 == hashlib.sha256(PAYLOADS[e.path]).hexdigest()
        assert e.compressed_size == len(ciphertext)
        assert e.compressed_sha256 == hashlib.sha256(ciphertext).hexdigest()
    assert verified.keys is not None and verified.keys.names == ("cam-7", "manager")


def test_bundle_bytes_do_not_contain_the_plaintext(bundle: Path) -> None:
    data = bundle.read_bytes()
    assert SECRET not in data
    assert b"inputsinputs" not in data


def test_without_a_key_the_content_cannot_be_checked_and_says_so(
    bundle: Path, keys: Keyring
) -> None:
    with open(bundle, "rb") as f:
        verified = verify_bundle(f, keys.root, NOW)
        with pytest.raises(DecryptionError, match="encrypted and no key"):
            check_payloads(f, verified)


# --- stock tools, no key ------------------------------------------------------------------

TOOLS = ("tar", "openssl", "sha256sum", "split", "base64", "python3", "zstd")
STOCK_CHECK = r"""
set -euo pipefail
bundle=$1 pubkey=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
tar -xf "$bundle"
test "$(tar -tf "$bundle" | head -n 3 | tr '\n' ' ')" = "manifest.json manifest.sig keys.json "
python3 -I -c '
import json
for e in json.load(open("manifest.sig")):
    print(e["keyid"], e["sig"])
' > sigs.txt
read -r keyid sig < sigs.txt
printf '%s' "$sig" | base64 -d > sig.bin
openssl pkeyutl -verify -rawin -pubin -inkey "$pubkey" -in manifest.json -sigfile sig.bin
python3 -I -c '
import json
m = json.load(open("manifest.json"))
print(m["encryption"]["scheme"])
for f in m["files"]:
    print(f["path"], f["compressed_size"], f["compressed_sha256"], f["chunk_size"],
          ",".join(f["chunk_sha256"]))
' > files.txt
head -n 1 files.txt
count=0
while read -r path csize csha chunk chunks; do
    member="payload/$path.zst"
    test "$(wc -c < "$member")" -eq "$csize"
    test "$(sha256sum < "$member" | cut -d' ' -f1)" = "$csha"
    test "$(split -b "$chunk" --filter=sha256sum "$member" | cut -d' ' -f1 | paste -sd,)" \
        = "$chunks"
    if zstd -q -t "$member" 2>/dev/null; then echo "plaintext zstd frame: $member"; exit 3; fi
    count=$((count + 1))
done < <(tail -n +2 files.txt)
echo "verified $count encrypted payloads"
"""


def _stock_check(bundle: Path, pubkey: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["/bin/bash", "-c", STOCK_CHECK, "stock-check", str(bundle), str(pubkey)],
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, cwd="/", capture_output=True,
        text=True, timeout=60,
    )


@pytest.mark.skipif(
    any(shutil.which(t, path="/usr/bin:/bin") is None for t in TOOLS), reason="stock tools missing"
)
class TestStockToolsWithoutKey:
    def test_signature_and_ciphertext_check_with_stock_tools(
        self, bundle: Path, keys: Keyring
    ) -> None:
        proc = _stock_check(bundle, keys.directory / "signing.pub")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Signature Verified Successfully" in proc.stdout
        assert "verified 3 encrypted payloads" in proc.stdout

    def test_altered_ciphertext_fails_the_stock_tool_check(
        self, tmp_path: Path, bundle: Path, keys: Keyring
    ) -> None:
        data = bundle.read_bytes()
        span = span_of(data, "payload/model.onnx.zst", "data")
        tampered = tmp_path / "tampered.satchel"
        tampered.write_bytes(flip_byte(data, span.start + 100_000, 0x01))
        proc = _stock_check(tampered, keys.directory / "signing.pub")
        assert proc.returncode != 0
        assert "verified" not in proc.stdout


# --- refusals ------------------------------------------------------------------------------


def test_bundle_for_other_devices_is_refused_in_one_line_naming_its_recipients(
    tmp_path: Path, bundle: Path, keys: Keyring, cam8: Identity
) -> None:
    err = refused(tmp_path, bundle.read_bytes(), keys, [cam8], NotARecipientError)
    assert str(err) == (
        "bundle kws 2.0.0 is encrypted for other devices (recipients: cam-7, manager), "
        "not for this device"
    )


def test_no_key_at_all_is_refused(tmp_path: Path, bundle: Path, keys: Keyring) -> None:
    refused(tmp_path, bundle.read_bytes(), keys, [], NotARecipientError)


def test_altered_ciphertext_is_refused_by_the_chunk_index_before_it_is_decrypted(
    tmp_path: Path, bundle: Path, keys: Keyring, cam7: Identity
) -> None:
    data = bundle.read_bytes()
    span = span_of(data, "payload/model.onnx.zst", "data")
    tampered = flip_byte(data, span.start + 1_500_000, 0x40)  # in the second index chunk
    err = refused(tmp_path, tampered, keys, [cam7], PayloadHashError)
    assert "chunk 2 of 3 does not match its signed hash" in str(err)


def test_segments_moved_dropped_or_cut_do_not_decrypt() -> None:
    """Without the chunk index in front (it is the second line of defence): STREAM's counter
    nonce and last-segment flag catch reordering, truncation and extension."""
    key = os.urandom(32)
    out = bytearray()

    class Sink:
        def write(self, b: bytes) -> int:
            out.extend(b)
            return len(b)

    sealer = SegmentSealer(Sink(), key, 4096)
    plain = os.urandom(4096 * 3 + 10)
    sealer.write(plain)
    sealer.finish()
    seg = 4096 + 16
    segments = [bytes(out[i:i + seg]) for i in range(0, len(out), seg)]

    def read_all(ct: bytes) -> bytes:
        import io

        opener = SegmentOpener(io.BytesIO(ct), key, 4096, len(ct), "model.onnx")
        parts = []
        while chunk := opener.read(100_000):
            parts.append(bytes(chunk))
        return b"".join(parts)

    assert read_all(bytes(out)) == plain
    for forged in (
        segments[1] + segments[0] + segments[2] + segments[3],  # moved
        segments[0] + segments[1] + segments[2],  # last one dropped: the cut is detected
        bytes(out) + segments[3],  # repeated at the end
    ):
        with pytest.raises(PayloadHashError, match="does not decrypt"):
            read_all(forged)


def _keys_doc(data: bytes) -> dict:
    members = {str(t.name): t.data for t in read_members(data)}
    return json.loads(members[KEYS_MEMBER])


def _with_keys(data: bytes, doc: dict | bytes) -> bytes:
    raw = doc if isinstance(doc, bytes) else json.dumps(doc, sort_keys=True).encode()
    return rewrite(data, KEYS_MEMBER, raw)


def test_altered_wrapped_key_is_refused(
    tmp_path: Path, bundle: Path, keys: Keyring, cam7: Identity
) -> None:
    data = bundle.read_bytes()
    doc = _keys_doc(data)
    wrapped = bytearray(base64.b64decode(doc["stanzas"][0]["wrapped"]))
    wrapped[3] ^= 1
    doc["stanzas"][0]["wrapped"] = base64.b64encode(bytes(wrapped)).decode()
    err = refused(tmp_path, _with_keys(data, doc), keys, [cam7], WrappedKeyError)
    assert "does not unlock it" in str(err)


def test_keys_json_wrapping_another_data_key_for_us_is_refused_before_decrypting(
    tmp_path: Path, bundle: Path, keys: Keyring, cam7: Identity
) -> None:
    """Anyone can wrap a key of their choosing for a device's public key: the signed key
    commitment is what makes such a key useless."""
    forged = KeyFile((wrap(os.urandom(32), cam7.recipient),)).to_bytes()
    err = refused(tmp_path, _with_keys(bundle.read_bytes(), forged), keys, [cam7],
                  WrappedKeyError)
    assert "keys.json altered or corrupted" in str(err)


@pytest.mark.parametrize("content", [b"{", b"[]", b'{"format": 1, "stanzas": []}',
                                     b'{"format": 2, "stanzas": []}'])
def test_malformed_keys_json_is_refused(
    tmp_path: Path, bundle: Path, keys: Keyring, cam7: Identity, content: bytes
) -> None:
    refused(tmp_path, _with_keys(bundle.read_bytes(), content), keys, [cam7], WrappedKeyError)


def test_encrypted_bundle_without_keys_json_is_refused(
    tmp_path: Path, bundle: Path, keys: Keyring, cam7: Identity
) -> None:
    from tests.factory.tar import drop_member

    refused(tmp_path, drop_member(bundle.read_bytes(), KEYS_MEMBER), keys, [cam7],
            MemberLayoutError)


def test_keys_json_in_a_plain_bundle_is_refused(tmp_path: Path, keys: Keyring) -> None:
    from tests.factory.bundles import build_test_bundle

    plain = build_test_bundle(tmp_path / "plain.satchel", keys=keys)
    stray = TarMember(KEYS_MEMBER, b'{"format": 1, "stanzas": []}')
    data = insert_member(plain.data, stray, 2)
    assert member_names(data)[:3] == ["manifest.json", "manifest.sig", KEYS_MEMBER]
    refused(tmp_path, data, keys, [], MemberLayoutError)


def test_a_stanza_naming_us_with_our_fingerprint_but_wrapped_for_another_key_is_refused(
    tmp_path: Path, bundle: Path, keys: Keyring, cam7: Identity, cam8: Identity
) -> None:
    data = bundle.read_bytes()
    doc = _keys_doc(data)
    theirs = wrap(os.urandom(32), cam8.recipient)
    doc["stanzas"].append(Stanza("cam-7", cam7.fingerprint, theirs.ephemeral,
                                 theirs.wrapped).to_dict())
    doc["stanzas"] = [s for s in doc["stanzas"] if s["recipient"] != "cam-7" or
                      s["ephemeral"] == base64.b64encode(theirs.ephemeral).decode()]
    refused(tmp_path, _with_keys(data, doc), keys, [cam7], WrappedKeyError)


# --- re-wrapping ---------------------------------------------------------------------------


def test_manager_rewraps_for_a_new_device_without_touching_what_is_signed(
    tmp_path: Path, bundle: Path, keys: Keyring, cam7: Identity, cam8: Identity,
    manager_key: Identity,
) -> None:
    out = tmp_path / "kws-rewrapped.satchel"
    with open(out, "wb") as f:
        _, new_keys = rewrap_bundle(bundle, f, [manager_key], [cam8.recipient], ["cam-7"])
    assert new_keys.names == ("manager", "cam-8")
    before = {str(t.name): t.data for t in read_members(bundle.read_bytes())}
    after = {str(t.name): t.data for t in read_members(out.read_bytes())}
    assert list(after) == list(before)
    assert {n: d for n, d in after.items() if n != KEYS_MEMBER} == {
        n: d for n, d in before.items() if n != KEYS_MEMBER}
    unpack(out, keys, tmp_path / "cam8", [cam8])
    assert read_tree(tmp_path / "cam8") == PAYLOADS
    (tmp_path / "cam7").mkdir()
    refused(tmp_path / "cam7", out.read_bytes(), keys, [cam7], NotARecipientError)


def test_rewrap_needs_a_key_that_already_unlocks_the_bundle(
    tmp_path: Path, bundle: Path, cam8: Identity
) -> None:
    with open(tmp_path / "out.satchel", "wb") as f, pytest.raises(NotARecipientError):
        rewrap_bundle(bundle, f, [cam8], [cam8.recipient])


# --- bounded memory ------------------------------------------------------------------------


def test_decrypting_a_large_payload_holds_a_bounded_amount_in_memory(
    tmp_path: Path, keys: Keyring, cam7: Identity
) -> None:
    """Python-side allocations while checking a 48 MiB encrypted payload stay a few MiB: one
    index chunk, one segment, the decompressor's queue of chunks; never the payload."""
    payloads = {"model.onnx": os.urandom(48 * 1024 * 1024), "smoke/inputs.npz": b"i",
                "smoke/reference.npz": b"r"}
    path = encrypted_bundle(tmp_path / "big.satchel", keys, [cam7], payloads)
    del payloads
    from satchel.bundles.crypt import unlock_bundle

    with open(path, "rb") as f:
        verified = unlock_bundle(verify_bundle(f, keys.root, NOW, defer_payloads=True), [cam7])
        tracemalloc.start()
        try:
            check_payloads(f, verified)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 12 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB of Python allocations"


# --- edges of the format -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 8192, 3 * 4096 + 5])
def test_any_frame_size_seals_into_the_segments_it_needs_and_opens_again(size: int) -> None:
    import io

    from satchel.bundles.crypt import ciphertext_size

    key, out = os.urandom(32), io.BytesIO()
    sealer = SegmentSealer(out, key, 4096)
    plain = os.urandom(size)
    for i in range(0, size, 1000):  # written in pieces that do not line up with segments
        sealer.write(plain[i:i + 1000])
    sealer.finish()
    assert len(out.getvalue()) == ciphertext_size(size, 4096)
    opener = SegmentOpener(io.BytesIO(out.getvalue()), key, 4096, len(out.getvalue()), "p")
    got = b""
    while chunk := opener.read(3000):
        got += bytes(chunk)
    assert got == plain


@pytest.mark.parametrize("change", [
    {"scheme": "age-v1"},
    {"segment_size": 100},
    {"segment_size": 64 * 1024 * 1024},
    {"key_commitment": "00"},
    {"recipients": []},
    {"recipients": [{"name": "../x", "fingerprint": "0" * 32}]},
    {"recipients": [{"name": "cam-7", "fingerprint": "0" * 32, "extra": 1}]},
    {"extra": True},
])
def test_a_signed_encryption_object_that_is_not_valid_is_refused_as_a_manifest_error(
    bundle: Path, keys: Keyring, change: dict
) -> None:
    from satchel.bundles.cryptinfo import EncryptionInfo
    from satchel.bundles.errors import ManifestError

    with open(bundle, "rb") as f:
        info = verify_bundle(f, keys.root, NOW).manifest.encryption
    assert info is not None
    with pytest.raises(ManifestError) as err:
        EncryptionInfo.from_dict({**info.to_dict(), **change})
    assert_one_line(err.value)


@pytest.mark.parametrize("stanza_change", [
    {"ephemeral": "not base64!"},
    {"ephemeral": base64.b64encode(b"short").decode()},
    {"wrapped": base64.b64encode(b"x" * 47).decode()},
    {"fingerprint": "XYZ"},
    {"recipient": ""},
    {"recipient": 7},
    {"extra": 1},
])
def test_a_malformed_stanza_is_refused_in_one_line(
    tmp_path: Path, bundle: Path, keys: Keyring, cam7: Identity, stanza_change: dict
) -> None:
    data = bundle.read_bytes()
    doc = _keys_doc(data)
    doc["stanzas"][0].update(stanza_change)
    refused(tmp_path, _with_keys(data, doc), keys, [cam7], WrappedKeyError)


def test_many_recipients_each_decrypt(tmp_path: Path, keys: Keyring) -> None:
    fleet = [Identity.generate(f"cam-{i}") for i in range(50)]
    path = encrypted_bundle(tmp_path / "fleet.satchel", keys, fleet,
                            {"model.onnx": b"m" * 5000, "smoke/inputs.npz": b"i",
                             "smoke/reference.npz": b"r"})
    for i in (0, 49):
        unpack(path, keys, tmp_path / f"cam-{i}", [fleet[i]])
        assert (tmp_path / f"cam-{i}" / "model.onnx").read_bytes() == b"m" * 5000


def test_a_device_key_pair_is_a_recipient_and_its_identity(tmp_path: Path, keys: Keyring) -> None:
    """A device's Ed25519 device.pub (what it enrolls with) converts to the X25519 public key
    of the identity converted from its device.key: the manager can encrypt for any device it
    knows, and only that device decrypts."""
    from satchel.bundles.keys import SigningKey
    from satchel.bundles.recipients import Recipient, device_identity_of

    for _ in range(20):
        key = SigningKey.generate()
        recipient = Recipient.from_pem("cam-7", key.public.to_pem())
        assert device_identity_of("cam-7", key.to_pem()).recipient == recipient
    device_key = SigningKey.generate()
    recipient = Recipient.from_pem("cam-7", device_key.public.to_pem())
    path = tmp_path / "for-device.satchel"
    manifest = default_manifest("kws", "2.0.0", 1, list(PAYLOADS))
    with open(path, "wb") as f:
        write_bundle(f, manifest, [Payload(p, b) for p, b in PAYLOADS.items()],
                     keys.signing_keys, TEST_PACK, encryption=BundleEncryption((recipient,)))
    unpack(path, keys, tmp_path / "out", [Identity.from_pem("cam-7", device_key.to_pem())])
    assert read_tree(tmp_path / "out") == PAYLOADS
