"""`python -m satchel.manager`: the `satchel` command."""

from satchel.manager.cli import main

main()
