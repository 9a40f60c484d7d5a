"""The state of a channel on a device, as `satchel-agent status` and every check-in report it.

The agent keeps STATE_ACTIVE or STATE_ROLLED_BACK in `channel.json`, and reports
STATE_INSTALLING or STATE_ROLLING_BACK while an operation's journal is open and
STATE_PROBATION while a new release's health-policy window runs. The manager reads
STATE_PROBATION: a deployment waits for it to end before it judges the release, and the
dashboard shows the device as updating.
"""

from __future__ import annotations

STATE_ACTIVE = "active"
STATE_ROLLED_BACK = "rolled-back"  # with '-', unlike the event kind `rolled_back` (events.py)
STATE_INSTALLING = "installing"
STATE_ROLLING_BACK = "rolling-back"
STATE_PROBATION = "probation"
