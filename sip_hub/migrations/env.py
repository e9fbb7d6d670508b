"""Alembic environment: runs against the connection handed in by ``sip_hub.store.migrate``.

The revisions' policy on the hub's rules. A revision's schema is its own, written out. Data a
revision derives with one of the hub's rules is derived:

- with a copy of the rule, kept in the revision, when it corrects what an earlier rule stored
  (the access grants: 0017 and 0018 derive periods and Swedish days as they were decided
  then). A later change of that rule brings its own revision, run after this one.
- with the running release's rule, imported, when it must agree with what that release
  derives again on its own (the search index and the compartments it rebuilds by
  ``EXTRACTION_VERSION``: 0015's local references, 0019's persons of a Provenance). A copy
  would disagree with the index rebuilt beside it the day the rule changes.

Helpers that only parse (dates, references, identifiers' systems) are imported.
"""

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
