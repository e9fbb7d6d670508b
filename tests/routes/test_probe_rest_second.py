"""A second probe of the REST API (2026-12-07): a patch's test that told what a resource
holds to whoever could not read it, a transaction's conditional update that other entries
could not name by its fullUrl, history's ``_at`` with a comparison prefix, a deleted
directory entry read by another organisation, ``metadata`` in a batch, and the access log of
a search that names the person by personnummer and returns a count.

The demo SIP (Alva) is coordinated by the social services (SOC); BUP takes part (its consent
covers BUP) but may not write the Patient; an outsider organisation does not take part.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, outcome_text
from sip_hub.fhir import sip
from sip_process import write_case

SOC, BUP = "SE2120000142-SOC1", "SE2321000016-15CQ"
PATCH = {"content-type": "application/json-patch+json", "accept": "application/fhir+json"}
PNR_SYSTEM = "http://electronichealth.se/identifier/personnummer"


@pytest.fixture
def world(client, as_org):
    h = {org: as_org(org) for org in (SOC, BUP)}
    write_case(client, h[SOC], f.demo_case())
    return h


def _patch(client: Any, url: str, ops: Any, headers: dict[str, str]) -> Any:
    return client.patch(f"/fhir/{url}", content=orjson.dumps(ops), headers=PATCH | headers)


def _by(event: dict[str, Any], org: str) -> bool:
    return any(a.get("who", {}).get("identifier", {}).get("value") == org
               for a in event["agent"])


def _events(client: Any, query: str) -> list[dict[str, Any]]:
    client.app.state.audit.flush()
    r = client.get(f"/fhir/AuditEvent?{query}&_count=1000")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def test_a_patch_tells_nothing_to_whoever_may_not_read_or_write_the_resource(
        client, world, as_org):
    before = client.get("/fhir/Patient/alva", headers=JSON_HEADERS).json()
    tell = [{"op": "test", "path": "", "value": {}}]
    # Update without read: a patch needs both (its test would tell what it holds).
    update_only = as_org(SOC, scope="system/Patient.u")
    assert client.get("/fhir/Patient/alva", headers=JSON_HEADERS | update_only
                      ).status_code == 403
    r = _patch(client, "Patient/alva", tell, update_only)
    assert r.status_code == 403, r.text
    assert "Andersson" not in r.text and f.DEMO_PNR not in r.text
    # BUP reads Alva's Patient (the consent covers it) but may not write it: refused before
    # any test runs, and the refusal is in her access log.
    assert client.get("/fhir/Patient/alva", headers=JSON_HEADERS | world[BUP]
                      ).status_code == 200
    r = _patch(client, "Patient/alva", tell, world[BUP])
    assert r.status_code == 403, r.text
    assert "Andersson" not in r.text and f.DEMO_PNR not in r.text
    refused = [e for e in _events(client, "patient=alva&outcome=4") if _by(e, BUP)]
    assert refused, "the refused patch is in the person's access log"
    # Whoever may write it learns which test failed, not the values compared.
    r = _patch(client, "Patient/alva", [{"op": "test", "path": "/name/0/family",
                                         "value": "Nilsson"}], world[SOC])
    assert r.status_code == 422, r.text
    text = outcome_text(r)
    assert "operation 0" in text and "/name/0/family" in text and "Andersson" not in text
    assert client.get("/fhir/Patient/alva", headers=JSON_HEADERS).json() == before


def _org(oid: str, name: str, **more: Any) -> dict[str, Any]:
    return {"resourceType": "Organization", "name": name,
            "identifier": [{"system": "urn:test:orgs", "value": oid}], **more}


@pytest.mark.parametrize("existing", [False, True], ids=["creates", "updates"])
def test_a_conditional_update_is_named_by_its_full_url_in_a_transaction(client, existing):
    if existing:
        r = client.post("/fhir/Organization", content=orjson.dumps(_org("v1", "Förra")),
                        headers=JSON_HEADERS)
        assert r.status_code == 201, r.text
        known = r.json()["id"]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0a3c2d7e-1111-4c1a-9b55-0d5b1a2b3c4d",
         "resource": _org("v1", "Huvudmannen"),
         "request": {"method": "PUT", "url": "Organization?identifier=urn:test:orgs|v1"}},
        {"fullUrl": "urn:uuid:0a3c2d7e-2222-4c1a-9b55-0d5b1a2b3c4d",
         "resource": _org("v2", "Enheten", partOf={
             "reference": "urn:uuid:0a3c2d7e-1111-4c1a-9b55-0d5b1a2b3c4d"}),
         "request": {"method": "POST", "url": "Organization"}}]}
    r = client.post("/fhir", content=orjson.dumps(bundle), headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    parent_id, child_id = (e["resource"]["id"] for e in r.json()["entry"])
    assert r.json()["entry"][0]["response"]["status"] == ("200 OK" if existing else "201 Created")
    if existing:
        assert parent_id == known
    child = client.get(f"/fhir/Organization/{child_id}", headers=JSON_HEADERS).json()
    assert child["partOf"]["reference"] == f"Organization/{parent_id}"
    parent = client.get(f"/fhir/Organization/{parent_id}", headers=JSON_HEADERS).json()
    assert parent["name"] == "Huvudmannen"
    found = client.get("/fhir/Organization?identifier=urn:test:orgs|v1",
                       headers=JSON_HEADERS).json()
    assert found["total"] == 1


def test_history_at_with_a_prefix_is_refused_not_read_as_a_date(client):
    r = client.post("/fhir/Organization", content=orjson.dumps(_org("h1", "Ett")),
                    headers=JSON_HEADERS)
    rid = r.json()["id"]
    day = sip.swedish_day(r.json()["meta"]["lastUpdated"])  # (a date is a Swedish day)
    ok = client.get(f"/fhir/Organization/{rid}/_history?_at={day}", headers=JSON_HEADERS)
    assert ok.status_code == 200 and ok.json()["total"] == 1
    assert client.get(f"/fhir/Organization/{rid}/_history?_at=eq{day}",
                      headers=JSON_HEADERS).json()["total"] == 1
    for value in ("gt2026-01-01", "lt2099-01-01", "ge" + day):
        for name in ("_at", "_since"):
            r = client.get(f"/fhir/Organization/{rid}/_history?{name}={value}",
                           headers=JSON_HEADERS)
            assert r.status_code == 400, r.text
            assert r.json()["resourceType"] == "OperationOutcome"
            assert name in outcome_text(r) and "prefix" in outcome_text(r)


def test_a_deleted_directory_entry_is_gone_for_every_reader(client, world):
    r = client.post("/fhir/Organization", content=orjson.dumps(_org("d1", "Nedlagd")),
                    headers=JSON_HEADERS | world[SOC])
    rid = r.json()["id"]
    assert client.delete(f"/fhir/Organization/{rid}", headers=world[SOC]).status_code == 200
    for who in (SOC, BUP):
        r = client.get(f"/fhir/Organization/{rid}", headers=JSON_HEADERS | world[who])
        assert r.status_code == 410, (who, r.text)
    # A person's record deleted by its owner stays the owner's business.
    goal = {k: v for k, v in f.demo_goals()[0].items() if k != "id"}
    r = client.post("/fhir/Goal", content=orjson.dumps(goal), headers=JSON_HEADERS | world[SOC])
    assert r.status_code == 201, r.text
    gid = r.json()["id"]
    assert client.delete(f"/fhir/Goal/{gid}", headers=world[SOC]).status_code == 200
    assert client.get(f"/fhir/Goal/{gid}", headers=JSON_HEADERS | world[SOC]).status_code == 410


def test_metadata_in_a_batch_is_a_clear_400_for_that_entry(client):
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "metadata"}},
        {"request": {"method": "GET", "url": "Organization?_count=1"}}]}
    r = client.post("/fhir", content=orjson.dumps(bundle), headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    first, second = r.json()["entry"]
    assert first["response"]["status"].startswith("400")
    assert "[base]/metadata" in orjson.dumps(first["response"]["outcome"]).decode()
    assert second["response"]["status"].startswith("200")


@pytest.mark.parametrize("query", [
    f"CarePlan?patient.identifier={PNR_SYSTEM}|{f.DEMO_PNR}&_summary=count",
    f"Goal?patient.identifier={f.DEMO_PNR}&_summary=count",
    f"Patient?identifier={PNR_SYSTEM}|{f.DEMO_PNR}&_summary=count",
    f"Consent?patient:Patient.identifier={PNR_SYSTEM}|{f.DEMO_PNR}&_count=0",
])
def test_a_count_of_a_persons_records_by_personnummer_is_in_their_access_log(
        client, world, query):
    before = [e for e in _events(client, "patient=alva") if _by(e, BUP)]
    r = client.get(f"/fhir/{query}", headers=JSON_HEADERS | world[BUP])
    assert r.status_code == 200, r.text
    assert r.json()["total"] >= 1 and not r.json().get("entry")
    after = [e for e in _events(client, "patient=alva") if _by(e, BUP)]
    assert len(after) == len(before) + 1


def test_a_record_created_again_after_its_delete_is_its_new_writers(client, world):
    pat = {"resourceType": "Patient", "id": "again", "name": [{"family": "Först"}]}
    r = client.put("/fhir/Patient/again", content=orjson.dumps(pat),
                   headers=JSON_HEADERS | world[SOC])
    assert r.status_code == 201, r.text
    assert client.delete("/fhir/Patient/again", headers=world[SOC]).status_code == 200
    pat["name"] = [{"family": "Sedan"}]
    r = client.put("/fhir/Patient/again", content=orjson.dumps(pat),
                   headers=JSON_HEADERS | world[BUP])
    assert r.status_code == 201 and r.json()["meta"]["versionId"] == "3", r.text
    assert r.headers["Location"].endswith("/fhir/Patient/again/_history/3")
    mine = client.get("/fhir/Patient/again", headers=JSON_HEADERS | world[BUP])
    assert mine.status_code == 200 and mine.json()["name"][0]["family"] == "Sedan"
    r = client.get("/fhir/Patient/again", headers=JSON_HEADERS | world[SOC])
    assert r.status_code == 403, r.text
    assert "Sedan" not in r.text
    # Its next update is an update of BUP's record (the owner stays BUP).
    pat["name"] = [{"family": "Sist"}]
    r = client.put("/fhir/Patient/again", content=orjson.dumps(pat),
                   headers=JSON_HEADERS | world[BUP])
    assert r.status_code == 200, r.text
    assert client.get("/fhir/Patient/again", headers=JSON_HEADERS | world[SOC]
                      ).status_code == 403


def test_a_create_after_a_delete_needs_the_create_scope(client, world, as_org):
    pat = {"resourceType": "Patient", "id": "gone", "name": [{"family": "Borta"}]}
    assert client.put("/fhir/Patient/gone", content=orjson.dumps(pat),
                      headers=JSON_HEADERS | world[SOC]).status_code == 201
    assert client.delete("/fhir/Patient/gone", headers=world[SOC]).status_code == 200
    update_only = as_org(SOC, scope="system/Patient.ru")
    r = client.put("/fhir/Patient/gone", content=orjson.dumps(pat),
                   headers=JSON_HEADERS | update_only)
    assert r.status_code == 403, r.text
    assert client.get("/fhir/Patient/gone", headers=JSON_HEADERS).status_code == 410
