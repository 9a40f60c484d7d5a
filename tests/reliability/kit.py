"""Shared helpers of the reliability suite: signed bundles of real ONNX models, devices with a
release installed, a snapshot of what a refusal must not change, and the check that a
refusal seen through a transport is exactly the installer's named error."""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from satchel.agent.config import AgentConfig
from satchel.agent.event_queue import EventQueue
from satchel.agent.health.stats import HealthStats
from satchel.agent.install.installer import install
from satchel.agent.provision import init_device
from satchel.agent.runtimes import get_runtime
from satchel.agent.state import DeviceState
from satchel.agent.sync.checkin import CheckinLoop
from satchel.bundles.keys import SigningKey
from satchel.bundles.manifest import (
    Compatibility,
    HealthPolicy,
    Manifest,
    ModelEntry,
    SmokeTest,
    TensorInfo,
)
from satchel.bundles.pack import Payload, write_bundle
from satchel.bundles.timeutil import utcnow
from satchel.bundles.trust import make_root, sign_root
from tests.factory.bundles import TEST_PACK
from tests.factory.device import assert_one_line
from tests.factory.keys import Keyring
from tests.factory.model_makers import sample_inputs
from tests.factory.trees import tree_snapshot

CHANNEL = "vision"
DEVICE_CLASS = "edge-box"
IN_DIM = 8
# Quick tries and short timeouts: every fault in this suite ends within seconds.
CFG = AgentConfig(
    connect_timeout_s=2.0, read_timeout_s=2.0, retry_attempts=2, backoff_base_s=0.01,
    backoff_max_s=0.05, poll_interval_s=0.2, download_stalls=3, progress_log_s=0.0,
    usb_scan_interval_s=0.1, download_min_bytes_per_s=64 * 1024, download_grace_s=1.0,
)
POLICY = HealthPolicy(probation_s=0.0, min_samples=5)
# What a refusal may touch in a state dir: logs, queues, locks and transport scratch space.
VOLATILE = ("lock", "history.json", "events", "downloads", "usb-staging", "usb-plans.json",
            "credentials.json")


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def build_bundle(
    out: Path,
    model_file: Path,
    signers: list[SigningKey],
    *,
    version: str,
    sequence: int,
    channel: str = CHANNEL,
    created: datetime | None = None,
    expires: datetime | None = None,
    device_classes: tuple[str, ...] = (DEVICE_CLASS,),
) -> Path:
    """A bundle of `model_file` signed by `signers`, with a smoke test the model passes."""
    model = get_runtime("onnxruntime").load(model_file)
    x = sample_inputs(IN_DIM, 4, sequence % 1000)
    reference = model.run({model.inputs[0].name: x})
    manifest = Manifest(
        name=channel, version=version, sequence=sequence, created=created or utcnow(),
        expires=expires, files=(),
        models=(ModelEntry(
            name="main", runtime="onnxruntime", file="model.onnx",
            inputs=tuple(TensorInfo(s.name, s.datatype, s.shape) for s in model.inputs),
            outputs=tuple(TensorInfo(s.name, s.datatype, s.shape) for s in model.outputs),
        ),),
        smoke_tests=(SmokeTest("main", "smoke/inputs.npz", "smoke/reference.npz",
                               max_abs_error=1e-3, warmup_runs=1, latency_runs=3),),
        health_policy=POLICY,
        compatibility=Compatibility(device_classes=device_classes),
    )
    payloads = [
        Payload("model.onnx", model_file),
        Payload("smoke/inputs.npz", _npz({model.inputs[0].name: x})),
        Payload("smoke/reference.npz", _npz(reference)),
    ]
    with open(out, "wb") as f:
        write_bundle(f, manifest, payloads, signers, TEST_PACK)
    return out


def successor_root(keys: Keyring, signing: list[SigningKey], *, version: int = 2,
                   expires: datetime | None = None) -> bytes:
    """root.json of `version`, signed by the keyring's root keys (a valid rotation from
    version - 1), naming `signing` as the signing keys, threshold 1."""
    root = make_root(version, [k.public for k in keys.root_keys], [k.public for k in signing],
                     expires=expires)
    return sign_root(root, keys.root_keys)


def sha256_of(data: bytes | Path) -> str:
    return hashlib.sha256(data.read_bytes() if isinstance(data, Path) else data).hexdigest()


def no_health(_key: object) -> HealthStats:
    return HealthStats()


# --- devices ------------------------------------------------------------------------------


@dataclass
class Site:
    """One device (state dir), the keys its root trusts, and a work dir for bundles."""

    state: Path
    keys: Keyring
    work: Path
    device_id: str = "dev-1"

    def bundle(self, model: Path, version: str, sequence: int,
               signers: list[SigningKey] | None = None, **kwargs: Any) -> Path:
        out = self.work / f"{version}-{sequence}-{len(list(self.work.iterdir()))}.satchel"
        return build_bundle(out, model, signers or self.keys.signing_keys, version=version,
                            sequence=sequence, **kwargs)

    def install(self, bundle: Path) -> None:
        install(self.state, bundle, config=CFG)

    def active(self) -> tuple[str, int] | None:
        release = DeviceState(self.state).active_release(CHANNEL)
        return (release.version, release.sequence) if release is not None else None

    def snapshot(self) -> dict[str, Any]:
        """Everything a refusal must leave as it was: identity, keys, trust root, the
        newest signed time, every channel's releases and switch."""
        return {k: v for k, v in tree_snapshot(self.state).items()
                if k.split("/")[0] not in VOLATILE}

    def root_version(self) -> int:
        from satchel.agent.sync.trust_roots import trusted_root

        return trusted_root(self.state).version

    def events(self) -> EventQueue:
        return EventQueue(self.state, CFG)

    def loop(self) -> CheckinLoop:
        return CheckinLoop(self.state, self.events(), no_health, threading.Event(), config=CFG)


def make_site(tmp_path: Path, keys: Keyring, name: str = "dev-1", *,
              trusted_clock: bool = True, device_class: str = DEVICE_CLASS) -> Site:
    state = tmp_path / name / "state"
    init_device(state, keys.root_json, name, device_class, trusted_clock=trusted_clock)
    work = tmp_path / name / "work"
    work.mkdir(parents=True)
    return Site(state, keys, work, name)


# --- refusals -----------------------------------------------------------------------------


def normalized(text: str) -> str:
    """A reason as the event queue keeps it: whitespace folded."""
    return " ".join(text.split())


def installer_refusal(site: Site, bundle: Path, error: type[Exception]) -> str:
    """Install `bundle` with the installer itself and assert it raises exactly `error`, in one
    line, changing nothing; return the message (what a transport reported must equal it)."""
    before = site.snapshot()
    with pytest.raises(error) as info:
        site.install(bundle)
    assert type(info.value) is error, f"{type(info.value).__name__}: {info.value}"
    assert_one_line(info.value)
    assert site.snapshot() == before
    return normalized(str(info.value))


def one_refusal(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The single install_refused / install_failed event among `events`."""
    refused = [e for e in events if e["kind"] in ("install_refused", "install_failed")]
    assert len(refused) == 1, events
    assert "\n" not in refused[0]["reason"]
    return refused[0]
