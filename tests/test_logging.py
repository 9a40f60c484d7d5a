"""One log setup for both sides (`bundles.logsetup`): text and JSON lines, levels filtered,
journald's conventions when stderr is the journal (no timestamp of ours, a syslog priority
per line), and the request id on every line the manager logs while it answers a request."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from satchel.bundles import logsetup

TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def _journal_env(stream_file: Path) -> dict[str, str]:
    st = os.stat(stream_file)
    return {logsetup.JOURNAL_STREAM_ENV: f"{st.st_dev}:{st.st_ino}"}


def test_text_lines_carry_time_level_logger_message_and_fields(restore_root_logger) -> None:
    out = io.StringIO()
    logsetup.configure("info", "text", stream=out)

    logging.getLogger("satchel.test").info("installed %s", "vision", extra={"version": "1.0"})

    (line,) = out.getvalue().splitlines()
    assert re.fullmatch(TIMESTAMP + r" INFO satchel\.test: installed vision version=1\.0", line)


def test_json_lines_are_one_object_each_with_extra_fields_and_traceback(
    restore_root_logger,
) -> None:
    out = io.StringIO()
    logsetup.configure("info", "json", stream=out)
    log = logging.getLogger("satchel.test")

    log.warning("slow download", extra={"bytes_per_s": 1024})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("install failed")

    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert re.fullmatch(TIMESTAMP, first.pop("ts"))
    assert first == {"level": "warning", "logger": "satchel.test", "msg": "slow download",
                     "bytes_per_s": 1024}
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]


@pytest.mark.parametrize("fmt", logsetup.FORMATS)
def test_lines_below_the_level_are_not_written(restore_root_logger, fmt: str) -> None:
    out = io.StringIO()
    logsetup.configure("warning", fmt, stream=out)
    log = logging.getLogger("satchel.test")

    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")

    lines = out.getvalue().splitlines()
    levels = [json.loads(x)["level"] if fmt == "json" else x.split()[1] for x in lines]
    assert [level.lower() for level in levels] == ["warning", "error"]


def test_configure_twice_keeps_one_handler_of_ours(restore_root_logger) -> None:
    out = io.StringIO()
    logsetup.configure("info", "text", stream=out)
    logsetup.configure("info", "json", stream=out)

    logging.getLogger("satchel.test").info("once")

    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["msg"] == "once"


@pytest.mark.parametrize("fmt", logsetup.FORMATS)
def test_under_journald_no_timestamp_and_a_syslog_priority_per_line(
    restore_root_logger, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        for k, v in _journal_env(path).items():
            monkeypatch.setenv(k, v)
        logsetup.configure("debug", fmt, stream=stream)
        log = logging.getLogger("satchel.test")
        log.debug("d")
        log.info("i")
        log.warning("w")
        log.error("e")
        log.critical("c")
        try:
            raise RuntimeError("x")
        except RuntimeError:
            log.exception("failed")

    lines = path.read_text().splitlines()
    priorities = [re.match(r"<(\d)>", line) for line in lines]
    assert all(priorities), lines  # every line, a traceback's too
    assert [int(p.group(1)) for p in priorities[:5]] == [7, 6, 4, 3, 2]
    assert not any(re.search(TIMESTAMP, line) for line in lines)
    if fmt == "json":
        assert json.loads(lines[1][3:]) == {"level": "info", "logger": "satchel.test", "msg": "i"}
    else:
        assert lines[1] == "<6>INFO satchel.test: i"


def test_a_journal_stream_that_is_not_stderr_is_not_the_journal(tmp_path: Path) -> None:
    ours, other = tmp_path / "ours", tmp_path / "other"
    other.write_text("")
    with ours.open("w") as stream:
        assert not logsetup.under_journald(stream, _journal_env(other))
        assert logsetup.under_journald(stream, _journal_env(ours))
        assert not logsetup.under_journald(stream, {})


def test_the_request_id_in_context_is_on_every_json_line(restore_root_logger) -> None:
    out = io.StringIO()
    logsetup.configure("info", "json", stream=out)
    token = logsetup.REQUEST_ID.set("trace-7")
    try:
        logging.getLogger("satchel.manager.anything").info("inside a request")
    finally:
        logsetup.REQUEST_ID.reset(token)
    logging.getLogger("satchel.manager.anything").info("outside")

    inside, outside = (json.loads(line) for line in out.getvalue().splitlines())
    assert inside["request_id"] == "trace-7" and "request_id" not in outside


def test_unknown_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log level"):
        logsetup.level_number("loud")
    with pytest.raises(ValueError, match="log format"):
        logsetup.formatter("xml", journald=False)
