"""The manager's configuration: every limit and setting in one dataclass, with units.

Sources, later ones winning: the defaults below, a TOML file (`[manager]` table, or top level),
then the environment (`SATCHEL_<FIELD NAME IN CAPITALS>`, e.g. `SATCHEL_DATABASE_URL`,
`SATCHEL_POLL_INTERVAL_S`), then explicit overrides (the `serve` options, a test's config).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomllib

from satchel.manager.errors import UsageError

ENV_PREFIX = "SATCHEL_"
CONFIG_ENV = "SATCHEL_CONFIG"  # path of a TOML file read by every `satchel` command


@dataclass(frozen=True)
class ManagerConfig:
    data_dir: Path = field(default_factory=lambda: Path("satchel-data"))
    database_url: str = ""  # empty = SQLite at DATA_DIR/satchel.db
    host: str = "127.0.0.1"
    port: int = 8400
    server: str = "auto"  # HTTP server: granian, waitress, or auto (granian when installed)
    workers: int = 1  # server processes sharing the listening port
    threads: int = 8  # request threads per server process
    poll_interval_s: float = 60.0  # seconds between device check-ins, before jitter
    poll_jitter: float = 0.2  # +/- fraction of poll_interval_s added at random
    enroll_token_ttl_s: float = 7 * 86400.0  # seconds an enrollment token stays usable
    max_bundle_bytes: int = 8 * 1024**3  # bytes of one uploaded bundle
    max_request_bytes: int = 4 * 1024 * 1024  # bytes of any JSON request body
    max_events_per_checkin: int = 1000  # events in one check-in or USB report
    max_reports_per_import: int = 100_000  # report files read from one USB stick
    max_report_bytes: int = 4 * 1024 * 1024  # bytes of one signed device report
    upload_chunk_bytes: int = 1024 * 1024  # bytes read from an upload per step
    download_max_age_s: int = 3600  # seconds a client may cache a bundle download
    usb_plan_ttl_s: float = 30 * 86400.0  # seconds a USB plan stays valid after export
    sqlite_busy_timeout_ms: int = 30_000  # milliseconds a writer waits for the SQLite lock
    db_pool_size: int = 10  # PostgreSQL connections kept per process
    db_max_overflow: int = 10  # extra PostgreSQL connections allowed under load
    db_pool_recycle_s: int = 3600  # seconds before a pooled PostgreSQL connection is renewed
    checkin_fast_path: bool = True  # unchanged check-ins take one round trip (checkin/fast.py)
    db_retries: int = 3  # attempts of a transaction that hit a deadlock or serialization error
    deploy_success_ratio: float = 0.95  # default fraction of a wave that must be healthy
    deploy_max_failure_ratio: float = 0.10  # default failed/released fraction that halts
    deploy_default_waves: str = "1,10%,50%,100%"  # waves when `deploy create` names none
    login_user_failures: int = 5  # failed log-ins for one user name per window, then refused
    login_address_failures: int = 20  # failed log-ins from one client address per window
    login_window_s: float = 15 * 60.0  # seconds a failed log-in counts against name and address
    admin_token_touch_s: float = 60.0  # seconds between two writes of a token's last use
    trusted_proxies: int = 0  # reverse proxies in front of the manager whose X-Forwarded-For
    # (and -Proto, -Host) to believe: the client address log-ins are throttled by
    log_requests: bool = True  # one JSON log line per HTTP request
    check_schema: bool = True  # refuse to start unless the database is at the head revision

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "satchel.db"

    @property
    def store_dir(self) -> Path:
        return self.data_dir / "store"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the database."""
        return self.database_url or f"sqlite:///{self.sqlite_path}"


_FIELDS = {f.name: f for f in fields(ManagerConfig)}


def _coerce(name: str, value: Any) -> Any:
    kind = _FIELDS[name].type
    try:
        if kind == "Path":
            return Path(value)
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                    raise ValueError(value)
                return value.lower() in ("1", "true", "yes", "on")
            return bool(value)
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError) as e:
        raise UsageError(f"setting {name} has an invalid value {str(value)[:40]!r}") from e


def _from_toml(path: Path) -> dict[str, Any]:
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e.strerror}") from e
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {path} is not valid TOML: {e}") from e
    table = doc.get("manager", doc)
    unknown = sorted(set(table) - set(_FIELDS))
    if unknown:
        raise UsageError(f"config file {path} has an unknown setting {unknown[0]!r}")
    return dict(table)


def _from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name in _FIELDS:
        value = environ.get(ENV_PREFIX + name.upper())
        if value is not None and value != "":
            found[name] = value
    return found


def load_config(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> ManagerConfig:
    """Build the configuration from defaults, a TOML file, the environment and overrides.

    `config_file` defaults to $SATCHEL_CONFIG when set. Overrides whose value is None are
    ignored. Raises UsageError for an unreadable file, an unknown setting or a bad value.
    """
    env = os.environ if environ is None else environ
    if config_file is None and env.get(CONFIG_ENV):
        config_file = Path(env[CONFIG_ENV])
    values: dict[str, Any] = {}
    if config_file is not None:
        values.update(_from_toml(config_file))
    values.update(_from_env(env))
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise UsageError(f"unknown setting {unknown[0]!r}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = ManagerConfig(**{k: _coerce(k, v) for k, v in values.items()})
    _check(config)
    return config


def _check(config: ManagerConfig) -> None:
    if config.poll_interval_s <= 0 or not 0 <= config.poll_jitter < 1:
        raise UsageError("poll_interval_s must be > 0 and poll_jitter in [0, 1)")
    if config.workers < 1 or config.threads < 1:
        raise UsageError("workers and threads must be at least 1")
    if config.server not in ("auto", "granian", "waitress"):
        raise UsageError("server must be granian, waitress or auto")
    if config.login_user_failures < 1 or config.login_address_failures < 1:
        raise UsageError("login_user_failures and login_address_failures must be at least 1")
    if config.login_window_s <= 0 or config.admin_token_touch_s < 0:
        raise UsageError("login_window_s must be > 0 and admin_token_touch_s >= 0")
    if not 0 < config.deploy_success_ratio <= 1 or not 0 <= config.deploy_max_failure_ratio < 1:
        raise UsageError(
            "deploy_success_ratio must be in (0, 1], deploy_max_failure_ratio in [0, 1)"
        )


def replace(config: ManagerConfig, **changes: Any) -> ManagerConfig:
    """A copy of `config` with `changes` applied."""
    return dataclasses.replace(config, **changes)
