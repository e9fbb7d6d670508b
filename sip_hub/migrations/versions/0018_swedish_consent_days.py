"""a consent's dates are Swedish days in the access grants

Revision ID: 0018
Revises: 0017

A consent whose provision.period starts or ends on a date (no time) covered that day as UTC
has it: the grant of one ending today let the organisations it names read the person's SIP
(and be sent its messages) until UTC midnight, an hour or two after the day was over in
Sweden; one starting today began as late. ``access.refresh_grants`` now reads such a date
as a Swedish day (``sip.swedish_range``).

The grants of every person with an active SIP consent whose period holds such a date are
derived again here from their consents (periods and actors, as ``refresh_grants`` reads them),
so that none lasts past the consent's Swedish day until the person's next write. The schema
is unchanged; a downgrade leaves the grants as they are (derived the new way, they cover
nothing the consents do not).
"""

from __future__ import annotations

from datetime import datetime, time, timedelta, timezone, tzinfo
from typing import Any, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
import sqlalchemy as sa
from alembic import op

from sip_hub.fhir import profiles, sip
from sip_hub.fhir.dates import MAX_US, MIN_US, from_us, parse_range, to_us
from sip_hub.fhir.indexing import split_reference
from sip_hub.identifiers import HSA_ID

revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None

Period = tuple[int | None, int | None]

try:
    _SWEDEN: tzinfo = ZoneInfo("Europe/Stockholm")
except ZoneInfoNotFoundError:  # a system without a time zone database: standard time
    _SWEDEN = timezone(timedelta(hours=1))


def upgrade() -> None:
    rederive_grants(op.get_bind())


def downgrade() -> None:
    pass


# -- kept here as this revision derives them (the hub's own may change later) ---------------

def _swedish_range(value: str) -> tuple[int, int]:
    """As ``sip.swedish_range``: a date from Swedish midnight to Swedish midnight."""
    low, high = parse_range(value)
    if "T" in value:
        return low, high
    low = max(MIN_US, to_us(datetime.combine(from_us(low).date(), time(0), _SWEDEN)))
    try:
        after = from_us(high).date() + timedelta(days=1)
        high = min(MAX_US, to_us(datetime.combine(after, time(0), _SWEDEN)) - 1)
    except OverflowError:
        pass
    return low, high


def _bound(period: Any, which: str) -> int | None:
    """As ``access._period_bound``."""
    if isinstance(period, dict) and isinstance(period.get(which), str):
        try:
            return _swedish_range(period[which])[0 if which == "start" else 1]
        except ValueError:
            return None
    return None


def _merge(periods: list[Period]) -> list[Period]:
    """As ``access.merge_periods``."""
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


def _current(bind: sa.Connection, rtype: str, batch: int = 500
             ) -> Iterator[tuple[str, dict[str, Any]]]:
    """The current resources of a type, read in keyset batches (a region's store holds many:
    their contents at once would be its whole size); those that cannot be decoded passed
    over."""
    after = ""
    while True:
        rows = bind.execute(sa.text(
            "SELECT r.res_id, h.content FROM resource r JOIN resource_history h "
            "ON h.res_type = r.res_type AND h.res_id = r.res_id "
            "AND h.version_id = r.version_id "
            "WHERE r.res_type = :t AND r.res_id > :after AND r.deleted = false "
            "ORDER BY r.res_id LIMIT :n"), {"t": rtype, "after": after, "n": batch}).all()
        for rid, content in rows:
            try:
                doc = orjson.loads(bytes(content))
            except orjson.JSONDecodeError:
                continue
            if isinstance(doc, dict):
                yield rid, doc
        if len(rows) < batch:
            return
        after = rows[-1][0]


def _has_date(consent: dict[str, Any]) -> bool:
    period = (consent.get("provision") or {}).get("period")
    return isinstance(period, dict) and any(
        isinstance(period.get(k), str) and "T" not in period[k] for k in ("start", "end"))


# -- the grants of persons whose consents have dates, derived again ---------------------------

def rederive_grants(bind: sa.Connection) -> int:
    """Derive again the reading grants of every person with an active SIP consent whose
    period holds a date; how many persons' grants changed."""
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for _, consent in _current(bind, "Consent"):
        ref = (consent.get("patient") or {}).get("reference")
        target = split_reference(ref) if isinstance(ref, str) else None
        if consent.get("status") != "active" or not target or target[0] != "Patient" or \
                profiles.applies(consent) != sip.PROFILE_CONSENT:
            continue
        by_patient.setdefault(target[1], []).append(consent)
    dated = {p: cs for p, cs in by_patient.items() if any(_has_date(c) for c in cs)}
    if not dated:
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
    for patient, consents in sorted(dated.items()):
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
        roles = {org: role for org, role, *_ in rows}  # (one per organisation, in each row)
        new = []
        for org, role in sorted(roles.items()):
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
