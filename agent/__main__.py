"""`python -m satchel.agent`: the satchel-agent command line."""

from __future__ import annotations

from satchel.agent.quickstatus import main

main()
