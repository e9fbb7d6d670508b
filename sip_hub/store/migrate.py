"""Schema migrations (Alembic), run by ``sip-hub migrate`` and at start-up; then the search
index is rebuilt if this release derives it differently (``index_state``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, func, select

from .index_state import rebuild_if_changed
from .statistics import analyze_filled

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


class MigrationError(RuntimeError):
    """The database cannot be migrated by this release (one line for the operator)."""


def _config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def _check_known(conn: Connection, script: ScriptDirectory) -> None:
    """A database migrated by a newer release is at a revision this one does not know:
    refused with what to do (Alembic's own error was a traceback)."""
    current = MigrationContext.configure(conn).get_current_heads()
    known = {rev.revision for rev in script.walk_revisions()}
    unknown = [rev for rev in current if rev not in known]
    if unknown:
        raise MigrationError(
            f"the database is at schema revision {', '.join(unknown)}, which this release "
            f"does not know (its newest is {script.get_current_head()}): it was migrated by "
            "a newer release of sip_hub; run that release (or restore the backup taken "
            "before the upgrade)")


def require_current(engine: Engine) -> None:
    """For a process that does not migrate (``SIP_HUB_AUTO_MIGRATE=false``: the deployment
    runs ``sip-hub migrate`` first): the database must be at this release's schema, or the
    process would run on tables its code does not match."""
    script = ScriptDirectory.from_config(_config(engine))
    with engine.connect() as conn:
        _check_known(conn, script)
        current = MigrationContext.configure(conn).get_current_heads()
    head = script.get_current_head()
    if tuple(current) != (head,):
        raise MigrationError(
            f"the database is at schema revision {', '.join(current) or 'none (empty)'}, this "
            f"release needs {head}: run `sip-hub migrate` first (SIP_HUB_AUTO_MIGRATE is "
            "false)")


def upgrade(engine: Engine, revision: str = "head") -> None:
    """One transaction. Processes migrating at once (API processes and workers starting
    together) take turns: on SQLite by the write lock taken at BEGIN, on PostgreSQL by an
    advisory lock; the later ones find the database migrated."""
    cfg = _config(engine)
    script = ScriptDirectory.from_config(cfg)
    with engine.connect() as conn:
        conn.execution_options(sip_write=True)  # (SQLite: BEGIN IMMEDIATE)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                # A migration rewrites or indexes whole tables: the hub's statement timeout
                # (for requests) would stop it half-way on a large database. Waits for
                # locks stay bounded: a migration does not queue behind a stuck transaction
                # for ever, holding up every request behind it.
                conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
                conn.execute(select(func.pg_advisory_xact_lock(
                    func.hashtextextended("job:migrate", 0))))
                conn.exec_driver_sql("SET LOCAL lock_timeout = '30s'")
            _check_known(conn, script)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    if revision == "head":  # (its table exists from revision 0009)
        rebuild_if_changed(engine)
    # (SQLite: ANALYZE writes its statistics; the write lock from BEGIN, as above.)
    analyze_filled(engine.execution_options(sip_write=True))


def revision(engine: Engine, message: str) -> None:
    """Autogenerate a new migration from schema.py (a developer command, not for production)."""
    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=message, autogenerate=True)
