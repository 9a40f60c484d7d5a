"""How both sides log: one setup for the manager's and the agent's services and commands.

`configure(level, fmt)` points the root logger at stderr, in one of two formats:
- `text`: `2026-12-01T04:05:06.789Z INFO satchel.agent.service: message key=value`;
- `json`: one JSON object per line, `{"ts", "level", "logger", "msg", ...}` with every
  `extra` field of the record and the request id of the request being answered.

Under journald (stderr is the stream `$JOURNAL_STREAM` names, see systemd.exec(5)) a line
carries no timestamp of ours (the journal stamps each one) and starts with the syslog priority
of its level, `<3>` for an error, as sd-daemon(3) describes, so `journalctl -p err` finds it.

The request id travels in a context variable (`REQUEST_ID`): whoever answers a request sets
it (the manager's request hooks), and every line logged meanwhile, in any module, carries it.
Standard library only: `satchel-agent status` must stay cheap to start.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("text", "json")
JOURNAL_STREAM_ENV = "JOURNAL_STREAM"
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "satchel_request_id", default=None
)
# syslog priorities (sd-daemon(3): SD_ERR is "<3>", ...) of the logging levels
_PRIORITY = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG_PRIORITY = 7
# every attribute a plain record has: the rest of a record's attributes are `extra` fields
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}


def syslog_priority(levelno: int) -> int:
    """The syslog priority (0 emergency .. 7 debug) of a logging level."""
    for threshold, priority in _PRIORITY:
        if levelno >= threshold:
            return priority
    return _DEBUG_PRIORITY


def under_journald(stream: IO[str] | None = None, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` (stderr) is connected to the journal: `$JOURNAL_STREAM` holds the
    device and inode of the stream systemd connected, and `stream` is still that one (a
    child whose stderr was redirected is not logging to the journal)."""
    env = os.environ if environ is None else environ
    expected = env.get(JOURNAL_STREAM_ENV, "")
    if not expected:
        return False
    try:
        st = os.fstat((stream or sys.stderr).fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def _timestamp(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a record was given with `extra=`, and the request id when one is set."""
    fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
    request_id = REQUEST_ID.get()
    if request_id is not None:
        fields.setdefault("request_id", request_id)
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (unless journald stamps it), level, logger, message,
    the `extra` fields and the request id; a traceback as `exc`."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {} if self.journald else {"ts": _timestamp(record.created)}
        out.update(level=record.levelname.lower(), logger=record.name, msg=record.getMessage())
        out.update(extra_fields(record))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        line = json.dumps(out, default=str)
        return f"<{syslog_priority(record.levelno)}>{line}" if self.journald else line


class TextFormatter(logging.Formatter):
    """`TIME LEVEL logger: message key=value ...`; under journald `<P>LEVEL logger: ...`,
    and a traceback's every line prefixed too, so the journal keeps its priority."""

    def __init__(self, journald: bool = False) -> None:
        super().__init__()
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(f"{k}={_text_value(v)}" for k, v in extra_fields(record).items())
        line = f"{record.levelname} {record.name}: {record.getMessage()}"
        if fields:
            line += f" {fields}"
        lines = [line]
        if record.exc_info:
            lines += self.formatException(record.exc_info).splitlines()
        if self.journald:
            prefix = f"<{syslog_priority(record.levelno)}>"
            return "\n".join(prefix + one for one in lines)
        lines[0] = f"{_timestamp(record.created)} {lines[0]}"
        return "\n".join(lines)


def _text_value(value: Any) -> str:
    text = str(value)
    return json.dumps(text) if not text or any(c in text for c in ' "=\n') else text


def formatter(fmt: str, journald: bool) -> logging.Formatter:
    """The formatter of `fmt` ("text" or "json"). Raises ValueError for another format."""
    if fmt == "json":
        return JsonFormatter(journald)
    if fmt == "text":
        return TextFormatter(journald)
    raise ValueError(f"log format {fmt!r} is not one of {', '.join(FORMATS)}")


def level_number(level: str) -> int:
    """The logging level of a name in LEVELS. Raises ValueError for another name."""
    if level.lower() not in LEVELS:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}")
    return int(getattr(logging, level.upper()))


class _SatchelHandler(logging.StreamHandler):
    """The handler `configure` installs; a second `configure` replaces it (and only it)."""


def configure(level: str = "info", fmt: str = "text", stream: IO[str] | None = None) -> None:
    """Send every log line at `level` or above to `stream` (stderr) in format `fmt`,
    journald-style when stderr is the journal. Replaces what an earlier call installed.
    Raises ValueError for an unknown level or format."""
    target = stream or sys.stderr
    handler = _SatchelHandler(target)
    handler.setFormatter(formatter(fmt, under_journald(target)))
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _SatchelHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level_number(level))
    logging.captureWarnings(True)  # a library's warning is a log line too, in our format
