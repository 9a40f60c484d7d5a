"""Where `satchel --url` finds its admin token: SATCHEL_TOKEN, or a credentials file that no
one else may read (like ssh's private keys, a group- or world-readable file is refused)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from satchel.manager.errors import AuthError, UsageError

TOKEN_ENV = "SATCHEL_TOKEN"
MAX_FILE_BYTES = 64 * 1024  # bytes of a credentials file
TOKEN_RE = re.compile(r"[\x21-\x7e]{1,4096}")  # printable ASCII: it goes into an HTTP header


def default_credentials_file() -> Path:
    """`$XDG_CONFIG_HOME/satchel/credentials`, by default `~/.config/satchel/credentials`."""
    config_home = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config_home) / "satchel" / "credentials"


def read_token_file(path: Path) -> str:
    """The token in `path`: its first non-empty line. Raises UsageError (unreadable, readable
    by group or others, empty)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as e:
        raise UsageError(f"cannot read credentials file {path}: {e.strerror}") from e
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if not stat.S_ISREG(mode):
            raise UsageError(f"credentials file {path} is not a regular file")
        if mode & 0o077:
            raise UsageError(
                f"credentials file {path} is readable by others (mode "
                f"{stat.S_IMODE(mode):04o}); run `chmod 600 {path}`"
            )
        data = f.read(MAX_FILE_BYTES)
    for line in data.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            return line.strip()
    raise UsageError(f"credentials file {path} holds no token")


def admin_token(token_file: Path | None) -> str:
    """The admin token: from `token_file` if given, else SATCHEL_TOKEN, else the default
    credentials file. Raises UsageError (see `read_token_file`; a token that is not printable
    ASCII), AuthError (none anywhere)."""
    if token_file is not None:
        return _checked(read_token_file(token_file), str(token_file))
    from_env = os.environ.get(TOKEN_ENV, "").strip()
    if from_env:
        return _checked(from_env, TOKEN_ENV)
    default = default_credentials_file()
    if default.exists():
        return _checked(read_token_file(default), str(default))
    raise AuthError(
        f"no admin token for --url: set {TOKEN_ENV}, or write it to {default} (mode 0600), "
        "or give --token-file"
    )


def _checked(token: str, where: str) -> str:
    if not TOKEN_RE.fullmatch(token):
        raise UsageError(f"the admin token in {where} is malformed (not printable ASCII)")
    return token
