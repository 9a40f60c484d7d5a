"""The installed version of a distribution, found as `importlib.metadata.version` finds it but
without importing `importlib.metadata` (with `email`, `zipfile`, `csv`, `socket`: ~25 ms, a
tenth of a small bundle's install; issue 14).

Looks in the `sys.path` entries in order for `NAME-VERSION.dist-info` or `NAME.egg-info`
(names compared as importlib.metadata compares them) and reads the `Version:` header of its
metadata. Returns None whenever the lookup is not that plain (a zip on the path, metadata
without a version), and the caller asks importlib.metadata itself.
"""

from __future__ import annotations

import os
import re
import sys

_METADATA_FILES = ("METADATA", "PKG-INFO")


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def installed_version(distribution: str) -> str | None:
    """The version of `distribution`, or None (not found this way)."""
    wanted = _normalized(distribution)
    for entry in sys.path:
        root = entry or "."
        if not os.path.isdir(root):
            if os.path.exists(root):
                return None  # a zip or egg file: importlib.metadata looks inside it
            continue
        try:
            children = os.listdir(root)
        except OSError:
            continue
        for child in children:
            base, ext = os.path.splitext(child.lower())
            if ext in (".dist-info", ".egg-info") and _normalized(
                    base.partition("-")[0]) == wanted:
                return _version_of(os.path.join(root, child))
    return None


def _version_of(info: str) -> str | None:
    paths = ([os.path.join(info, name) for name in _METADATA_FILES]
             if os.path.isdir(info) else [info])
    for path in paths:
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    if not line.strip():
                        return None  # the headers ended without a version
                    name, colon, value = line.partition(":")
                    if colon and name == "Version":
                        return value.strip() or None
        except (OSError, UnicodeDecodeError):
            continue
    return None
