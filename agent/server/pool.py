"""The inference pool: a few threads that run infer calls off the event loop, batching
the calls that wait together.

A worker takes the oldest waiting call and, with it, the calls already waiting (up to
`max_batch`) when running them as one batch has been cheaper per call than running them
alone (agent.server.batching learns which, per model), so a lone request never waits for
company, and under load requests for the same release and input shapes run as one batch
(`InferenceService.infer_many`). Sized to
the machine's cores: onnxruntime and TFLite release the GIL while they run, and more threads
than cores would only queue for it.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from satchel.agent.server.batching import BatchChooser
from satchel.agent.server.endpoints import decode_body, infer_response
from satchel.agent.server.errors import RequestError
from satchel.agent.server.http import Response, error_response
from satchel.agent.server.inference import InferCall, InferenceService, InferOutcome

log = logging.getLogger(__name__)


class InferJob:
    """An infer call and its caller's `token` (handed back with the response: the loop's
    connection); a plain class, made per request."""

    __slots__ = ("token", "call", "submitted_ns")

    def __init__(self, token: object, call: InferCall) -> None:
        self.token = token
        self.call = call
        self.submitted_ns = time.perf_counter_ns()  # when it was queued


Done = Callable[[list[tuple[InferJob, Response]]], None]


class InferencePool:
    """`workers` threads answering `InferJob`s; each batch's responses go to `done`, from
    the worker's thread."""

    def __init__(
        self, service: InferenceService, done: Done, *, workers: int, max_batch: int,
        max_body_bytes: int,
    ) -> None:
        if workers < 1 or max_batch < 1:
            raise ValueError("an inference pool needs at least one worker and a batch of one")
        self._service = service
        self._done = done
        self.batching = BatchChooser(max_batch)
        self._batching_lock = threading.Lock()
        self._max_body_bytes = max_body_bytes
        self._queue: queue.SimpleQueue[InferJob | None] = queue.SimpleQueue()
        self.threads = [
            threading.Thread(target=self._work, args=(i,), name=f"satchel-inference-{i}",
                             daemon=True)
            for i in range(workers)
        ]
        # per worker, the monotonic time its current batch started (None: waiting); read by
        # other threads (`stalled`)
        self._running_since: list[float | None] = [None] * workers

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def submit(self, job: InferJob) -> None:
        self._queue.put(job)

    def answer_now(self, job: InferJob) -> Response:
        """Answer `job` on the caller's thread, as a worker would (the event loop's, when
        the pool has nothing to do)."""
        if job.call.content_encoding != "identity":
            return self._answer([job])[0]
        call = job.call
        try:  # nothing to decode, and no queue but the moment since the loop made the job
            (outcome,) = self._service.infer_many([InferCall(
                call.channel, call.version, call.body, call.header_length,
                queued_ns=time.perf_counter_ns() - job.submitted_ns,
            )])
            return infer_response(outcome)
        except Exception as e:  # a bug must cost this request, never the server
            log.exception("infer request failed")
            return error_response(500, f"internal error: {type(e).__name__}", close=True)

    def stalled(self, now: float, limit_s: float) -> bool:
        """Whether a worker has been running one batch for over `limit_s` seconds at
        monotonic time `now` (a model that hangs in its runtime). Any thread."""
        return any(since is not None and now - since > limit_s
                   for since in self._running_since)

    def stop(self, timeout_s: float) -> None:
        """Let the workers finish the calls they run, then end them."""
        for _ in self.threads:
            self._queue.put(None)
        for thread in self.threads:
            if thread.is_alive():
                thread.join(timeout_s)

    def _work(self, worker: int) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs = [job]
            stopping = False
            model = (job.call.channel, job.call.version)
            waiting = self._queue.qsize()
            if waiting:
                with self._batching_lock:
                    take = self.batching.size(model, 1 + waiting)
                while len(jobs) < take:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        stopping = True
                        break
                    jobs.append(more)
            started = self._running_since[worker] = time.monotonic()
            try:
                self._done(list(zip(jobs, self._answer(jobs), strict=True)))
            except Exception:  # a bug must cost these requests, never the pool
                log.exception("answering %d infer request(s) failed", len(jobs))
            finally:
                self._running_since[worker] = None
            with self._batching_lock:
                self.batching.ran(model, len(jobs), time.monotonic() - started)
            if stopping:
                return

    def _answer(self, jobs: list[InferJob]) -> list[Response]:
        """Run `jobs` as one batch; their responses, in order."""
        try:
            calls: list[InferCall | RequestError] = []
            taken = time.perf_counter_ns()
            for job in jobs:
                decoding = time.perf_counter_ns()
                try:
                    body = decode_body(job.call.body, job.call.content_encoding,
                                       self._max_body_bytes)
                    calls.append(InferCall(
                        job.call.channel, job.call.version, body, job.call.header_length,
                        queued_ns=taken - job.submitted_ns,
                        decode_ns=time.perf_counter_ns() - decoding,
                    ))
                except RequestError as e:
                    calls.append(e)
            runnable = [c for c in calls if isinstance(c, InferCall)]
            outcomes = iter(self._service.infer_many(runnable))
            answered: list[InferOutcome] = [
                c if isinstance(c, RequestError) else next(outcomes) for c in calls
            ]
            return [infer_response(outcome) for outcome in answered]
        except Exception as e:  # a bug must cost these requests, never the server
            log.exception("infer request failed")
            return [error_response(500, f"internal error: {type(e).__name__}", close=True)
                    for _ in jobs]
