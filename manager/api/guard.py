"""The API's guard: `requires(...)` lets a view run only for the right credentials.

No, unknown or expired credentials answer 401, a credential of the wrong kind or for another
device answers 403. The principal found is kept in `g` for the view and the request log; the
credential logic itself is `manager.services.credentials`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import g, request

from satchel.bundles.timeutil import now
from satchel.manager.context import state
from satchel.manager.errors import AuthError, ForbiddenError
from satchel.manager.services.credentials import Principal, authenticate, bearer_token

F = TypeVar("F", bound=Callable[..., Any])


def current_principal() -> Principal:
    """The principal of the current request, set by `requires`. Raises AuthError."""
    principal = g.get("principal")
    if principal is None:
        raise AuthError("authentication required")
    return principal


def requires(*kinds: str) -> Callable[[F], F]:
    """Guard a view: the caller must present a token of one of `kinds` (ADMIN, DEVICE).

    Raises AuthError (401) without valid credentials, ForbiddenError (403) for another kind.
    """

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if g.get("principal") is None:
                token = bearer_token(request.headers.get("Authorization"))
                manager = state()
                t = now()
                touch_s = manager.config.admin_token_touch_s
                g.principal = manager.db.run(lambda s: authenticate(s, token, t, touch_s))
            if g.principal.kind not in kinds:
                needed = " or ".join(kinds)
                raise ForbiddenError(f"this resource needs {needed} credentials")
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
