"""How the database runs a hot statement (``store.driver.DriverStatement``): for tests that a
statement reads by index what it looks for, rather than the table around it.

On PostgreSQL the plan that matters is the generic one: psycopg prepares a statement it runs
often, and PostgreSQL then plans it once for every value of its parameters. That plan is
measured by the rows it handles (returned or thrown away). On SQLite, by the plan's steps.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine

from sip_hub.store.driver import DriverStatement


def rows_handled(node: Mapping[str, Any]) -> float:
    """Rows a PostgreSQL plan node and its children touched (returned or thrown away)."""
    own = (node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
           + node.get("Rows Removed by Join Filter", 0)
           + node.get("Rows Removed by Index Recheck", 0)) * node.get("Actual Loops", 1)
    return own + sum(rows_handled(child) for child in node.get("Plans", []))


_PROBES = itertools.count()


def generic_plan(engine: Engine, stmt: DriverStatement, params: Mapping[str, Any]
                 ) -> dict[str, Any]:
    """The plan PostgreSQL runs ``stmt`` with once it is prepared, as run: the statement
    PREPAREd and its generic plan EXPLAIN ANALYZEd in a transaction that is rolled back (what
    an UPDATE or a claim did is undone). An EXPLAIN of the statement itself would plan it for
    the values given, whatever ``plan_cache_mode`` says."""
    from psycopg import sql as pgsql
    with engine.connect() as conn:
        # PostgreSQL's numbered placeholders and the values in their order (driver._numbered)
        sql, args = stmt._args(conn, params)
        numbered = sql.decode()
        dbapi = conn.connection.dbapi_connection
        cur = dbapi.cursor()
        # The store's connections are in psycopg's autocommit mode: the store sends its BEGINs
        # itself (driver.begin), so on the raw connection this one is ours to send.
        cur.execute("BEGIN")
        cur.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        name = f"sip_hub_probe_{next(_PROBES)}"
        cur.execute(f"PREPARE {name} AS {numbered}")
        try:
            values = pgsql.SQL(", ").join(pgsql.Literal(a) for a in args)
            cur.execute(pgsql.SQL("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE {}{}").format(
                pgsql.Identifier(name),
                pgsql.SQL("({})").format(values) if args else pgsql.SQL("")))
            plan: dict[str, Any] = cur.fetchone()[0][0]["Plan"]
        finally:
            dbapi.rollback()  # what it did, and the setting
            cur.execute("SELECT 1 FROM pg_prepared_statements WHERE name = %s", (name,))
            if cur.fetchone():
                cur.execute(f"DEALLOCATE {name}")
            dbapi.rollback()
    return plan


def sqlite_plan(engine: Engine, stmt: DriverStatement, params: Mapping[str, Any]) -> str:
    """SQLite's plan of ``stmt``: its steps (``SCAN t``: reads all of t; ``SEARCH t``: by
    index) on one line."""
    with engine.connect() as conn:
        sql, args = stmt._args(conn, params)
        return " / ".join(str(r[-1]) for r in conn.exec_driver_sql(
            "EXPLAIN QUERY PLAN " + sql, args).fetchall())
