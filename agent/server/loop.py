"""The inference server's event loop: one thread holds every socket (both listeners and
every connection), non-blocking, with `selectors`. Every endpoint but infer is answered in
the loop. An infer request runs in the loop too when the inference pool has nothing to do,
no other connection is ready in the same round, its body is small and its model's runs
in the loop are short (see `INLINE_MAX_S`): a lone client then costs no thread hand-off
(worker wake-up, GIL transfers, a wake-up socket, two epoll changes; about half our CPU per
request on a small model). Otherwise it goes to the inference pool, which batches those that
wait together, and their answers come back through a wake-up socket.

A connection reads its request (head, then the body its Content-Length announces), is
answered in order, and waits for the next one (keep-alive) or is closed. The loop enforces
every bound: `max_connections` over both listeners (`ConnectionSlots` says who gives way),
`idle_timeout_s` without a byte while waiting for or reading a request (or while a response
is not being taken), `read_deadline_s` for a request to arrive when a newcomer needs its
slot, `max_head_bytes` and `max_body_bytes`. After a response that ends a connection the
loop stops writing and drains what the client still sends for `linger_s`, so the client
reads the answer instead of a reset.

With the `satchel.agent.server.access` logger at DEBUG (`--log-level debug`), one line per
request: method, path, status, milliseconds and the request's id (an infer request's `id`,
else its `X-Request-ID` header, else one made up), as `request_id` in JSON lines. At any
other level the only cost is one cached level check per request.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import selectors
import socket
import threading
import time

from satchel.agent.server.config import ServerConfig
from satchel.agent.server.connections import ConnectionSlots
from satchel.agent.server.endpoints import Endpoints
from satchel.agent.server.errors import HeadTooLargeError, RequestError
from satchel.agent.server.http import (
    CONTINUE,
    HEAD_END,
    RequestHead,
    Response,
    encode_response,
    error_response,
    find_head_end,
    parse_head,
)
from satchel.agent.server.inference import InferCall
from satchel.agent.server.listeners import Listener
from satchel.agent.server.pool import InferencePool, InferJob

log = logging.getLogger(__name__)
access_log = logging.getLogger("satchel.agent.server.access")
_made_up_ids = itertools.count(1)

RECV_BYTES = 256 * 1024  # bytes asked of one recv()
# Parsed request heads remembered by their bytes (a keep-alive client sends the same head
# again and again): at most this many, each at most this long.
HEADS_REMEMBERED = 64
HEAD_REMEMBERED_BYTES = 1024
# Infer requests run in the loop (see above): bodies at most this long; two in a row of one
# channel that held the loop longer than INLINE_MAX_S each (one alone may have been the
# machine's doing: a preempted thread) send the channel's next INLINE_PAUSE_REQUESTS to the
# pool.
INLINE_MAX_BODY_BYTES = 256 * 1024
INLINE_MAX_S = 0.005
INLINE_PAUSE_REQUESTS = 256
ACCEPTS_PER_WAKE = 64  # connections accepted per readiness event of a listener
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
# Connection states: waiting for a request, reading one, running it, writing the answer,
# draining before close.
IDLE, READING, BUSY, WRITING, LINGERING = range(5)


class _Connection:
    __slots__ = (
        "sock", "state", "inbuf", "head", "head_end", "out", "last_io", "events",
        "endpoint", "head_only", "keep_alive", "http_1_0", "close_after", "closed",
        "linger_until", "scanned", "request", "request_started",
    )

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock = sock
        self.state = IDLE
        self.inbuf = bytearray()
        self.head: RequestHead | None = None
        self.head_end = 0
        self.out: memoryview | None = None
        self.last_io = now  # monotonic s of the last byte read or written (or accept)
        self.events = 0  # what the selector watches for
        self.endpoint = "other"
        self.head_only = False
        self.keep_alive = True
        self.http_1_0 = False
        self.close_after = False
        self.closed = False
        self.linger_until = 0.0
        self.scanned = 0  # bytes of `inbuf` searched for the end of the head already
        self.request: RequestHead | None = None  # the request being answered
        self.request_started = 0.0  # monotonic s it was read


class HttpLoop:
    """Serves `listeners` until `stop()`. `run()` is the loop's thread body."""

    def __init__(
        self, listeners: list[Listener], endpoints: Endpoints, config: ServerConfig,
        slots: ConnectionSlots, workers: int,
    ) -> None:
        self._listeners = listeners
        self._endpoints = endpoints
        self._requests = endpoints.service.requests
        self._config = config
        self._slots = slots
        self.pool = InferencePool(
            endpoints.service, self._deliver, workers=workers, max_batch=config.max_batch,
            max_body_bytes=config.max_body_bytes,
        )
        self._selector = selectors.DefaultSelector()
        self._conns: set[_Connection] = set()
        self._answered: collections.deque[list[tuple[InferJob, Response]]] = (
            collections.deque()
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stopping = threading.Event()
        self._paused = False  # listeners unwatched: a connection waits for a slot
        self._waiting: socket.socket | None = None  # accepted, waiting for a slot
        self._in_pool = 0  # infer requests handed to the pool and not yet answered
        self._ready = 0  # connections ready in this round of the loop
        self._responded = False  # this round answered a request: poll briefly before sleeping
        self._slow: dict[str, int] = {}  # channel -> requests still sent to the pool
        self._strikes: dict[str, int] = {}  # channel -> its last inline runs over the limit
        self._heads: dict[bytes, RequestHead] = {}  # parsed heads, by their bytes
        # when the infer request running in the loop began (monotonic), or None: read by
        # other threads (`stalled`)
        self.inline_started: float | None = None

    # --- lifecycle --------------------------------------------------------------------

    def run(self) -> None:
        """The loop: until `stop()`, then every connection is closed."""
        selector = self._selector
        selector.register(self._wake_r, _READ, None)
        for listener in self._listeners:
            selector.register(listener.sock, _READ, listener)
        tick = self._config.timer_resolution_s
        next_sweep = time.monotonic() + tick
        try:
            while not self._stopping.is_set():
                try:
                    events = self._poll_briefly() if self._responded else []
                    self._responded = False
                    if not events:
                        events = selector.select(tick)
                    self._ready = len(events)
                    for key, mask in events:
                        self._on_event(key.data, mask)
                    self._ready = 0
                    now = time.monotonic()
                    self._take_answers(now)
                    if now >= next_sweep:
                        self._sweep(now)
                        next_sweep = now + tick
                except Exception:  # a bug must cost a round of the loop, never the server
                    log.exception("the HTTP event loop failed a round")
        finally:
            if self._waiting is not None:
                self._waiting.close()
                self._waiting = None
            for conn in list(self._conns):
                self._close(conn)
            selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def stop(self) -> None:
        self._stopping.set()
        self._wake()

    def _poll_briefly(self) -> list[tuple[selectors.SelectorKey, int]]:
        """The sockets' events, looked for without sleeping for up to `busy_poll_s` (none
        while the pool runs requests: it wakes the loop itself when it answers)."""
        limit = self._config.busy_poll_s
        if limit <= 0 or self._in_pool:
            return []
        select = self._selector.select
        deadline = time.perf_counter() + limit
        while not (events := select(0)):
            if time.perf_counter() >= deadline:
                break
        return events

    # --- events -----------------------------------------------------------------------

    def _on_event(self, data: object, mask: int) -> None:
        now = time.monotonic()
        if data is None:
            with contextlib.suppress(OSError):
                while self._wake_r.recv(4096):
                    pass
        elif isinstance(data, Listener):
            self._accept(data, now)
        else:
            assert isinstance(data, _Connection)
            try:
                if mask & _READ:
                    self._on_readable(data, now)
                if mask & _WRITE and not data.closed:
                    self._flush(data, now)
                self._serve_pipelined(data, now)
            except Exception:  # a bug must cost one connection, never the loop
                log.exception("serving a connection failed")
                self._close(data)

    def _accept(self, listener: Listener, now: float) -> None:
        for _ in range(ACCEPTS_PER_WAKE):
            try:
                sock, _ = listener.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors: listen again at the next sweep
                log.warning("accepting a connection failed: %s", e)
                self._pause_listeners()
                return
            sock.setblocking(False)
            if listener.is_tcp:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._slots.full:
                victim = self._slots.make_room_by_closing(now)
                if victim is None:  # it waits for a slot; later ones in the backlog
                    self._waiting = sock
                    self._pause_listeners()
                    return
                assert isinstance(victim, _Connection)
                self._close(victim)
            self._admit(sock, now)

    def _admit(self, sock: socket.socket, now: float) -> None:
        conn = _Connection(sock, now)
        self._conns.add(conn)
        self._slots.add(conn, now)
        self._watch(conn, _READ)
        # What a client sent with its connection makes it a reader at once, not an idle
        # connection a newcomer may close.
        self._on_readable(conn, now)
        self._serve_pipelined(conn, now)

    def _on_readable(self, conn: _Connection, now: float) -> None:
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the client
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        if conn.state == LINGERING:
            return  # drained and dropped
        conn.last_io = now
        conn.inbuf += data
        if conn.state == IDLE:
            conn.state = READING
            self._slots.reading(conn, now)

    def _serve_pipelined(self, conn: _Connection, now: float) -> None:
        """Serve every complete request in the buffer, in order, while answers are
        immediate; stop at one that must wait (read more, or run in the pool)."""
        while not conn.closed and conn.state in (IDLE, READING) and conn.inbuf:
            if conn.state == IDLE:
                conn.state = READING
                self._slots.reading(conn, now)
            if not self._serve_one(conn, now):
                return

    def _serve_one(self, conn: _Connection, now: float) -> bool:
        """Serve the request at the head of the buffer if it has fully arrived; False when
        it has not."""
        config = self._config
        if conn.head is None:
            end = find_head_end(conn.inbuf, conn.scanned)
            conn.scanned = max(0, len(conn.inbuf) - len(HEAD_END) + 1)
            if end < 0 or end > config.max_head_bytes:
                if end > config.max_head_bytes or len(conn.inbuf) > config.max_head_bytes:
                    message = f"the request head is over {config.max_head_bytes} bytes"
                    self._refuse(conn, HeadTooLargeError(message), now)
                return False
            raw = bytes(conn.inbuf[:end])
            conn.head = self._heads.get(raw)
            if conn.head is None:
                try:
                    conn.head = parse_head(raw, max_body_bytes=config.max_body_bytes)
                except RequestError as e:
                    self._refuse(conn, e, now)
                    return False
                if end <= HEAD_REMEMBERED_BYTES:
                    if len(self._heads) >= HEADS_REMEMBERED:
                        self._heads.clear()
                    self._heads[raw] = conn.head
            conn.head_end = end
            if len(conn.inbuf) < end + conn.head.body_length and conn.head.expects_continue:
                with contextlib.suppress(OSError):  # 7 bytes fit any empty send buffer
                    conn.sock.send(CONTINUE)
        head = conn.head
        needed = conn.head_end + head.body_length
        if len(conn.inbuf) < needed:
            return False
        with memoryview(conn.inbuf) as view:
            body = bytes(view[conn.head_end : needed])
        del conn.inbuf[:needed]
        conn.head = None
        conn.scanned = 0
        conn.state = BUSY
        self._slots.busy(conn, now)
        conn.request, conn.request_started = head, now
        conn.head_only = head.method == "HEAD"
        conn.keep_alive = head.keep_alive
        conn.http_1_0 = head.version == "HTTP/1.0"
        conn.endpoint, answer = self._endpoints.answer(head, body)
        if isinstance(answer, InferCall):
            call = answer
            if not self._inline(call):
                self._watch(conn, 0)  # nothing more is read from it until it is answered
                self._in_pool += 1
                self.pool.submit(InferJob(conn, call))
                return False
            self.inline_started = now
            try:
                answer = self.pool.answer_now(InferJob(conn, call))
            finally:
                self.inline_started = None
            took = time.monotonic() - now
            if took > INLINE_MAX_S:
                self._strike(call.channel)
            elif self._strikes:
                self._strikes.pop(call.channel, None)
            now += took
        self._respond(conn, answer, now)
        return True

    def stalled(self, now: float, limit_s: float) -> bool:
        """Whether an infer request has been running in the loop (where a model that hangs
        holds every socket) or in a pool worker for over `limit_s` seconds at monotonic
        time `now`. Any thread."""
        started = self.inline_started
        if started is not None and now - started > limit_s:
            return True
        return self.pool.stalled(now, limit_s)

    def _inline(self, call: InferCall) -> bool:
        """Whether to run `call` here in the loop rather than in the pool: when the pool has
        nothing to do, no other connection is ready in this round, the body is small and the
        model's runs are short. A lone client then costs no thread hand-offs (two wake-ups,
        GIL transfers, a wake-up socket, two epoll changes), half our time per request on a
        small model; under load the pool runs and batches requests as before."""
        if self._in_pool or self._ready > 1 or len(call.body) > INLINE_MAX_BODY_BYTES:
            return False
        paused = self._slow.get(call.channel)
        if paused:
            if paused <= 1:
                del self._slow[call.channel]  # the next one is tried here again
            else:
                self._slow[call.channel] = paused - 1
            return False
        return True

    def _strike(self, channel: str) -> None:
        """An inline run of `channel` held the loop too long; the second in a row sends its
        next requests to the pool for a while."""
        strikes = self._strikes.get(channel, 0) + 1
        if strikes < 2:
            self._strikes[channel] = strikes
            return
        self._strikes.pop(channel, None)
        self._slow[channel] = INLINE_PAUSE_REQUESTS

    def _refuse(self, conn: _Connection, error: RequestError, now: float) -> None:
        """Answer a request that cannot be read (bad head, too large), then close."""
        conn.state = BUSY
        self._slots.busy(conn, now)
        conn.endpoint, conn.head_only, conn.keep_alive = "other", False, False
        conn.request, conn.request_started = None, now
        self._respond(conn, error_response(error.status, str(error), error.headers), now)

    def _respond(self, conn: _Connection, response: Response, now: float) -> None:
        self._responded = True
        self._requests.add(conn.endpoint, response.status)
        if access_log.isEnabledFor(logging.DEBUG):
            _log_access(conn, response, now)
        if not conn.keep_alive:
            response.close = True
        conn.close_after = response.close
        conn.out = memoryview(encode_response(
            response, head_only=conn.head_only, keep_alive_1_0=conn.http_1_0
        ))
        conn.state = WRITING
        conn.last_io = now
        self._flush(conn, now)

    def _flush(self, conn: _Connection, now: float) -> None:
        if conn.out is None:
            return
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:  # the client went away
            self._close(conn)
            return
        if sent:
            conn.out = conn.out[sent:]
            conn.last_io = now
        if conn.out:
            self._watch(conn, _WRITE)
            return
        conn.out = None
        if conn.close_after:
            self._linger(conn, now)
            return
        conn.state = IDLE
        self._slots.idle(conn, now)
        self._watch(conn, _READ)

    def _linger(self, conn: _Connection, now: float) -> None:
        """No more answers on this connection: say so (FIN), and drop what the client still
        sends until it closes or `linger_s` passes; closing with unread bytes would send a
        reset that can destroy the answer before the client reads it."""
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._close(conn)
            return
        conn.state = LINGERING
        conn.inbuf.clear()
        conn.linger_until = now + self._config.linger_s
        self._slots.idle(conn, now)  # a newcomer may have its slot at once
        self._watch(conn, _READ)

    # --- answers from the pool, timers --------------------------------------------------

    def _deliver(self, answered: list[tuple[InferJob, Response]]) -> None:
        """From a pool thread: hand answers to the loop."""
        self._answered.append(answered)
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):  # full: a wake-up is pending
            self._wake_w.send(b"\0")

    def _take_answers(self, now: float) -> None:
        while self._answered:
            for job, response in self._answered.popleft():
                self._in_pool -= 1
                self._answer(job, response, now)

    def _answer(self, job: InferJob, response: Response, now: float) -> None:
        conn = job.token
        assert isinstance(conn, _Connection)
        if conn.closed:
            return
        try:
            self._respond(conn, response, now)
            self._serve_pipelined(conn, now)
        except Exception:  # a bug must cost one connection, never the loop
            log.exception("answering a connection failed")
            self._close(conn)

    def _sweep(self, now: float) -> None:
        """Close connections past their timeouts; listen again when a slot can be had."""
        idle_timeout = self._config.idle_timeout_s
        for conn in list(self._conns):
            if conn.state == LINGERING:
                if now >= conn.linger_until:
                    self._close(conn)
            elif conn.state != BUSY and now - conn.last_io > idle_timeout:
                self._close(conn)
        if self._waiting is not None:
            victim = self._slots.make_room_by_closing(now)
            if isinstance(victim, _Connection):
                self._close(victim)  # and the waiting connection takes its slot
        elif self._paused:
            self._resume_listeners()

    # --- bookkeeping ------------------------------------------------------------------

    def _watch(self, conn: _Connection, events: int) -> None:
        if events == conn.events or conn.closed:
            return
        if events == 0:
            self._selector.unregister(conn.sock)
        elif conn.events == 0:
            self._selector.register(conn.sock, events, conn)
        else:
            self._selector.modify(conn.sock, events, conn)
        conn.events = events

    def _close(self, conn: _Connection) -> None:
        if conn.closed:
            return
        self._watch(conn, 0)
        conn.closed = True
        conn.sock.close()
        self._conns.discard(conn)
        self._slots.release(conn)
        if self._waiting is not None:
            sock, self._waiting = self._waiting, None
            self._admit(sock, time.monotonic())
        if self._paused:
            self._resume_listeners()

    def _pause_listeners(self) -> None:
        if not self._paused:
            for listener in self._listeners:
                self._selector.unregister(listener.sock)
            self._paused = True

    def _resume_listeners(self) -> None:
        if self._paused:
            for listener in self._listeners:
                self._selector.register(listener.sock, _READ, listener)
            self._paused = False


def _log_access(conn: _Connection, response: Response, now: float) -> None:
    head = conn.request
    request_id = response.request_id
    if request_id is None and head is not None:
        request_id = head.headers.get("x-request-id")
    if request_id is None:
        request_id = f"agent-{next(_made_up_ids)}"
    method, path = (head.method, head.path) if head is not None else ("-", "-")
    duration_ms = round((now - conn.request_started) * 1000, 3)
    access_log.debug(
        "%s %s %d %.2f ms", method, path, response.status, duration_ms,
        extra={
            "request_id": request_id, "method": method, "path": path,
            "status": response.status, "endpoint": conn.endpoint,
            "duration_ms": duration_ms,
        },
    )
