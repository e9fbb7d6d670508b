"""The search index's definitions: the index tables hold rows derived by the search
parameters and extraction rules of the release that wrote them (``fhir.indexing``). A release
that changes those rebuilds the index when it migrates the database, so that every stored
resource is found by the parameters as they now are, and an update may replace only the rows
that changed (derived from the version it replaces: see ``Tx._replace_index``)."""

from __future__ import annotations

import logging

from sqlalchemy import Engine, func, select

from ..fhir.indexing import fingerprint
from .resources import Tx
from .schema import resource, search_index_state

log = logging.getLogger("sip_hub.store")
_ROW = 1


def rebuild_if_changed(engine: Engine) -> int | None:
    """Rebuild the index if it was built with other definitions than this release's (or
    before they were recorded); how many resources it reindexed, None when it was current.
    One transaction: the index never shows a half-rebuilt state, and concurrent starts on
    PostgreSQL take turns (the second finds it current)."""
    want = fingerprint()
    table = search_index_state
    # SQLite: the write lock from BEGIN (IMMEDIATE). Taken at the first write, it failed
    # ("database is locked") whenever another process wrote meanwhile.
    with engine.connect() as conn, conn.execution_options(sip_write=True).begin():
        pg = conn.dialect.name == "postgresql"
        if pg:
            # As for a migration (``migrate.upgrade``): the rebuild deletes and writes again
            # every index row, which on a large store takes longer than the statement
            # timeout the hub gives requests, and failing it failed every start after it.
            # Its waits for locks stay bounded.
            conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
            conn.execute(select(func.pg_advisory_xact_lock(
                func.hashtextextended("job:search-index-rebuild", 0))))
            conn.exec_driver_sql("SET LOCAL lock_timeout = '30s'")
        have = conn.execute(select(table.c.fingerprint).where(table.c.id == _ROW)).scalar()
        if have == want:
            return None
        if pg:
            # No write of a resource meanwhile (reads go on, seeing the index as it was):
            # an update committed while the rebuild ran removed the rows of its old version
            # before the rebuild wrote them again from the version it had read, leaving the
            # resource found by values it no longer has. Every write takes the resource's
            # row (or locks it) before it writes index rows.
            conn.exec_driver_sql(f"LOCK TABLE {resource.name} IN EXCLUSIVE MODE")
        count = Tx(conn).rebuild_index()
        if have is None:
            conn.execute(table.insert().values(id=_ROW, fingerprint=want))
        else:
            conn.execute(table.update().where(table.c.id == _ROW).values(fingerprint=want))
    if count:
        log.warning("Search parameters changed: the search index of %d resources was rebuilt",
                    count)
    return count
