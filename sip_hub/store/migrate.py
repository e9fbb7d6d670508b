"""Schema migrations (Alembic), run by ``sip-hub migrate`` and at start-up; then the search
index is rebuilt if this release derives it differently (``index_state``)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine

from .index_state import rebuild_if_changed
from .statistics import analyze_filled

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
    analyze_filled(engine)


def revision(engine: Engine, message: str) -> None:
    """Autogenerate a new migration from schema.py (a developer command, not for production)."""
    cfg = _config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.revision(cfg, message=message, autogenerate=True)
