"""The device's local inference server: Open Inference Protocol over loopback and a Unix
socket, hot swap of releases, and health-gated rollback during probation.

    serve(state_dir, "127.0.0.1:8401", unix_socket=..., event_sink=..., stop_event=...)
    check_crash_loop(state_dir, now)  # call before serve(); rolls back crash-looping releases
"""

from __future__ import annotations

from satchel.agent.server.app import AgentServer, default_socket_path, serve
from satchel.agent.server.config import DEFAULT_CONFIG, DEFAULT_LISTEN, ServerConfig
from satchel.agent.server.crashloop import check_crash_loop, record_clean_stop, record_start
from satchel.agent.server.errors import ListenAddressError, ReleaseLoadError, ServerError
from satchel.agent.server.events import Event, EventSink, MemoryEventSink

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_LISTEN",
    "AgentServer",
    "Event",
    "EventSink",
    "ListenAddressError",
    "MemoryEventSink",
    "ReleaseLoadError",
    "ServerConfig",
    "ServerError",
    "check_crash_loop",
    "default_socket_path",
    "record_clean_stop",
    "record_start",
    "serve",
]
