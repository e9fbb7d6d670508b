"""a Provenance written by an organisation the consent does not cover is withheld

Revision ID: 0019
Revises: 0018

A Provenance is in the compartment of the person whose record it targets (a SIP plan's
subject) since EXTRACTION_VERSION 6: covered organisations read a plan's approval. Before,
one that targeted a plan was in no one's compartment, so its writer alone read it and it was
never withheld, whoever wrote it. Stored so, one written by an organisation that the person's
consent does not cover would become readable by the covered organisations once the index is
rebuilt.

Here every current Provenance not yet withheld is decided as ``Access.withholds`` decides a
new one, at the time of the upgrade: withheld when it is about a person whose consent is in
force (a live reading grant) and that consent does not cover its writer. Its persons are the
Patients it targets or names as an agent, and the person of each record it targets (as
stored: the Patient its ``subject``, ``patient`` or ``for`` names). The schema is unchanged;
a downgrade leaves the flags (they withhold nothing the rules in force would show).
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

from sip_hub.fhir.indexing import split_reference

revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None

# Where a targeted record names its person (CarePlan, Goal, CareTeam, Task, Consent, ...).
_PERSON_ELEMENTS = ("subject", "patient", "for")


def upgrade() -> None:
    withhold_provenances(op.get_bind(), int(time.time() * 1_000_000))


def downgrade() -> None:
    pass


def _doc(bind: sa.Connection, rtype: str, rid: str) -> dict[str, Any] | None:
    row = bind.execute(sa.text(
        "SELECT h.content FROM resource r JOIN resource_history h ON h.res_type = r.res_type "
        "AND h.res_id = r.res_id AND h.version_id = r.version_id "
        "WHERE r.res_type = :t AND r.res_id = :i AND r.deleted = false"),
        {"t": rtype, "i": rid}).first()
    if row is None or row[0] is None:
        return None
    try:
        doc = orjson.loads(bytes(row[0]))
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _patient(ref: Any) -> str | None:
    target = split_reference(ref.get("reference")) if isinstance(ref, dict) and \
        isinstance(ref.get("reference"), str) else None
    return target[1] if target and target[0] == "Patient" else None


def _persons(bind: sa.Connection, prov: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for ref in prov.get("target") or []:
        if (pid := _patient(ref)) is not None:
            out.add(pid)
            continue
        target = split_reference(ref.get("reference")) if isinstance(ref, dict) and \
            isinstance(ref.get("reference"), str) else None
        doc = _doc(bind, *target) if target else None
        if doc is not None:
            out |= {p for k in _PERSON_ELEMENTS if (p := _patient(doc.get(k))) is not None}
    for agent in prov.get("agent") or []:
        if isinstance(agent, dict) and (pid := _patient(agent.get("who"))) is not None:
            out.add(pid)
    return out


def withhold_provenances(bind: sa.Connection, now: int) -> int:
    """Withhold the current Provenances written by an organisation the consent in force of
    a person they are about does not cover; how many."""
    rows = bind.execute(sa.text(
        "SELECT r.res_id, r.owner_org, h.content FROM resource r JOIN resource_history h "
        "ON h.res_type = r.res_type AND h.res_id = r.res_id AND h.version_id = r.version_id "
        "WHERE r.res_type = 'Provenance' AND r.deleted = false AND r.withheld = false "
        "AND r.owner_org IS NOT NULL")).all()
    withheld = []
    for rid, owner, content in rows:
        try:
            prov = orjson.loads(bytes(content)) if content is not None else None
        except orjson.JSONDecodeError:
            continue
        if not isinstance(prov, dict):
            continue
        for patient in sorted(_persons(bind, prov)):
            live = [org for org, reads, since, until in bind.execute(sa.text(
                "SELECT org_hsa_id, reads, valid_from, valid_until FROM access_grant "
                "WHERE patient_id = :p"), {"p": patient})
                if reads and (since is None or since <= now) and (until is None or until > now)]
            if live and owner not in live:
                withheld.append(rid)
                break
    if withheld:
        bind.execute(sa.text("UPDATE resource SET withheld = true "
                             "WHERE res_type = 'Provenance' AND res_id = :i"),
                     [{"i": rid} for rid in withheld])
    return len(withheld)
