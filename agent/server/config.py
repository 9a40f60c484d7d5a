"""Every limit and interval of the inference server, in one place, with units."""

from __future__ import annotations

from dataclasses import dataclass

from satchel.agent.runtimes.accel import CPU, Acceleration
from satchel.agent.variants.settings import DEFAULT_VARIANT_SETTINGS, VariantSettings

DEFAULT_LISTEN = "127.0.0.1:8401"
SOCKET_NAME = "agent.sock"  # the Unix socket, inside the state dir


@dataclass(frozen=True)
class ServerConfig:
    poll_interval_s: float = 0.15  # seconds between looks at the device state's generation
    max_body_bytes: int = 64 * 1024 * 1024  # bytes; larger infer requests get 413
    max_json_bytes: int = 16 * 1024 * 1024  # bytes; JSON part of an infer request
    max_elements: int = 16 * 1024 * 1024  # tensor elements in one input
    idle_timeout_s: float = 15.0  # seconds a connection may wait for a request (its first,
    # the next one kept alive, or the next bytes of one) before it is closed
    max_connections: int = 64  # connections held at once over both listeners; past it the
    # longest-idle one is closed for a newcomer, or newcomers wait
    read_deadline_s: float = 30.0  # seconds a request may take to arrive (headers and body);
    # past it, a connection still sending may be closed when a newcomer needs its slot
    listen_backlog: int = 128  # connections the kernel queues per listener while they wait
    max_head_bytes: int = 64 * 1024  # bytes; a longer request line and headers get 431
    max_index_body_bytes: int = 64 * 1024  # bytes of a repository index request (parsed in
    # the event loop, so kept small); larger ones get 413
    linger_s: float = 2.0  # seconds a connection ended by the server drains what its client
    # still sends, so the client reads the answer rather than a reset
    timer_resolution_s: float = 0.05  # seconds between the event loop's looks at timeouts
    busy_poll_s: float = 0.0001  # seconds the event loop keeps looking at its sockets after
    # answering, before it sleeps: a kept-alive client's next request is then read without
    # waking a sleeping thread (tens of microseconds on a VM, more than the server's own work
    # on a small model). Never while idle, nor while the pool runs requests; 0 = off
    inference_workers: int = 0  # threads running inference; 0 = one per CPU core, at most 4
    max_batch: int = 8  # waiting infer requests run together as one batch, at most (1: none)
    gil_switch_interval_s: float | None = 0.001  # seconds a thread may keep the GIL while
    # another waits (Python's default 0.005 makes the event loop queue behind a worker parsing
    # a request on every socket call); None leaves the interpreter's setting
    monitor_interval_s: float = 1.0  # seconds between housekeeping rounds of the monitor
    judge_batch_s: float = 0.05  # seconds the monitor lets inferences pile up after a poke
    # before it judges, so a busy server is judged ~20 times a second, not once per request
    rollback_retry_s: float = 10.0  # seconds before a failed health rollback is tried again
    health_flush_s: float = 5.0  # seconds between durable writes of the health history
    health_retention_s: int = 48 * 3600  # seconds of health history kept on the device
    health_segment_s: int = 600  # seconds of health history per file (one file rewritten)
    health_max_buckets_per_segment: int = 2000  # (release, minute) buckets in one file
    crash_history: int = 32  # service starts remembered for crash-loop detection
    warmup_runs: int = 1  # inferences run on a freshly loaded release before it serves
    runtime_threads: int | None = 1  # intra-op threads per model run (the pool runs one request
    # per core); None = the runtime's default (one per core). The service sets the agent's.
    acceleration: Acceleration = CPU  # execution providers and delegates (the agent's settings)
    socket_mode: int = 0o660  # permissions of the Unix socket
    stop_timeout_s: float = 5.0  # seconds to wait for worker threads when stopping
    inline_stall_s: float = 20.0  # seconds one infer run may take, in the event loop or in a
    # pool worker, before the server calls itself unhealthy: systemd's watchdog
    # (WatchdogSec=30) then restarts the service, and the crash-loop rule rolls back a model
    # that hangs
    variants: VariantSettings = DEFAULT_VARIANT_SETTINGS  # the agent's `[variants]` settings


DEFAULT_CONFIG = ServerConfig()
