"""The OpenAPI 3.1 description of /api/v1, served at /api/v1/openapi.json without credentials
(it is the same constant document for everyone, and holds no secret); /api/v1/docs renders it
(`api/reference.py`).

Its patterns and the names it lists (event kinds, channel states, token kinds and statuses)
are taken from where the code defines them (`bundles.identifiers`, `bundles.events`,
`bundles.channels`, the services), so the document cannot drift from what is checked. A test
checks that every route of the blueprint is described here.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Response, jsonify

from satchel.bundles import events
from satchel.bundles.channels import STATE_PROBATION
from satchel.bundles.identifiers import IDENTIFIER_RE, SHA256_RE
from satchel.manager.api import bp
from satchel.manager.services.credentials import ADMIN, ENROLL
from satchel.manager.services.tokens import EXPIRED, REVOKED, VALID

Security = list[dict[str, list[str]]]
ADMIN_ONLY: Security = [{"adminToken": []}]
DEVICE_ONLY: Security = [{"deviceToken": []}]
ADMIN_OR_DEVICE: Security = [{"adminToken": []}, {"deviceToken": []}]
ENROLL_ONLY: Security = [{"enrollmentToken": []}]
PUBLIC: Security = []  # no credentials: the API's description and its reference page


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "400": {"$ref": "#/components/responses/Invalid"},
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": {"$ref": "#/components/responses/Forbidden"},
    "404": {"$ref": "#/components/responses/NotFound"},
}


def _op(summary: str, security: list[Any], responses: dict[str, Any], **extra: Any) -> dict:
    return {"summary": summary, "security": security, "responses": {**responses, **ERRORS}, **extra}


def _body(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {"required": True, "content": {media: {"schema": schema}}}


def _path_param(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _pattern(rule: re.Pattern[str]) -> str:
    """A rule the code applies with `fullmatch`, as a JSON Schema pattern (which searches)."""
    return f"^{rule.pattern}$"


DEVICE_ID = _path_param("device_id", {"type": "string", "pattern": _pattern(IDENTIFIER_RE)})
SHA256 = _path_param("sha256", {"type": "string", "pattern": _pattern(SHA256_RE)})
# The kinds a deployment acts on: the steps of an install, then its outcomes.
DEPLOYMENT_EVENT_KINDS = [
    events.DOWNLOADED,
    events.VERIFIED,
    events.SMOKE_TEST,
    events.ACTIVATED,
    events.ROLLED_BACK,
    events.INSTALL_FAILED,
    events.INSTALL_REFUSED,
]
DEPLOYMENT_ID = _path_param("deployment_id", {"type": "integer"})
OBJ = {"type": "object"}
_SAMPLE_FILTERS = [
    {"name": n, "in": "query", "schema": {"type": "string"}}
    for n in ("channel", "version", "reason", "device")
]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            }
        },
    },
    "Identity": {
        "type": "object",
        "required": ["device_id", "device_class", "public_key"],
        "additionalProperties": False,
        "properties": {
            "device_id": {"type": "string"},
            "device_class": {"type": "string"},
            "arch": {"type": "string", "description": "platform.machine()"},
            "agent_version": {"type": "string"},
            "public_key": {"type": "string", "description": "Ed25519 public key, PEM or 64 hex"},
        },
    },
    "Enrolled": {
        "type": "object",
        "properties": {
            "device_id": {"type": "string"},
            "token": {"type": "string", "description": "the device credential, shown once"},
            "checkin_url": {"type": "string"},
            "poll_interval_s": {"type": "number"},
            "trust": _ref("TrustPointer"),
        },
    },
    "TrustPointer": {
        "type": "object",
        "properties": {
            "version": {"type": ["integer", "null"]},
            "root_url": {"type": "string"},
            "version_url": {"type": "string", "description": "template with {version}"},
        },
    },
    "ChannelStatus": {
        "type": "object",
        "properties": {
            "active": {
                "type": ["object", "null"],
                "properties": {"version": {"type": "string"}, "sequence": {"type": "integer"}},
            },
            "releases": {"type": "array", "items": OBJ},
            "state": {
                "type": "string",
                "description": f"{STATE_PROBATION!r} while health is watched",
            },
        },
    },
    "Status": {
        "type": "object",
        "description": "the agent's `status --json`",
        "properties": {
            "device_id": {"type": "string"},
            "device_class": {"type": "string"},
            "channels": {"type": "object", "additionalProperties": _ref("ChannelStatus")},
        },
    },
    "Health": {
        "type": "object",
        "properties": {
            "count": {"type": "integer"},
            "errors": {"type": "integer"},
            "nan": {"type": "integer"},
            "p95_ms": {"type": ["number", "null"]},
        },
    },
    "Event": {
        "type": "object",
        "required": ["id", "kind", "time"],
        "properties": {
            "id": {"type": "string", "description": "device-generated, unique per device"},
            "kind": {"type": "string", "examples": DEPLOYMENT_EVENT_KINDS},
            "time": {"type": "string", "format": "date-time"},
            "channel": {"type": "string"},
            "version": {"type": "string"},
            "sequence": {"type": "integer"},
            "bundle_sha256": {"type": "string"},
            "deployment_id": {"type": "integer"},
            "passed": {"type": "boolean"},
            "reason": {"type": "string"},
            "figures": OBJ,
        },
    },
    "Checkin": {
        "type": "object",
        "required": ["status"],
        "properties": {
            "status": _ref("Status"),
            "health": {"type": "object", "additionalProperties": _ref("Health")},
            "events": {"type": "array", "items": _ref("Event")},
            "agent_version": {"type": "string"},
            "trust_root_version": {"type": "integer"},
            "sent_at": {"type": "string", "format": "date-time"},
        },
    },
    "Offer": {
        "type": "object",
        "properties": {
            "channel": {"type": "string"},
            "version": {"type": "string"},
            "sequence": {"type": "integer"},
            "bundle_sha256": {"type": "string"},
            "size": {"type": "integer"},
            "url": {"type": "string"},
            "deployment_id": {"type": "integer"},
            "origins": {"type": "array", "items": {"type": "string"}},
        },
    },
    "CheckinAnswer": {
        "type": "object",
        "properties": {
            "device_id": {"type": "string"},
            "install": {"type": "array", "items": _ref("Offer")},
            "trust": _ref("TrustPointer"),
            "poll_interval_s": {"type": "number"},
            "events": {
                "type": "object",
                "properties": {"recorded": {"type": "integer"}, "duplicate": {"type": "integer"}},
            },
            "server_time": {"type": "string", "format": "date-time"},
        },
    },
    "Device": OBJ,
    "Bundle": OBJ,
    "Deployment": OBJ,
    "NewDeployment": {
        "type": "object",
        "required": ["bundle"],
        "properties": {
            "bundle": {"type": "string", "description": "NAME:VERSION or sha256"},
            "device_classes": {"type": "array", "items": {"type": "string"}},
            "tags": {"type": "array", "items": {"type": "string"}},
            "devices": {"type": "array", "items": {"type": "string"}},
            "waves": {"type": "string", "examples": ["1,10%,50%,100%"]},
            "success_ratio": {"type": "number"},
            "max_failure_ratio": {"type": "number"},
        },
    },
    "NewToken": {
        "type": "object",
        "required": ["kind"],
        "properties": {
            "kind": {"enum": [ADMIN, ENROLL]},
            "name": {"type": "string", "maxLength": 100},
            "device_class": {"type": "string"},
            "ttl_s": {
                "type": "number",
                "description": "seconds the token stays valid; an admin token without it "
                "lasts until revoked",
            },
        },
    },
    "UsbPlan": {
        "type": "object",
        "properties": {
            "trust_root_version": {"type": "integer"},
            "trust_root_versions": {"type": "array", "items": {"type": "integer"}},
            "assignments": {"type": "array", "items": OBJ},
        },
    },
    "UsbReportResult": {
        "type": "object",
        "properties": {"path": {"type": "string"}, "recorded": {"type": "boolean"}},
    },
    "SampleStored": {
        "type": "object",
        "properties": {
            "sha256": {"type": "string", "pattern": _pattern(SHA256_RE)},
            "stored": {"type": "boolean"},
            "dropped": {"type": "integer", "description": "the device's oldest captures dropped"},
        },
    },
    "AdminTokens": {
        "type": "object",
        "required": ["admin_tokens"],
        "properties": {
            "admin_tokens": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "name": {"type": "string"},
                        "owner": {"type": ["string", "null"]},
                        "status": {"enum": [VALID, EXPIRED, REVOKED]},
                        "created_at": {"type": "string"},
                        "expires_at": {"type": ["string", "null"]},
                        "last_used_at": {"type": ["string", "null"]},
                        "revoked_at": {"type": ["string", "null"]},
                    },
                },
            }
        },
    },
}


def _error_response(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _public(summary: str, media: str) -> dict[str, Any]:
    """An operation anyone may call: no security, no 401."""
    return {"summary": summary, "security": PUBLIC,
            "responses": {"200": {"description": "OK", "content": {media: {"schema": OBJ
                                  if media == "application/json" else {"type": "string"}}}}}}


PATHS: dict[str, Any] = {
    "/openapi.json": {"get": _public("This document (no credentials needed)", "application/json")},
    "/docs": {"get": _public("The API reference page, rendering this document", "text/html")},
    "/enroll": {
        "post": _op(
            "Trade a one-time enrollment token for a device credential",
            ENROLL_ONLY,
            {
                "201": _json(_ref("Enrolled"), "Enrolled"),
                "409": _error_response("Already enrolled"),
            },
            requestBody=_body(_ref("Identity")),
        )
    },
    "/devices": {
        "get": _op(
            "List devices",
            ADMIN_ONLY,
            {"200": _json(OBJ)},
            parameters=[
                {"name": n, "in": "query", "schema": {"type": t}}
                for n, t in (
                    ("device_class", "string"),
                    ("tag", "string"),
                    ("limit", "integer"),
                    ("offset", "integer"),
                )
            ],
        ),
        "post": _op(
            "Register a USB-only device by its public key",
            ADMIN_ONLY,
            {"201": _json(_ref("Device"), "Registered")},
            requestBody=_body(_ref("Identity")),
        ),
    },
    "/devices/{device_id}": {
        "parameters": [DEVICE_ID],
        "get": _op(
            "One device: identity, channels, health, recent events",
            ADMIN_OR_DEVICE,
            {"200": _json(_ref("Device"))},
            parameters=[
                {
                    "name": "events",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 10_000},
                }
            ],
        ),
        "delete": _op("Forget a device", ADMIN_ONLY, {"204": {"description": "Removed"}}),
    },
    "/devices/{device_id}/checkin": {
        "parameters": [DEVICE_ID],
        "post": _op(
            "Report state, health and events; learn what to install",
            DEVICE_ONLY,
            {"200": _json(_ref("CheckinAnswer"))},
            requestBody=_body(_ref("Checkin")),
        ),
    },
    "/devices/{device_id}/events": {
        "parameters": [DEVICE_ID],
        "get": _op("A device's events, newest first", ADMIN_OR_DEVICE, {"200": _json(OBJ)}),
    },
    "/devices/{device_id}/tags": {
        "parameters": [DEVICE_ID],
        "patch": _op(
            "Add or remove tags",
            ADMIN_ONLY,
            {"200": _json(OBJ)},
            requestBody=_body(
                {
                    "type": "object",
                    "properties": {"add": {"type": "array"}, "remove": {"type": "array"}},
                }
            ),
        ),
    },
    "/bundles": {
        "get": _op("List bundles", ADMIN_ONLY, {"200": _json(OBJ)}),
        "post": _op(
            "Upload a bundle (raw body or multipart field 'bundle'); verified first",
            ADMIN_ONLY,
            {
                "201": _json(_ref("Bundle"), "Stored"),
                "200": _json(_ref("Bundle"), "Already stored"),
                "409": _error_response("Version or sequence taken, or no trust root"),
                "413": _error_response("Too large"),
                "422": _error_response("Refused by verification; nothing stored"),
            },
            requestBody={
                "required": True,
                "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"bundle": {"type": "string", "format": "binary"}},
                        }
                    },
                },
            },
        ),
    },
    "/bundles/{sha256}": {
        "parameters": [SHA256],
        "get": _op(
            "A bundle and its manifest (devices: only assigned ones)",
            ADMIN_OR_DEVICE,
            {"200": _json(_ref("Bundle"))},
        ),
        "delete": _op(
            "Forget a bundle no deployment refers to (409 while one does) and delete its file",
            ADMIN_ONLY,
            {"200": _json(_ref("Bundle"))},
        ),
    },
    "/bundles/{sha256}/rewrap": {
        "parameters": [SHA256],
        "post": _op(
            "Wrap a stored encrypted bundle's data key also for devices enrolled since (the "
            "manager's `encryption_identity`); only keys.json changes, so the sha256 does",
            ADMIN_ONLY,
            {
                "200": _json(OBJ, "Re-wrapped (or already for every device named)"),
                "409": _error_response("No manager recipient key, or not encrypted"),
                "422": _error_response("The manager's key does not unlock it, or the "
                                       "result does not verify; nothing changed"),
            },
            requestBody=_body({"type": "object", "required": ["to"], "properties": {
                "to": {"type": "array", "items": {"type": "string"},
                       "description": "device:ID, class:CLASS or all-enrolled"}}}),
        ),
    },
    "/bundles/{sha256}/download": {
        "parameters": [SHA256],
        "get": _op(
            "The bundle file; ETag = sha256; Range, If-Range, If-None-Match honoured",
            ADMIN_OR_DEVICE,
            {
                "200": {"description": "The whole file"},
                "206": {"description": "The requested range"},
                "302": {"description": "To devices, when the manager hands out pre-signed "
                        "URLs of its object store (`store_presign`): the URL, valid a few "
                        "minutes, at an origin the check-in offer names (`origins`)"},
                "304": {"description": "Not modified"},
                "416": {"description": "Range not satisfiable"},
            },
            parameters=[
                {"name": h, "in": "header", "schema": {"type": "string"}}
                for h in ("Range", "If-Range", "If-None-Match")
            ],
        ),
    },
    "/deployments": {
        "get": _op(
            "List deployments",
            ADMIN_ONLY,
            {"200": _json(OBJ)},
            parameters=[{"name": "state", "in": "query", "schema": {"type": "string"}}],
        ),
        "post": _op(
            "Create and start a deployment",
            ADMIN_ONLY,
            {"201": _json(_ref("Deployment"), "Created")},
            requestBody=_body(_ref("NewDeployment")),
        ),
    },
    "/deployments/{deployment_id}": {
        "parameters": [DEPLOYMENT_ID],
        "get": _op(
            "Status with every device's progress (evaluates advance/halt)",
            ADMIN_ONLY,
            {"200": _json(_ref("Deployment"))},
        ),
    },
    **{
        f"/deployments/{{deployment_id}}/{action}": {
            "parameters": [DEPLOYMENT_ID],
            "post": _op(
                f"{action.capitalize()} a deployment",
                ADMIN_ONLY,
                {
                    "200": _json(_ref("Deployment")),
                    "409": _error_response("Not possible in this state"),
                },
            ),
        }
        for action in ("pause", "resume", "abort")
    },
    "/trust": {
        "get": _op("Trust root summary", ADMIN_OR_DEVICE, {"200": _json(OBJ)}),
        "post": _op(
            "Import root.json (first, or the next rotation)",
            ADMIN_ONLY,
            {"200": _json(OBJ)},
            requestBody=_body(OBJ),
        ),
    },
    "/trust/root.json": {
        "get": _op("The current root.json", ADMIN_OR_DEVICE, {"200": _json(OBJ)}),
    },
    "/trust/roots/{version}.json": {
        "parameters": [_path_param("version", {"type": "integer"})],
        "get": _op(
            "root.json of one version (walk the rotation chain)",
            ADMIN_OR_DEVICE,
            {"200": _json(OBJ)},
        ),
    },
    "/tokens": {
        "get": _op(
            "List admin tokens: name, owner, expiry, last use (never the secret)",
            ADMIN_ONLY,
            {"200": _json(_ref("AdminTokens"))},
            parameters=[
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 10_000},
                }
            ],
        ),
        "post": _op(
            "Issue an enrollment or admin token",
            ADMIN_ONLY,
            {"201": _json(OBJ, "Issued")},
            requestBody=_body(_ref("NewToken")),
        ),
    },
    "/tokens/{token_id}/revoke": {
        "parameters": [_path_param("token_id", {"type": "integer"})],
        "post": _op("Revoke an admin token", ADMIN_ONLY, {"204": {"description": "Revoked"}}),
    },
    "/usb/plan": {
        "post": _op(
            "Work out a USB plan's assignments (unsigned: the admin signs it)",
            ADMIN_ONLY,
            {
                "200": _json(_ref("UsbPlan")),
                "409": _error_response("No trust root, or the deployment is not active"),
            },
            requestBody={
                "required": False,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {"deployment_id": {"type": "integer"}},
                        }
                    }
                },
            },
        ),
    },
    "/usb/reports": {
        "post": _op(
            "Record one signed device report read from a stick",
            ADMIN_ONLY,
            {
                "201": _json(_ref("UsbReportResult"), "Recorded"),
                "200": _json(_ref("UsbReportResult"), "Imported before"),
                "422": _error_response("Refused: unknown device, bad signature, malformed"),
            },
            parameters=[
                {
                    "name": "path",
                    "in": "query",
                    "required": True,
                    "description": "where it lay on the stick: reports/DEVICE/REPORT.json",
                    "schema": {"type": "string"},
                }
            ],
            requestBody=_body(OBJ),
        ),
    },
    "/devices/{device_id}/samples": {
        "parameters": [DEVICE_ID],
        "post": _op(
            "Store one capture file (field inputs kept in a shadow stage or ramp) of this device",
            ADMIN_OR_DEVICE,
            {
                "201": _json(_ref("SampleStored"), "Stored"),
                "200": _json(_ref("SampleStored"), "Stored before (same sha256)"),
                "413": _error_response("Larger than max_sample_bytes"),
            },
            parameters=[
                {
                    "name": "X-Satchel-Sample-SHA256",
                    "in": "header",
                    "required": False,
                    "description": "sha256 of the body; a mismatch is refused",
                    "schema": {"type": "string", "pattern": _pattern(SHA256_RE)},
                }
            ],
            requestBody=_body({"type": "string", "format": "binary"}, "application/octet-stream"),
        ),
    },
    "/samples": {
        "get": _op(
            "Stored captures, oldest first (filters: channel, version, reason, device)",
            ADMIN_ONLY,
            {"200": _json(OBJ)},
            parameters=_SAMPLE_FILTERS,
        ),
    },
    "/samples/export": {
        "get": _op(
            "One channel and release's captures stacked for `bundle build --samples`",
            ADMIN_ONLY,
            {"200": _json({"type": "object", "properties": {
                "npz": {"type": "string", "contentEncoding": "base64"}, "meta": OBJ}})},
            parameters=_SAMPLE_FILTERS,
        ),
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "Satchel manager API",
        "version": "1",
        "description": "Fleet, bundles, deployments and device check-ins. See docs/API.md.",
    },
    "servers": [{"url": "/api/v1"}],
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "adminToken": {"type": "http", "scheme": "bearer", "description": "sat_admin_..."},
            "deviceToken": {"type": "http", "scheme": "bearer", "description": "sat_dev_..."},
            "enrollmentToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "sat_enroll_..., one-time",
            },
        },
        "responses": {
            "Invalid": _error_response("Malformed request"),
            "Unauthorized": _error_response("No or invalid credentials"),
            "Forbidden": _error_response("Not allowed for these credentials"),
            "NotFound": _error_response("No such resource"),
        },
    },
}


@bp.get("/openapi.json")
def openapi_document() -> Response:
    """The document, to anyone: every other resource answers 401 without credentials."""
    return jsonify(DOCUMENT)
