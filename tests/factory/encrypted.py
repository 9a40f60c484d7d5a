"""Encrypted copies of honest test bundles (issue 19): the same manifest and payloads, packed
again by `bundles.pack.write_bundle` with every payload encrypted for some recipients."""

from __future__ import annotations

from pathlib import Path

import zstandard

from satchel.bundles.crypt import BundleEncryption
from satchel.bundles.keys import SigningKey
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.reader import read_unverified
from satchel.bundles.recipients import Recipient
from tests.factory.bundles import TEST_PACK
from tests.factory.tar import read_members


def encrypt_bundle(plain: Path, signers: list[SigningKey], recipients: list[Recipient],
                   out: Path | None = None) -> Path:
    """The bundle at `plain`, rebuilt with its manifest and payloads, encrypted for
    `recipients` and signed by `signers`; written beside it unless `out` is given."""
    with open(plain, "rb") as f:
        manifest, _ = read_unverified(f)
    members = {str(m.name): m.data for m in read_members(plain.read_bytes())}
    unzstd = zstandard.ZstdDecompressor()
    payloads = [Payload(e.path, unzstd.decompress(members[f"payload/{e.path}.zst"]))
                for e in manifest.files]
    out = out or plain.with_name(plain.stem + "-encrypted.satchel")
    with open(out, "wb") as f:
        write_bundle(f, manifest.with_files([]), payloads, signers, TEST_PACK,
                     encryption=BundleEncryption(tuple(recipients)))
    return out
