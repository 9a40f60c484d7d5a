"""The bound on connections the inference server serves at once (one thread each).

A connection holds a slot from accept to close. It is *idle* while it waits for a request
(its first, or the next one on a kept-alive connection), *reading* while its request arrives,
and *working* while the request runs and is answered. When every slot is held, the listener
that has a new connection makes room by closing the connection idle the longest: idle clients
cannot crowd out one that has something to ask; failing that, a connection whose request has
been arriving for longer than the read deadline (a slow-loris client trickling bytes, each
within the idle timeout). When none qualifies, the listener waits for a slot, and further
connections queue in the kernel's listen backlog (or are refused once it is full).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class ConnectionSlots:
    """At most `limit` connections at once, over every listener sharing this object.
    Thread-safe; one lock, held for a few dictionary operations."""

    def __init__(self, limit: int, read_deadline_s: float = float("inf")) -> None:
        if limit < 1:
            raise ValueError("at least one connection must be allowed")
        self._limit = limit
        self._read_deadline_s = read_deadline_s
        self._cond = threading.Condition()
        self._held: dict[socket.socket, float | None] = {}  # -> idle since (monotonic s), or
        # None while busy
        self._reading: dict[socket.socket, float] = {}  # busy connections whose request is
        # still arriving -> since (monotonic s)
        self._closing: set[socket.socket] = set()  # closed to make room, slot not yet freed
        self._closed = False

    @property
    def held(self) -> int:
        """Connections holding a slot now."""
        with self._cond:
            return len(self._held)

    def take(self, conn: socket.socket, stop: threading.Event, poll_s: float) -> bool:
        """Give `conn` a slot (as idle), closing the longest-idle connection to make room
        when every slot is held, or waiting for one when none is idle. False, and no slot,
        when `stop` is set or the slots are closed meanwhile (checked every `poll_s`
        seconds)."""
        with self._cond:
            while len(self._held) >= self._limit:
                if stop.is_set() or self._closed:
                    return False
                # one at a time: its thread frees the slot at once
                if not self._closing and not self._close_longest_idle():
                    self._close_slowest_reader()
                self._cond.wait(poll_s)
            if self._closed:
                return False
            self._held[conn] = time.monotonic()
            return True

    def idle(self, conn: socket.socket) -> None:
        """`conn` waits for its next request: a newcomer may close it to take its slot."""
        with self._cond:
            self._reading.pop(conn, None)
            if conn in self._held:
                self._held[conn] = time.monotonic()

    def busy(self, conn: socket.socket) -> bool:
        """`conn` has a request to serve. False when it was closed to make room meanwhile,
        or the slots are closed: then the connection must end."""
        with self._cond:
            if conn in self._closing or conn not in self._held or self._closed:
                return False
            self._held[conn] = None
            self._reading[conn] = time.monotonic()
            return True

    def working(self, conn: socket.socket) -> None:
        """`conn`'s request has fully arrived: it runs now, however long it takes."""
        with self._cond:
            self._reading.pop(conn, None)

    def release(self, conn: socket.socket) -> None:
        """`conn` is closed: free its slot."""
        with self._cond:
            self._held.pop(conn, None)
            self._reading.pop(conn, None)
            self._closing.discard(conn)
            self._cond.notify_all()

    def close(self) -> None:
        """Take no more connections; close the idle ones now (busy ones end after their
        current request). Idempotent."""
        with self._cond:
            self._closed = True
            for conn, since in list(self._held.items()):
                if since is not None:
                    self._shut(conn)
            self._cond.notify_all()

    def _close_longest_idle(self) -> bool:
        idle = [(since, id(conn), conn) for conn, since in self._held.items() if since is not None]
        if idle:
            self._shut(min(idle)[2])
        return bool(idle)

    def _close_slowest_reader(self) -> bool:
        """Close the connection whose request has been arriving longest, past the deadline."""
        late = time.monotonic() - self._read_deadline_s
        overdue = [(since, id(c), c) for c, since in self._reading.items() if since < late]
        if overdue:
            self._shut(min(overdue)[2])
        return bool(overdue)

    def _shut(self, conn: socket.socket) -> None:
        # shutdown(), not close(): it wakes the connection's thread out of its read, and that
        # thread closes the socket and frees the slot.
        self._closing.add(conn)
        with contextlib.suppress(OSError):  # closed by its peer or its thread meanwhile
            conn.shutdown(socket.SHUT_RDWR)
