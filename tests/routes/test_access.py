"""The SIP access rules over HTTP: who sees and changes what, before and after consent changes.

The demo SIP (Alva, 15) is coordinated by the social services (SOC); BUP and the school take
part; an outsider organisation does not. Every side path is checked for leaks: reads, vread,
history, search totals, _include/_revinclude, chained search and conditional create.
"""

from __future__ import annotations

import base64
import copy

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import sip_factory as f
from fhirhttp import JSON_HEADERS, body, outcome_text


SOC, BUP, SCHOOL = "SE2120000142-SOC1", "SE2321000016-15CQ", "SE2120000142-SKO7"
OUTSIDER = "SE2321000016-OUT1"
ORG_REFS = {SOC: f.SOCIAL_SERVICES, BUP: f.BUP, SCHOOL: f.SCHOOL}


@pytest.fixture
def world(client, as_org):
    """The demo SIP written by its coordinator; headers for every kind of caller."""
    h = {org: as_org(org) for org in (SOC, BUP, SCHOOL, OUTSIDER)}
    entries = [{"resource": r, "request": {"method": "PUT",
                                           "url": f"{r['resourceType']}/{r['id']}"}}
               for r in f.demo_case()]
    r = client.post("/fhir", content=body({"resourceType": "Bundle", "type": "transaction",
                                           "entry": entries})["content"],
                    headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 200, r.text
    return h


def get(client, url, headers):
    return client.get(url, headers=headers)


def visible_plans(client, headers):
    b = client.get("/fhir/CarePlan?patient=Patient/alva", headers=headers).json()
    return b["total"], [e["resource"]["id"] for e in b.get("entry", [])]


def set_consent(client, world, actors, status="active"):
    consent = f.sip_consent(actor_refs=actors, status=status)
    r = client.put("/fhir/Consent/alva-sip-samtycke", **body(consent) | {
        "headers": JSON_HEADERS | world[SOC]})
    assert r.status_code == 200, r.text


# -- reading ----------------------------------------------------------------------------------

@pytest.mark.parametrize("org", [SOC, BUP, SCHOOL])
def test_covered_participants_read_the_sip(client, world, org):
    for url in ("/fhir/CarePlan/alva-sip", "/fhir/CareTeam/alva-sip", "/fhir/Patient/alva",
                "/fhir/Consent/alva-sip-samtycke", "/fhir/Goal/alva-mal-skola",
                "/fhir/QuestionnaireResponse/alva-kartlaggning",
                "/fhir/CarePlan/alva-sip/_history", "/fhir/CarePlan/alva-sip/_history/1"):
        assert get(client, url, world[org]).status_code == 200, url
    assert visible_plans(client, world[org]) == (1, ["alva-sip"])


def test_outsider_sees_nothing_through_any_path(client, world):
    h = world[OUTSIDER]
    for url in ("/fhir/CarePlan/alva-sip", "/fhir/Patient/alva", "/fhir/CarePlan/alva-sip/_history",
                "/fhir/CarePlan/alva-sip/_history/1", "/fhir/Consent/alva-sip-samtycke"):
        r = get(client, url, h)
        assert r.status_code == 403, url
        assert "Alva" not in r.text and "alva" not in outcome_text(r).lower()
    assert visible_plans(client, h) == (0, [])
    for url in ("/fhir/CarePlan?_include=CarePlan:patient&_include=CarePlan:care-team",
                "/fhir/Patient?_revinclude=CarePlan:patient&_revinclude=Consent:patient",
                "/fhir/Patient?identifier=201103142384",
                "/fhir/CarePlan?patient.identifier=201103142384",
                "/fhir/Goal?patient=alva", "/fhir/CareTeam?participant=Organization/bup",
                "/fhir/CarePlan?_summary=count"):
        b = get(client, url, h).json()
        assert b.get("total", 0) == 0 and "entry" not in b, url
    assert get(client, "/fhir/CarePlan/_history", h).status_code == 403
    assert get(client, "/fhir/_history", h).status_code == 403
    # from the directory (shared), iterated includes reach nothing of the SIP
    for url in ("/fhir/Practitioner?_revinclude:iterate=CareTeam:participant"
                "&_include:iterate=CareTeam:patient&_include:iterate=CareTeam:participant"
                "&_revinclude:iterate=CarePlan:care-team&_revinclude:iterate=Consent:patient",
                "/fhir/Organization?_revinclude:iterate=CarePlan:performer"
                "&_include:iterate=CarePlan:patient&_include:iterate=CarePlan:goal"):
        b = get(client, url, h).json()
        assert b["total"] > 0 and {e["search"]["mode"] for e in b["entry"]} == {"match"}, url


def test_directory_resources_are_shared_with_every_organisation(client, world):
    assert get(client, "/fhir/Organization/bup", world[OUTSIDER]).status_code == 200
    assert get(client, "/fhir/Practitioner?name=lind", world[OUTSIDER]).json()["total"] == 1


def test_include_never_reaches_beyond_what_is_covered(client, world, as_org):
    # The outsider's own plan for the same patient id may include only what it may see.
    own = {"resourceType": "CarePlan", "status": "active", "intent": "plan",
           "subject": {"reference": "Patient/alva"}, "careTeam": [{"reference": "CareTeam/alva-sip"}]}
    r = client.post("/fhir/CarePlan", content=body(own)["content"],
                    headers=JSON_HEADERS | world[OUTSIDER])
    assert r.status_code == 201
    for url in ("/fhir/CarePlan?_include=CarePlan:care-team&_include=CarePlan:patient",
                "/fhir/CarePlan?_include:iterate=CarePlan:care-team&_include=CarePlan:patient"
                "&_include:iterate=CareTeam:participant&_revinclude:iterate=Goal:patient"):
        b = get(client, url, world[OUTSIDER]).json()
        kinds = [e["resource"]["resourceType"] for e in b["entry"]]
        assert kinds == ["CarePlan"] and b["total"] == 1, url


# -- consent changes take effect at once ---------------------------------------------------

def test_withdrawn_consent_ends_access_at_once(client, world):
    set_consent(client, world, [f.SOCIAL_SERVICES, f.BUP, f.SCHOOL], status="inactive")
    for org in (BUP, SCHOOL):
        assert get(client, "/fhir/CarePlan/alva-sip", world[org]).status_code == 403
        assert visible_plans(client, world[org]) == (0, [])
        assert get(client, "/fhir/CarePlan/alva-sip/_history/1", world[org]).status_code == 403


def test_narrowed_consent_removes_only_the_organisation_left_out(client, world):
    set_consent(client, world, [f.SOCIAL_SERVICES, f.BUP])
    assert get(client, "/fhir/CarePlan/alva-sip", world[BUP]).status_code == 200
    assert get(client, "/fhir/CarePlan/alva-sip", world[SCHOOL]).status_code == 403
    b = get(client, "/fhir/Goal?patient=alva", world[SCHOOL]).json()
    assert b["total"] == 0


def test_expired_consent_period_ends_access(client, world):
    consent = f.sip_consent(start="2020-01-01", end="2021-01-01")
    r = client.put("/fhir/Consent/alva-sip-samtycke",
                   content=body(consent)["content"], headers=JSON_HEADERS | world[SOC])
    assert r.status_code == 200
    assert get(client, "/fhir/CarePlan/alva-sip", world[BUP]).status_code == 403


def test_participant_not_in_care_team_is_not_covered_by_consent_alone(client, world):
    team = f.sip_careteam(representatives=[(f.BUP_REPRESENTATIVE, f.BUP)])
    r = client.put("/fhir/CareTeam/alva-sip", content=body(team)["content"],
                   headers=JSON_HEADERS | world[SOC])
    assert r.status_code == 200, r.text
    assert get(client, "/fhir/CarePlan/alva-sip", world[SCHOOL]).status_code == 403
    assert get(client, "/fhir/CarePlan/alva-sip", world[BUP]).status_code == 200


# -- writing --------------------------------------------------------------------------------

def _plan(client, headers):
    return get(client, "/fhir/CarePlan/alva-sip", headers).json()


def test_participant_changes_the_status_of_its_own_insats_only(client, world):
    plan = _plan(client, world[BUP])
    mine = copy.deepcopy(plan)
    mine["activity"][0]["detail"]["status"] = "completed"  # BUP's insats
    r = client.put("/fhir/CarePlan/alva-sip", content=body(mine)["content"],
                   headers=JSON_HEADERS | world[BUP])
    assert r.status_code == 200, r.text
    theirs = copy.deepcopy(r.json())
    theirs["activity"][1]["detail"]["status"] = "completed"  # the school's insats
    r = client.put("/fhir/CarePlan/alva-sip", content=body(theirs)["content"],
                   headers=JSON_HEADERS | world[BUP])
    assert r.status_code == 403
    changed = copy.deepcopy(_plan(client, world[BUP]))
    changed["description"] = "Ändrad av BUP"
    r = client.put("/fhir/CarePlan/alva-sip", content=body(changed)["content"],
                   headers=JSON_HEADERS | world[BUP])
    assert r.status_code == 403 and "coordinating organisation" in outcome_text(r)


def test_a_participant_notes_progress_on_its_own_insats_but_does_not_rewrite_it(client, world):
    plan = copy.deepcopy(_plan(client, world[BUP]))
    plan["activity"][0]["progress"] = [{"text": "Första samtalet hållet"}]
    plan["activity"][0]["detail"]["status"] = "in-progress"
    r = client.put("/fhir/CarePlan/alva-sip", content=body(plan)["content"],
                   headers=JSON_HEADERS | world[BUP])
    assert r.status_code == 200, r.text
    stored = _plan(client, world[BUP])
    assert stored["activity"][0]["progress"] == [{"text": "Första samtalet hållet"}]
    own = copy.deepcopy(stored)
    own["activity"][0]["detail"]["description"] = "Annan insats"  # what, not how far
    r = client.put("/fhir/CarePlan/alva-sip", content=body(own)["content"],
                   headers=JSON_HEADERS | world[BUP])
    assert r.status_code == 403
    fewer = copy.deepcopy(stored)
    fewer["activity"] = fewer["activity"][:1]
    r = client.put("/fhir/CarePlan/alva-sip", content=body(fewer)["content"],
                   headers=JSON_HEADERS | world[BUP])
    assert r.status_code == 403
    assert _plan(client, world[BUP])["meta"]["versionId"] == stored["meta"]["versionId"]


def test_only_the_coordinator_writes_the_kartlaggning(client, world):
    qr = get(client, "/fhir/QuestionnaireResponse/alva-kartlaggning", world[BUP]).json()
    r = client.put("/fhir/QuestionnaireResponse/alva-kartlaggning",
                   content=body(qr)["content"], headers=JSON_HEADERS | world[BUP])
    assert r.status_code == 403
    r = client.put("/fhir/QuestionnaireResponse/alva-kartlaggning",
                   content=body(qr)["content"], headers=JSON_HEADERS | world[SOC])
    assert r.status_code == 200


def test_another_organisation_cannot_start_a_second_sip_for_the_person(client, world):
    consent = f.sip_consent(id="forged", actor_refs=[f.BUP])
    r = client.post("/fhir/Consent", content=body(consent)["content"],
                    headers=JSON_HEADERS | world[BUP])
    assert r.status_code == 403


def test_plan_author_must_be_the_writing_organisation(client, as_org):
    h = as_org(BUP)
    for r in f.demo_case()[:8]:
        client.put(f"/fhir/{r['resourceType']}/{r['id']}", **body(r))
    plan = f.sip_careplan(status="draft")  # author: social services
    r = client.put("/fhir/CarePlan/alva-sip", content=body(plan)["content"],
                   headers=JSON_HEADERS | h)
    assert r.status_code == 403 and "CarePlan.author" in outcome_text(r)


def test_outsider_cannot_change_or_delete(client, world):
    plan = _plan(client, world[SOC])
    r = client.put("/fhir/CarePlan/alva-sip", content=body(plan)["content"],
                   headers=JSON_HEADERS | world[OUTSIDER])
    assert r.status_code == 403
    assert client.delete("/fhir/CarePlan/alva-sip", headers=world[OUTSIDER]).status_code == 403
    assert _plan(client, world[SOC])["meta"]["versionId"] == "1"


# -- audit ------------------------------------------------------------------------------------

def test_every_access_is_in_the_persons_access_log(client, world, anonymous):
    assert get(client, "/fhir/CarePlan/alva-sip", world[BUP]).status_code == 200
    get(client, "/fhir/CarePlan?patient=alva", world[SCHOOL])
    assert get(client, "/fhir/CarePlan/alva-sip", world[OUTSIDER]).status_code == 403
    anonymous.app.state.audit.flush()
    log = client.get("/fhir/AuditEvent?patient=alva&_count=200").json()
    events = [e["resource"] for e in log["entry"]]
    def by(org, action=None, outcome="0"):
        return [e for e in events if any(a["who"].get("identifier", {}).get("value") == org
                                         for a in e["agent"])
                and e["outcome"] == outcome and (action is None or e["subtype"][0]["code"] == action)]
    assert by(BUP, "read"), "BUP's read is logged"
    assert by(SCHOOL, "search-type"), "the school's search is logged"
    assert by(SOC, "create") or by(SOC, "update"), "the coordinator's writes are logged"
    refused = by(OUTSIDER, outcome="4")
    assert refused and "consent" in refused[0]["outcomeDesc"]
    # Audit records are part of the person's data: never changed through the API.
    first = events[0]
    r = client.put(f"/fhir/AuditEvent/{first['id']}", **body(first))
    assert r.status_code == 403
    assert client.delete(f"/fhir/AuditEvent/{first['id']}").status_code == 403


def test_participants_cannot_read_the_access_log(client, world):
    assert get(client, "/fhir/AuditEvent?patient=alva", world[BUP]).status_code == 403


# -- property: consent at the time of the read decides ------------------------------------

@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sets(st.sampled_from([BUP, SCHOOL])),
                                st.sampled_from(["active", "inactive"]),
                                st.sampled_from([BUP, SCHOOL, OUTSIDER])),
                      min_size=1, max_size=5))
def test_random_consent_changes_never_expose_the_sip(client, world, steps):
    for covered, status, reader in steps:
        set_consent(client, world, [f.SOCIAL_SERVICES] + [ORG_REFS[o] for o in sorted(covered)],
                    status)
        allowed = status == "active" and reader in covered
        read = get(client, "/fhir/CarePlan/alva-sip", world[reader])
        assert read.status_code == (200 if allowed else 403)
        total, ids = visible_plans(client, world[reader])
        assert (total, ids) == ((1, ["alva-sip"]) if allowed else (0, []))
        inc = get(client, "/fhir/Patient?_id=alva&_revinclude=CarePlan:patient",
                  world[reader]).json()
        assert bool(inc.get("entry")) is allowed




# -- what an organisation the consent does not cover writes ---------------------------------

def _outsiders_task(client, world, patient="alva", focus="CarePlan/alva-sip"):
    task = {"resourceType": "Task", "status": "requested", "intent": "order",
            "for": {"reference": f"Patient/{patient}"}, "focus": {"reference": focus},
            "description": "Alva har fått en ny diagnos hos oss"}
    r = client.post("/fhir/Task", content=body(task)["content"],
                    headers=JSON_HEADERS | world[OUTSIDER])
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_what_an_uncovered_organisation_writes_about_the_person_reaches_no_one_else(
        client, world):
    """Rule 1: no information passes between the SIP's parties without the person's consent.
    An organisation the consent does not name could write a Task about Alva on her SIP plan,
    and every covered organisation read it (by id, by search, by _revinclude on the plan).
    It is stored and its writer reads it; no one else does."""
    tid = _outsiders_task(client, world)
    assert get(client, f"/fhir/Task/{tid}", world[OUTSIDER]).status_code == 200
    for org in (SOC, BUP, SCHOOL):
        assert get(client, f"/fhir/Task/{tid}", world[org]).status_code == 403
        found = get(client, "/fhir/Task?patient=Patient/alva", world[org]).json()
        assert tid not in [e["resource"]["id"] for e in found.get("entry", [])]
        plan = get(client, "/fhir/CarePlan?_id=alva-sip&_revinclude=Task:focus",
                   world[org]).json()
        assert [e["resource"]["resourceType"] for e in plan["entry"]] == ["CarePlan"]
    # What the covered organisations write themselves still reaches one another.
    mine = {"resourceType": "Task", "status": "requested", "intent": "order",
            "for": {"reference": "Patient/alva"}, "focus": {"reference": "CarePlan/alva-sip"}}
    r = client.post("/fhir/Task", content=body(mine)["content"],
                    headers=JSON_HEADERS | world[BUP])
    assert r.status_code == 201, r.text
    assert get(client, f"/fhir/Task/{r.json()['id']}", world[SOC]).status_code == 200


def test_only_what_is_written_while_a_consent_is_in_force_is_withheld(client, world, store):
    """Anyone may suggest a SIP: for a person with no consent in force nothing is withheld
    (a later consent's covered organisations read what was written before it); with one in
    force, what an organisation it does not cover writes is, and stays so (consent given to
    that organisation later covers what it writes from then on)."""
    r = client.put("/fhir/Patient/tolvan", content=body(f.patient())["content"],
                   headers=JSON_HEADERS | world[OUTSIDER])
    assert r.status_code == 201, r.text
    before_any = _outsiders_task(client, world, patient="tolvan", focus="Patient/tolvan")
    during = _outsiders_task(client, world)
    by_bup = client.post("/fhir/Task", content=body({
        "resourceType": "Task", "status": "requested", "intent": "order",
        "for": {"reference": "Patient/alva"}})["content"], headers=JSON_HEADERS | world[BUP])
    assert by_bup.status_code == 201, by_bup.text
    with store.begin(write=False) as tx:
        assert tx.current("Task", before_any).withheld is False
        assert tx.current("Task", during).withheld is True
        assert tx.current("Task", by_bup.json()["id"]).withheld is False
    # An update by its writer keeps it withheld.
    task = get(client, f"/fhir/Task/{during}", world[OUTSIDER]).json()
    r = client.put(f"/fhir/Task/{during}", content=body(task | {"status": "cancelled"})[
        "content"], headers=JSON_HEADERS | world[OUTSIDER])
    assert r.status_code == 200, r.text
    assert get(client, f"/fhir/Task/{during}", world[SOC]).status_code == 403


# -- a patch is held to the rules of an update -------------------------------------------------

PATCH_HEADERS = {"content-type": "application/json-patch+json"}


def _patch(client, headers, ops, **extra):
    return client.patch("/fhir/CarePlan/alva-sip", content=body(ops)["content"],
                        headers=PATCH_HEADERS | headers | extra)


def test_a_participant_patches_the_status_of_its_own_insats_only(client, world):
    before = _plan(client, world[BUP])
    r = _patch(client, world[BUP], [
        {"op": "test", "path": "/activity/0/detail/status",
         "value": before["activity"][0]["detail"]["status"]},
        {"op": "replace", "path": "/activity/0/detail/status", "value": "in-progress"}],
        **{"If-Match": f'W/"{before["meta"]["versionId"]}"'})
    assert r.status_code == 200, r.text
    after = _plan(client, world[BUP])
    assert after["activity"][0]["detail"]["status"] == "in-progress"
    assert after["activity"][1:] == before["activity"][1:]
    for ops in ([{"op": "replace", "path": "/activity/1/detail/status", "value": "completed"}],
                [{"op": "replace", "path": "/description", "value": "Ändrad av BUP"}],
                [{"op": "remove", "path": "/activity/1"}]):
        r = _patch(client, world[BUP], ops)
        assert r.status_code == 403, (ops, r.text)
    assert _plan(client, world[BUP]) == after


def test_an_outsider_cannot_patch_nor_probe_with_a_test(client, world):
    version = _plan(client, world[SOC])["meta"]["versionId"]
    for value in ("active", "draft", "completed"):
        r = _patch(client, world[OUTSIDER], [{"op": "test", "path": "/status",
                                              "value": value}])
        assert r.status_code == 403, r.text
        assert "alva" not in outcome_text(r).lower()
    assert _plan(client, world[SOC])["meta"]["versionId"] == version


def _patch_in(client, headers, kind, ops):
    entry = {"resource": {"resourceType": "Binary", "contentType": PATCH_HEADERS["content-type"],
                          "data": base64.b64encode(body(ops)["content"]).decode()},
             "request": {"method": "PATCH", "url": "CarePlan/alva-sip"}}
    return client.post("/fhir", content=body({"resourceType": "Bundle", "type": kind,
                                              "entry": [entry]})["content"],
                       headers=JSON_HEADERS | headers)


@pytest.mark.parametrize("kind", ["transaction", "batch"])
def test_a_patch_in_a_bundle_is_held_to_the_same_rules(client, world, kind):
    version = _plan(client, world[SOC])["meta"]["versionId"]
    r = _patch_in(client, world[OUTSIDER], kind, [{"op": "test", "path": "/status",
                                                   "value": "active"}])
    status = r.status_code if kind == "transaction" else \
        int(r.json()["entry"][0]["response"]["status"])
    assert status == 403, r.text
    r = _patch_in(client, world[BUP], kind, [{"op": "replace", "path": "/description",
                                              "value": "Ändrad av BUP"}])
    status = r.status_code if kind == "transaction" else \
        int(r.json()["entry"][0]["response"]["status"])
    assert status == 403, r.text
    assert _plan(client, world[SOC])["meta"]["versionId"] == version
    r = _patch_in(client, world[BUP], kind, [
        {"op": "replace", "path": "/activity/0/detail/status", "value": "in-progress"}])
    assert r.status_code == 200, r.text
    assert _plan(client, world[SOC])["activity"][0]["detail"]["status"] == "in-progress"
