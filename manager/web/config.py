"""Every limit of the web dashboard, with its unit, in one place.

The defaults suit a fleet of a few thousand devices on one page of counts; an app may set its
own with `app.config["SATCHEL_WEB"] = WebConfig(...)` (tests do).
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app

CONFIG_KEY = "SATCHEL_WEB"


@dataclass(frozen=True)
class WebConfig:
    session_lifetime_s: int = 12 * 3600  # seconds a login lasts
    session_cookie: str = "satchel_session"  # name of the session cookie
    secret_file: str = "web-session.key"  # a session key file an older manager left in the
    #                                        data dir: copied into the database once
    secret_bytes: int = 32  # bytes of a new session signing key
    lan_stale_polls: float = 5.0  # poll intervals without a check-in before a LAN device is
    #                               "not seen recently"
    usb_stale_s: float = 30 * 86400.0  # seconds without a report before a USB device is
    attention_window_s: float = 7 * 86400.0  # seconds a rollback or failure stays flagged
    attention_shown: int = 50  # devices in the "needs attention" list, at most
    page_size: int = 100  # devices per page of the fleet table, unless the admin picks one
    page_sizes: tuple[int, ...] = (25, 50, 100, 250)  # page sizes offered; any size up to
    #                                                   the largest may be asked in the URL
    events_shown: int = 100  # events on a device page
    samples_read: int = 2000  # health and rollback events read for a device's charts
    targets_shown: int = 20  # deployments listed on a device page
    deployments_shown: int = 100  # deployments on the deployments page
    tokens_shown: int = 100  # tokens of each kind on the tokens page
    max_form_bytes: int = 64 * 1024  # bytes of one submitted form


def web_config() -> WebConfig:
    """The dashboard configuration of the current app."""
    config = current_app.config.get(CONFIG_KEY)
    return config if isinstance(config, WebConfig) else WebConfig()
