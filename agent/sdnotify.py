"""systemd's sd_notify protocol by hand: one datagram to $NOTIFY_SOCKET, no dependency.

With `Type=notify` systemd waits for READY=1 before it calls the service started, and with
`WatchdogSec=` it kills and restarts a service that stops sending WATCHDOG=1. Outside
systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str, environ: dict[str, str] | None = None) -> bool:
    """Send `message` (e.g. "READY=1") to systemd; True when it was sent.

    Never raises: a service must not die because its supervisor went away.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # abstract namespace socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8"))
    except OSError as e:
        log.warning("sd_notify %r failed: %s", message, e)
        return False
    return True


def watchdog_interval_s(environ: dict[str, str] | None = None) -> float | None:
    """How often (seconds) to send WATCHDOG=1: half of WatchdogSec, or None when systemd
    asks for no watchdog pings for this process."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC")
    pid = env.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        interval = int(usec) / 1_000_000 / 2
    except ValueError:
        return None
    return interval if interval > 0 else None


def ready(status: str = "") -> bool:
    """Tell systemd the service is ready (and optionally a status line)."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def watchdog() -> bool:
    """Tell systemd the service is alive."""
    return notify("WATCHDOG=1")


def stopping() -> bool:
    """Tell systemd the service is shutting down."""
    return notify("STOPPING=1")
