"""A small client of the manager's REST API for the admin CLI, on the standard library
(urllib) so `satchel --url` starts fast and needs no HTTP package.

Every failure becomes one `ManagerError` with one line: the manager's own refusal (its JSON
`error.message`, mapped by status as `api/errors.py` maps the other way), or why the manager
could not be reached.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, BinaryIO

from satchel.manager import errors

API_PREFIX = "/api/v1"


@dataclass(frozen=True)
class ClientLimits:
    timeout_s: float = 60.0  # seconds to connect, and between two reads of an answer
    max_answer_bytes: int = 256 * 1024 * 1024  # bytes of a JSON answer
    max_error_bytes: int = 64 * 1024  # bytes of an error answer read for its message
    chunk_bytes: int = 1024 * 1024  # bytes per step of an upload or download


class UnreachableError(errors.ManagerError):
    """The manager did not answer: refused, unknown host, timed out, not HTTP."""


class ApiError(errors.ManagerError):
    """The manager answered with an error status this client has no class for."""


# status -> the refusal a local command would raise for the same cause
_BY_STATUS: dict[int, type[errors.ManagerError]] = {
    400: errors.InvalidRequestError,
    401: errors.AuthError,
    403: errors.ForbiddenError,
    404: errors.NotFoundError,
    409: errors.ConflictError,
    413: errors.RequestTooLargeError,
    429: errors.TooManyAttemptsError,
    503: errors.StorageError,
}
_BY_CODE: dict[str, type[errors.ManagerError]] = {
    "no_trust_root": errors.NoTrustRootError,
    "bundle_refused": errors.BundleRefusedError,
    "report_refused": errors.ReportRefusedError,
    "database_not_ready": errors.DatabaseNotReadyError,
}


def base_url(url: str) -> str:
    """The manager's address as given (`http://host:8400`, with or without /api/v1).
    Raises UsageError for anything but an http(s) URL."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise errors.UsageError(f"--url {url!r} is not an http:// or https:// URL")
    path = parts.path.rstrip("/")
    path = path.removesuffix(API_PREFIX)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: the admin token goes to the address given, nowhere else."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)
_BROKEN = (OSError, http.client.HTTPException)  # a connection that fails mid-answer


class ApiClient:
    """Calls `/api/v1/...` of one manager with one admin token."""

    def __init__(self, url: str, token: str, limits: ClientLimits | None = None) -> None:
        self.url = base_url(url)
        self.token = token
        self.limits = limits or ClientLimits()

    def _request(
        self,
        method: str,
        path: str,
        query: dict[str, Any] | None = None,
        body: bytes | BinaryIO | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """Send one request; returns the open response (a 2xx status). Raises
        UnreachableError, and the ManagerError of the manager's refusal."""
        target = f"{self.url}{API_PREFIX}{path}"
        wanted = {k: v for k, v in (query or {}).items() if v is not None}
        if wanted:
            target += "?" + urllib.parse.urlencode(wanted)
        req = urllib.request.Request(target, data=body, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        for name, value in (headers or {}).items():
            req.add_header(name, value)
        try:
            return _OPENER.open(req, timeout=self.limits.timeout_s)
        except urllib.error.HTTPError as e:
            with e:
                location = e.headers.get("Location")
                raise self._refusal(e.code, self._error_body(e), location) from None
        except (urllib.error.URLError, ValueError, *_BROKEN) as e:
            raise self._unreachable(e) from None

    def _unreachable(self, e: Exception) -> UnreachableError:
        reason: object = getattr(e, "reason", e)
        if isinstance(reason, socket.timeout | TimeoutError):
            reason = f"no answer within {self.limits.timeout_s:g} s"
        elif isinstance(reason, OSError) and reason.strerror:
            reason = reason.strerror.lower()
        return UnreachableError(f"cannot reach the manager at {self.url}: {reason}")

    def _error_body(self, e: urllib.error.HTTPError) -> bytes:
        try:
            return e.read(self.limits.max_error_bytes)
        except _BROKEN:
            return b""

    def _refusal(self, status: int, data: bytes, location: str | None) -> errors.ManagerError:
        if 300 <= status < 400:
            return UnreachableError(
                f"the manager at {self.url} redirects to {location or 'elsewhere'}; "
                "give --url the address it names"
            )
        code, message = "", ""
        try:
            answer = json.loads(data)
            code = str(answer["error"]["code"])
            message = str(answer["error"]["message"])
        except (ValueError, KeyError, TypeError):
            message = f"HTTP {status} from {self.url} (not the Satchel API?)"
        message = " ".join(message.split()) or f"HTTP {status}"
        if status == 401:
            return errors.AuthError(f"the manager at {self.url} refused the admin token: {message}")
        kind = _BY_CODE.get(code) or _BY_STATUS.get(status) or ApiError
        if kind is errors.TooManyAttemptsError:
            return errors.TooManyAttemptsError(message, 0)
        return kind(message)

    def _read(self, response: Any, limit: int) -> bytes:
        """Up to `limit` bytes of an answer. Raises UnreachableError (it broke off)."""
        try:
            with response:
                data: bytes = response.read(limit)
        except _BROKEN as e:
            raise UnreachableError(f"the answer of {self.url} broke off: {e}") from None
        return data

    def _json_of(self, response: Any) -> Any:
        data = self._read(response, self.limits.max_answer_bytes + 1)
        if not data:
            return None
        if len(data) > self.limits.max_answer_bytes:
            raise ApiError(f"the manager's answer is larger than {self.limits.max_answer_bytes}")
        try:
            return json.loads(data)
        except ValueError:
            raise ApiError(f"the manager at {self.url} answered with malformed JSON") from None

    def get(self, path: str, **query: Any) -> Any:
        """GET a JSON resource. Raises as `_request`, ApiError (malformed answer)."""
        return self._json_of(self._request("GET", path, query))

    def send(self, method: str, path: str, document: Any = None, **query: Any) -> Any:
        """POST, PATCH or DELETE with a JSON body (or none); the JSON answer or None."""
        body = None if document is None else json.dumps(document).encode()
        headers = {"Content-Type": "application/json"} if body is not None else {}
        return self._json_of(self._request(method, path, query, body, headers))

    def send_bytes(self, endpoint: str, data: bytes, **query: Any) -> Any:
        """POST a JSON document as the exact bytes given (a signed file); the JSON answer."""
        headers = {"Content-Type": "application/json"}
        return self._json_of(self._request("POST", endpoint, query, data, headers))

    def raw(self, path: str) -> bytes:
        """GET a document as the exact bytes sent (a signed file). Raises as `_request`."""
        return self._read(self._request("GET", path), self.limits.max_answer_bytes)

    def upload(self, path: str, source: BinaryIO, size: int, **query: Any) -> Any:
        """POST a file as the raw body (streamed, with its length); the JSON answer."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        return self._json_of(self._request("POST", path, query, source, headers))

    def download(self, path: str, out: BinaryIO, sha256: str) -> None:
        """Stream a file into `out`, checking it has the given sha256. Raises as `_request`,
        UnreachableError (the answer broke off), ApiError (the bytes differ), OSError (`out`
        cannot be written)."""
        digest = hashlib.sha256()
        with self._request("GET", path) as response:
            while chunk := self._chunk(response):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise ApiError(f"the manager sent bundle {sha256[:12]} with other content")

    def _chunk(self, response: Any) -> bytes:
        try:
            data: bytes = response.read(self.limits.chunk_bytes)
        except _BROKEN as e:
            raise UnreachableError(f"download from {self.url} broke off: {e}") from None
        return data
