"""The planner's statistics on PostgreSQL (SQLite plans well without them).

PostgreSQL plans a statement that psycopg has prepared (on its fifth run on a connection) once,
from the statistics of that moment, and plans it again only when they change. Autovacuum takes
new ones when a tenth of a table has changed, but looks once a minute; on a new hub the inbox,
the outbox and the audit log fill from empty within that minute, and the statements prepared
meanwhile keep plans made for tables of a few rows: measured under the messaging benchmark, a
message's inbox lookup read its sender's whole cache (0.6-0.9 ms at 20,000 messages), and the
relay's read of the messages it publishes hashed the whole outbox (1.3 ms a round at 6,000).
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import Connection, Engine, literal, select, text
from sqlalchemy.exc import SQLAlchemyError

from .resources import Store
from .schema import metadata

# A table is analyzed again once it holds at least this many rows more than its statistics
# counted, and at least twice as many (it has doubled, or has never had any). Growth, not
# changes: rows updated in place (each message moves its streams' numbers on, each update a
# resource's version) leave the table as its statistics describe it, and counting them had a
# worker analyze the streams' table every 10 s under the messaging benchmark (autovacuum
# keeps the steady state's statistics).
GROWN_ROWS = 1000
log = logging.getLogger("sip_hub.statistics")


def analyze_filled(engine: Engine) -> None:
    """Statistics of every table (at start-up: a fresh PostgreSQL database has none until
    autovacuum runs, and without them searches fall back to plans that scan every resource).

    On PostgreSQL only of the tables that hold rows: statistics saying a table is empty make
    the statements prepared before the next look sequential scans, which each connection
    keeps as the table fills. A table never analyzed is assumed to have some size, and its
    statements probe their indexes."""
    with engine.begin() as conn:
        if conn.dialect.name != "postgresql":
            conn.exec_driver_sql("ANALYZE")
            return
        present = set(conn.execute(text(  # (an earlier revision's tables: no later ones)
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars())
        _analyze(conn, [t.name for t in metadata.sorted_tables if t.name in present and
                        conn.execute(select(literal(1)).select_from(t).limit(1)).first()])


_GROWN = text(
    "SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
    "WHERE s.schemaname = current_schema() "
    "AND s.n_live_tup - greatest(c.reltuples, 0) >= greatest(:least, c.reltuples) "
    "ORDER BY s.relname")


def refresh_grown(store: Store) -> list[str]:
    """ANALYZE the hub's tables that grew past their statistics (see GROWN_ROWS), so that the
    statements prepared on them are planned again for what they hold; returns their names.
    A no-op on SQLite, and in a process while another one runs it (workers share the
    database). A failure is logged, not raised: the statistics are a help, not a duty."""
    if store.embedded:
        return []
    ours = {t.name for t in metadata.sorted_tables}
    start = time.monotonic()
    try:
        with store.exclusive("planner-statistics") as mine:
            if not mine:
                return []
            with store.engine.begin() as conn:
                grown = [n for n in conn.execute(_GROWN, {"least": GROWN_ROWS}).scalars()
                         if n in ours]
                _analyze(conn, grown)
    except SQLAlchemyError as exc:
        log.warning("refreshing the planner's statistics failed: %s",
                    str(exc).splitlines()[0])
        return []
    if grown:
        log.info("planner statistics taken of %s (grown past them) in %.0f ms",
                 ", ".join(grown), (time.monotonic() - start) * 1000)
    return grown


def _analyze(conn: Connection, tables: list[str]) -> None:
    quote = conn.dialect.identifier_preparer.quote
    for name in tables:
        conn.exec_driver_sql(f"ANALYZE {quote(name)}")
