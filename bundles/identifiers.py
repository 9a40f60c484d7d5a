"""The naming rules both sides check: what an identifier, a channel name, a version and a
sha256 may look like.

The device checks them when it is set up and when it reads a manifest or a USB plan; the
manager checks them on every request, and its API description (`manager/api/openapi.py`)
quotes them. One rule each, so a name one side accepts is never one the other refuses.
"""

from __future__ import annotations

import re

# Device ids, classes and architectures, tags, user names, model names, event, plan and report ids.
IDENTIFIER_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")
IDENTIFIER_WORDS = "1-64 letters, digits, '.', '_', ':' or '-'"  # the rule, for a refusal
# Channel names (a manifest's `name`): lower case and no ':', as they name directories.
CHANNEL_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_~-]{0,63}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")  # bundle files, payloads, key ids: lower-case hex


def is_identifier(value: object) -> bool:
    """Whether `value` is a string the identifier rule (IDENTIFIER_RE) accepts whole."""
    return isinstance(value, str) and IDENTIFIER_RE.fullmatch(value) is not None
