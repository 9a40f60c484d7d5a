"""The inference server's exceptions; each HTTP-facing one carries the status it answers."""

from __future__ import annotations

from satchel.agent.errors import AgentError


class ServerError(AgentError):
    """Base of every error raised by the inference server."""


class ListenAddressError(ServerError):
    """A listen address is not HOST:PORT."""


class RequestError(ServerError):
    """An HTTP request the server answers with an error status and `{"error": message}`."""

    status = 400

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.headers = headers or {}  # extra response headers, e.g. Allow


class BadRequestError(RequestError):
    """The request is malformed or does not fit the model (name, shape, datatype)."""

    status = 400


class NotFoundError(RequestError):
    """No such endpoint, channel, or version."""

    status = 404


class MethodNotAllowedError(RequestError):
    """The endpoint exists but not for this HTTP method."""

    status = 405


class NotLoadedError(RequestError):
    """The version named is kept on the device but not loaded, so it cannot answer."""

    status = 409


class PayloadTooLargeError(RequestError):
    """The request body is larger than the server accepts."""

    status = 413


class HeadTooLargeError(RequestError):
    """The request line and headers are longer than the server reads."""

    status = 431


class NotReadyError(RequestError):
    """The channel exists but no release of it is loaded (yet)."""

    status = 503


class InferenceFailedError(BadRequestError):
    """The runtime failed to run a request that fitted the model's inputs; counted as an
    error in the release's health."""


class ReleaseLoadError(ServerError):
    """A release's model could not be loaded or failed its warm-up inference."""
