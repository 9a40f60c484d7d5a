"""The fast path's statements run on the database driver's own connection.

An unchanged check-in does little database work (SQLite: an UPDATE and a SELECT of a few
rows), but SQLAlchemy's execution around each statement (a Connection and its transaction,
events, an execution context, a result object, the compiled-cache lookup) costs several times
that work in Python. So the fast path builds its statements with SQLAlchemy as everywhere else
(the device-row rules and the released-targets query stay stated once), compiles each once per
dialect, and runs the SQL text on a pooled DBAPI connection, with the bind and result
processors of the statement's own types: the same SQL and the same values as
`Connection.execute` would send, without the machinery around them.

Errors keep SQLAlchemy's shape: a driver error comes out as `sqlalchemy.exc.DBAPIError` (with
`connection_invalidated` set, and the connection dropped from the pool, when the database went
away), so the caller's handling of a full disk or a dropped connection is the usual one.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

Processor = Callable[[Any], Any] | None
_CURSOR = "satchel.checkin.driver.cursor"  # key of the connection's cursor in its pool `info`


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...] | None  # the parameters in order, for a positional paramstyle
    constants: dict[str, Any]  # parameters whose value the statement holds, processed
    variables: tuple[tuple[str, str, Processor], ...]  # (compiled name, key, bind processor)
    results: tuple[Processor, ...]  # one per result column


class DriverStatement:
    """A SQLAlchemy statement compiled once per dialect, run on a DBAPI cursor."""

    def __init__(self, statement: ClauseElement) -> None:
        self.statement = statement
        self._by_dialect: dict[tuple[str, str], _Compiled] = {}  # by (dialect, driver)
        self._lock = threading.Lock()

    def _compiled(self, dialect: sa.Dialect) -> _Compiled:
        key = (dialect.name, dialect.driver)
        found = self._by_dialect.get(key)
        if found is None:
            found = _compile(self.statement, dialect)
            with self._lock:
                self._by_dialect[key] = found
        return found

    def rows(
        self, cursor: Any, dialect: sa.Dialect, params: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Execute with `params` (by bind parameter key); return every row, its values
        processed as SQLAlchemy would. Raises the driver's errors."""
        c = self._compiled(dialect)
        values = dict(c.constants)
        for name, key, process in c.variables:  # None too: JSON makes it 'null', as SQLAlchemy
            values[name] = params[key] if process is None else process(params[key])
        cursor.execute(c.sql, values if c.names is None else [values[n] for n in c.names])
        fetched = cursor.fetchall()  # every statement run here returns rows
        if not any(c.results):
            return [tuple(r) for r in fetched]
        return [
            tuple(v if p is None else p(v) for p, v in zip(c.results, r, strict=True))
            for r in fetched
        ]


def _compile(statement: ClauseElement, dialect: sa.Dialect) -> _Compiled:
    compiled = cast(SQLCompiler, statement.compile(dialect=dialect))
    constants: dict[str, Any] = {}
    variables: list[tuple[str, str, Processor]] = []
    for bind, name in compiled.bind_names.items():
        process = bind.type.dialect_impl(dialect).bind_processor(dialect)
        if bind.required:
            variables.append((name, bind.key, process))
        else:
            value = bind.effective_value
            constants[name] = value if process is None else process(value)
    names = tuple(compiled.positiontup or ()) if compiled.positional else None
    columns: Sequence[Any] = getattr(statement, "exported_columns", ())
    results = tuple(c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns)
    return _Compiled(compiled.string, names, constants, tuple(variables), results)


@contextlib.contextmanager
def connection(engine: sa.Engine, begin: str | None = None) -> Iterator[Any]:
    """A DBAPI cursor on a connection of `engine`'s pool, returned to it at the end. With
    `begin` (e.g. "BEGIN IMMEDIATE"), the block runs in that transaction, committed at the
    end and rolled back on any exception. Raises sqlalchemy.exc.DBAPIError for a driver error,
    as `Connection.execute` would: a connection the database dropped is invalidated
    (`connection_invalidated`)."""
    dialect = engine.dialect
    error = dialect.loaded_dbapi.Error
    try:
        pooled = engine.raw_connection()
    except error as e:  # no connection to the database
        raise _translated(dialect, e, dialect.is_disconnect(e, None, None)) from e
    cursor = None
    try:
        # one cursor per connection, kept with it across checkouts (`info` lives as long as
        # the connection): a new cursor would set up its parameter and row adapters again
        cursor = pooled.info.get(_CURSOR)
        if cursor is None:
            cursor = pooled.info[_CURSOR] = pooled.cursor()
        if begin is not None:
            cursor.execute(begin)
        try:
            yield cursor
            if begin is not None:
                pooled.commit()
        except BaseException:
            if begin is not None:
                with contextlib.suppress(error):
                    pooled.rollback()
            raise
    except error as e:
        pooled.info.pop(_CURSOR, None)
        dropped = dialect.is_disconnect(e, pooled, cursor)
        if dropped:
            pooled.invalidate(e)
        elif cursor is not None:
            with contextlib.suppress(error):
                cursor.close()
        raise _translated(dialect, e, dropped) from e
    finally:
        pooled.close()


def _translated(dialect: sa.Dialect, e: Exception, dropped: bool) -> sa.exc.DBAPIError:
    """The SQLAlchemy error `Connection.execute` raises for the driver's error `e`."""
    error = dialect.loaded_dbapi.Error
    wrapped = sa.exc.DBAPIError.instance(
        None, None, e, error, connection_invalidated=dropped, dialect=dialect
    )
    return cast(sa.exc.DBAPIError, wrapped)
