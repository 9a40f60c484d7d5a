"""The bound on connections the inference server holds at once, and who gives way.

A connection holds a slot from accept to close. It is *idle* while it waits for a request
(its first, or the next one on a kept-alive connection), *reading* while its request arrives,
and *busy* while the request runs and is answered. When every slot is held and a newcomer
waits, the connection idle the longest is closed to make room: idle clients cannot crowd out
one that has something to ask; failing that, one whose request has been arriving for longer
than the read deadline (a slow-loris client trickling bytes, each within the idle timeout).
When none qualifies, newcomers wait in the kernel's listen backlog (or are refused once it
is full) until a slot frees.

Owned by the server's event loop: only its thread changes it (`held` may be read anywhere).
"""

from __future__ import annotations

from collections.abc import Hashable

IDLE, READING, BUSY = "idle", "reading", "busy"


class ConnectionSlots:
    """At most `limit` connections at once, over every listener of one event loop."""

    def __init__(self, limit: int, read_deadline_s: float = float("inf")) -> None:
        if limit < 1:
            raise ValueError("at least one connection must be allowed")
        self._limit = limit
        self._read_deadline_s = read_deadline_s
        self._state: dict[Hashable, tuple[str, float]] = {}  # -> (state, since monotonic s)

    @property
    def held(self) -> int:
        """Connections holding a slot now."""
        return len(self._state)

    @property
    def full(self) -> bool:
        return len(self._state) >= self._limit

    def add(self, conn: Hashable, now: float) -> None:
        """`conn` was accepted: it holds a slot, idle. The caller checked `full` first."""
        self._state[conn] = (IDLE, now)

    def idle(self, conn: Hashable, now: float) -> None:
        """`conn` waits for its next request: a newcomer may close it to take its slot."""
        self._state[conn] = (IDLE, now)

    def reading(self, conn: Hashable, now: float) -> None:
        """The first bytes of `conn`'s next request arrived."""
        self._state[conn] = (READING, now)

    def busy(self, conn: Hashable, now: float) -> None:
        """`conn`'s request has fully arrived: it runs and is answered, however long that
        takes."""
        self._state[conn] = (BUSY, now)

    def release(self, conn: Hashable) -> None:
        """`conn` is closed: free its slot."""
        self._state.pop(conn, None)

    def make_room_by_closing(self, now: float) -> Hashable | None:
        """The connection to close for a newcomer when every slot is held: the longest idle,
        else the request arriving the longest past the read deadline; None when no one
        qualifies (the newcomer waits)."""
        idle = [(since, id(c), c) for c, (state, since) in self._state.items() if state == IDLE]
        if idle:
            return min(idle)[2]
        late = now - self._read_deadline_s
        overdue = [
            (since, id(c), c) for c, (state, since) in self._state.items()
            if state == READING and since < late
        ]
        return min(overdue)[2] if overdue else None
