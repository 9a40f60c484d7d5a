"""The check-in route in front of Flask: unchanged check-ins answered without routing.

Nearly every check-in of a settled fleet is unchanged (see fast.py), and Flask's request
machinery (request context, session, routing, hooks, response object) costs about as much CPU
as recording such a check-in. This WSGI middleware answers
`POST /api/v1/devices/{device_id}/checkin` itself when the fast path applies: the same service
function, the same JSON answer, the same metrics and request log line as the Flask view
(framing.py holds what both say).

Everything else goes to Flask untouched (with the body already read handed on): other routes,
a missing or wrong credential, a malformed body, events, a changed state, a database out of
space (refused there with 503 and Retry-After). So every refusal and the full check-in have one
implementation, in `api/devices.py`.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from satchel.bundles.canonical import decode_json
from satchel.bundles.errors import MalformedJSONError
from satchel.bundles.timeutil import now
from satchel.manager.checkin import framing
from satchel.manager.checkin.lan import try_fast_checkin
from satchel.manager.context import EXTENSION
from satchel.manager.errors import AuthError
from satchel.manager.metrics.request_log import access_logger, new_request_id, record_request
from satchel.manager.services.credentials import bearer_token

_orjson_dumps: Callable[..., bytes] | None
try:  # a twentieth of the standard library's time for the answer
    from orjson import OPT_SORT_KEYS as _ORJSON_SORTED
    from orjson import dumps as _orjson_dumps
except ImportError:  # pragma: no cover - orjson comes with the manager's extras
    _orjson_dumps, _ORJSON_SORTED = None, 0

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class CheckinRoute:
    """WSGI middleware (`app.wsgi_app = CheckinRoute(app, app.wsgi_app)`)."""

    def __init__(self, app: Flask, next_app: WSGIApp) -> None:
        self.app = app
        self.next_app = next_app
        self.state = app.extensions[EXTENSION]
        self.logger = access_logger() if self.state.config.log_requests else None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        match = framing.PATH.fullmatch(environ.get("PATH_INFO", ""))
        if (
            match is None
            or environ.get("REQUEST_METHOD") != "POST"
            or not self.state.config.checkin_fast_path
        ):
            return self.next_app(environ, start_response)
        started = time.perf_counter()
        body = _read_body(environ, self.state.config.max_request_bytes)
        if body is None:
            return self.next_app(environ, start_response)
        environ["wsgi.input"] = io.BytesIO(body)  # Flask reads it again if we hand it on
        answer = self._answer(environ, match.group(1), body)
        if answer is None:
            environ[framing.FAST_PATH_TRIED] = True
            return self.next_app(environ, start_response)
        device_id, payload = answer
        request_id = new_request_id(environ.get("HTTP_X_REQUEST_ID"))
        start_response(
            "200 OK",
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                ("X-Request-Id", request_id),
            ],
        )
        record_request(
            self.state.metrics,
            self.logger,
            request_id=request_id,
            method="POST",
            path=environ.get("PATH_INFO", ""),
            endpoint=framing.ENDPOINT,
            status=200,
            elapsed=time.perf_counter() - started,
            size=len(payload),
            remote=environ.get("REMOTE_ADDR"),
            principal=device_id,
        )
        return [payload]

    def _answer(
        self, environ: dict[str, Any], device_id: str, body: bytes
    ) -> tuple[str, bytes] | None:
        """(device id, JSON answer) of a check-in recorded on the fast path, or None."""
        try:
            token = bearer_token(environ.get("HTTP_AUTHORIZATION"))
            data = decode_json(body, "request body")
        except (AuthError, MalformedJSONError):
            return None
        st = self.state
        t = now()
        result = try_fast_checkin(
            st.db, token, device_id, data, t, st.config.max_events_per_checkin
        )
        if result is None:
            return None
        framing.count(st.metrics, result)
        answer = framing.answer(st.config, result, t)
        return device_id, self._json(answer)

    def _json(self, answer: dict[str, Any]) -> bytes:
        """The bytes `jsonify` gives outside debug mode (compact, keys sorted, ASCII, a
        trailing newline); written by orjson when its bytes are the same: ASCII, and the one
        float (the poll interval) in the range where both write it without an exponent."""
        poll = answer["poll_interval_s"]
        if _orjson_dumps is not None and (poll == 0 or 1e-4 <= abs(poll) < 1e16):
            try:
                fast: bytes = _orjson_dumps(answer, option=_ORJSON_SORTED) + b"\n"
            except TypeError:  # e.g. an integer beyond 64 bits: the standard way
                pass
            else:
                if fast.isascii():
                    return fast
        return (self.app.json.dumps(answer, separators=(",", ":")) + "\n").encode()


def _read_body(environ: dict[str, Any], limit: int) -> bytes | None:
    """The request body when its declared length is within `limit`, else None (unread)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    if not 0 < length <= limit:
        return None
    body: bytes = environ["wsgi.input"].read(length)
    return body
