"""Waiting, in a test, until requests wait for a PostgreSQL lock the test holds: the way the
concurrency tests make a race certain instead of likely."""

from __future__ import annotations

import time

from sqlalchemy import text


def wait_until_blocked(tx, n: int) -> None:
    """Until ``n`` other backends wait, directly or in a queue, for a lock ``tx`` holds."""
    me = tx.conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        # (A transaction sees the activity as it was when it first looked, unless cleared.)
        tx.conn.execute(text("SELECT pg_stat_clear_snapshot()"))
        waiting = dict(tx.conn.execute(text(
            "SELECT pid, pg_blocking_pids(pid) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock'")).all())
        blocked, grew = {me}, True
        while grew:
            more = {p for p, by in waiting.items() if set(by) & blocked} - blocked
            blocked |= more
            grew = bool(more)
        if len(blocked) - 1 >= n:
            return
        time.sleep(0.02)
    raise AssertionError(f"{n} requests did not come to wait for the test's lock")


def counted(conn, table: str, column: str, at_least: int) -> int:
    """Until PostgreSQL's statistics count at least ``at_least`` in ``column`` of
    pg_stat_user_tables for ``table`` (a backend reports what it did when it goes idle, so
    ``conn``, the connection that did it, asks to report first); the count then (at most 5 s
    later)."""
    conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")
    conn.commit()
    deadline = time.monotonic() + 5
    while True:
        n = int(conn.execute(text(f"SELECT {column} FROM pg_stat_user_tables WHERE relid = "
                                  "CAST(:t AS regclass)"), {"t": table}).scalar_one())
        conn.rollback()
        if n >= at_least or time.monotonic() > deadline:
            return n
        time.sleep(0.05)


def upgrade_while_locked(engine, lock: str, revision: str = "head") -> None:
    """``migrate.upgrade`` to ``revision`` on an engine whose sessions cut statements after
    300 ms, as the hub's requests do theirs (after 30 s), while another session holds ``lock``
    (a ``LOCK TABLE`` statement) for 1.5 s: a statement of the upgrade that waits for it, as
    one on a large store takes long, completes only if the upgrade lifts that timeout."""
    import threading

    from sip_hub.store.engine import make_engine
    from sip_hub.store.migrate import upgrade

    options = engine.url.query["options"]
    short = make_engine(engine.url.update_query_dict(
        {"options": f"{options} -c statement_timeout=300"}))
    other = engine.connect()
    other.begin()
    other.execute(text(lock))
    timer = threading.Timer(1.5, other.rollback)
    timer.start()
    try:
        upgrade(short, revision)
    finally:
        timer.join()
        other.close()
        short.dispose()
