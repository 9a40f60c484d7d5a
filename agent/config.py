"""Every limit and setting of the device agent in one place, with units.

Read by every `satchel-agent` command from, later ones winning: the defaults below, the TOML
file (`--config FILE`, else $SATCHEL_AGENT_CONFIG, else /etc/satchel-agent/agent.toml when it
exists; settings at its top level or in an `[agent]` table), the environment
(`SATCHEL_AGENT_<NAME IN CAPITALS>`), then the command's options. docs/CONFIG.md is generated
from this module.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from satchel.agent.variants.settings import VariantSettings
from satchel.bundles.configfile import AT_LEAST_ONE, FRACTION, POSITIVE, Bounds, Schema
from satchel.bundles.logsetup import FORMATS, LEVELS

STATE_DIR_ENV = "SATCHEL_AGENT_STATE_DIR"
DEFAULT_STATE_DIR = Path("/var/lib/satchel-agent")
CONFIG_FILE_ENV = "SATCHEL_AGENT_CONFIG"
DEFAULT_CONFIG_FILE = Path("/etc/satchel-agent/agent.toml")
# Test-only: names an installer step at which the process kills itself with SIGKILL.
CRASH_AT_ENV = "SATCHEL_AGENT_CRASH_AT"
# Every setting below can be set as SATCHEL_AGENT_<NAME IN CAPITALS>; POLL_ENV is a short
# name for poll_interval_s (tests and demos check in every half second with it).
CONFIG_ENV_PREFIX = "SATCHEL_AGENT_"
POLL_ENV = "SATCHEL_AGENT_POLL_S"
CPU_PROVIDER = "CPUExecutionProvider"


@dataclass(frozen=True)
class TFLiteDelegate:
    """An external TFLite delegate (a vendor's NPU or GPU library) and its options."""

    path: str  # the delegate's shared library, e.g. /usr/lib/libvx_delegate.so
    options: dict[str, str] = field(default_factory=dict)  # passed to load_delegate as given


@dataclass(frozen=True)
class AgentConfig:
    keep_releases: int = 3  # good releases kept per channel, the active one included
    history_entries: int = 200  # events kept in history.json; older ones are dropped
    disk_margin_bytes: int = 64 * 1024 * 1024  # bytes that must stay free after unpacking
    lock_wait_s: float = 600.0  # seconds an install or rollback waits for the device lock
    lock_poll_s: float = 0.05  # seconds between attempts to take a busy lock
    smoke_isolation: str = "auto"  # "in-process", "child", or "auto" (in-process, the session
    # then serving; a child only for a memory budget this process cannot measure honestly)
    smoke_child_timeout_s: float = 600.0  # seconds a child-process smoke test may take
    smoke_latency_s: float = 0.25  # seconds of timed latency runs after which a smoke test
    # makes no more (every sample feed is still checked; as the build caps its host's runs)
    smoke_min_latency_runs: int = 5  # timed runs made whatever the time (when the test asks
    # for that many), so that a slow model's p95 still means something
    runtime_threads: int | None = 1  # intra-op threads per model run, for the smoke test and
    # serving alike (the server's pool runs one request per core); None = the runtime's default
    # --- talking to the manager (agent.sync.client) ---
    connect_timeout_s: float = 5.0  # seconds to open a connection to the manager
    read_timeout_s: float = 30.0  # seconds the manager may stay silent during one call
    retry_attempts: int = 4  # tries of one enroll or trust-root call before giving up
    backoff_base_s: float = 1.0  # seconds before the first retry; doubles after each failure
    backoff_max_s: float = 300.0  # seconds: the longest wait between two tries
    backoff_jitter: float = 0.5  # fraction: each wait is spread at random by +/- this much
    poll_interval_s: float | None = None  # seconds between check-ins; None = what the
    # manager's answer says (it jitters it per device)
    min_poll_interval_s: float = 0.2  # seconds: a faster interval from the manager is raised
    max_poll_interval_s: float = 3600.0  # seconds: a slower interval from the manager is capped
    events_per_checkin: int = 1000  # events sent in one check-in or USB report (API limit)
    event_bytes_per_checkin: int = 2 * 1024 * 1024  # bytes of events in one check-in or
    # report (the manager takes 4 MiB bodies and reports)
    max_answer_bytes: int = 4 * 1024 * 1024  # bytes of a JSON answer or trust root accepted
    max_bundle_bytes: int = 8 * 1024**3  # bytes of one downloaded or copied bundle
    download_chunk_bytes: int = 256 * 1024  # bytes read from the network or a stick per step
    download_stalls: int = 8  # download attempts in a row that add no byte before giving up
    download_min_bytes_per_s: int = 16 * 1024  # bytes/s: a download slower than this on
    # average (after the grace time) is given up, so a server trickling bytes cannot hold
    # the agent (slow retrieval); it resumes at the next check-in
    download_grace_s: float = 60.0  # seconds a download may take whatever its size
    answer_deadline_s: float = 120.0  # seconds to read a whole JSON answer or trust root
    progress_log_s: float = 5.0  # seconds between progress lines of a download in the log
    # --- the durable event queue (agent.event_queue) ---
    event_queue_max_events: int = 10_000  # events kept while undelivered; oldest dropped first
    event_queue_max_bytes: int = 8 * 1024 * 1024  # bytes of the queue file
    # --- USB sticks (agent.sync.usb) ---
    usb_scan_interval_s: float = 2.0  # seconds between looks for a stick under the mount roots
    usb_scan_depth: int = 2  # directory levels under a mount root searched for plan.json
    usb_plans_remembered: int = 256  # plan ids kept as done, so a stick is processed once
    # --- the service (agent.service) ---
    watchdog_fallback_s: float = 1.0  # seconds between liveness checks without systemd
    health_sample_interval_s: float = 300.0  # seconds between `health` events per serving
    # release (the dashboard's charts); 288 a day, so a month offline fits the event queue
    listen: str = "127.0.0.1:8401"  # HOST:PORT of the inference server (`run --listen`)
    usb_roots: tuple[str, ...] = ()  # mount roots watched for USB sticks, e.g. ["/media"]
    # (`run --usb-root`)
    # --- ML runtimes: where models run, for the smoke test and serving alike (agent.runtimes) ---
    onnx_providers: tuple[str, ...] = (CPU_PROVIDER,)  # onnxruntime execution providers, in
    # order of preference; each must be available on this device, else the agent refuses to
    # start (`python -c "import onnxruntime; print(onnxruntime.get_available_providers())"`)
    onnx_provider_options: dict[str, dict[str, str]] = field(default_factory=dict)  # options
    # per provider name, e.g. {CUDAExecutionProvider = {device_id = "0"}}
    tflite_delegates: tuple[TFLiteDelegate, ...] = ()  # external TFLite delegates, in order:
    # [{path = "/usr/lib/libvx_delegate.so", options = {...}}]; a library that does not load
    # is refused at start
    tflite_xnnpack: bool = True  # TFLite's built-in XNNPACK CPU delegate; false = the
    # builtin kernels only
    # --- staged activation: shadow, ramp and field captures (agent.staging) ---
    activation_shadow: str = "allow"  # "allow" the shadow stage a bundle asks for, or
    # "forbid" it: the release then skips it (reported) and goes to its ramp, if any
    max_shadow_requests: int | None = None  # compared requests that end a shadow stage at
    # most (shortens a bundle's policy); None = as the bundle says
    shadow_cpu_share: float = 0.25  # fraction of one core the shadow copies may take
    shadow_queue: int = 8  # shadow copies waiting at most; more are dropped (and counted)
    activation_capture: str = "allow"  # "allow" keeping field inputs a bundle asks for,
    # or "forbid" it
    capture_max_samples: int = 200  # field inputs kept at most (the bundle's cap if smaller)
    capture_max_mb: float = 32.0  # megabytes of field inputs kept at most (idem)
    captures_per_upload: int = 20  # captures sent after one check-in at most
    # --- variants: the model a release answers with, by the device's state (agent.variants) ---
    variants: VariantSettings = field(default_factory=VariantSettings)  # `[variants]` table:
    # power_supply_dir, thermal_dir, meminfo_file, loadavg_file, poll_s, policy, dwell_s,
    # live_window, min_live_samples (docs/VARIANTS.md)
    # --- logs, of the service and the commands (bundles.logsetup) ---
    log_level: str = "info"  # the least severe lines written: debug, info, warning, error,
    # critical (`satchel-agent --log-level`)
    log_format: str = "text"  # "text" or "json", one object per line (`--log-format`); under
    # journald no timestamp of ours and a syslog priority prefix either way


DEFAULT_CONFIG = AgentConfig()

SCHEMA: Schema[AgentConfig] = Schema(
    cls=AgentConfig,
    env_prefix=CONFIG_ENV_PREFIX,
    table="agent",
    env_aliases={"poll_interval_s": (POLL_ENV,)},
    bounds={
        "keep_releases": AT_LEAST_ONE,
        "history_entries": AT_LEAST_ONE,
        "lock_poll_s": POSITIVE,
        "smoke_isolation": Bounds(choices=("auto", "in-process", "child")),
        "smoke_child_timeout_s": POSITIVE,
        "smoke_latency_s": POSITIVE,
        "smoke_min_latency_runs": AT_LEAST_ONE,
        "runtime_threads": AT_LEAST_ONE,
        "connect_timeout_s": POSITIVE,
        "read_timeout_s": POSITIVE,
        "retry_attempts": AT_LEAST_ONE,
        "backoff_jitter": FRACTION,
        "poll_interval_s": POSITIVE,
        "min_poll_interval_s": POSITIVE,
        "max_poll_interval_s": POSITIVE,
        "events_per_checkin": AT_LEAST_ONE,
        "event_bytes_per_checkin": AT_LEAST_ONE,
        "max_answer_bytes": AT_LEAST_ONE,
        "max_bundle_bytes": AT_LEAST_ONE,
        "download_chunk_bytes": AT_LEAST_ONE,
        "download_stalls": AT_LEAST_ONE,
        "answer_deadline_s": POSITIVE,
        "progress_log_s": POSITIVE,
        "event_queue_max_events": AT_LEAST_ONE,
        "event_queue_max_bytes": AT_LEAST_ONE,
        "usb_scan_interval_s": POSITIVE,
        "usb_plans_remembered": AT_LEAST_ONE,
        "watchdog_fallback_s": POSITIVE,
        "health_sample_interval_s": POSITIVE,
        "activation_shadow": Bounds(choices=("allow", "forbid")),
        "max_shadow_requests": AT_LEAST_ONE,
        "shadow_cpu_share": FRACTION,
        "shadow_queue": AT_LEAST_ONE,
        "activation_capture": Bounds(choices=("allow", "forbid")),
        "capture_max_samples": AT_LEAST_ONE,
        "capture_max_mb": POSITIVE,
        "captures_per_upload": AT_LEAST_ONE,
        "log_level": Bounds(choices=LEVELS),
        "log_format": Bounds(choices=FORMATS),
    },
    relations=(
        lambda c: ("min_poll_interval_s", "must not exceed max_poll_interval_s")
        if c.min_poll_interval_s > c.max_poll_interval_s else None,
        lambda c: ("backoff_base_s", "must not exceed backoff_max_s")
        if c.backoff_base_s > c.backoff_max_s else None,
        lambda c: ("onnx_providers", "must name at least one provider (CPUExecutionProvider)")
        if not c.onnx_providers else None,
        lambda c: _listen_refusal(c.listen),
        lambda c: _variants_refusal(c.variants),
    ),
)


def _variants_refusal(settings: VariantSettings) -> tuple[str, str] | None:
    from satchel.bundles.errors import BundleError

    if not settings.poll_s > 0 or settings.live_window < 1 or settings.min_live_samples < 1:
        return "variants", "poll_s, live_window and min_live_samples must be positive"
    if settings.dwell_s is not None and settings.dwell_s < 0:
        return "variants", "dwell_s must not be negative"
    if settings.policy:
        from satchel.bundles.variants import parse_policy

        try:
            parse_policy(settings.policy, "policy")
        except BundleError as e:
            return "variants", f"policy: {e}"
    return None


def _listen_refusal(listen: str) -> tuple[str, str] | None:
    host, _, port = listen.rpartition(":")
    if host and port.isdigit() and 0 <= int(port) <= 65535:
        return None
    return "listen", f"= {listen!r} is not HOST:PORT"


def config_file_path(config_file: Path | None = None,
                     environ: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The settings file to read and whether it must exist: `config_file` (the --config
    option), else $SATCHEL_AGENT_CONFIG, else /etc/satchel-agent/agent.toml if present."""
    env = os.environ if environ is None else environ
    if config_file is not None:
        return Path(config_file), True
    if env.get(CONFIG_FILE_ENV):
        return Path(env[CONFIG_FILE_ENV]), True
    return DEFAULT_CONFIG_FILE, False


def load_agent_config(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> AgentConfig:
    """The agent's settings: defaults, the settings file, SATCHEL_AGENT_<NAME>, `overrides`
    (a command's options; None values are left out). Raises ConfigError naming the key and
    where it was given."""
    path, required = config_file_path(config_file, environ)
    return SCHEMA.load(path, environ, overrides, file_optional=not required)


def config_from_env(
    environ: Mapping[str, str] | None = None, base: AgentConfig = DEFAULT_CONFIG
) -> AgentConfig:
    """`base` with the settings the environment gives (SATCHEL_AGENT_<NAME>, and
    SATCHEL_AGENT_POLL_S for poll_interval_s), no file. Raises ConfigError (a ValueError)."""
    return SCHEMA.load(None, environ, defaults=base.__dict__)


def default_state_dir() -> Path:
    """The state directory from $SATCHEL_AGENT_STATE_DIR, else /var/lib/satchel-agent."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)
