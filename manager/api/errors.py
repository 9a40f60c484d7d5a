"""The API's one JSON error shape: `{"error": {"code": ..., "message": ...}}`.

Refusals raised by services map to HTTP statuses here, and nowhere else. The manager's own
disk refusing a write is a 503 with `Retry-After`: nothing was recorded, and the client (a
device at its next check-in) sends the same request again once there is room.
"""

from __future__ import annotations

import logging
import math

from flask import Response, jsonify, request
from werkzeug.exceptions import HTTPException

from satchel.bundles.errors import BundleError
from satchel.manager import errors as e
from satchel.manager.api import bp
from satchel.manager.context import state

log = logging.getLogger("satchel.api")

# the most specific class first
STATUS: list[tuple[type[Exception], int, str]] = [
    (e.AuthError, 401, "unauthorized"),
    (e.ForbiddenError, 403, "forbidden"),
    (e.TooManyAttemptsError, 429, "too_many_attempts"),
    (e.NotFoundError, 404, "not_found"),
    (e.ConflictError, 409, "conflict"),
    (e.NoTrustRootError, 409, "no_trust_root"),
    (e.RequestTooLargeError, 413, "too_large"),
    (e.BundleRefusedError, 422, "bundle_refused"),
    (e.ReportRefusedError, 422, "report_refused"),
    (e.DatabaseNotReadyError, 503, "database_not_ready"),
    (e.DiskFullError, 503, "disk_full"),
    (e.StoreWriteError, 503, "store_unwritable"),
    (e.StoreUnavailableError, 503, "store_unavailable"),
    (e.InvalidRequestError, 400, "invalid_request"),
    (e.UsageError, 400, "invalid_request"),
    (BundleError, 400, "invalid_request"),
    (e.ManagerError, 400, "refused"),
]


def error_response(status: int, code: str, message: str) -> Response:
    """The JSON error every API failure answers with."""
    response = jsonify({"error": {"code": code, "message": message}})
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="satchel"'
    return response


def status_of(err: Exception) -> tuple[int, str]:
    """The HTTP status and error code of a refusal."""
    for kind, status, code in STATUS:
        if isinstance(err, kind):
            return status, code
    return 400, "refused"


@bp.errorhandler(e.ManagerError)
@bp.errorhandler(BundleError)
def _refusal(err: Exception) -> Response:
    status, code = status_of(err)
    response = error_response(status, code, str(err))
    if isinstance(err, e.StorageError):
        # the operator must make room: one line, no traceback (the refusal is expected)
        log.error("%s %s refused: %s", request.method, request.path, err)
        # a device retries at its next check-in anyway; telling it sooner gains nothing
        response.headers["Retry-After"] = str(math.ceil(state().config.poll_interval_s))
    if isinstance(err, e.TooManyAttemptsError):
        response.headers["Retry-After"] = str(max(1, err.retry_after_s))
    return response


@bp.app_errorhandler(HTTPException)
def _http_error(err: HTTPException) -> Response | HTTPException:
    if not request.path.startswith(bp.url_prefix or "/api/v1"):
        return err
    code = (err.name or "error").lower().replace(" ", "_")
    return error_response(err.code or 500, code, err.description or err.name)


@bp.errorhandler(Exception)
def _unexpected(err: Exception) -> Response:
    if isinstance(err, HTTPException):
        return error_response(err.code or 500, "error", err.description or "")
    log.exception("unhandled error in %s %s", request.method, request.path)
    return error_response(500, "internal_error", "internal error; see the manager's log")
