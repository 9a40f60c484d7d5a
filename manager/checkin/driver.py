"""The fast path's statements run on the database driver's own connection.

An unchanged check-in does little database work (SQLite: an UPDATE and a SELECT of a few
rows), but SQLAlchemy's execution around each statement (a Connection and its transaction,
events, an execution context, a result object, the compiled-cache lookup) costs several times
that work in Python. So the fast path builds its statements with SQLAlchemy as everywhere else
(the device-row rules and the released-targets query stay stated once), compiles each once per
dialect, and runs the SQL text on a pooled DBAPI connection, with the bind and result
processors of the statement's own types: the same SQL and the same values as
`Connection.execute` would send, without the machinery around them.

On psycopg, the statement is prepared once per connection under a name of ours and run with
libpq's PQexecPrepared (the GIL released while it waits), its parameters dumped and its rows
loaded by the psycopg adapters the cursor itself would use: the cursor's own execution (query
conversion, its prepared-statement bookkeeping, its result object) cost more CPU than the
statement's round trip.

Errors keep SQLAlchemy's shape: a driver error comes out as `sqlalchemy.exc.DBAPIError` (with
`connection_invalidated` set, and the connection dropped from the pool, when the database went
away), so the caller's handling of a full disk or a dropped connection is the usual one.
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
import weakref
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
    numbered: bytes | None = None  # psycopg: the SQL with $1.. placeholders, see _libpq_rows
    order: tuple[str, ...] = ()  # the parameter names of $1, $2, ...


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
        if c.numbered is not None:
            fetched = _libpq_rows(cursor, c, [values[n] for n in c.order])
        else:
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
    numbered: bytes | None = None
    order: tuple[str, ...] = ()
    if dialect.driver == "psycopg" and names is None:
        numbered, order = _numbered(compiled.string)
    return _Compiled(compiled.string, names, constants, tuple(variables), results, numbered, order)


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")  # psycopg's pyformat, and an escaped %


def _numbered(sql: str) -> tuple[bytes, tuple[str, ...]]:
    """`sql` with psycopg's %(name)s placeholders as libpq's $1.. (a name used twice is one
    number), and the names in number order: what psycopg sends for it."""
    order: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return "%"
        if m.group(1) not in order:
            order.append(m.group(1))
        return f"${order.index(m.group(1)) + 1}"

    return _PLACEHOLDER.sub(number, sql).encode(), tuple(order)


@dataclass
class _Prepared:
    """What `_libpq_rows` keeps per psycopg connection: adapters as its cursor's, and the
    statements prepared on the connection, by (SQL, parameter types)."""

    transformer: Any
    names: dict[tuple[bytes, tuple[int, ...]], bytes]


_PREPARED: weakref.WeakKeyDictionary[Any, _Prepared] = weakref.WeakKeyDictionary()
_NAME_PREFIX = b"satchel_fast_"  # psycopg names its own prepared statements _pg3_...
_UNDEFINED_PREPARED = "26000"  # invalid_sql_statement_name: e.g. after DEALLOCATE ALL


@functools.cache
def _psycopg() -> Any:
    """psycopg, imported on first use (an optional dependency: SQLite needs none)."""
    import psycopg
    import psycopg.adapt

    return psycopg


def _libpq_rows(cursor: Any, c: _Compiled, args: list[Any]) -> list[tuple[Any, ...]]:
    """Run `c` with `args` (in $n order) on the libpq connection of the psycopg `cursor`,
    prepared there on first use; return its rows as the cursor would. Raises psycopg errors."""
    psycopg = _psycopg()
    conn = cursor.connection
    state = _PREPARED.get(conn)
    if state is None:
        state = _PREPARED[conn] = _Prepared(psycopg.adapt.Transformer.from_context(cursor), {})
    tx = state.transformer
    dumped = tx.dump_sequence(args, [psycopg.adapt.PyFormat.AUTO] * len(args))
    types, formats = tuple(tx.types), list(tx.formats)
    assert c.numbered is not None
    pgconn = conn.pgconn
    key = (c.numbered, types)
    for attempt in (1, 2):
        name = state.names.get(key)
        if name is None:
            name = _NAME_PREFIX + str(len(state.names)).encode()
            _checked(psycopg, conn, pgconn.prepare(name, c.numbered, types))
            state.names[key] = name
        result = pgconn.exec_prepared(name, dumped, formats)
        try:
            _checked(psycopg, conn, result)
        except psycopg.errors.ProgrammingError as e:
            if attempt == 2 or e.sqlstate != _UNDEFINED_PREPARED:
                raise
            state.names.clear()  # the session's prepared statements are gone: prepare again
            continue
        tx.set_pgresult(result)
        rows: list[tuple[Any, ...]] = tx.load_rows(0, result.ntuples, tuple)
        return rows
    raise AssertionError("unreachable")


def _checked(psycopg: Any, conn: Any, result: Any) -> None:
    """Raise the psycopg error of a failed libpq `result`, as a cursor would."""
    status = result.status
    if status != psycopg.pq.ExecStatus.COMMAND_OK and status != psycopg.pq.ExecStatus.TUPLES_OK:
        raise psycopg.errors.error_from_result(result, conn.info.encoding)


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
