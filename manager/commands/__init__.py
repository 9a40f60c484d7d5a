"""Click command groups of the `satchel` CLI: thin wrappers over service functions, one
module per group and named after it (`bundle.py` is `satchel bundle ...`). `common`, `context`
and `reports` are what the groups share; `manager.cli` names every group in a table that
`lazy` loads from, so a group is imported only when it runs."""
