"""The durable event queue: nothing lost across restarts and power cuts, nothing delivered
under a reused id, bounded, shared safely by the service and a technician's CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from satchel.agent.config import AgentConfig
from satchel.agent.event_queue import EventQueue
from satchel.agent.server import Event
from satchel.bundles.events import EVENTS_DROPPED


def test_event_survives_a_restart_with_its_id(tmp_path: Path) -> None:
    first = EventQueue(tmp_path)
    event = first.append("activated", channel="vision", version="1.0", sequence=3,
                         bundle_sha256="a" * 64)

    again = EventQueue(tmp_path)  # a new process, as after a reboot

    assert again.pending() == [event]
    assert event["kind"] == "activated" and event["sequence"] == 3
    assert event["time"].endswith("Z")


def test_only_acknowledged_events_leave_the_queue(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path)
    sent = [queue.append("downloaded", channel="vision"), queue.append("verified")]
    later = queue.append("activated")

    assert queue.ack(e["id"] for e in sent) == 2

    assert [e["id"] for e in EventQueue(tmp_path).pending()] == [later["id"]]
    assert queue.ack(["no-such-id"]) == 0
    assert len(queue) == 1


def test_ids_never_repeat_after_everything_was_acknowledged(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path)
    seen = {queue.append("verified")["id"] for _ in range(3)}
    queue.ack(seen)

    newer = EventQueue(tmp_path).append("verified")["id"]

    assert newer not in seen
    assert len(queue) == 1


def test_a_lost_queue_file_never_reuses_a_delivered_id(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path)
    delivered = queue.append("activated")["id"]
    queue.ack([delivered])
    queue.path.unlink()  # the file is lost (disk replaced, state restored from backup)

    fresh = EventQueue(tmp_path).append("activated")["id"]

    assert fresh != delivered  # the manager would drop a reused id as a duplicate


def test_a_line_torn_by_a_power_cut_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path)
    kept = queue.append("activated", channel="vision")
    with open(queue.path, "ab") as f:
        f.write(b'{"seq": 99, "event": {"id": "x-0000')  # the write the power cut stopped

    reopened = EventQueue(tmp_path)
    after = reopened.append("rolled_back", channel="vision", reason="health")

    assert [e["id"] for e in reopened.pending()] == [kept["id"], after["id"]]
    assert all(line.endswith(b"}") for line in queue.path.read_bytes().splitlines())


def test_a_damaged_line_is_dropped_not_fatal(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path)
    first = queue.append("verified")
    with open(queue.path, "ab") as f:
        f.write(b"this is not json\n")
    second = EventQueue(tmp_path).append("activated")

    assert [e["id"] for e in EventQueue(tmp_path).pending()] == [first["id"], second["id"]]


def test_a_full_queue_drops_the_oldest_and_says_how_many(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path, AgentConfig(event_queue_max_events=5))
    appended = [queue.append("serving", channel="vision", sequence=i) for i in range(12)]

    pending = queue.pending()

    assert len(pending) <= 5
    assert pending[0]["kind"] == EVENTS_DROPPED
    dropped = pending[0]["figures"]["dropped"]
    assert dropped == 12 - (len(pending) - 1)
    assert [e["id"] for e in pending[1:]] == [e["id"] for e in appended[-(len(pending) - 1):]]


def test_the_queue_file_stays_under_its_byte_bound(tmp_path: Path) -> None:
    config = AgentConfig(event_queue_max_bytes=4096)
    queue = EventQueue(tmp_path, config)
    for i in range(100):
        queue.append("install_failed", channel="vision", sequence=i, reason="x" * 100)

    assert queue.path.stat().st_size <= 4096
    assert queue.pending()[-1]["sequence"] == 99  # the newest is always kept


def test_server_events_are_queued_in_the_api_shape(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path)

    queue.emit(Event("rolled_back", "vision", "2.0", 7, "health: nan rate 1.00 > 0.00",
                     1772370000.0, {"stats": {"count": 20}, "p95": math.nan}))

    (event,) = queue.pending()
    assert event["kind"] == "rolled_back" and event["channel"] == "vision"
    assert event["version"] == "2.0" and event["sequence"] == 7
    assert event["reason"] == "health: nan rate 1.00 > 0.00"
    assert event["time"] == "2026-03-01T13:00:00Z"
    assert event["figures"] == {"stats": {"count": 20}, "p95": None}  # strict JSON
    json.dumps(event, allow_nan=False)


def test_a_bad_event_from_the_server_is_logged_not_raised(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path)

    queue.emit(Event("Not A Kind", "vision", None, None))

    assert queue.pending() == []


_APPENDER = """
import sys
from pathlib import Path
from satchel.agent.event_queue import EventQueue
queue = EventQueue(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    queue.append("serving", channel="vision", sequence=i)
"""


def test_two_processes_appending_at_once_lose_and_repeat_nothing(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path)
    queue.append("verified")
    procs = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, str(tmp_path), "40"])
        for _ in range(2)
    ]
    acked = 0
    while any(p.poll() is None for p in procs):  # acknowledging (rewriting) meanwhile
        acked += queue.ack(e["id"] for e in queue.pending(3))
    assert all(p.wait(60) == 0 for p in procs)

    left = queue.pending()
    ids = [e["id"] for e in left]
    assert len(ids) == len(set(ids))
    assert acked + len(left) == 81


def test_a_batch_is_bounded_by_count_and_bytes_but_never_empty(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path)
    for i in range(5):
        queue.append("install_failed", sequence=i, reason="y" * 500)

    assert len(queue.pending(3)) == 3
    assert len(queue.pending(None, 1300)) == 2
    assert len(queue.pending(None, 10)) == 1  # one oversized event still goes alone
