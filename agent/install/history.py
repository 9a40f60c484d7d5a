"""Release history: every activation, refusal, rollback and recovery, with its reason (the
kinds are `bundles.events.HISTORY_*`).

A bounded list in STATE/history.json, newest last, rewritten durably on each event. The
events of one operation carry its journal id, so an event replayed by recovery after a
crash is not recorded twice.
"""

from __future__ import annotations

from typing import Any

from satchel.agent.config import DEFAULT_CONFIG, AgentConfig
from satchel.agent.state import Layout, read_json, write_json
from satchel.bundles.timeutil import format_time, utcnow


def read_history(layout: Layout) -> list[dict[str, Any]]:
    """Every kept event, oldest first. Raises StateCorruptError."""
    data = read_json(layout.history, "history")
    return [e for e in data if isinstance(e, dict)] if isinstance(data, list) else []


def record_event(
    layout: Layout, event: str, config: AgentConfig = DEFAULT_CONFIG, **fields: Any
) -> dict[str, Any]:
    """Append one event (dropping the oldest beyond the configured bound) and return it.

    An event with the same `id` and kind as one already kept is not added again.
    Raises OSError, StateCorruptError.
    """
    entry = {"time": format_time(utcnow()), "event": event}
    entry.update({k: v for k, v in fields.items() if v is not None})
    history = read_history(layout)
    if "id" in entry and any(
        e.get("id") == entry["id"] and e.get("event") == event for e in history
    ):
        return entry
    history.append(entry)
    write_json(layout.history, history[-config.history_entries :])
    return entry
