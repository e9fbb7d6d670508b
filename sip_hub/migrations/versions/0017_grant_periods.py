"""one access grant per period a consent covers an organisation

Revision ID: 0017
Revises: 0016

An organisation held one grant per person, from the earliest start to the latest end of the
active SIP consents naming it: with one consent expired and one not yet started, it read (and
was sent the SIP's messages) between them, when none covers it. It now holds one per period
it is covered (``seq`` numbers them; overlapping or adjacent periods are one), as
``access.refresh_grants`` derives them.

The grants of a person with several active SIP consents are derived again here from those
consents (their periods and actors, as ``refresh_grants`` reads them), so that none lets an
organisation read between its consents until the person's next write; the rest derive as
they are.
"""

from __future__ import annotations

from typing import Any

import orjson
import sqlalchemy as sa
from alembic import op

from sip_hub.fhir import profiles, sip
from sip_hub.fhir.dates import parse_range
from sip_hub.fhir.indexing import split_reference
from sip_hub.identifiers import HSA_ID

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

Period = tuple[int | None, int | None]


def upgrade() -> None:
    with op.batch_alter_table('access_grant', schema=None) as batch_op:
        batch_op.add_column(sa.Column('seq', sa.Integer(), server_default=sa.text('0'),
                                      nullable=False))
        batch_op.drop_constraint('pk_access_grant', type_='primary')
        batch_op.create_primary_key('pk_access_grant', ['patient_id', 'org_hsa_id', 'seq'])
    split_grants(op.get_bind())


def downgrade() -> None:
    # One grant per person and organisation cannot hold periods apart: refused while an
    # organisation holds several (joined, it would read between them).
    if op.get_bind().execute(sa.text(
            "SELECT 1 FROM access_grant WHERE seq > 0 LIMIT 1")).first():
        raise RuntimeError("access grants cover organisations in periods apart (several "
                           "consents); downgrading below 0017 would let them read between "
                           "their consents.")
    with op.batch_alter_table('access_grant', schema=None) as batch_op:
        batch_op.drop_constraint('pk_access_grant', type_='primary')
        batch_op.create_primary_key('pk_access_grant', ['patient_id', 'org_hsa_id'])
        batch_op.drop_column('seq')


# -- the grants of persons with several consents, derived again ---------------------------

def _current(bind: sa.Connection, rtype: str) -> list[tuple[str, dict[str, Any]]]:
    rows = bind.execute(sa.text(
        "SELECT r.res_id, h.content FROM resource r JOIN resource_history h "
        "ON h.res_type = r.res_type AND h.res_id = r.res_id AND h.version_id = r.version_id "
        "WHERE r.res_type = :t AND r.deleted = false"), {"t": rtype}).all()
    out = []
    for rid, content in rows:
        try:
            doc = orjson.loads(bytes(content))
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict):
            out.append((rid, doc))
    return out


def _bound(period: Any, which: str) -> int | None:
    if isinstance(period, dict) and isinstance(period.get(which), str):
        try:
            return parse_range(period[which])[0 if which == "start" else 1]
        except ValueError:
            return None
    return None


def _merge(periods: list[Period]) -> list[Period]:
    """As ``access.merge_periods`` (kept here as this revision derives them)."""
    out: list[Period] = []
    for since, until in sorted(periods, key=lambda p: -2 ** 63 if p[0] is None else p[0]):
        if since is not None and until is not None and until < since:
            continue
        if out and (out[-1][1] is None or since is None or since <= out[-1][1] + 1):
            last_until = out[-1][1]
            out[-1] = (out[-1][0], None if last_until is None or until is None
                       else max(last_until, until))
        else:
            out.append((since, until))
    return out


def split_grants(bind: sa.Connection) -> int:
    """Derive again the reading grants of every person with several active SIP consents;
    how many persons' grants changed."""
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for _, consent in _current(bind, "Consent"):
        ref = (consent.get("patient") or {}).get("reference")
        target = split_reference(ref) if isinstance(ref, str) else None
        if consent.get("status") != "active" or not target or target[0] != "Patient" or \
                profiles.applies(consent) != sip.PROFILE_CONSENT:
            continue
        by_patient.setdefault(target[1], []).append(consent)
    several = {p: cs for p, cs in by_patient.items() if len(cs) > 1}
    if not several:
        return 0
    orgs: dict[str, str | None] = {}
    for rid, org in _current(bind, "Organization"):
        orgs[rid] = next((i.get("value") for i in org.get("identifier") or []
                          if isinstance(i, dict) and i.get("system") == HSA_ID), None)

    def hsa(ref: Any) -> str | None:
        if not isinstance(ref, dict):
            return None
        ident = ref.get("identifier")
        if isinstance(ident, dict) and ident.get("system") == HSA_ID:
            return ident.get("value")
        target = split_reference(ref["reference"]) if isinstance(ref.get("reference"),
                                                                 str) else None
        return orgs.get(target[1]) if target and target[0] == "Organization" else None

    changed = 0
    for patient, consents in sorted(several.items()):
        periods: dict[str, list[Period]] = {}
        for consent in consents:
            provision = consent.get("provision") or {}
            if provision.get("type", "permit") != "permit":
                continue
            period = (_bound(provision.get("period"), "start"),
                      _bound(provision.get("period"), "end"))
            for actor in provision.get("actor") or []:
                if isinstance(actor, dict) and (h := hsa(actor.get("reference"))):
                    periods.setdefault(h, []).append(period)
        rows = bind.execute(sa.text(
            "SELECT org_hsa_id, role, reads, valid_from, valid_until FROM access_grant "
            "WHERE patient_id = :p"), {"p": patient}).all()
        new = []
        for org, role, _reads, _since, _until in rows:
            covering = _merge(periods.get(org, []))
            new += [{"patient_id": patient, "org_hsa_id": org, "role": role, "reads": True,
                     "valid_from": since, "valid_until": until, "seq": i}
                    for i, (since, until) in enumerate(covering)] or \
                [{"patient_id": patient, "org_hsa_id": org, "role": role, "reads": False,
                  "valid_from": None, "valid_until": None, "seq": 0}]
        if {(r["org_hsa_id"], r["role"], r["reads"], r["valid_from"], r["valid_until"])
                for r in new} == {(o, ro, bool(re), s, u) for o, ro, re, s, u in rows}:
            continue
        bind.execute(sa.text("DELETE FROM access_grant WHERE patient_id = :p"), {"p": patient})
        bind.execute(sa.text(
            "INSERT INTO access_grant (patient_id, org_hsa_id, role, reads, valid_from, "
            "valid_until, seq) VALUES (:patient_id, :org_hsa_id, :role, :reads, :valid_from, "
            ":valid_until, :seq)"), new)
        changed += 1
    return changed
