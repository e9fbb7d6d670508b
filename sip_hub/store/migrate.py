"""Schema migrations (Alembic), run by ``sip-hub migrate`` and at start-up; then the search
index is rebuilt if this release derives it differently (``index_state``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from .index_state import rebuild_if_changed

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    if revision == "head":  # (its table exists from revision 0009)
        rebuild_if_changed(engine)
    analyze(engine)


def analyze(engine: Engine) -> None:
    """Refresh the planner's statistics (a fresh PostgreSQL database has none until autovacuum
    runs, and without them searches fall back to plans that scan every resource)."""
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def revision(engine: Engine, message: str) -> None:
    """Autogenerate a new migration from schema.py (a developer command, not for production)."""
    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=message, autogenerate=True)
