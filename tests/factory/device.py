"""A device that verifies and unpacks bundles into a sandbox, and what a refusal must look
like: exactly the named error, one line, nothing changed."""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

import pytest

from satchel.bundles.errors import BundleError
from satchel.bundles.reader import VerifiedBundle, verify_and_unpack
from satchel.bundles.trust import Root
from tests.factory.trees import read_tree, tree_snapshot

NOW = datetime(2026, 3, 2, 12, 0, 0, tzinfo=timezone.utc)  # the device clock in tests


def assert_one_line(err: BaseException) -> None:
    """A refusal reads as one line a technician understands: no traceback, no blank message."""
    message = str(err)
    assert message.strip(), f"{type(err).__name__} has an empty message"
    assert "\n" not in message, f"{type(err).__name__} message is not one line: {message!r}"
    assert len(message) < 400, f"{type(err).__name__} message is too long: {message!r}"


class Device:
    """What a device does with a bundle file: verify it against its trust root and unpack it
    into an empty staging directory (`tmp_path/device/var/staging`). A refusal is checked to
    have changed nothing anywhere under `tmp_path` once the incoming file has landed."""

    def __init__(self, tmp_path: Path, root: Root) -> None:
        self.root = root
        self.watched = tmp_path
        self.tree = tmp_path / "device"
        self.staging = self.tree / "var" / "staging"
        self.staging.mkdir(parents=True)
        self.inbox = tmp_path / "inbox"
        self.inbox.mkdir()
        self._received = 0

    def receive(self, data: bytes) -> Path:
        self._received += 1
        path = self.inbox / f"incoming-{self._received}.satchel"
        path.write_bytes(data)
        return path

    def install(
        self,
        data: bytes,
        *,
        now: datetime = NOW,
        not_before: datetime | None = None,
        root: Root | None = None,
    ) -> dict[str, bytes]:
        """Verify and unpack `data`; return the unpacked files and empty the staging dir."""
        verified = self.unpack(data, now=now, not_before=not_before, root=root)
        files = read_tree(self.staging)
        assert set(files) == {e.path for e in verified.manifest.files}
        shutil.rmtree(self.staging)
        self.staging.mkdir()
        return files

    def unpack(
        self,
        data: bytes | Path,
        *,
        now: datetime = NOW,
        not_before: datetime | None = None,
        root: Root | None = None,
    ) -> VerifiedBundle:
        """Verify and unpack `data` (bytes, or a file already received) into staging."""
        path = data if isinstance(data, Path) else self.receive(data)
        return verify_and_unpack(
            path, root or self.root, self.staging, now, not_before=not_before, fsync=False
        )

    def refuses(
        self,
        data: bytes,
        error: type[BundleError],
        *,
        now: datetime = NOW,
        not_before: datetime | None = None,
        root: Root | None = None,
    ) -> BundleError:
        """Assert that installing `data` raises exactly `error`, in one line, and that the
        device tree (staging dir included, left empty) is unchanged."""
        path = self.receive(data)
        before = tree_snapshot(self.watched)
        with pytest.raises(BundleError) as info:
            self.unpack(path, now=now, not_before=not_before, root=root)
        err = info.value
        assert type(err) is error, f"expected {error.__name__}, got {type(err).__name__}: {err}"
        assert_one_line(err)
        assert list(self.staging.iterdir()) == []
        assert tree_snapshot(self.watched) == before
        return err
