"""Click command groups of the `satchel` CLI: thin wrappers over service functions, one
module per group and named after it (`bundle.py` is `satchel bundle ...`). `common`, `context`
and `reports` are what the groups share; `manager.cli` registers the groups."""
