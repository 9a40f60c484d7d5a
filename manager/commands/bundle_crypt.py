"""`satchel bundle rewrap|decrypt`: give an encrypted bundle to more devices without
re-signing it, and decrypt one as a device would (docs/ENCRYPTION.md)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from satchel.bundles.timeutil import utcnow
from satchel.manager.commands.common import echo_json, refusals_exit_1
from satchel.manager.errors import UsageError
from satchel.manager.keydir import read_root

if TYPE_CHECKING:
    from satchel.bundles.recipients import Recipient

_IDENTITY = click.Path(dir_okay=False, exists=True, path_type=Path)
DEVICE_PREFIX = "device:"


def resolve_recipients(specs: tuple[str, ...]) -> list[Recipient]:
    """Recipients from `[NAME=]PUBKEY` files and `device:ID`: a device the manager knows (its
    local database, or `satchel --url`), whose recipient is the Ed25519 key it enrolled or
    was registered with, converted to X25519. Raises KeyFileError, the fleet's errors."""
    from satchel.bundles.recipients import device_recipient_of, load_recipient
    from satchel.manager.commands.context import fleet_of

    out: list[Recipient] = []
    fleet = None
    for spec in specs:
        if not spec.startswith(DEVICE_PREFIX):
            out.append(load_recipient(spec))
            continue
        device_id = spec[len(DEVICE_PREFIX):]
        if fleet is None:
            fleet = fleet_of(click.get_current_context())
        detail = fleet.device_detail(device_id, 0)
        try:
            raw = bytes.fromhex(str(detail["public_key"]))
        except (KeyError, ValueError) as e:
            raise UsageError(f"device {device_id} has no usable public key") from e
        out.append(device_recipient_of(device_id, raw))
    return out


@click.command("rewrap")
@click.argument("bundle_ref", metavar="FILE|NAME:VERSION")
@click.option("--identity", "identities", multiple=True, type=_IDENTITY,
              help="With FILE: an X25519 private key the bundle is already wrapped for (the "
              "manager's recipient key). Repeatable. A stored bundle is re-wrapped with the "
              "manager's own key (its encryption_identity setting).")
@click.option("--to", "add", multiple=True,
              metavar="[NAME=]PUBKEY|device:ID|class:CLASS|all-enrolled",
              help="Also wrap the data key for this recipient: a public key file (X25519, or "
              "a device's Ed25519 device.pub) or device:ID, a device the manager knows; for a "
              "stored bundle also class:CLASS (its devices) or all-enrolled (every device of "
              "a class the bundle is for). Repeatable.")
@click.option("--remove", multiple=True, metavar="NAME|FINGERPRINT",
              help="With FILE: no longer wrap it for this recipient (future copies only). "
              "Repeatable.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a re-wrapped copy of FILE here. Without it, FILE|NAME:VERSION names "
              "a bundle the manager stores (`--data-dir` or `--url`), re-wrapped in place.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@refusals_exit_1
def rewrap_cmd(bundle_ref: str, identities: tuple[Path, ...], add: tuple[str, ...],
               remove: tuple[str, ...], output: Path | None, as_json: bool) -> None:
    """Wrap an encrypted bundle's data key for more (or fewer) recipients.

    Only keys.json changes: the signed manifest and the encrypted payloads are copied byte
    for byte, so no signing key is needed and the signatures still hold. With -o, FILE is
    copied; without, the manager re-wraps its stored bundle NAME:VERSION (or sha256) for
    devices only (it adds recipients, never removes one) and serves the new file.
    """
    if output is None:
        _rewrap_stored(bundle_ref, identities, add, remove, as_json)
        return
    from satchel.bundles.cryptbundle import rewrap_bundle
    from satchel.bundles.durable import atomic_writer
    from satchel.bundles.recipients import load_identity

    file = Path(bundle_ref)
    if not file.is_file():
        raise UsageError(f"no bundle file {bundle_ref}")
    if not identities:
        raise UsageError("re-wrapping a FILE needs --identity KEY")
    if not add and not remove:
        raise UsageError("nothing to do: give --to RECIPIENT or --remove NAME")
    if output.resolve() == file.resolve():
        raise UsageError("write the re-wrapped bundle to another file (-o)")
    keys = [load_identity(p) for p in identities]
    recipients = resolve_recipients(add)
    with atomic_writer(output) as out:
        manifest, key_file = rewrap_bundle(file, out, keys, recipients, remove)
    if as_json:
        echo_json({"output": str(output), "name": manifest.name, "version": manifest.version,
                   "recipients": [{"name": s.recipient, "fingerprint": s.fingerprint}
                                  for s in key_file.stanzas]})
        return
    click.echo(f"re-wrapped {manifest.name} {manifest.version} into {output}: recipients "
               + ", ".join(key_file.names))


def _rewrap_stored(ref: str, identities: tuple[Path, ...], add: tuple[str, ...],
                   remove: tuple[str, ...], as_json: bool) -> None:
    """`bundle rewrap NAME:VERSION --to ...` on the manager's database or at `--url`."""
    if identities or remove:
        raise UsageError("a stored bundle is re-wrapped with the manager's encryption_identity "
                         "and only for more devices: no --identity or --remove (or give -o "
                         "FILE to re-wrap a file)")
    if not add:
        raise UsageError("nothing to do: give --to device:ID, class:CLASS or all-enrolled")
    ctx = click.get_current_context()
    obj = ctx.find_root().obj
    if obj.url:
        from urllib.parse import quote

        from satchel.manager.fleet.credentials import admin_token
        from satchel.manager.fleet.http import ApiClient

        client = ApiClient(obj.url, admin_token(obj.token_file))
        out = client.send("POST", f"/bundles/{quote(ref, safe='')}/rewrap", {"to": list(add)})
    else:
        from satchel.manager.commands.context import config_of
        from satchel.manager.db import open_database
        from satchel.manager.services import bundles
        from satchel.manager.services.rewrap import rewrap_stored
        from satchel.manager.store import open_store

        config = config_of(ctx)
        store = open_store(config)
        db = open_database(config)
        t = utcnow()
        try:
            with db.transaction() as s:
                done = rewrap_stored(s, store, config, bundles.get_by_ref(s, ref), list(add), t)
        finally:
            db.dispose()
        if done.replaced is not None:
            store.delete(done.replaced)  # after the commit: no offer names it any more
        out = done.result
    if as_json:
        echo_json(out)
        return
    name, version = out.get("name"), out.get("version")
    if not out.get("added"):
        click.echo(f"{name} {version} is already wrapped for "
                   + (", ".join(out.get("already") or []) or "every device named"))
        return
    click.echo(f"re-wrapped {name} {version} for {', '.join(out['added'])}: now "
               f"{str(out.get('sha256', ''))[:12]} (was {str(out.get('previous_sha256'))[:12]})")


@click.command("decrypt")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--trust", required=True, type=click.Path(dir_okay=False, exists=True,
                                                         path_type=Path),
              help="root.json: the trust root to verify against first.")
@click.option("--identity", "identities", multiple=True, required=True, type=_IDENTITY,
              help="An X25519 private key the bundle is wrapped for. Repeatable.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="An empty or new folder for the decrypted payload files (mode 0600).")
@refusals_exit_1
def decrypt_cmd(file: Path, trust: Path, identities: tuple[Path, ...], output: Path) -> None:
    """Verify an encrypted bundle, then decrypt and decompress its payloads into a folder,
    checking every hash as a device does."""
    from satchel.bundles.reader import verify_and_unpack
    from satchel.bundles.recipients import load_identity

    root = read_root(trust)
    keys = [load_identity(p) for p in identities]
    output.mkdir(parents=True, exist_ok=True, mode=0o700)
    verified = verify_and_unpack(file, root, output, utcnow(), identities=keys, fsync=False)
    m = verified.manifest
    click.echo(f"decrypted {m.name} {m.version}: {len(m.files)} payload(s) into {output}")
