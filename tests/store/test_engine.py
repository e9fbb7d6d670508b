"""The engines' connection settings: what every connection of the hub runs with."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from conftest import PG_URL, need_service
from sip_hub.store.engine import CONNECT_TIMEOUT_SECONDS, make_engine


def _settings(url: str) -> tuple[str, str, str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            timeout = conn.exec_driver_sql("SHOW statement_timeout").scalar()
            path = conn.exec_driver_sql("SHOW search_path").scalar()
            dsn = conn.connection.dbapi_connection.info.dsn
    finally:
        engine.dispose()
    return str(timeout), str(path), dsn


@pytest.mark.postgres
def test_a_url_with_options_keeps_the_statement_timeout_and_a_connect_timeout() -> None:
    """A URL with options of its own (a search_path: how a schema is chosen) kept them and
    lost the hub's statement timeout: a runaway query could hold its locks for ever."""
    need_service("PostgreSQL", PG_URL)
    sep = "&" if "?" in PG_URL else "?"
    timeout, path, dsn = _settings(f"{PG_URL}{sep}options=-csearch_path%3Dpublic")
    assert (timeout, path) == ("30s", "public")
    assert f"connect_timeout={CONNECT_TIMEOUT_SECONDS}" in dsn.split()


@pytest.mark.postgres
def test_a_url_that_sets_them_itself_is_followed() -> None:
    need_service("PostgreSQL", PG_URL)
    sep = "&" if "?" in PG_URL else "?"
    timeout, _, dsn = _settings(
        f"{PG_URL}{sep}connect_timeout=3&options=-cstatement_timeout%3D5000")
    assert timeout == "5s"
    assert "connect_timeout=3" in dsn.split()


def test_a_new_sqlite_database_held_by_another_process_is_waited_for(tmp_path: Path) -> None:
    """A connection switching a new file to WAL while another one writes to it gets "database
    is locked" at once (SQLite skips its busy handler where waiting could deadlock): processes
    started together on an empty database (``migrate``, API processes, workers) failed so
    (CI, the three migrating processes' test, about 1 run in 30). It now waits its turn."""
    path = tmp_path / "hub.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x INTEGER)")  # (rollback-journal mode still)
    holder.execute("BEGIN IMMEDIATE")  # the file's reserved lock, held (another writer)
    holder.execute("INSERT INTO t VALUES (0)")
    released = threading.Timer(0.3, lambda: holder.execute("COMMIT"))
    start = time.monotonic()
    released.start()
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        assert time.monotonic() - start >= 0.3  # (done after the holder's commit)
    finally:
        released.join()
        engine.dispose()
        holder.close()
    again = sqlite3.connect(path)
    assert again.execute("SELECT x FROM t ORDER BY x").fetchall() == [(0,), (1,)]
    assert again.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    again.close()
