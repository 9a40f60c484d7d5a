"""Small helpers shared by the API views: the request body, ids and query parameters."""

from __future__ import annotations

from typing import Any

from flask import request

from satchel.bundles.canonical import decode_json
from satchel.bundles.errors import MalformedJSONError
from satchel.manager.context import MAX_ROW_ID, state
from satchel.manager.errors import InvalidRequestError, NotFoundError, RequestTooLargeError


def json_body(required: bool = True) -> Any:
    """The request's JSON body, strictly parsed and bounded by `max_request_bytes`.

    Raises RequestTooLargeError, InvalidRequestError.
    """
    limit = state().config.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise RequestTooLargeError(f"request body is larger than {limit} bytes")
    data = request.stream.read(limit + 1)
    if len(data) > limit:
        raise RequestTooLargeError(f"request body is larger than {limit} bytes")
    if not data:
        if required:
            raise InvalidRequestError("a JSON body is required")
        return {}
    try:
        return decode_json(data, "request body")
    except MalformedJSONError as e:
        raise InvalidRequestError(str(e)) from e


def row_id(value: int, what: str) -> int:
    """`value` as an id from a URL; no row has one beyond what the column holds (the database
    would fail on it). Raises NotFoundError."""
    if not 0 <= value <= MAX_ROW_ID:
        raise NotFoundError(f"no {what} {value}")
    return value


def int_arg(name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within [low, high]. Raises InvalidRequestError."""
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError as e:
        raise InvalidRequestError(f"query parameter {name} must be an integer") from e
    if not low <= value <= high:
        raise InvalidRequestError(f"query parameter {name} must be between {low} and {high}")
    return value
