"""The dashboard's refusals, in the manager's one exception tree."""

from __future__ import annotations

from satchel.manager.errors import ManagerError


class WebError(ManagerError):
    """Base of the dashboard's own refusals."""


class SessionKeyError(WebError):
    """The session key file cannot be read or written; the dashboard cannot sign logins."""


class CsrfError(WebError):
    """A form was posted without this session's CSRF token (answered with 400)."""


class FormError(WebError):
    """A submitted form field is missing or malformed (shown to the admin, nothing done)."""
