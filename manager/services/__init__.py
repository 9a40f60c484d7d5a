"""Service functions: the manager's behaviour, called alike by the REST API, the web views
and the CLI. Each takes an open `sqlalchemy.orm.Session` (the caller owns the transaction:
`Database.run(lambda s: service(s, ...))`) and raises `manager.errors.ManagerError` subclasses.
"""
