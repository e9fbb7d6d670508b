"""Alembic environment: runs against the connection handed in by ``sip_hub.store.migrate``."""

from __future__ import annotations

from alembic import context

from sip_hub.store.schema import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # pragma: no cover - only when run through the alembic CLI
    from sip_hub.settings import Settings
    from sip_hub.store.engine import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url") or Settings().database_url)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
