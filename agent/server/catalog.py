"""What the server says about its models, without the HTTP plumbing: which release answers
a model name and version, their metadata and readiness, the repository index and the
statistics extension.

A model is a channel; its versions are the releases the device keeps. The active release
answers the bare name; a version names a kept release, which answers requests while it is
loaded (the active one, or the one it replaced while the new one is on probation) and is
described from its manifest otherwise.
"""

from __future__ import annotations

from typing import Any

from satchel.agent.health.stats import ReleaseKey
from satchel.agent.server import protocol
from satchel.agent.server.errors import NotFoundError, NotLoadedError, NotReadyError
from satchel.agent.server.registry import ModelRegistry, Release, ServingModel
from satchel.agent.server.stats import InferenceStats

READY = "READY"
UNAVAILABLE = "UNAVAILABLE"


def release_key(release: Release) -> ReleaseKey:
    return ReleaseKey(release.channel, release.version, release.sequence)


class ModelCatalog:
    def __init__(self, registry: ModelRegistry, stats: InferenceStats) -> None:
        self.registry = registry
        self.stats = stats

    # --- which release answers ----------------------------------------------------------

    def serving(self, channel: str, version: str | None) -> ServingModel:
        """The loaded release answering `channel` (and `version`, when given).

        Raises NotFoundError for an unknown channel or a version not on this device,
        NotLoadedError for a kept version that is not loaded, NotReadyError for a known
        channel with nothing loaded.
        """
        registry = self.registry
        slot = registry.slot(channel)
        if slot is not None and (version is None or version == slot.active.key.version):
            return slot.active
        if version is not None:
            loaded = registry.loaded(channel, version)
            if loaded is not None:
                return loaded
            self._kept_release(channel, version)  # raises NotFoundError when it is not kept
            raise NotLoadedError(
                f"model {channel!r} version {version!r} is kept on this device but not loaded;"
                f" {self._loaded_versions(channel)}"
            )
        if registry.is_known(channel):
            raise NotReadyError(f"model {channel!r} is not ready")
        raise NotFoundError(f"unknown model {channel!r}")

    def _loaded_versions(self, channel: str) -> str:
        slot = self.registry.slot(channel)
        if slot is None:
            return "no version of it is loaded"
        versions = [s.key.version for s in (slot.active, slot.previous) if s is not None]
        return "loaded: " + ", ".join(versions)

    def _kept_release(self, channel: str, version: str) -> Release:
        """Raises NotFoundError when `channel` keeps no release `version`."""
        for release in self.registry.kept(channel):
            if release.version == version:
                return release
        if not self.registry.is_known(channel) and self.registry.slot(channel) is None:
            raise NotFoundError(f"unknown model {channel!r}")
        raise NotFoundError(f"model {channel!r} has no version {version!r} on this device")

    # --- metadata and readiness ---------------------------------------------------------

    def model_metadata(self, channel: str, version: str | None) -> dict[str, Any]:
        """The serving release's metadata, or a kept release's from its manifest.

        Raises NotFoundError, NotReadyError.
        """
        try:
            serving = self.serving(channel, version)
        except NotLoadedError:
            assert version is not None
            release = self._kept_release(channel, version)
            entry = release.manifest.models[0]
            return protocol.model_metadata(
                channel, release.version, entry.runtime, entry.inputs, entry.outputs
            )
        model = serving.model
        return protocol.model_metadata(
            channel, serving.key.version, model.runtime, model.inputs, model.outputs
        )

    def model_ready(self, channel: str, version: str | None) -> dict[str, Any]:
        """Raises NotFoundError, NotLoadedError, NotReadyError."""
        serving = self.serving(channel, version)
        return {"name": channel, "version": serving.key.version, "ready": True}

    # --- repository index ---------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """Every kept release of every channel (and any loaded one the state no longer
        names), with its state: READY when loaded, UNAVAILABLE with the reason otherwise."""
        registry = self.registry
        index = []
        for channel in registry.known_channels():
            slot = registry.slot(channel)
            loaded = [s for s in (slot.active, slot.previous) if s is not None] if slot else []
            loaded_keys = {s.key for s in loaded}
            entries = [(s.key.version, READY, "") for s in loaded]
            for position, release in enumerate(registry.kept(channel)):
                if release_key(release) in loaded_keys:
                    continue
                reason = self._unavailable_reason(release, active=position == 0)
                entries.append((release.version, UNAVAILABLE, reason))
            for version, state, reason in entries:
                if ready_only and state != READY:
                    continue
                index.append({"name": channel, "version": version, "state": state,
                              "reason": reason})
        return index

    def _unavailable_reason(self, release: Release, *, active: bool) -> str:
        error = self.registry.load_error(release)
        if error is not None:
            return f"failed to load: {error}"
        if active:
            return "active on this device but not loaded yet"
        return "kept on this device for a rollback, not loaded"

    # --- statistics ---------------------------------------------------------------------

    def model_stats(self, channel: str | None, version: str | None) -> dict[str, Any]:
        """The statistics extension's answer: every loaded release, a channel's loaded
        releases, or one kept release. Raises NotFoundError."""
        registry = self.registry
        self.stats.forget(self._kept_keys())
        if channel is None:
            keys = [key for c in registry.known_channels() for key in self._loaded_keys(c)]
        elif version is None:
            keys = self._loaded_keys(channel)
            if not keys and not registry.is_known(channel):
                raise NotFoundError(f"unknown model {channel!r}")
        else:
            loaded = registry.loaded(channel, version)
            keys = [loaded.key if loaded else release_key(self._kept_release(channel, version))]
        return {"model_stats": [self.stats.model_stats(key) for key in keys]}

    def _loaded_keys(self, channel: str) -> list[ReleaseKey]:
        slot = self.registry.slot(channel)
        if slot is None:
            return []
        return [s.key for s in (slot.active, slot.previous) if s is not None]

    def _kept_keys(self) -> set[ReleaseKey]:
        registry = self.registry
        keys: set[ReleaseKey] = set()
        for channel in registry.known_channels():
            keys.update(release_key(r) for r in registry.kept(channel))
            keys.update(self._loaded_keys(channel))
        return keys
