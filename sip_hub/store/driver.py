"""Hot statements run on the database driver's own cursor.

SQLAlchemy's per-statement machinery (parameter processing, result objects, events) cost
several times the query itself on a point read of the embedded store, and more than the insert
on the access log's bulk writes. These statements are built with SQLAlchemy as usual, compiled
once per dialect, and executed on the DB-API cursor of the caller's connection (so inside its
transaction). Only for statements whose values need no type conversion beyond the driver's,
and without expanding ``IN`` parameters (write ``or_(a == x, a == y)`` instead).

Driver errors are mapped as ``Store.begin`` maps SQLAlchemy's: a lost connection leaves the
pool; a deadlock or serialization failure between two writes is a ``ConcurrentChange`` (409);
any other operational error (unreachable, timed out) is a retryable ``TransientError``;
anything else (a constraint violated) propagates as the bug it is.

Writes whose outcome nothing reads (``run_later``, ``many_later``, savepoints) are, on
PostgreSQL, sent later: queued on the connection and sent with the next statement whose
result is read, or with the COMMIT, in one pipeline (psycopg's pipeline mode: one round trip
for all, its statements in one write: ``_one_write``). A ``$process-message`` write went from
18 round trips to 7.
Only for statements that cannot fail on the data they are given (the row's key claimed
earlier in the transaction, no unique constraint): their error would surface at the later
statement.
"""

from __future__ import annotations

import itertools
import logging
import re
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

from psycopg import RawCursor
from psycopg.errors import (DeadlockDetected, LockNotAvailable, QueryCanceled,
                            SerializationFailure)
from psycopg.pq import Format
from sqlalchemy import (Connection, Insert, String, Table, and_, any_, bindparam, event,
                        exists, insert, literal_column, or_)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import Executable

from ..errors import ConcurrentChange, TransientError

log = logging.getLogger("sip_hub.store")


# PostgreSQL gave way to another transaction that wrote the same rows at the same moment:
# the database is well, and the request, sent again, can succeed.
CONCURRENT_ERRORS = (DeadlockDetected, SerializationFailure)
# A statement that did not finish within the statement timeout (most often waiting for rows
# other requests hold): nothing was applied; the answer names no internals (PostgreSQL's
# message names the tuple and relation it waited for).
TIMEOUT_ERRORS = (QueryCanceled, LockNotAvailable)


UNKNOWN_OUTCOME: Final = (
    "Database unavailable while the change was being committed: whether it was applied is not "
    "known. Read it back before sending it again (an update with If-Match, a conditional "
    "create and a message sent again with the same ids are safe to repeat)")


def unavailable(exc: BaseException, *, committing: bool = False) -> TransientError:
    """What a request is told of a database error that is not its fault: a 503 to retry,
    naming no host, port, relation or tuple (the log has the error). ``committing``: the
    error came with the COMMIT, where a connection lost may have lost only the server's
    answer: the change may have been applied, and the caller is not told it was not."""
    if isinstance(exc, TIMEOUT_ERRORS):  # (the server cancelled it: nothing committed)
        return TransientError("The database did not finish within the statement timeout (the "
                              "data may be held by other requests); nothing was applied, and "
                              "the request may be retried")
    log.warning("database unavailable%s: %s", " at COMMIT" if committing else "", exc)
    if committing:
        return TransientError(UNKNOWN_OUTCOME)
    return TransientError("Database unavailable; nothing was applied, and the request may be "
                          "retried")


# The dialects' own INSERT constructs (with ON CONFLICT), for ``DriverStatement.on_conflict``.
_DIALECT_INSERTS: dict[str, Callable[[Table], Any]] = {
    "sqlite": sqlite_insert, "postgresql": pg_insert}


# Up to this many rows, a PostgreSQL bulk insert is one multi-row INSERT (one round trip);
# beyond, a COPY (two round trips, but cheaper per row). On SQLite at most this many rows an
# INSERT statement (13 columns at most here: far below SQLite's 32,766 parameters).
_VALUES_ROWS = 64


class DriverStatement:
    def __init__(self, stmt: Executable) -> None:
        self._stmt: Executable | None = stmt
        self._build: Callable[[Callable[[Table], Any]], Executable] | None = None
        self._compiled: dict[str, tuple[str | bytes, tuple[str, ...] | None,
                                        dict[str, Any]]] = {}
        self._rows_sql: dict[tuple[str, tuple[str, ...], int], str | bytes] = {}

    @classmethod
    def on_conflict(cls, build: Callable[[Callable[[Table], Any]], Executable]
                    ) -> DriverStatement:
        """An INSERT ... ON CONFLICT, which SQLAlchemy builds per dialect: ``build`` gets the
        connection's dialect's ``insert`` and returns the statement."""
        made = cls.__new__(cls)
        made._stmt, made._build, made._compiled, made._rows_sql = None, build, {}, {}
        return made

    def _sql(self, conn: Connection) -> tuple[str | bytes, tuple[str, ...] | None,
                                              dict[str, Any]]:
        """The SQL, its positional parameter order (None: named), and the values of the
        statement's own literals."""
        compiled = self._compiled.get(conn.dialect.name)
        if compiled is None:
            stmt = self._stmt if self._build is None else \
                self._build(_DIALECT_INSERTS[conn.dialect.name])
            assert stmt is not None
            c = stmt.compile(dialect=conn.dialect)
            literals = {k: v for k, v in c.params.items() if v is not None}
            if conn.dialect.name == "postgresql":
                compiled = (*_numbered(str(c)), literals)
            else:
                compiled = (str(c), tuple(c.positiontup or ()) if c.positional else None,
                            literals)
            self._compiled[conn.dialect.name] = compiled
        return compiled

    def _args(self, conn: Connection, params: Mapping[str, Any]) -> tuple[str | bytes, Any]:
        sql, order, literals = self._sql(conn)
        if literals:
            params = {**literals, **params}
        return sql, tuple(params[k] for k in order) if order is not None else params

    def first(self, conn: Connection, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
        sql, args = self._args(conn, params)
        with _cursor(conn) as cur:
            _execute(conn, cur, sql, args)
            row: tuple[Any, ...] | None = cur.fetchone()
            return row

    def all(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        sql, args = self._args(conn, params)
        with _cursor(conn) as cur:
            _execute(conn, cur, sql, args)
            rows: list[tuple[Any, ...]] = cur.fetchall()
            return rows

    def run(self, conn: Connection, params: Mapping[str, Any]) -> int:
        """Run a statement that returns no rows; how many rows it changed."""
        sql, args = self._args(conn, params)
        with _cursor(conn) as cur:
            _execute(conn, cur, sql, args)
            return int(cur.rowcount)

    def run_later(self, conn: Connection, params: Mapping[str, Any]) -> None:
        """Run a statement whose outcome nothing reads, on PostgreSQL sent later (see the
        module's docstring); at once elsewhere."""
        _later(conn, *self._args(conn, params))

    def many_later(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        """``many``, on PostgreSQL sent later (see ``run_later``)."""
        self.many(conn, rows, later=True)

    def many(self, conn: Connection, rows: Sequence[Mapping[str, Any]], *,
             later: bool = False) -> None:
        """Run the statement once per row. A plain INSERT is a multi-row INSERT instead
        (beyond ``_VALUES_ROWS`` rows on PostgreSQL a COPY), a statement for many rows:

        * psycopg's executemany sends one INSERT per row, a round trip each;
        * SQLite's executemany steps the statement once per row and lets go of the
          interpreter lock for each step; beside a busy thread of the same process each
          step then waits to get it back (up to the switch interval), while the writer holds
          the database's one write lock. There the rows go in chunks of a power of two (13
          rows: 8, 4 and 1), so that a table's inserts are a few statements, each prepared
          once and kept in the connection's statement cache.

        ``later``: sent later on PostgreSQL (see ``run_later``), in INSERTs of at most
        ``_VALUES_ROWS`` rows (a pipeline takes no COPY)."""
        if not rows:
            return
        dialect = conn.dialect.name
        later = later and dialect == "postgresql"
        if isinstance(self._stmt, Insert) and dialect in ("postgresql", "sqlite"):
            columns = tuple(rows[0])
            if dialect == "postgresql" and len(rows) > _VALUES_ROWS and not later:
                with _cursor(conn) as cur:
                    _execute(conn, cur)  # what was queued first: a pipeline takes no COPY
                    with cur.copy(self._insert_sql(conn, columns, 0)) as copy:
                        for r in rows:
                            copy.write_row(tuple(r[c] for c in columns))
                return
            start = 0
            while start < len(rows):
                left = len(rows) - start
                size = min(left, _VALUES_ROWS) if dialect == "postgresql" else \
                    min(_VALUES_ROWS, 1 << (left.bit_length() - 1))
                sql = self._insert_sql(conn, columns, size)
                args = [r[c] for r in rows[start:start + size] for c in columns]
                if later:
                    _later(conn, sql, args)
                else:
                    with _cursor(conn) as cur:
                        _execute(conn, cur, sql, args)
                start += size
            return
        sql, order, literals = self._sql(conn)
        if literals:
            rows = [{**literals, **r} for r in rows]
        args = [tuple(r[k] for k in order) for r in rows] if order is not None else rows
        if later:
            for a in args:
                _later(conn, sql, a)
            return
        with _cursor(conn) as cur:
            _execute(conn, cur)
            cur.executemany(sql, args)

    def _insert_sql(self, conn: Connection, columns: tuple[str, ...], n: int) -> str | bytes:
        """The INSERT of ``n`` rows of ``columns`` into the statement's table (0: PostgreSQL's
        COPY of any number), written once per dialect, columns and count."""
        key = (conn.dialect.name, columns, n)
        sql = self._rows_sql.get(key)
        if sql is None:
            quote = conn.dialect.identifier_preparer.quote
            table = quote(self._stmt.table.name)  # type: ignore[union-attr]
            names = ", ".join(quote(c) for c in columns)
            if n == 0:
                sql = f"COPY {table} ({names}) FROM STDIN"
            elif key[0] == "postgresql":
                width = len(columns)
                sql = (f"INSERT INTO {table} ({names}) VALUES " + ", ".join(
                    f"({', '.join(f'${r * width + c + 1}' for c in range(width))})"
                    for r in range(n))).encode()
            else:
                one = f"({', '.join(['?'] * len(columns))})"
                sql = f"INSERT INTO {table} ({names}) VALUES " + ", ".join([one] * n)
            self._rows_sql[key] = sql
        return sql


def constant(value: str | int) -> Any:
    """``value`` written into the SQL rather than bound as a parameter, for a value whose
    frequency in its column decides the plan: a few pending deliveries among thousands
    settled. PostgreSQL plans a statement psycopg has prepared (it prepares those run often)
    once for every value of its parameters; with the state a parameter, the relay's check for
    due deliveries planned as a sequential scan of the outbox (3 ms at 20,000 settled
    deliveries, against 0.03 ms with the value in the SQL). A partial index, too, serves only
    statements whose values imply its condition. So does a LIMIT: bound, the generic plan of
    a DELETE of a batch by ids hash-joined the batch with the whole table. For the code's
    own constants only."""
    if isinstance(value, int):
        return literal_column(str(value))
    if not value.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"{value!r} is not a constant of the code")
    return literal_column(f"'{value}'")


def any_row(*where: Any) -> Any:
    """``EXISTS (SELECT 1 FROM ... WHERE where)``. SQLAlchemy's ``exists()`` selects ``*``,
    and SQLite's planner then costs a search by index as fetching each row it finds: with
    statistics counting many rows per value of the index's leading column (a state most rows
    share, as ANALYZE finds it at a start when every delivery is settled) it read the whole
    table instead, for a value few rows hold (the relay's and the worker's checks of every
    round: 16 ms at 90,000 deliveries kept, growing with the outbox and the inbox). With no
    column of the table asked for, the index is the cheaper way on any statistics."""
    return exists(literal_column("1")).where(*where)


def any_of(n: int, **columns: Any) -> Any:
    """A condition matching any of ``n`` rows of values, written out (the driver's cursor
    takes no expanding IN): ``any_of(2, t=type_col, i=id_col)`` is ``(type_col = :t0 AND
    id_col = :i0) OR (type_col = :t1 AND id_col = :i1)``. Its parameters: ``numbered``."""
    return or_(*(and_(*(col == bindparam(f"{name}{k}") for name, col in columns.items()))
                 for k in range(n)))


def numbered(rows: Sequence[Mapping[str, Any]], size: int, *, pad: bool = False
             ) -> Iterator[tuple[int, dict[str, Any]]]:
    """``rows`` in chunks of at most ``size``: (how many, their values under their names
    numbered by position, t0, i0, t1, i1 ...) for statements built for that many rows, such
    as those of ``any_of``.

    ``pad``: each chunk made up to a power of two (at most ``size``) with copies of its last
    row, so that such statements come in a few sizes: each is compiled once and, on
    PostgreSQL, prepared once, where one per count compiled and prepared dozens (measured: an
    eighth of a messaging worker's CPU in a 10 s window went to compiling them, and
    psycopg's cache of 100 prepared statements a connection kept evicting them). Only for
    statements to which a row given twice is that row once: OR'ed conditions, or rows read
    into a set or a minimum; never an INSERT."""
    for start in range(0, len(rows), size):
        chunk = list(rows[start:start + size])
        if pad:
            chunk += chunk[-1:] * (min(size, 1 << (len(chunk) - 1).bit_length()) - len(chunk))
        yield len(chunk), {f"{name}{k}": v for k, row in enumerate(chunk)
                           for name, v in row.items()}


_IDS_MAX = 64  # ids per statement of a ByIds on SQLite


class ByIds:
    """A statement over a set of ids, written ``build(condition)``: on PostgreSQL one
    statement for any number, ``column = ANY(array of ids)``; on SQLite an OR of up to 64 ids
    (``any_of``, padded to a power of two), as many statements as that takes. Each id counts
    once, so only for statements to which an id given twice is that id once.

    On PostgreSQL an OR of 64 ids was a statement of 64 parameters, which psycopg parses
    again on every run (it keeps its parse only up to 50: 6% of a messaging worker's
    interpreter time went there, under py-spy), and gave the planner 64 conditions to weigh:
    on a table it thought small it scanned every row against all of them."""

    def __init__(self, column: Any, build: Callable[[Any], Executable]) -> None:
        self._build, self._column = build, column
        self._array = DriverStatement(build(column == any_(bindparam("ids", type_=ARRAY(
            String)))))
        self._sized: dict[int, DriverStatement] = {}

    def _statements(self, conn: Connection, ids: Sequence[str], params: Mapping[str, Any]
                    ) -> Iterator[tuple[DriverStatement, dict[str, Any]]]:
        if not ids:  # (no statement: nothing to read or change)
            return
        if conn.dialect.name == "postgresql":
            yield self._array, {**params, "ids": list(dict.fromkeys(ids))}
            return
        for n, numbered_ids in numbered([{"i": i} for i in dict.fromkeys(ids)], _IDS_MAX,
                                        pad=True):
            stmt = self._sized.get(n)
            if stmt is None:
                stmt = self._sized[n] = DriverStatement(self._build(any_of(n, i=self._column)))
            yield stmt, {**params, **numbered_ids}

    def all(self, conn: Connection, ids: Sequence[str], **params: Any) -> list[tuple[Any, ...]]:
        return [row for stmt, args in self._statements(conn, ids, params)
                for row in stmt.all(conn, args)]

    def run(self, conn: Connection, ids: Sequence[str], **params: Any) -> int:
        """Rows affected."""
        return sum(stmt.run(conn, args) for stmt, args in self._statements(conn, ids, params))

    def run_later(self, conn: Connection, ids: Sequence[str], **params: Any) -> None:
        """``run`` whose outcome nothing reads: on PostgreSQL sent later (see
        ``DriverStatement.run_later``)."""
        for stmt, args in self._statements(conn, ids, params):
            stmt.run_later(conn, args)


def insert_into(table: Table, *columns: str) -> DriverStatement:
    """An INSERT of exactly ``columns`` (each a parameter of the same name)."""
    return DriverStatement(insert(table).values({c: bindparam(c) for c in columns}))


_SAVEPOINTS = itertools.count(1)


@contextmanager
def savepoint(conn: Connection) -> Iterator[None]:
    """A savepoint in the caller's transaction: what the block wrote is undone when it raises
    (and the exception goes on). SQLAlchemy's ``begin_nested`` compiled its SAVEPOINT and
    RELEASE statements anew each time: a fifth of a message's time in the write lock. Its
    statements are sent later on PostgreSQL, in order with the block's (see ``run_later``)."""
    name = f"sip_sp_{next(_SAVEPOINTS)}"
    _later(conn, f"SAVEPOINT {name}", None)
    try:
        yield
    except BaseException:
        _later(conn, f"ROLLBACK TO SAVEPOINT {name}", None)
        _later(conn, f"RELEASE SAVEPOINT {name}", None)
        raise
    _later(conn, f"RELEASE SAVEPOINT {name}", None)


_PYFORMAT = re.compile(r"%\(([^)]+)\)s|%%")


def _numbered(sql: str) -> tuple[bytes, tuple[str, ...]]:
    """SQL that SQLAlchemy wrote for psycopg (``%(name)s``) in PostgreSQL's own numbered
    placeholders (``$1``), as bytes, and the names in their order. psycopg converts the
    former on every run: it encodes the text, and looks the conversion up in a cache keyed
    by it, which it skips for a statement of more than 50 parameters (a multi-row INSERT)
    and then parses it again (under py-spy ~8% of a messaging worker's interpreter time).
    Run on a ``RawCursor``, which takes them as written."""
    names: dict[str, int] = {}

    def number(m: re.Match[str]) -> str:
        if m.group(1) is None:
            return "%"
        return f"${names.setdefault(m.group(1), len(names) + 1)}"
    numbered_sql = _PYFORMAT.sub(number, sql)
    return numbered_sql.encode(), tuple(names)


# -- statements sent later (PostgreSQL) -------------------------------------------------------

# Per connection (of one transaction: ``discard``ed when it rolls back), in order.
_LATER: weakref.WeakKeyDictionary[Connection, list[tuple[str | bytes, Any]]] = \
    weakref.WeakKeyDictionary()


def _later(conn: Connection, sql: str | bytes, args: Any) -> None:
    """Queue a statement whose outcome nothing reads (PostgreSQL); elsewhere run it now."""
    if conn.dialect.name == "postgresql":
        _LATER.setdefault(conn, []).append((sql, args))
        return
    with _cursor(conn) as cur:
        cur.execute(sql, args) if args is not None else cur.execute(sql)


def _execute(conn: Connection, cur: Any, sql: str | bytes | None = None,
             args: Any = None) -> None:
    """Send what was queued on the connection, then ``sql`` (if any) on its cursor: all in
    one pipeline (one round trip, one write: ``_one_write``); the cursor's results are
    ``sql``'s after the pipeline's sync. ``args`` None: a statement without parameters, never
    prepared (a savepoint's name is used once; BEGIN and COMMIT)."""
    later = _LATER.pop(conn, None) if _LATER else None
    if not later:
        if sql is not None:
            _run(cur, sql, args)
        return
    if sql is not None:
        later.append((sql, args))
    with cur.connection.pipeline() as pipeline:
        _one_write(pipeline, cur, later)


def _one_write(pipeline: Any, cur: Any, later: list[tuple[str | bytes, Any]]) -> None:
    """Put the statements into psycopg's pipeline as one command, which libpq writes into its
    buffer at once: they leave in one write to the socket (and the pipeline's sync after).
    psycopg sends each command of a pipeline in a write of its own, as the statement is
    executed (a system call, a TCP segment and a wake-up of the server's process each: the
    store benchmark's transaction wrote to its socket 21 times, now 10). Its commands for
    each statement (a Parse where it prepares one, the Bind and Execute, a DEALLOCATE of its
    cache) are made as usual, and their results checked as its own, in order (its result
    queue has them); only its sending of each at once is held back, by an attribute of this
    pipeline object over its method (psycopg 3.3; should a version not call it, each goes at
    once again, as before, and tests/store/test_sent_later.py says so). Should one fail to be
    written, those before it still go, matching its result queue."""
    commands = pipeline.command_queue
    first = len(commands)
    pipeline._communicate_gen = _nothing_now
    try:
        for queued in later:
            _run(cur, *queued)
    finally:
        del pipeline._communicate_gen
        held = [commands.pop() for _ in range(len(commands) - first)][::-1]
        if held:
            commands.append(lambda: _send(held))


def _nothing_now() -> Iterator[Any]:
    return
    yield


def _send(commands: list[Callable[[], None]]) -> None:
    for command in commands:
        command()


def _run(cur: Any, sql: str | bytes, args: Any) -> None:
    if args is None:
        cur.execute(sql, prepare=False)
    else:
        cur.execute(sql, args)


_BEGIN = b"BEGIN"


def begin(conn: Connection) -> None:
    """The transaction's BEGIN, queued: sent with its first statement. (psycopg sends its
    own as a round trip of its own, in a pipeline too; the engine's connections are in
    psycopg's autocommit mode, so it sends none, and commits or rolls back only what the
    server says is open.) None on a connection asked for ``isolation_level="AUTOCOMMIT"``
    (a VACUUM, say, which no transaction may hold)."""
    if conn.get_execution_options().get("isolation_level") != "AUTOCOMMIT":
        _LATER.setdefault(conn, []).append((_BEGIN, None))


_LAZY = b"SET LOCAL synchronous_commit TO off"


def lazy_commit(conn: Connection) -> None:
    """(PostgreSQL) The transaction's COMMIT does not wait for its WAL record to reach the
    disk (``synchronous_commit`` off for it alone; the flush costs about a millisecond
    here). Should the database server itself crash within the next moments (the WAL writer
    flushes within three times ``wal_writer_delay``, 0.6 s by default), the transaction is
    lost as a whole, never half applied (PostgreSQL's "Asynchronous Commit"). Only for
    bookkeeping whose loss costs a repetition, never for what a caller was told is stored.
    Queued like a write whose outcome nothing reads. Elsewhere nothing: SQLite in WAL mode
    with ``synchronous=NORMAL`` does not wait for the disk at a COMMIT anyway."""
    if conn.dialect.name == "postgresql":
        _LATER.setdefault(conn, []).append((_LAZY, None))


def autocommit_again(dbapi_conn: Any, _record: Any, _proxy: Any) -> None:
    """A pool's connection checked out in psycopg's autocommit mode again: SQLAlchemy, where
    an isolation level was asked of a connection, sets the server's default back on its
    return to the pool by leaving autocommit mode, and psycopg would then send BEGINs of its
    own beside the driver's."""
    if not dbapi_conn.autocommit:
        dbapi_conn.autocommit = True


def flush(conn: Connection, *, commit: bool = False) -> None:
    """Send what was queued on ``conn`` now; with ``commit``, the COMMIT with it (psycopg's
    own commit then finds no transaction open, and sends nothing)."""
    later = _LATER.get(conn) if _LATER else None
    if not later:
        return
    if commit and all(q[0] in (_BEGIN, _LAZY) for q in later):  # it ran nothing
        discard(conn)
        return
    with _cursor(conn, committing=commit) as cur:
        _execute(conn, cur, b"COMMIT" if commit else None)


def discard(conn: Connection) -> None:
    """Forget what was queued on ``conn``: its transaction rolled back."""
    if _LATER:
        _LATER.pop(conn, None)


def listen(engine: Any) -> None:
    """Queue a PostgreSQL engine's BEGINs; send what its connections queued before any other
    statement of SQLAlchemy's on them (so that it sees it), with the COMMIT; forget it on
    ROLLBACK. The engine's connections are in psycopg's autocommit mode (see ``begin``)."""
    event.listen(engine, "begin", begin)
    event.listen(engine, "checkout", autocommit_again)
    event.listen(engine, "before_cursor_execute",
                 lambda conn, *_args: flush(conn))
    event.listen(engine, "commit", lambda conn: flush(conn, commit=True))
    event.listen(engine, "rollback", discard)


@contextmanager
def _cursor(conn: Connection, *, committing: bool = False) -> Iterator[Any]:
    """The DB-API cursor of the caller's connection (so inside its transaction); on
    PostgreSQL one that takes numbered placeholders (see ``_numbered``). ``committing``: its
    statements end with the COMMIT (see ``unavailable``)."""
    dbapi_conn = conn.connection.dbapi_connection
    if conn.dialect.name == "postgresql":
        cur = RawCursor(dbapi_conn)
        # Results in PostgreSQL's binary format: a stored document (bytea) comes as its
        # bytes, where the text format had the server write it out in hex at twice its
        # size and psycopg decode it again (each message a delivery worker reads, each
        # resource read).
        cur.format = Format.BINARY
    else:
        cur = dbapi_conn.cursor()  # type: ignore[union-attr]
    try:
        yield cur
    except conn.dialect.loaded_dbapi.Error as exc:
        if conn.dialect.is_disconnect(exc, dbapi_conn, cur):
            conn.invalidate(exc)
        if isinstance(exc, CONCURRENT_ERRORS):  # its details name PostgreSQL's internals
            raise ConcurrentChange() from exc
        if isinstance(exc, conn.dialect.loaded_dbapi.OperationalError):
            raise unavailable(exc, committing=committing) from exc
        raise
    finally:
        cur.close()
