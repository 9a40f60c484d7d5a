"""`satchel keys init | rotate | list`: the offline root key, signing keys and root.json."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from satchel.bundles.errors import RootRotationError
from satchel.bundles.keys import PublicKey, SigningKey
from satchel.bundles.trust import load_root, make_root, sign_root, update_root, update_root_chain

if TYPE_CHECKING:
    from tests.cli.invoke import Cli
    from tests.cli.model_files import Models
    from tests.factory.outcome import Outcome

PASSPHRASE = "correct horse battery staple"


def _keyid_of_pub(path: Path) -> str:
    return PublicKey.from_pem(path.read_bytes()).keyid


def _build(cli: Cli, models: Models, out: Path, *keys: Path, env: dict[str, str] | None = None,
           spawn: bool = False) -> Outcome:
    args: list[str | Path] = ["bundle", "build", "--name", "detector", "--version", "1",
                              "--model", models.int8_onnx, "--reference", models.float_onnx,
                              "-o", out]
    for key in keys:
        args += ["--key", key]
    return cli.spawn(*args, env=env) if spawn else cli.run(*args, env=env)


# --- keys init -------------------------------------------------------------------------------


def test_keys_init_writes_signed_root_and_pem_keys(cli: Cli, tmp_path: Path) -> None:
    kd = tmp_path / "keys"
    out = cli.spawn("keys", "init", kd).ok()

    assert out.stderr == ""
    assert {p.name for p in kd.iterdir()} == {
        "root.json", "1.root.json", "root.key", "signing.key", "root.pub", "signing.pub"
    }
    for name in ("root.key", "signing.key"):
        assert stat.S_IMODE((kd / name).stat().st_mode) == 0o600
        assert (kd / name).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    for name in ("root.pub", "signing.pub"):
        assert (kd / name).read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert (kd / "root.json").read_bytes() == (kd / "1.root.json").read_bytes()
    root = load_root((kd / "root.json").read_bytes())
    assert root.version == 1
    assert root.root_role.keyids == (_keyid_of_pub(kd / "root.pub"),)
    assert root.signing_role.keyids == (_keyid_of_pub(kd / "signing.pub"),)
    assert root.signers == {_keyid_of_pub(kd / "root.pub")}
    signing = SigningKey.from_pem((kd / "signing.key").read_bytes(), None)
    assert signing.keyid == _keyid_of_pub(kd / "signing.pub")
    assert signing.keyid[:16] in out.stdout


def test_keys_init_refuses_to_overwrite_a_key_dir(cli: Cli, keydir: Path, snapshot: Any) -> None:
    before = snapshot(keydir)
    dir_mode = keydir.stat().st_mode

    line = cli.spawn("keys", "init", keydir).refusal()

    assert "already exists" in line
    assert snapshot(keydir) == before
    assert keydir.stat().st_mode == dir_mode


def test_keys_init_where_no_directory_can_be_made_is_one_line(cli: Cli, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"not a directory")

    line = cli.run("keys", "init", blocker / "keys").refusal()

    assert "cannot write key directory" in line
    assert blocker.read_bytes() == b"not a directory"


def test_keys_init_encrypts_private_keys_with_passphrase_file(cli: Cli, tmp_path: Path) -> None:
    secret = tmp_path / "passphrase"
    secret.write_text(PASSPHRASE + "\n")
    kd = tmp_path / "keys"

    cli.run("keys", "init", kd, "--encrypt", "--passphrase-file", secret).ok()

    for name in ("root.key", "signing.key"):
        pem = (kd / name).read_bytes()
        assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert stat.S_IMODE((kd / name).stat().st_mode) == 0o600
        key = SigningKey.from_pem(pem, PASSPHRASE.encode())
        assert key.keyid == _keyid_of_pub(kd / name.replace(".key", ".pub"))


def test_keys_init_encrypts_with_passphrase_from_environment(cli: Cli, tmp_path: Path) -> None:
    kd = tmp_path / "keys"

    cli.run("keys", "init", kd, "--encrypt", env={"SATCHEL_KEY_PASSPHRASE": PASSPHRASE}).ok()

    pem = (kd / "signing.key").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert SigningKey.from_pem(pem, PASSPHRASE.encode()).keyid == _keyid_of_pub(kd / "signing.pub")


def test_encrypt_without_a_passphrase_and_no_terminal_is_refused(
    cli: Cli, tmp_path: Path
) -> None:
    kd = tmp_path / "keys"

    line = cli.spawn("keys", "init", kd, "--encrypt").refusal()

    assert "--encrypt needs a passphrase" in line
    assert not kd.exists()


def test_encrypt_with_an_empty_passphrase_file_is_refused(cli: Cli, tmp_path: Path) -> None:
    empty = tmp_path / "passphrase"
    empty.write_text("\n")
    kd = tmp_path / "keys"

    line = cli.run("keys", "init", kd, "--encrypt", "--passphrase-file", empty).refusal()

    assert "non-empty passphrase" in line
    assert not kd.exists()


def test_encrypted_key_needs_its_passphrase_to_build(
    cli: Cli, models: Models, tmp_path: Path
) -> None:
    kd = tmp_path / "keys"
    cli.run("keys", "init", kd, "--encrypt", env={"SATCHEL_KEY_PASSPHRASE": PASSPHRASE}).ok()
    out = tmp_path / "out" / "b.satchel"
    out.parent.mkdir()

    line = _build(cli, models, out, kd / "signing.key", spawn=True).refusal()
    assert line == f"error: {kd / 'signing.key'}: key file is encrypted: give its passphrase"
    assert list(out.parent.iterdir()) == []

    wrong = _build(cli, models, out, kd / "signing.key", env={"SATCHEL_KEY_PASSPHRASE": "nope"})
    assert "passphrase" in wrong.refusal()
    assert list(out.parent.iterdir()) == []

    _build(cli, models, out, kd / "signing.key", env={"SATCHEL_KEY_PASSPHRASE": PASSPHRASE},
           spawn=True).ok()
    verified = cli.run("bundle", "verify", out, "--trust", kd / "root.json").ok()
    assert verified.stdout.startswith("OK: detector 1")


def test_rotation_with_encrypted_keys_encrypts_the_new_key(cli: Cli, tmp_path: Path) -> None:
    kd = tmp_path / "keys"
    env = {"SATCHEL_KEY_PASSPHRASE": PASSPHRASE}
    cli.run("keys", "init", kd, "--encrypt", env=env).ok()

    assert "passphrase" in cli.run("keys", "rotate", kd, "--add-signing-key", "second").refusal()
    assert not (kd / "second.key").exists()

    cli.run("keys", "rotate", kd, "--add-signing-key", "second", env=env).ok()
    pem = (kd / "second.key").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE((kd / "second.key").stat().st_mode) == 0o600


# --- keys list -------------------------------------------------------------------------------


def test_keys_list_json_names_roles_thresholds_and_keys(cli: Cli, keydir: Path) -> None:
    listing = cli.run("keys", "list", keydir, "--json").json()

    assert listing["version"] == 1
    assert listing["expires"] is None
    assert listing["roles"]["root"] == {
        "threshold": 1, "keys": [{"keyid": _keyid_of_pub(keydir / "root.pub"), "name": "root"}]
    }
    assert listing["roles"]["signing"] == {
        "threshold": 1,
        "keys": [{"keyid": _keyid_of_pub(keydir / "signing.pub"), "name": "signing"}],
    }
    human = cli.run("keys", "list", keydir).ok().stdout
    assert "trust root v1" in human and "signing: threshold 1 of 1" in human


# --- keys rotate -----------------------------------------------------------------------------


def test_threshold_two_refuses_single_signed_bundles(
    cli: Cli, models: Models, keydir: Path, tmp_path: Path
) -> None:
    single = tmp_path / "single.satchel"
    _build(cli, models, single, keydir / "signing.key").ok()

    rotated = cli.run("keys", "rotate", keydir, "--add-signing-key", "second",
                      "--signing-threshold", "2", "--json").json()

    assert rotated["version"] == 2
    assert rotated["roles"]["signing"]["threshold"] == 2
    assert (keydir / "2.root.json").read_bytes() == (keydir / "root.json").read_bytes()
    assert stat.S_IMODE((keydir / "second.key").stat().st_mode) == 0o600
    line = cli.run("bundle", "verify", single, "--trust", keydir / "root.json").refusal()
    assert "1 valid signature(s)" in line and "2 required" in line

    double = tmp_path / "double.satchel"
    _build(cli, models, double, keydir / "signing.key", keydir / "second.key").ok()
    ok = cli.run("bundle", "verify", double, "--trust", keydir / "root.json").ok()
    assert "2 of 2 required signature(s)" in ok.stdout


def test_revoked_key_bundles_are_refused_as_unknown_key(
    cli: Cli, models: Models, keydir: Path, tmp_path: Path
) -> None:
    old = tmp_path / "old.satchel"
    _build(cli, models, old, keydir / "signing.key").ok()
    revoked_id = _keyid_of_pub(keydir / "signing.pub")

    cli.run("keys", "rotate", keydir, "--add-signing-key", "second").ok()
    listing = cli.run("keys", "rotate", keydir, "--revoke", "signing", "--json").json()

    assert [k["name"] for k in listing["roles"]["signing"]["keys"]] == ["second"]
    line = cli.run("bundle", "verify", old, "--trust", keydir / "root.json").refusal()
    assert "does not list" in line and revoked_id[:12] in line
    new = tmp_path / "new.satchel"
    _build(cli, models, new, keydir / "second.key").ok()
    cli.run("bundle", "verify", new, "--trust", keydir / "root.json").ok()


def test_revoke_by_key_id_prefix(cli: Cli, keydir: Path) -> None:
    cli.run("keys", "rotate", keydir, "--add-signing-key", "second").ok()
    prefix = _keyid_of_pub(keydir / "second.pub")[:12]

    listing = cli.run("keys", "rotate", keydir, "--revoke", prefix, "--json").json()

    assert [k["name"] for k in listing["roles"]["signing"]["keys"]] == ["signing"]


def test_revoking_the_last_signing_key_is_refused(
    cli: Cli, keydir: Path, snapshot: Any
) -> None:
    before = snapshot(keydir)

    line = cli.run("keys", "rotate", keydir, "--revoke", "signing").refusal()

    assert "no signing key left" in line
    assert snapshot(keydir) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--add-signing-key", "third", "--signing-threshold", "5"], "exceeds"),
        (["--revoke", "no-such-key"], "names no single key"),
        (["--add-signing-key", "../escape"], "invalid key name"),
        (["--add-signing-key", "signing"], "invalid key name"),
    ],
)
def test_refused_rotation_changes_nothing(
    cli: Cli, keydir: Path, snapshot: Any, args: list[str], message: str
) -> None:
    before = snapshot(keydir)

    line = cli.run("keys", "rotate", keydir, *args).refusal()

    assert message in line
    assert snapshot(keydir) == before


def test_rotation_signed_by_a_root_key_the_devices_do_not_trust_is_refused(
    cli: Cli, keydir: Path, snapshot: Any
) -> None:
    (keydir / "root.key").write_bytes(SigningKey.generate().to_pem())
    before = snapshot(keydir)

    line = cli.run("keys", "rotate", keydir, "--add-signing-key", "second").refusal()

    assert "not signed by" in line
    assert snapshot(keydir) == before


def test_new_root_key_is_accepted_by_devices_trusting_the_previous_root(
    cli: Cli, models: Models, keydir: Path, tmp_path: Path
) -> None:
    v1 = load_root((keydir / "1.root.json").read_bytes())
    old_root_id = _keyid_of_pub(keydir / "root.pub")

    cli.run("keys", "rotate", keydir, "--new-root-key").ok()

    new_root_id = _keyid_of_pub(keydir / "root.pub")
    assert new_root_id != old_root_id
    assert _keyid_of_pub(keydir / "root.v1.pub") == old_root_id
    assert stat.S_IMODE((keydir / "root.key").stat().st_mode) == 0o600
    v2 = update_root(v1, (keydir / "2.root.json").read_bytes())
    assert v2.version == 2
    assert v2.root_role.keyids == (new_root_id,)
    assert v2.signing_role == v1.signing_role
    # The next rotation is signed by the new root key alone, and devices follow the chain.
    cli.run("keys", "rotate", keydir, "--add-signing-key", "second").ok()
    chain = [(keydir / f"{n}.root.json").read_bytes() for n in (3, 2)]
    assert update_root_chain(v1, chain).version == 3
    # Bundles signed by the unchanged signing key still verify against the new trust root.
    out = tmp_path / "b.satchel"
    _build(cli, models, out, keydir / "signing.key").ok()
    cli.run("bundle", "verify", out, "--trust", keydir / "root.json").ok()


@pytest.mark.parametrize("signed_by", ["new root key only", "old root key only"])
def test_root_handover_without_both_root_keys_is_refused(keydir: Path, signed_by: str) -> None:
    v1 = load_root((keydir / "root.json").read_bytes())
    old_root = SigningKey.from_pem((keydir / "root.key").read_bytes(), None)
    new_root = SigningKey.generate()
    document = make_root(2, [new_root.public], [v1.keys[k] for k in v1.signing_role.keyids])
    signer = new_root if signed_by == "new root key only" else old_root

    with pytest.raises(RootRotationError, match="not signed by"):
        update_root(v1, sign_root(document, [signer]))
