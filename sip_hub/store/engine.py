"""Engine creation: the embedded SQLite default and PostgreSQL, one code path."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url

from . import driver
from .checkpoint import BACKSTOP_PAGES


CONNECT_TIMEOUT_SECONDS = 10
SQLITE_BUSY_SECONDS = 30  # how long a connection waits for another's lock on the file
T = TypeVar("T")
_COMPANIONS_LOCK = threading.Lock()


def make_engine(url: str | URL, *, pool_size: int = 10, autocommit: bool = False) -> Engine:
    """``autocommit``: (PostgreSQL) every connection of the pool in autocommit mode for good,
    for reads that need no BEGIN and COMMIT (see ``Store``).

    A statement's values never appear in its errors (``hide_parameters``): they are resources'
    content, personal data, and an error's text reaches log lines and a dead letter's reason."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:" and "uri" not in u.query:
            _sqlite_file(Path(u.database))
        engine = create_engine(u, connect_args={"check_same_thread": False,
                                             "timeout": SQLITE_BUSY_SECONDS},
                               hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        # Take the write lock at BEGIN so concurrent writers queue instead of failing on
        # lock upgrade ("database is locked") halfway through a transaction.
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    # A runaway query must not hold a connection (and its locks) for ever. No ping before each
    # use (a round trip per transaction): a connection the server dropped fails its request
    # with a retryable 503 and SQLAlchemy then replaces the whole pool.
    # A write engine's BEGIN is the driver's, sent with the transaction's first statement
    # (``driver.begin``): its connections are in psycopg's autocommit mode, so that psycopg
    # sends none of its own (a round trip). Code that takes the raw DB-API connection must
    # send its own BEGIN. (The read engine's connections are in autocommit for good.)
    connect_args: dict[str, Any] = {} if autocommit else {"autocommit": True}
    # The URL's own options (a search_path, say) keep the timeout: they replaced it before.
    options = u.query.get("options", "")
    options = " ".join(options) if isinstance(options, tuple) else options
    if "statement_timeout" not in options:
        connect_args["options"] = f"{options} -c statement_timeout=30000".strip()
    # A database host that drops packets must not hold a start, a health check or a request
    # for the operating system's TCP timeout (minutes): the connection attempt fails first.
    if "connect_timeout" not in u.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    engine = create_engine(u, pool_size=pool_size, max_overflow=pool_size, pool_recycle=3600,
                           hide_parameters=True, connect_args=connect_args,
                           **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}))
    if not autocommit:
        driver.listen(engine)
    return engine


def shown_database_url(url: URL) -> str:
    """A database URL as it may be shown (the console, ``sip-hub migrate``): its password
    masked, in the userinfo and in the query too, where libpq takes one as well
    (``?password=...``, ``sslpassword``; the client key's file with them)."""
    hidden = {k: "***" for k in url.query if "pass" in k.lower() or k.lower() == "sslkey"}
    shown = url.update_query_dict(hidden).render_as_string(hide_password=True)
    return shown.replace("=%2A%2A%2A", "=***")  # (as the userinfo's, not percent-encoded)


def companion(engine: Engine, made: weakref.WeakKeyDictionary[Engine, T],
              make: Callable[[], T], close: Callable[[T], Any]) -> T:
    """What goes with ``engine`` (a pool beside it, a thread with a connection of its own):
    one per engine, however many stores use it, kept in ``made``; closed when the engine is
    disposed (shutdown, or a child after a fork) and when it is collected."""
    with _COMPANIONS_LOCK:
        found = made.get(engine)
        if found is None:
            found = made[engine] = make()
            event.listen(engine, "engine_disposed", lambda _engine: close(found))
            weakref.finalize(engine, close, found)
    return found


def _sqlite_file(path: Path) -> None:
    """The database file and its directory made readable by their owner only: the file holds
    personal data (SQLite creates its -wal and -shm files with the file's permissions). A
    directory or file that is there already keeps its own. A directory that cannot be made is
    an ``OSError`` naming it (its cause in words, not a traceback's)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.exists():
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            except FileExistsError:
                pass  # (made by another process meanwhile)
    except FileExistsError as exc:  # (by mkdir: something else of that name)
        raise OSError(f"cannot create the database {path}: {exc.filename} is not a "
                      "directory") from None
    except OSError as exc:
        raise OSError(f"cannot create the database {path}: "
                      f"{exc.strerror or exc} ({exc.filename})") from None


def _sqlite_begin(conn) -> None:  # noqa: ANN001 (SQLAlchemy Connection)
    options = conn.get_execution_options()
    if options.get("sip_no_begin"):
        return  # each statement its own implicit transaction; COMMIT is then a no-op
    conn.connection.dbapi_connection.execute(
        "BEGIN IMMEDIATE" if options.get("sip_write", False) else "BEGIN")


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001 (DB-API connection)
    # Let SQLAlchemy's "begin" event issue BEGIN itself.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    _wal(cur)
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_SECONDS * 1000}")
    cur.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")  # see .checkpoint
    # Temporary files in memory, the statement journal among them: group commit runs each
    # write in a savepoint, for which SQLite keeps the original of every page it changes, and
    # past 64 KiB of those wrote each to a temporary file (two syscalls a page: half of a
    # messaging API process's writes, by strace, all made holding the write lock).
    cur.execute("PRAGMA temp_store=MEMORY")
    cur.close()


def _wal(cur: sqlite3.Cursor) -> None:
    """The file in WAL mode (kept by the file: a no-op once it is). A connection switching a
    new database while another one writes to it (in the rollback journal's mode still) gets
    "database is locked" at once: SQLite skips the busy handler where waiting could deadlock.
    Processes started together on an empty database (API processes, workers and ``migrate``)
    failed so. Tried again within the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)
