"""A Provenance is in the compartment of the person whose record it targets (a SIP plan's
subject, a meeting's participant), whatever order it was written in and wherever its target
moves: a person relies on their parties finding by search exactly the Provenances they may
read by id (no more: rule 1, nothing reaches an organisation their consent does not cover),
on an outsider's Provenance of their records being kept from the parties as the outsider's
other writes are, and on their access log naming them for every access to, or refusal of,
such a Provenance. The store of an earlier release is upgraded to the same (migration 0019).

Two persons with SIPs: Alva (demo case, coordinated by the social services, SOC; BUP and the
school take part and are covered) and Gösta (discharge case, coordinated by the vårdcentral,
VC, covered for Gösta only). The outsider is covered for no one.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, MetaData, text

import sip_factory as f
import sip_process as sp
from fhirhttp import JSON_HEADERS, entities, request_events, with_request_id
from indexrows import index_is_exact
from sip_hub.access import Access
from sip_hub.auth import Principal, parse_scopes
from sip_hub.store import Store
from sip_hub.store.migrate import upgrade

SOC, BUP, SCHOOL = "SE2120000142-SOC1", "SE2321000016-15CQ", "SE2120000142-SKO7"
VC = f.VARDCENTRAL_HSA
OUTSIDER = "SE2321000016-OUT1"
HSA = "urn:oid:1.2.752.29.4.19"
ALVA = "Patient/alva"


@pytest.fixture
def world(client, as_org):
    """Alva's established SIP (SOC) and Gösta's (VC); headers per organisation."""
    return sp.two_sips(client, as_org)


def _ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if "resource" in e}


def _note(pid: str | None, target: str) -> dict[str, Any]:
    """A Provenance of a record that names no Patient itself (its agent as text): whose it
    is, only its target tells."""
    prov = {"resourceType": "Provenance", "target": [{"reference": target}],
            "recorded": "2026-11-27T14:00:00+01:00",
            "agent": [{"who": {"display": "Kim Karlsson, socialsekreterare"}}]}
    return prov | ({"id": pid} if pid else {})


def _put(client, headers, res, status=(200, 201)):
    r = client.put(f"/fhir/{res['resourceType']}/{res['id']}", content=orjson.dumps(res),
                   headers=JSON_HEADERS | headers)
    assert r.status_code in status, r.text
    return r


def _transaction(client, headers, entries, request_id="tx"):
    r = client.post("/fhir", content=orjson.dumps({"resourceType": "Bundle",
                                                   "type": "transaction", "entry": entries}),
                    headers=JSON_HEADERS | with_request_id(headers, request_id))
    assert r.status_code == 200, r.text
    return r.json()


def _events_naming(client, request_id: str, what: str) -> list[dict[str, Any]]:
    return [e for e in request_events(client, request_id) if what in entities(e)]


def _found_as_read(client, world, pid: str, queries: dict[str, tuple[str, ...]]) -> None:
    """Each organisation finds the Provenance by each of its queries exactly when it may
    read it by id."""
    for org, org_queries in queries.items():
        reads = client.get(f"/fhir/Provenance/{pid}", headers=world[org]).status_code == 200
        for query in org_queries:
            r = client.get(f"/fhir/Provenance?{query}", headers=world[org])
            assert r.status_code == 200, r.text
            found = pid in _ids(r.json())
            assert found == reads, (org, query, "found" if found else "not found",
                                    "read" if reads else "refused")


# -- written in one transaction with its target --------------------------------------------

def test_a_provenance_written_before_its_target_in_a_transaction_is_the_persons(
        client, store, world):
    """A transaction's POSTs are processed before its PUTs (FHIR's order), so a Provenance
    POSTed beside the new record it targets is written first: it is still the person's, by
    every search, and its writing is in her access log."""
    goal = f.sip_goal(id="alva-mal-ny")
    b = _transaction(client, world[SOC], [
        {"resource": _note(None, "Goal/alva-mal-ny"),
         "request": {"method": "POST", "url": "Provenance"}},
        {"resource": goal, "request": {"method": "PUT", "url": "Goal/alva-mal-ny"}}],
        request_id="prov-first")
    pid = b["entry"][0]["response"]["location"].split("Provenance/")[1].split("/")[0]
    assert client.get(f"/fhir/Provenance/{pid}", headers=world[BUP]).status_code == 200
    assert client.get(f"/fhir/Provenance/{pid}", headers=world[OUTSIDER]).status_code == 403
    for headers in ({}, world[SOC], world[BUP]):
        r = client.get("/fhir/Provenance?patient=alva", headers=headers)
        assert pid in _ids(r.json()), r.text[:300]
        r = client.get("/fhir/Provenance?target=Goal/alva-mal-ny", headers=headers)
        assert pid in _ids(r.json()), r.text[:300]
    r = client.get("/fhir/Goal?_id=alva-mal-ny&_revinclude=Provenance:target",
                   headers=world[BUP])
    assert _ids(r.json()) == {"alva-mal-ny", pid}, r.text[:300]
    [event] = _events_naming(client, "prov-first", f"Provenance/{pid}")
    assert ALVA in entities(event), event
    index_is_exact(store, [("Provenance", pid)])


def test_an_outsiders_provenance_written_before_its_own_withheld_record_is_withheld(
        client, world):
    """The outsider's Task on Alva is withheld (rule 1), and so is its Provenance of that
    Task written before it in the same Bundle (entry order of two PUTs)."""
    task = {"resourceType": "Task", "id": "t-outsider", "status": "requested",
            "intent": "order", "for": {"reference": ALVA},
            "description": "Utomstående har oro för Alva"}
    prov = {"resourceType": "Provenance", "id": "p-outsider",
            "target": [{"reference": "Task/t-outsider"}],
            "recorded": "2026-11-27T14:00:00+01:00",
            "agent": [{"who": {"identifier": {"system": HSA, "value": OUTSIDER}}}]}
    _transaction(client, world[OUTSIDER], [
        {"resource": prov, "request": {"method": "PUT", "url": "Provenance/p-outsider"}},
        {"resource": task, "request": {"method": "PUT", "url": "Task/t-outsider"}}])
    assert client.get("/fhir/Task/t-outsider", headers=world[BUP]).status_code == 403
    r = client.get("/fhir/Provenance/p-outsider", headers=world[BUP])
    assert r.status_code == 403, r.text[:300]
    assert client.get("/fhir/Provenance/p-outsider",
                      headers=world[OUTSIDER]).status_code == 200


# -- its target moved to another person, or deleted ----------------------------------------

def test_a_provenance_of_a_record_moved_to_another_person_is_found_as_it_is_read(
        client, store, world):
    """SOC's Task about Alva and SOC's Provenance of it; the hub's operator corrects the Task
    to Gösta (a wrong-patient record repaired). The Provenance goes with it: Gösta's party
    finds it as it reads it, Alva's neither; an index rebuild gives the same rows."""
    task = {"resourceType": "Task", "id": "t-fel", "status": "requested", "intent": "order",
            "for": {"reference": ALVA}, "description": "Ring mamman"}
    _put(client, world[SOC], task)
    _put(client, world[SOC], _note("p-fel", "Task/t-fel"))
    _put(client, {}, task | {"for": {"reference": "Patient/gosta"},
                             "description": "Ring dottern"})
    queries = {BUP: ("patient=alva", "target=Task/t-fel"),
               VC: ("patient=gosta", "target=Task/t-fel")}
    _found_as_read(client, world, "p-fel", queries)
    assert client.get("/fhir/Provenance/p-fel", headers=world[VC]).status_code == 200
    index_is_exact(store, [("Provenance", "p-fel")])
    with store.begin() as tx:
        tx.rebuild_index()
    index_is_exact(store, [("Provenance", "p-fel")])
    _found_as_read(client, world, "p-fel", queries)


def test_a_provenance_of_a_deleted_record_is_found_as_it_is_read(client, store, world):
    """Alva's Task deleted: its Provenance, by SOC, no longer tells whose it is; BUP finds it
    by no search, as it may no longer read it by id."""
    task = {"resourceType": "Task", "id": "t-borta", "status": "requested", "intent": "order",
            "for": {"reference": ALVA}, "description": "Ring mamman"}
    _put(client, world[SOC], task)
    _put(client, world[SOC], _note("p-borta", "Task/t-borta"))
    r = client.get("/fhir/Provenance?patient=alva", headers=world[BUP])
    assert "p-borta" in _ids(r.json()), r.text[:300]
    assert client.delete("/fhir/Task/t-borta", headers=world[SOC]).status_code == 200
    _found_as_read(client, world, "p-borta", {BUP: ("patient=alva", "target=Task/t-borta")})
    index_is_exact(store, [("Provenance", "p-borta")])


# -- the access log names the person --------------------------------------------------------

@pytest.fixture
def transition_provenance(client, world) -> str:
    """The Provenance $transition writes (it targets the plan; its agents are the
    coordinating organisation's): Alva's only through its target."""
    r = sp.transition(client, world[SOC], "alva-sip", "uppfoljning")
    assert r.status_code == 200, r.text
    prov = next(p["resource"] for p in r.json()["parameter"] if p["name"] == "provenance")
    assert not any(a.get("who", {}).get("reference", "").startswith("Patient/")
                   for a in prov["agent"])
    return prov["id"]


def test_a_refused_history_of_a_provenance_names_the_person(client, world,
                                                            transition_provenance):
    """The outsider asks for the history of Alva's plan's Provenance: refused (403), and in
    Alva's access log as the refusal of its read is."""
    pid = transition_provenance
    r = client.get(f"/fhir/Provenance/{pid}",
                   headers=with_request_id(world[OUTSIDER], "read-refused"))
    assert r.status_code == 403
    [event] = _events_naming(client, "read-refused", f"Provenance/{pid}")
    assert ALVA in entities(event)
    r = client.get(f"/fhir/Provenance/{pid}/_history",
                   headers=with_request_id(world[OUTSIDER], "history-refused"))
    assert r.status_code == 403
    [event] = _events_naming(client, "history-refused", f"Provenance/{pid}")
    assert event["outcome"] == "4"
    assert ALVA in entities(event), event


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_a_refused_change_of_a_provenance_names_the_person(client, world,
                                                           transition_provenance, method):
    """BUP, covered, reads the Provenance but did not write it: its PUT or DELETE is refused
    (403), and the refusal is in Alva's access log."""
    pid = transition_provenance
    prov = client.get(f"/fhir/Provenance/{pid}", headers=world[BUP]).json()
    prov.pop("meta")
    headers = with_request_id(world[BUP], f"refused-{method}")
    if method == "PUT":
        r = client.put(f"/fhir/Provenance/{pid}", content=orjson.dumps(prov),
                       headers=JSON_HEADERS | headers)
    else:
        r = client.delete(f"/fhir/Provenance/{pid}", headers=headers)
    assert r.status_code == 403, r.text
    [event] = _events_naming(client, f"refused-{method}", f"Provenance/{pid}")
    assert ALVA in entities(event), event


def test_a_conditional_create_that_finds_a_provenance_names_the_person(client, world):
    """A REST create with If-None-Exist that finds the coordinator's Provenance answers it
    (200, the resource): a read of Alva's, in her access log."""
    note = _note(None, "CarePlan/alva-sip") | {
        "meta": {"tag": [{"system": "https://soc.example/tag", "code": "import-1"}]}}
    r = client.post("/fhir/Provenance", content=orjson.dumps(note),
                    headers=JSON_HEADERS | world[SOC])
    assert r.status_code == 201, r.text
    r = client.post("/fhir/Provenance", content=orjson.dumps(note),
                    headers=JSON_HEADERS | with_request_id(world[SOC], "cond-create")
                    | {"If-None-Exist": "_tag=https://soc.example/tag|import-1"})
    assert r.status_code == 200, r.text
    pid = r.json()["id"]
    [event] = _events_naming(client, "cond-create", f"Provenance/{pid}")
    assert ALVA in entities(event), event


# -- migration 0019: an earlier release's Provenances ---------------------------------------

T0 = 1_760_000_000_000_000


def _principal(org: str) -> Principal:
    scopes = "system/*.cruds"
    return Principal(f"client-{org}", org, "organization", parse_scopes(scopes), False, scopes)


def _seed(engine: Engine, versions: list[tuple[dict[str, Any], str]]) -> None:
    """Rows as the hub at revision 0018 stored them (nothing withheld), each resource's
    versions in order; Alva's consent covers SOC and BUP."""
    tables = MetaData()
    tables.reflect(engine)
    hist, res = tables.tables["resource_history"], tables.tables["resource"]
    seen: dict[tuple[str, str], int] = {}
    with engine.begin() as conn:
        for i, (doc, owner) in enumerate(versions):
            key = (doc["resourceType"], doc["id"])
            v = seen[key] = seen.get(key, 0) + 1
            row = {"res_type": key[0], "res_id": key[1], "version_id": v,
                   "last_updated": T0 + i}
            conn.execute(hist.insert(), {**row, "method": "PUT", "content": orjson.dumps(doc)})
            if v == 1:
                conn.execute(res.insert(), {**row, "deleted": False, "owner_org": owner,
                                            "withheld": False})
            else:
                conn.execute(res.update().where(res.c.res_type == key[0],
                                                res.c.res_id == key[1]),
                             {"version_id": v, "last_updated": T0 + i})
        conn.execute(tables.tables["access_grant"].insert(), [
            {"patient_id": "alva", "org_hsa_id": org, "role": role, "reads": True,
             "valid_from": T0 - 1, "valid_until": None}
            for org, role in ((SOC, "coordinator"), (BUP, "participant"))])


def _prov(pid: str, target: str) -> dict[str, Any]:
    return {"resourceType": "Provenance", "id": pid, "target": [{"reference": target}],
            "recorded": "2026-11-01T10:00:00+01:00", "agent": [{"who": {"display": "someone"}}]}


def test_migration_0019_withholds_an_outsiders_provenance_of_the_persons_meeting(
        fresh: Engine) -> None:
    """An Appointment names its person as a participant's actor: the outsider's Provenance
    of Alva's meeting is hers and withheld, as the hub withholds one written now; BUP,
    covered, does not read it after the upgrade (its index rebuilt)."""
    upgrade(fresh, "0018")
    meeting = {"resourceType": "Appointment", "id": "alva-mote", "status": "booked",
               "participant": [{"actor": {"reference": ALVA}, "status": "accepted"}]}
    _seed(fresh, [({"resourceType": "Patient", "id": "alva"}, SOC), (meeting, SOC),
                  (_prov("by-outsider", "Appointment/alva-mote"), OUTSIDER)])
    upgrade(fresh)
    with Store(fresh).begin(write=False) as tx:
        stored = tx.current("Provenance", "by-outsider")
        assert stored is not None
        assert Access(_principal(OUTSIDER), T0 + 10**9).withholds(tx, "Provenance",
                                                                  stored.json())
        assert stored.withheld, "the outsider's Provenance of Alva's meeting left shared"
        assert not Access(_principal(BUP), T0 + 10**9).can_read(tx, stored)


def test_migration_0019_withholds_an_outsiders_provenance_corrected_away_from_the_person(
        fresh: Engine) -> None:
    """An outsider's Provenance of Alva's plan (version 1), corrected to target Bo's plan
    (version 2; Bo has no consent): a version is read on its own content with the record's
    one withheld flag, so the record is withheld and BUP, whom Alva's consent covers, does
    not read version 1 (as the hub, which withheld it when it was written, keeps it)."""
    upgrade(fresh, "0018")
    plan = {"resourceType": "CarePlan", "status": "draft", "intent": "plan"}
    _seed(fresh, [({"resourceType": "Patient", "id": "alva"}, SOC),
                  ({"resourceType": "Patient", "id": "bo"}, BUP),
                  (plan | {"id": "alva-sip", "subject": {"reference": ALVA}}, SOC),
                  (plan | {"id": "bo-plan", "subject": {"reference": "Patient/bo"}}, BUP),
                  (_prov("corrected", "CarePlan/alva-sip"), OUTSIDER),
                  (_prov("corrected", "CarePlan/bo-plan"), OUTSIDER)])
    upgrade(fresh)
    with Store(fresh).begin(write=False) as tx:
        cur = tx.current("Provenance", "corrected")
        first = tx.version("Provenance", "corrected", 1)
        assert cur is not None and cur.version_id == 2 and first is not None
        assert cur.withheld
        assert not Access(_principal(BUP), T0 + 10**9).can_read_version(tx, first, cur, 1)
    with fresh.connect() as conn:
        withheld = dict(conn.execute(text(
            "SELECT res_id, withheld FROM resource WHERE res_type <> 'Provenance'")).all())
    assert not any(withheld.values()), withheld  # (only Provenances are decided)
