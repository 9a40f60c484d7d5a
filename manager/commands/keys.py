"""`satchel keys`: make the offline root key and signing keys, rotate and revoke them."""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import click

from satchel.bundles.timeutil import format_time, utcnow
from satchel.manager.commands.common import (
    PASSPHRASE_ENV,
    echo_json,
    load_keys,
    passphrase_file_option,
    passphrase_from,
    refusals_exit_1,
)
from satchel.manager.errors import UsageError
from satchel.manager.keydir import RotationRequest, init_keydir, key_names, read_root, rotate


def _root_summary(keydir: Path) -> dict[str, object]:
    root = read_root(keydir)
    names = key_names(keydir)
    return {
        "version": root.version,
        "expires": format_time(root.expires) if root.expires else None,
        "roles": {
            role: {
                "threshold": root.roles[role].threshold,
                "keys": [{"keyid": kid, "name": names.get(kid)} for kid in root.roles[role].keyids],
            }
            for role in ("root", "signing")
        },
    }


def _print_summary(keydir: Path, as_json: bool) -> None:
    summary = _root_summary(keydir)
    if as_json:
        echo_json(summary)
        return
    click.echo(f"trust root v{summary['version']} ({keydir / 'root.json'})")
    for role, info in summary["roles"].items():  # type: ignore[attr-defined]
        click.echo(f"  {role}: threshold {info['threshold']} of {len(info['keys'])}")
        for k in info["keys"]:
            click.echo(f"    {k['keyid'][:16]}  {k['name'] or '(held elsewhere)'}")


@click.group()
def keys() -> None:
    """Make, list and rotate the keys that sign bundles and the trust root."""


@keys.command("init")
@click.argument("keydir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--encrypt", is_flag=True, help="Encrypt private keys with a passphrase.")
@click.option("--expires-days", type=click.IntRange(1), help="Trust root expiry (days).")
@passphrase_file_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@refusals_exit_1
def init_cmd(
    keydir: Path,
    encrypt: bool,
    expires_days: int | None,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Create KEYDIR with a root key, a signing key and a signed root.json.

    Devices are provisioned with KEYDIR/root.json only. Keep root.key offline.
    """
    passphrase = passphrase_from(passphrase_file)
    if encrypt and passphrase is None:
        if not sys.stdin.isatty():
            raise UsageError(
                f"--encrypt needs a passphrase: --passphrase-file, ${PASSPHRASE_ENV} or a terminal"
            )
        passphrase = click.prompt(
            "New passphrase", hide_input=True, confirmation_prompt=True, err=True
        ).encode()
    if encrypt and not passphrase:
        raise UsageError("--encrypt needs a non-empty passphrase")
    expires = utcnow() + timedelta(days=expires_days) if expires_days else None
    init_keydir(keydir, passphrase, expires)
    if not as_json:
        click.echo(f"wrote {keydir}/root.key, signing.key (mode 0600), root.pub, signing.pub")
    _print_summary(keydir, as_json)


@keys.command("rotate")
@click.argument("keydir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option(
    "--add-signing-key",
    "add_signing",
    multiple=True,
    metavar="NAME",
    help="Generate a new signing key KEYDIR/NAME.key and trust it.",
)
@click.option(
    "--add-signing-pub",
    "add_pubs",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Trust a signing key held elsewhere (PEM public key).",
)
@click.option(
    "--revoke",
    multiple=True,
    metavar="KEYID|NAME",
    help="Stop trusting a signing key (key id, unique prefix, or key name).",
)
@click.option(
    "--signing-threshold", type=click.IntRange(1), help="Signatures required on every bundle."
)
@click.option("--new-root-key", is_flag=True, help="Replace the root key; the old one signs.")
@click.option(
    "--root-key",
    "extra_root",
    multiple=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Further current root keys, when the root threshold is above one.",
)
@click.option("--expires-days", type=click.IntRange(1), help="New trust root expiry (days).")
@passphrase_file_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@refusals_exit_1
def rotate_cmd(
    keydir: Path,
    add_signing: tuple[str, ...],
    add_pubs: tuple[Path, ...],
    revoke: tuple[str, ...],
    signing_threshold: int | None,
    new_root_key: bool,
    extra_root: tuple[Path, ...],
    expires_days: int | None,
    passphrase_file: Path | None,
    as_json: bool,
) -> None:
    """Write the next root.json: add or revoke signing keys, change the threshold or root key.

    Devices accept it only when it is signed by a threshold of the root keys they trust.
    """
    passphrase = passphrase_from(passphrase_file)
    extra = tuple(load_keys(extra_root, passphrase))
    req = RotationRequest(
        add_signing=add_signing,
        add_signing_pubs=add_pubs,
        revoke=revoke,
        signing_threshold=signing_threshold,
        new_root_key=new_root_key,
        expires=utcnow() + timedelta(days=expires_days) if expires_days else None,
    )
    rotate(keydir, req, passphrase, extra)
    _print_summary(keydir, as_json)


@keys.command("list")
@click.argument("keydir", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@refusals_exit_1
def list_cmd(keydir: Path, as_json: bool) -> None:
    """Show the trust root's version, roles, thresholds and key ids."""
    _print_summary(keydir, as_json)


@keys.group("recipient")
def recipient() -> None:
    """X25519 key pairs that encrypted bundles are wrapped for (docs/ENCRYPTION.md)."""


@recipient.command("init")
@click.argument("name")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("."), show_default=True, help="Folder for NAME.key and NAME.pub.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@refusals_exit_1
def recipient_init_cmd(name: str, out_dir: Path, as_json: bool) -> None:
    """Make a recipient key pair NAME.key (private, mode 0600) and NAME.pub: a device class's
    or a fleet's key (give NAME.key to its devices with `satchel-agent init --decryption-key`)
    or the manager's (keep NAME.key with the manager: `satchel bundle rewrap` needs it)."""
    from satchel.bundles.durable import atomic_write_bytes
    from satchel.bundles.recipients import PRIVATE_MODE, Identity

    identity = Identity.generate(name)
    key, pub = out_dir / f"{name}.key", out_dir / f"{name}.pub"
    for path in (key, pub):
        if path.exists():
            raise UsageError(f"{path} already exists; refusing to overwrite it")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(key, identity.to_pem(), PRIVATE_MODE)
    atomic_write_bytes(pub, identity.recipient.to_pem())
    if as_json:
        echo_json({"name": name, "key": str(key), "public_key": str(pub),
                   "fingerprint": identity.fingerprint})
        return
    click.echo(f"recipient {name}: private key {key} (mode 0600), public key {pub}, "
               f"fingerprint {identity.fingerprint}")
