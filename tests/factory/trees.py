"""Observing a directory tree, to prove what an install wrote or that a refusal changed
nothing."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def tree_snapshot(root: Path) -> dict[str, tuple[str, int, bytes]]:
    """Every path under `root` (not following links) with its kind, mode and content hash."""
    out: dict[str, tuple[str, int, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", st.st_mode, os.readlink(p).encode())
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode, b"")
            else:
                out[rel] = ("file", st.st_mode, hashlib.sha256(p.read_bytes()).digest())
    return out


def read_tree(root: Path) -> dict[str, bytes]:
    """The regular files under `root`, relative path -> content."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def dir_state(path: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under `path` with its mode and content, to prove a refusal changed nothing."""
    return {
        str(p.relative_to(path)): (p.stat().st_mode, p.read_bytes())
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }
