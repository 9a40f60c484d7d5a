"""Alembic's scripts for the manager's database, shipped inside the package: `satchel.manager.db`
finds them with importlib.resources, so an installed wheel migrates with no checkout."""
