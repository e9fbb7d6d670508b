"""references to the hub's own base made relative; the search index rebuilt

Revision ID: 0015
Revises: 0014

Before 2026-12-06 the hub stored a reference to its own base as it was sent, absolute
("http://127.0.0.1:8080/fhir/Patient/x"); since then it stores it relative (``prepare``:
``indexing.localise_references``), and the index, the access rules and the process rules read
an absolute reference as another server's. So such a resource was found by no
``?patient=Patient/x``, and a rebuild alone derives the same rows again from its content.

The current version of each such resource is made to hold its references as a write holds
them now (what a rebuild derives and what an update compares with: ``Tx._replace_index``
derives the rows it replaces from that version). The base is the one the hub runs with,
read from its settings (``SIP_HUB_BASE_URL``, else the listen address: ``public_base``), as
``env.py`` reads the database URL; a migration run under other settings localises nothing
of the base it does not know. Earlier versions stay as they were written.

The state row goes, as 0009 left none: the next start (``index_state.rebuild_if_changed``,
run after every upgrade to head) rebuilds the whole index, which writes the rows of values
that had none (``indexing.OTHER``) and the versions of canonical urls.
"""

from __future__ import annotations

import logging

import orjson
import sqlalchemy as sa
from alembic import op

from sip_hub.fhir.indexing import localise_references
from sip_hub.settings import Settings

revision = '0015'
down_revision = '0014'
branch_labels = None
depends_on = None

log = logging.getLogger("sip_hub.store")
_BATCH = 1000


def _base() -> str:
    """This hub's FHIR base as the running hub has it ('' when its settings cannot be read:
    then nothing is localised, as before)."""
    try:
        return Settings().public_base + "/fhir"
    except ValueError as exc:  # (pydantic's ValidationError is one)
        log.warning("0015: the hub's settings are invalid (%s); references to its base "
                    "stay absolute", exc)
        return ""


def _current(bind: sa.Connection, after: tuple[str, str]) -> list[sa.Row]:
    return bind.execute(sa.text(
        "SELECT r.res_type, r.res_id, r.version_id, h.content FROM resource r "
        "JOIN resource_history h ON h.res_type = r.res_type AND h.res_id = r.res_id "
        "AND h.version_id = r.version_id WHERE r.deleted = false "
        "AND (r.res_type > :t OR (r.res_type = :t AND r.res_id > :i)) "
        "ORDER BY r.res_type, r.res_id LIMIT :n"),
        {"t": after[0], "i": after[1], "n": _BATCH}).all()


def localise_stored(bind: sa.Connection, base: str) -> int:
    """Make the references to ``base`` in every current version relative; how many
    versions changed."""
    needle = orjson.dumps(base.rstrip("/") + "/").strip(b'"')
    changed, after = 0, ("", "")
    while rows := _current(bind, after):
        for rtype, rid, version, content in rows:
            raw = bytes(content)
            if needle not in raw:
                continue
            doc = orjson.loads(raw)
            localise_references(doc, base)
            new = orjson.dumps(doc)
            if new != raw:
                bind.execute(sa.text(
                    "UPDATE resource_history SET content = :c WHERE res_type = :t "
                    "AND res_id = :i AND version_id = :v"),
                    {"c": new, "t": rtype, "i": rid, "v": version})
                changed += 1
        after = (rows[-1][0], rows[-1][1])
    return changed


def upgrade() -> None:
    bind = op.get_bind()
    base = _base()
    if base:
        changed = localise_stored(bind, base)
        if changed:
            log.warning("0015: %d resources referred to this hub's base (%s) absolutely; "
                        "their references are now relative", changed, base)
    op.execute("DELETE FROM search_index_state")


def downgrade() -> None:
    # The references made relative name the same resources: nothing to undo. The index is
    # rebuilt by the release downgraded to (its fingerprint differs).
    pass
