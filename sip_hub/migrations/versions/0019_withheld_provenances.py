"""a Provenance written by an organisation the consent does not cover is withheld

Revision ID: 0019
Revises: 0018

A Provenance is in the compartment of the person whose record it targets (a SIP plan's
subject, a meeting's participant) since EXTRACTION_VERSION 6: covered organisations read a
plan's approval. Before, one that targeted a plan was in no one's compartment, so its writer
alone read it and it was never withheld, whoever wrote it. Stored so, one written by an
organisation that the person's consent does not cover would become readable by the covered
organisations once the index is rebuilt.

Here every current Provenance not yet withheld is decided as ``Access.withholds`` decides a
new one, at the time of the upgrade: withheld when it is about a person whose consent is in
force (a live reading grant) and that consent does not cover its writer. Every version of its
present life (after its last deletion) is decided, not the current one alone: a version is
read on its own content with the record's one withheld flag (``Access.can_read_version``), so
one corrected away from a person would still show her its first version. Its persons are
those ``compartment.patients_of`` resolves (the Patients it targets or names as an agent, and
the person of each record it targets as stored now), as the rebuilt index and the access
rules resolve them: the rules of the release that runs the upgrade, not a copy of this one's,
since what must be withheld is what that release's index and rules would show. The schema is
unchanged; a downgrade leaves the flags (they withhold nothing the rules in force would show).
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import orjson
import sqlalchemy as sa
from alembic import op

from sip_hub.fhir.compartment import patients_of

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

# Provenances decided at a time: a region's store holds many, each with its versions.
_BATCH = 500


def upgrade() -> None:
    withhold_provenances(op.get_bind(), int(time.time() * 1_000_000))


def downgrade() -> None:
    pass


def _loads(content: Any) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(bytes(content)) if content is not None else None
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _batches(bind: sa.Connection) -> Iterator[list[tuple[str, str]]]:
    """The current Provenances not withheld, with a writer: (id, owner), in keyset batches."""
    after = ""
    while True:
        rows = [(rid, owner) for rid, owner in bind.execute(sa.text(
            "SELECT res_id, owner_org FROM resource WHERE res_type = 'Provenance' "
            "AND res_id > :after AND deleted = false AND withheld = false "
            "AND owner_org IS NOT NULL ORDER BY res_id LIMIT :n"),
            {"after": after, "n": _BATCH})]
        if rows:
            yield rows
        if len(rows) < _BATCH:
            return
        after = rows[-1][0]


def _present_lives(bind: sa.Connection, ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The versions of each Provenance's present life (after its last tombstone), oldest
    first; those that cannot be decoded passed over."""
    out: dict[str, list[dict[str, Any]]] = {rid: [] for rid in ids}
    for rid, content in bind.execute(sa.text(
            "SELECT res_id, content FROM resource_history WHERE res_type = 'Provenance' "
            "AND res_id IN :ids ORDER BY res_id, version_id").bindparams(
                sa.bindparam("ids", expanding=True)), {"ids": ids}):
        if content is None:  # a tombstone: what came before was another record's
            out[rid] = []
        elif (doc := _loads(content)) is not None:
            out[rid].append(doc)
    return out


def withhold_provenances(bind: sa.Connection, now: int) -> int:
    """Withhold the current Provenances written by an organisation that the consent in
    force of a person any version of them is about does not cover; how many."""
    withheld = []
    for batch in _batches(bind):
        docs: dict[tuple[str, str], dict[str, Any] | None] = {}
        live: dict[str, set[str]] = {}

        def resolve(rtype: str, rid: str) -> dict[str, Any] | None:
            if (rtype, rid) not in docs:
                row = bind.execute(sa.text(
                    "SELECT h.content FROM resource r JOIN resource_history h "
                    "ON h.res_type = r.res_type AND h.res_id = r.res_id "
                    "AND h.version_id = r.version_id "
                    "WHERE r.res_type = :t AND r.res_id = :i AND r.deleted = false"),
                    {"t": rtype, "i": rid}).first()
                docs[(rtype, rid)] = _loads(row[0]) if row is not None else None
            return docs[(rtype, rid)]

        def readers(patient: str) -> set[str]:
            """The organisations with a live reading grant for the patient (none: no
            consent in force)."""
            if patient not in live:
                live[patient] = {org for org, reads, since, until in bind.execute(sa.text(
                    "SELECT org_hsa_id, reads, valid_from, valid_until FROM access_grant "
                    "WHERE patient_id = :p"), {"p": patient})
                    if reads and (since is None or since <= now)
                    and (until is None or until > now)}
            return live[patient]

        versions = _present_lives(bind, [rid for rid, _ in batch])
        for rid, owner in batch:
            persons = set().union(*(patients_of("Provenance", doc, resolve=resolve)
                                    for doc in versions[rid]))
            if any((orgs := readers(p)) and owner not in orgs for p in sorted(persons)):
                withheld.append(rid)
    if withheld:
        bind.execute(sa.text("UPDATE resource SET withheld = true "
                             "WHERE res_type = 'Provenance' AND res_id = :i"),
                     [{"i": rid} for rid in withheld])
    return len(withheld)
