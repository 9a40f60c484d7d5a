"""Click command groups of the `satchel` CLI: thin wrappers over service functions."""
