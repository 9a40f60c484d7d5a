"""A bundle can be checked with stock tools alone, no Satchel code in the checking path:
`tar -xf`, `openssl pkeyutl -verify -rawin`, `zstd -d`, `sha256sum` (and `split` for the
chunk index), and the system python3 with only its standard library (isolated mode) to read
the JSON."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from satchel.bundles.keys import SigningKey
from tests.factory.bundles import BuiltBundle, build_test_bundle
from tests.factory.keys import Keyring
from tests.factory.spans import flip_byte, span_of

TOOLS = ("tar", "zstd", "openssl", "sha256sum", "split", "base64", "python3")

CHECK_SCRIPT = r"""
set -euo pipefail
bundle=$1 pubkey=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

tar -xf "$bundle"
listing=$(tar -tf "$bundle")
test "$(printf '%s\n' "$listing" | head -n 2 | tr '\n' ' ')" = "manifest.json manifest.sig "

# The signature: base64 -> raw Ed25519, verified over the exact bytes of manifest.json.
python3 -I -c '
import json
for e in json.load(open("manifest.sig")):
    print(e["keyid"], e["sig"])
' > sigs.txt
read -r keyid sig < sigs.txt
printf '%s' "$sig" | base64 -d > sig.bin
openssl pkeyutl -verify -rawin -pubin -inkey "$pubkey" -in manifest.json -sigfile sig.bin

# The key id is the sha256 of the raw 32-byte public key.
derived=$(openssl pkey -pubin -in "$pubkey" -outform DER | tail -c 32 | sha256sum | cut -d' ' -f1)
test "$derived" = "$keyid"

# Every payload: compressed size, hash and chunk index, then decompressed size and hash.
python3 -I -c '
import json
for f in json.load(open("manifest.json"))["files"]:
    print(f["path"], f["size"], f["sha256"], f["compressed_size"], f["compressed_sha256"],
          f["chunk_size"], ",".join(f["chunk_sha256"]))
' > files.txt
count=0
while read -r path size sha csize csha chunk chunks; do
    member="payload/$path.zst"
    test "$(wc -c < "$member")" -eq "$csize"
    test "$(sha256sum < "$member" | cut -d' ' -f1)" = "$csha"
    test "$(split -b "$chunk" --filter=sha256sum "$member" | cut -d' ' -f1 | paste -sd,)" \
        = "$chunks"
    zstd -q -d -c "$member" > content
    test "$(wc -c < content)" -eq "$size"
    test "$(sha256sum < content | cut -d' ' -f1)" = "$sha"
    count=$((count + 1))
done < files.txt
test "$count" -eq "$(printf '%s\n' "$listing" | grep -c '^payload/')"
echo "verified $count payloads"
"""


def _stock_check(bundle: Path, pubkey: Path) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C"}
    return subprocess.run(
        ["/bin/bash", "-c", CHECK_SCRIPT, "stock-check", str(bundle), str(pubkey)],
        env=env, cwd="/", capture_output=True, text=True, timeout=60,
    )


@pytest.fixture
def mixed_bundle(tmp_path: Path, keys: Keyring) -> BuiltBundle:
    payloads = {
        "model.onnx": os.urandom(2 * 1024 * 1024 + 200_000),  # three chunks of the index
        "smoke/inputs.npz": b"inputs" * 1000,
        "smoke/reference.npz": b"",
        "extra/deep/labels.txt": b"cat\ndog\n",
    }
    return build_test_bundle(tmp_path / "stock.satchel", keys=keys, payloads=payloads)


@pytest.mark.skipif(
    any(shutil.which(t, path="/usr/bin:/bin") is None for t in TOOLS),
    reason="stock tools missing",
)
class TestStockTools:
    def test_honest_bundle_passes_every_check_with_stock_tools(
        self, mixed_bundle: BuiltBundle, keys: Keyring
    ) -> None:
        proc = _stock_check(mixed_bundle.path, keys.directory / "signing.pub")
        assert proc.returncode == 0, proc.stderr
        assert "Signature Verified Successfully" in proc.stdout
        assert "verified 4 payloads" in proc.stdout

    @pytest.mark.parametrize("member", ["manifest.json", "payload/model.onnx.zst"])
    def test_tampered_bundle_fails_the_stock_tool_check(
        self, tmp_path: Path, mixed_bundle: BuiltBundle, keys: Keyring, member: str
    ) -> None:
        span = span_of(mixed_bundle.data, member, "data")
        tampered = tmp_path / "tampered.satchel"
        tampered.write_bytes(flip_byte(mixed_bundle.data, span.start + 40, 0x01))
        proc = _stock_check(tampered, keys.directory / "signing.pub")
        assert proc.returncode != 0
        assert "verified" not in proc.stdout

    def test_chunk_index_that_disagrees_with_the_member_fails_the_stock_tool_check(
        self, tmp_path: Path, keys: Keyring
    ) -> None:
        def lie(doc: dict) -> None:
            doc["files"][0]["chunk_sha256"][1] = "0" * 64

        payloads = {"model.onnx": os.urandom(2 * 1024 * 1024 + 1), "smoke/inputs.npz": b"i",
                    "smoke/reference.npz": b"r"}
        lying = build_test_bundle(
            tmp_path / "lying.satchel", keys=keys, payloads=payloads, mutate_manifest=lie
        )
        proc = _stock_check(lying.path, keys.directory / "signing.pub")
        assert proc.returncode != 0
        assert "Signature Verified Successfully" in proc.stdout  # signed, but inconsistent
        assert "payloads" not in proc.stdout

    def test_signature_by_another_key_fails_the_stock_tool_check(
        self, tmp_path: Path, keys: Keyring
    ) -> None:
        stranger = SigningKey.generate()
        forged = build_test_bundle(tmp_path / "forged.satchel", keys=keys, signers=[stranger])
        proc = _stock_check(forged.path, keys.directory / "signing.pub")
        assert proc.returncode != 0
