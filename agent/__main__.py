"""`python -m agent`: the satchel-agent command line."""

from __future__ import annotations

from agent.cli import main

main()
