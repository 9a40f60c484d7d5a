"""The manager's configuration: every limit and setting in one dataclass, with units.

Sources, later ones winning: the defaults below, a TOML file (`--config FILE`, else
$SATCHEL_CONFIG; the settings in a `[manager]` table or at the top level), the environment
(`SATCHEL_<FIELD NAME IN CAPITALS>`, e.g. `SATCHEL_DATABASE_URL`, `SATCHEL_POLL_INTERVAL_S`),
then explicit overrides (the command's options, a test's config). The loader is the agent's
(`bundles.configfile`); docs/CONFIG.md is generated from this module.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from satchel.bundles.configfile import AT_LEAST_ONE, POSITIVE, Bounds, Schema
from satchel.bundles.errors import ConfigError
from satchel.bundles.logsetup import FORMATS, LEVELS
from satchel.manager.errors import UsageError

ENV_PREFIX = "SATCHEL_"
CONFIG_ENV = "SATCHEL_CONFIG"  # path of a TOML file read by every `satchel` command


@dataclass(frozen=True)
class ManagerConfig:
    data_dir: Path = field(default_factory=lambda: Path("satchel-data"))  # the SQLite file
    # and the bundle store; the `satchel` command's default is ~/.local/share/satchel, and
    # its --data-dir (or SATCHEL_DATA_DIR) wins over this file
    database_url: str = ""  # empty = SQLite at DATA_DIR/satchel.db
    store: str = ""  # where bundles live: empty = the folder DATA_DIR/store; s3://BUCKET/PREFIX
    # = an S3-compatible object store (credentials only from the standard AWS variables or
    # credentials file; `pip install 'satchel[s3]'`)
    store_endpoint: str = ""  # the object store's URL; empty = $AWS_ENDPOINT_URL, else AWS S3
    store_region: str = ""  # the object store's region; empty = $AWS_REGION, else us-east-1
    store_presign: bool = False  # devices download bundles straight from the object store:
    # the download answers 302 to a pre-signed URL (admins are always proxied)
    store_presign_ttl_s: int = 300  # seconds a pre-signed download URL stays valid
    store_public_url: str = ""  # the object store's URL as devices reach it (pre-signed URLs
    # point there, check-in offers name its origin); empty = store_endpoint
    store_part_bytes: int = 16 * 1024 * 1024  # bytes of one multipart upload part (the memory
    # an upload to the object store takes)
    store_timeout_s: float = 30.0  # seconds to connect to, or wait on, the object store
    store_retries: int = 3  # attempts of one object store call that failed transiently
    host: str = "127.0.0.1"  # address `satchel serve` listens on (0.0.0.0: every interface)
    port: int = 8400  # TCP port `satchel serve` listens on (0: any free one)
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
    max_sample_bytes: int = 1024 * 1024  # bytes of one capture file a device uploads
    max_samples_per_device: int = 1000  # captures kept per device (the oldest dropped)
    upload_chunk_bytes: int = 1024 * 1024  # bytes read from an upload per step
    download_max_age_s: int = 3600  # seconds a client may cache a bundle download
    usb_plan_ttl_s: float = 30 * 86400.0  # seconds a USB plan stays valid after export
    retention_events_s: float = 0.0  # seconds a device event is kept after it arrived (0 =
    # for ever); health samples go by retention_health_s. Keep more than a week: the fleet
    # page flags rollbacks and failures of the last 7 days
    retention_health_s: float = 0.0  # seconds a health sample (an event of kind "health") is
    # kept after it arrived (0 = for ever)
    retention_interval_s: float = 3600.0  # seconds between two prunes by each `satchel serve`
    # process (0 = never: only `satchel db prune`); several managers take turns
    retention_batch: int = 5000  # rows deleted per transaction while pruning
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
    log_requests: bool = True  # one log line per HTTP request (logger satchel.access)
    log_level: str = "info"  # the least severe lines written: debug, info, warning, error,
    # critical (`satchel --log-level`)
    log_format: str = "text"  # "text" or "json", one object per line with the request id
    # (`satchel --log-format`); under journald no timestamp of ours and a syslog priority
    check_schema: bool = True  # refuse to start unless the database is at the head revision
    encryption_identity: str = ""  # path of the manager's X25519 recipient private key (PEM,
    # mode 0600): with it `satchel bundle rewrap NAME:VERSION` wraps stored encrypted bundles
    # for more devices (docs/ENCRYPTION.md); empty = the manager re-wraps nothing

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


SCHEMA: Schema[ManagerConfig] = Schema(
    cls=ManagerConfig,
    env_prefix=ENV_PREFIX,
    table="manager",
    bounds={
        "port": Bounds(low=0, high=65535),
        "server": Bounds(choices=("auto", "granian", "waitress")),
        "workers": AT_LEAST_ONE,
        "threads": AT_LEAST_ONE,
        "poll_interval_s": POSITIVE,
        "poll_jitter": Bounds(low=0, high=1, high_open=True),
        "enroll_token_ttl_s": POSITIVE,
        "max_bundle_bytes": AT_LEAST_ONE,
        "max_request_bytes": AT_LEAST_ONE,
        "max_events_per_checkin": AT_LEAST_ONE,
        "max_reports_per_import": AT_LEAST_ONE,
        "max_report_bytes": AT_LEAST_ONE,
        "max_sample_bytes": AT_LEAST_ONE,
        "max_samples_per_device": AT_LEAST_ONE,
        "upload_chunk_bytes": AT_LEAST_ONE,
        "store_presign_ttl_s": Bounds(low=1, high=7 * 86400),  # SigV4's longest validity
        "store_part_bytes": Bounds(low=5 * 1024 * 1024, high=5 * 1024**3),  # S3's part sizes
        "store_timeout_s": POSITIVE,
        "store_retries": AT_LEAST_ONE,
        "usb_plan_ttl_s": POSITIVE,
        "retention_batch": AT_LEAST_ONE,
        "db_pool_size": AT_LEAST_ONE,
        "db_retries": AT_LEAST_ONE,
        "deploy_success_ratio": Bounds(low=0, high=1, low_open=True),
        "deploy_max_failure_ratio": Bounds(low=0, high=1, high_open=True),
        "login_user_failures": AT_LEAST_ONE,
        "login_address_failures": AT_LEAST_ONE,
        "login_window_s": POSITIVE,
        "log_level": Bounds(choices=LEVELS),
        "log_format": Bounds(choices=FORMATS),
    },
)


def load_config(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    defaults: Mapping[str, Any] | None = None,
    **overrides: Any,
) -> ManagerConfig:
    """Build the configuration from defaults, a TOML file, the environment and overrides.

    `config_file` defaults to $SATCHEL_CONFIG when set. `defaults` sit below the file (e.g.
    the CLI's default data directory); overrides whose value is None are ignored. Raises
    UsageError (one line naming the key and the file, variable or option) for an unreadable
    file, an unknown setting or a bad value.
    """
    env = os.environ if environ is None else environ
    if config_file is None and env.get(CONFIG_ENV):
        config_file = Path(env[CONFIG_ENV])
    try:
        return SCHEMA.load(config_file, env, overrides, defaults=defaults)
    except ConfigError as e:
        raise UsageError(str(e)) from e


def replace(config: ManagerConfig, **changes: Any) -> ManagerConfig:
    """A copy of `config` with `changes` applied."""
    return dataclasses.replace(config, **changes)
