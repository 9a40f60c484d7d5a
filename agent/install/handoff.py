"""A smoke-tested session, handed to the inference server of the same process.

An install inside `satchel-agent run` loads the new model for its smoke test; the server
would then load it a second time once the release is active. Instead, the in-process smoke
runner keeps the passing session here and the server's loader takes it: one load, and the
model is never twice in memory. Only the process that serves opens a hand-off; a
technician's `satchel-agent install` has none and closes its session as before.

    handoff = open_handoff()                      # the service, at start
    handoff.keep(release_key, threads, model)     # the smoke runner, on a pass
    loader = taking_over(handoff, load_model)     # the server's loader: kept, else load
    close_handoff()                               # the service, at stop
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from satchel.agent.runtimes import LoadedModel

log = logging.getLogger(__name__)

ReleaseKey = tuple[str, str, int]  # (channel, version, sequence)


class _Release(Protocol):
    @property
    def channel(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def sequence(self) -> int: ...


class _LoadSettings(Protocol):
    @property
    def runtime_threads(self) -> int | None: ...


R = TypeVar("R", bound=_Release)
C = TypeVar("C", bound=_LoadSettings)


class SessionHandoff:
    """At most one kept session per channel, waiting for the server to take it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._kept: dict[str, tuple[ReleaseKey, int | None, LoadedModel]] = {}

    def keep(self, release: ReleaseKey, threads: int | None, model: LoadedModel) -> None:
        """Keep `model`, loaded with `threads`, for `release`; closes one kept earlier for
        the same channel (that release was never activated or was served already)."""
        with self._lock:
            old = self._kept.pop(release[0], None)
            self._kept[release[0]] = (release, threads, model)
        if old is not None:
            old[2].close()

    def take(self, release: ReleaseKey, threads: int | None) -> LoadedModel | None:
        """The session kept for exactly this release and thread count, or None."""
        with self._lock:
            kept = self._kept.get(release[0])
            if kept is None or kept[0] != release or kept[1] != threads:
                return None
            del self._kept[release[0]]
        return kept[2]

    def clear(self) -> None:
        """Close every session still waiting."""
        with self._lock:
            kept, self._kept = list(self._kept.values()), {}
        for _, _, model in kept:
            model.close()

    def __len__(self) -> int:
        return len(self._kept)


_open: SessionHandoff | None = None


def open_handoff() -> SessionHandoff:
    """Start handing smoke-tested sessions to this process's server; returns the hand-off."""
    global _open
    if _open is None:
        _open = SessionHandoff()
    return _open


def current_handoff() -> SessionHandoff | None:
    """The open hand-off, or None when this process does not serve."""
    return _open


def close_handoff() -> None:
    """Stop handing sessions over; the ones still waiting are closed."""
    global _open
    handoff, _open = _open, None
    if handoff is not None:
        handoff.clear()


def taking_over(
    handoff: SessionHandoff, load: Callable[[R, C], LoadedModel]
) -> Callable[[R, C], LoadedModel]:
    """A server's model loader: the session the smoke test of this very release left in
    `handoff` (loaded with the same thread count, warmed up by its runs), else `load`."""

    def loader(release: R, config: C) -> LoadedModel:
        key = (release.channel, release.version, release.sequence)
        model = handoff.take(key, config.runtime_threads)
        if model is None:
            return load(release, config)
        log.info("%s %s: serving the session its smoke test loaded", release.channel,
                 release.version)
        return model

    return loader
