"""`python -m manager`: the `satchel` command."""

from manager.cli import main

main()
