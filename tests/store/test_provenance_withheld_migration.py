"""Migration 0019: a Provenance an organisation the person's consent does not cover wrote on
the person's plan, stored before a Provenance was in the compartment of the person whose
record it targets (EXTRACTION_VERSION 6), is withheld on upgrade, as such a Provenance
written now is: covered organisations, who now read a plan's Provenances, do not read it.
One by a covered organisation, or about a person with no consent in force, stays shared."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, MetaData, text

from sip_hub.access import Access
from sip_hub.auth import Principal, parse_scopes
from sip_hub.store import Store
from sip_hub.store.migrate import upgrade

SOC, BUP, OUTSIDER = "SE2120000142-SOC1", "SE2321000016-15CQ", "SE2321000016-9XYZ"
T0 = 1_760_000_000_000_000


def _prov(pid: str, target: str) -> dict[str, Any]:
    return {"resourceType": "Provenance", "id": pid, "target": [{"reference": target}],
            "recorded": "2026-11-01T10:00:00+01:00",
            "agent": [{"who": {"display": "someone"}}]}


# (resource, owner)
RESOURCES = [
    ({"resourceType": "Patient", "id": "alva"}, SOC),
    ({"resourceType": "Patient", "id": "bo"}, BUP),
    ({"resourceType": "CarePlan", "id": "alva-sip", "status": "draft", "intent": "plan",
      "subject": {"reference": "Patient/alva"}}, SOC),
    ({"resourceType": "CarePlan", "id": "bo-plan", "status": "draft", "intent": "plan",
      "subject": {"reference": "Patient/bo"}}, BUP),
    (_prov("by-outsider", "CarePlan/alva-sip"), OUTSIDER),
    (_prov("by-coordinator", "CarePlan/alva-sip"), SOC),
    (_prov("of-the-patient", "Patient/alva"), OUTSIDER),
    (_prov("no-consent", "CarePlan/bo-plan"), OUTSIDER),
    (_prov("of-nothing-known", "CarePlan/gone"), OUTSIDER),
]
NOW_LIVE = (T0 - 1, None)
GRANTS = [("alva", SOC, "coordinator", True, *NOW_LIVE),
          ("alva", BUP, "participant", True, *NOW_LIVE),
          ("alva", OUTSIDER, "participant", False, None, None)]


def _seed(engine: Engine) -> None:
    tables = MetaData()
    tables.reflect(engine)
    with engine.begin() as conn:
        for i, (res, owner) in enumerate(RESOURCES):
            key = {"res_type": res["resourceType"], "res_id": res["id"]}
            conn.execute(tables.tables["resource_history"].insert(), {
                **key, "version_id": 1, "last_updated": T0 + i, "method": "PUT",
                "content": orjson.dumps(res)})
            conn.execute(tables.tables["resource"].insert(), {
                **key, "version_id": 1, "last_updated": T0 + i, "deleted": False,
                "owner_org": owner, "withheld": False})
        conn.execute(tables.tables["access_grant"].insert(), [
            dict(zip(("patient_id", "org_hsa_id", "role", "reads", "valid_from",
                      "valid_until"), row)) for row in GRANTS])


def test_the_upgrade_withholds_an_uncovered_organisations_provenances(fresh: Engine) -> None:
    upgrade(fresh, "0018")
    _seed(fresh)
    upgrade(fresh, "0019")
    with fresh.connect() as conn:
        flags = {rid: bool(w) for rid, w in conn.execute(text(
            "SELECT res_id, withheld FROM resource WHERE res_type = 'Provenance'"))}
    assert flags == {"by-outsider": True, "of-the-patient": True, "by-coordinator": False,
                     "no-consent": False, "of-nothing-known": False}
    # And the hub, at head (its index rebuilt), holds them so: BUP, whom Alva's consent
    # covers, reads her coordinator's Provenance and not the outsider's; the outsider still
    # reads its own.
    upgrade(fresh)
    store = Store(fresh)
    with store.begin(write=False) as tx:
        stored = {rid: tx.current("Provenance", rid) for rid in flags}
        readable = {org: {rid for rid, cur in stored.items()
                          if Access(_principal(org), T0 + 10**9).can_read(tx, cur)}
                    for org in (BUP, OUTSIDER)}
    assert {"by-coordinator"} <= readable[BUP]
    assert not {"by-outsider", "of-the-patient"} & readable[BUP]
    assert {"by-outsider", "of-the-patient"} <= readable[OUTSIDER]


def _principal(org: str) -> Principal:
    scopes = "system/*.cruds"
    return Principal(f"client-{org}", org, "organization", parse_scopes(scopes), False, scopes)
