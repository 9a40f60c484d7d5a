"""One exception tree for the manager and the admin CLI, grouped by whose fault it is."""

from __future__ import annotations


class ManagerError(Exception):
    """Base of every refusal raised by the manager; the CLI prints it on one line, exit 1."""


class UsageError(ManagerError):
    """The admin asked for something that cannot be done as asked (bad option values)."""


class BuildError(ManagerError):
    """A bundle cannot be built: model does not load, samples do not fit, or it disagrees
    with its reference beyond the thresholds."""


class KeyDirError(ManagerError):
    """A key directory is missing, incomplete, or would be overwritten."""


class NotFoundError(ManagerError):
    """A device, bundle, deployment or token does not exist."""


class ConflictError(ManagerError):
    """The request conflicts with the current state (duplicate, wrong state transition)."""


class AuthError(ManagerError):
    """Missing, wrong, expired or already-used credentials."""


class TooManyAttemptsError(ManagerError):
    """Too many failed log-ins for a user name or from an address lately: refused before the
    password is looked at, until `retry_after_s` seconds have passed (HTTP 429)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ForbiddenError(ManagerError):
    """Authenticated, but not allowed to see or change this resource."""


class DatabaseNotReadyError(ManagerError):
    """The database schema is not at the Alembic head revision; run `satchel db upgrade`."""


class InvalidRequestError(ManagerError):
    """A request body or document is malformed (bad JSON, missing or mistyped field)."""


class RequestTooLargeError(ManagerError):
    """A request body, upload or document is larger than the configured limit."""


class BundleRefusedError(ManagerError):
    """An uploaded bundle failed verification against the trust root; nothing was stored."""


class NoTrustRootError(ManagerError):
    """No trust root has been imported yet (`satchel trust import KEYDIR/root.json`)."""


class ReportRefusedError(ManagerError):
    """A device report from a USB stick is unsigned, tampered, or from an unknown device."""


class StorageError(ManagerError):
    """The manager's own disk refused a write (full, read-only, not a directory): nothing was
    recorded, and the same request succeeds once an operator has made room."""


class DiskFullError(StorageError):
    """The manager's database has no space left (SQLite: database or disk is full;
    PostgreSQL: SQLSTATE 53100); the transaction was rolled back."""


class StoreWriteError(StorageError):
    """The bundle store cannot be written; no file was left in it."""


class StoreUnavailableError(StorageError):
    """The bundle store cannot be read or reached (an object store down, its credentials
    refused); the same request succeeds once it is back."""
