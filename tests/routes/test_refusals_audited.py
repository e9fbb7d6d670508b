"""Refusals and answers that tell something of a person's records are in the person's access
log (Patientdatalagen 4 kap. 3 §, 8 kap. 5 §), and an organisation the consent does not cover
learns no more from a write than from a read: its access is checked before anything else is
answered (whether the record is deleted, at which version it is).

The demo SIP (Alva) is coordinated by the social services (SOC); BUP takes part; the
vårdcentral (VC) coordinates Gösta's SIP and is not covered for Alva; the outsider is
covered for no one.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

import sip_factory as f
import sip_process as sp
import test_deadlines
from conftest import issue_token
from fhirhttp import JSON_HEADERS, entities, request_events, with_request_id
from messaging.harness import Hub, broker, hub, outcome_of, sip_message  # noqa: F401

SOC, BUP = "SE2120000142-SOC1", "SE2321000016-15CQ"
VC, OUTSIDER = f.VARDCENTRAL_HSA, "SE2321000016-OUT1"
ALVA = "Patient/alva"
PATCH_HEADERS = {"content-type": "application/json-patch+json",
                 "accept": "application/fhir+json"}
h = test_deadlines.h  # Alva's SIP in kartläggning (SOC, BUP and the school take part)


@pytest.fixture
def world(client, as_org):
    """Alva's established SIP (SOC) and Gösta's drafted one (VC); headers per organisation."""
    headers = {org: as_org(org) for org in (SOC, BUP, VC, OUTSIDER)}
    sp.write_case(client, headers[SOC], f.demo_case())
    sp.write_case(client, headers[VC], sp.gosta_case())
    return headers


def _goal() -> dict[str, Any]:
    return {k: v for k, v in f.sip_goal().items() if k != "id"}


# A goal of Alva's that her established plan does not name (the plan's own goals are not
# deleted: they change only with her approval).
EXTRA = "alva-mal-fritid"


def _extra_goal(client, world) -> None:
    goal = f.sip_goal(id=EXTRA, life_area="fritid", text="Alva provar en fritidsaktivitet.")
    r = client.put(f"/fhir/Goal/{EXTRA}", content=orjson.dumps(goal),
                   headers=JSON_HEADERS | world[SOC])
    assert r.status_code == 201, r.text


def _delete_goal(client, world, goal: str = EXTRA) -> None:
    _extra_goal(client, world)
    r = client.delete(f"/fhir/Goal/{goal}", headers=world[SOC])
    assert r.status_code == 200, r.text
    # A read by an organisation the consent does not cover hides the deletion (403, not 410).
    r = client.get(f"/fhir/Goal/{goal}", headers=world[VC])
    assert r.status_code == 403, r.text


# -- a refused create names the person -------------------------------------------------------

@pytest.mark.parametrize("method,url", [("POST", "/fhir/Goal"),
                                        ("PUT", "/fhir/Goal/refused-new")])
def test_a_refused_create_names_the_person_it_was_about(client, world, method, url):
    """Only the coordinator writes the goals of a SIP: the outsider's goal for Alva is
    refused, and the attempt is in Alva's access log."""
    goal = _goal() | ({"id": "refused-new"} if method == "PUT" else {})
    r = client.request(method, url, content=orjson.dumps(goal),
                       headers=JSON_HEADERS | with_request_id(world[OUTSIDER], "refused-create"))
    assert r.status_code == 403, r.text
    [event] = request_events(client, "refused-create")
    assert event["outcome"] == "4"
    assert ALVA in entities(event), event


# -- DELETE and PATCH check access first -----------------------------------------------------

def test_delete_of_a_persons_deleted_record_is_refused_and_logged(client, world):
    """As its read is: whether a record of a person's is deleted is its owner's business."""
    _delete_goal(client, world)
    r = client.delete(f"/fhir/Goal/{EXTRA}", headers=with_request_id(world[VC], "outsider-del"))
    assert r.status_code == 403, r.text
    assert "deleted" not in r.text
    [event] = request_events(client, "outsider-del")
    assert event["outcome"] == "4" and f"Goal/{EXTRA}" in entities(event), event
    assert ALVA in entities(event), event


def test_delete_of_a_deleted_record_by_its_owner_still_succeeds(client, world):
    _delete_goal(client, world)
    r = client.delete(f"/fhir/Goal/{EXTRA}", headers=world[SOC])
    assert r.status_code == 200 and "already deleted" in r.text, r.text


def test_patch_of_a_persons_deleted_record_is_refused_and_logged(client, world):
    _delete_goal(client, world)
    ops = [{"op": "replace", "path": "/lifecycleStatus", "value": "cancelled"}]
    r = client.patch(f"/fhir/Goal/{EXTRA}", content=orjson.dumps(ops),
                     headers=PATCH_HEADERS | with_request_id(world[VC], "outsider-patch"))
    assert r.status_code == 403, r.text
    assert "deleted" not in r.text and "ETag" not in r.headers
    [event] = request_events(client, "outsider-patch")
    assert event["outcome"] == "4" and f"Goal/{EXTRA}" in entities(event), event


@pytest.mark.parametrize("goal,if_match", [("alva-mal-skola", 'W/"7", W/"8"'),
                                           (EXTRA, 'W/"7", W/"8"'),
                                           (EXTRA, "*")])
def test_if_match_on_delete_tells_nothing_of_a_record_the_caller_may_not_read(
        client, world, goal, if_match):
    """If-Match is answered after the access check: a 412 would tell the record's version
    (or that it has none, being deleted)."""
    _delete_goal(client, world)  # alva-mal-fritid deleted, alva-mal-skola at version 1
    r = client.delete(f"/fhir/Goal/{goal}",
                      headers=with_request_id(world[VC], "outsider-del-im") | {"If-Match": if_match})
    assert r.status_code == 403, r.text
    assert "version" not in r.text
    [event] = request_events(client, "outsider-del-im")
    assert event["outcome"] == "4" and f"Goal/{goal}" in entities(event), event


def test_if_match_on_delete_by_the_owner_is_still_answered(client, world):
    _extra_goal(client, world)
    r = client.delete(f"/fhir/Goal/{EXTRA}", headers=world[SOC] | {"If-Match": 'W/"7"'})
    assert r.status_code == 412 and "is at version 1" in r.text, r.text


# -- a message checks its sender's access before its versions --------------------------------

@pytest.fixture
def two_sips(hub: Hub) -> Hub:  # noqa: F811
    c = hub.client
    hub.configure({o: f"http://127.0.0.1:9/{o}" for o in (SOC, BUP, VC, OUTSIDER)})
    hub.headers[VC] = {"Authorization": f"Bearer {issue_token(c, hub.store, VC)}"}
    sp.write_case(c, hub.headers[SOC], f.demo_case())
    sp.write_case(c, hub.headers[VC], sp.gosta_case())
    return hub


def test_a_message_from_an_outsider_learns_no_version_of_the_plan(two_sips: Hub) -> None:
    plan = two_sips.client.get("/fhir/CarePlan/alva-sip", headers=two_sips.headers[SOC]).json()
    plan["meta"] = {"versionId": "7"}
    msg = sip_message("insats-status-changed", OUTSIDER, plan, focus=["CarePlan/alva-sip"],
                      destinations=(SOC,))
    r = two_sips.client.post("/fhir/$process-message", content=orjson.dumps(msg),
                             headers=JSON_HEADERS | two_sips.headers[OUTSIDER])
    code, text = outcome_of(r)
    assert code == "fatal-error"
    assert "holds version" not in text and "consent does not cover" in text, text


# -- a PATCH is logged as a patch ------------------------------------------------------------

def test_a_patch_is_audited_as_a_patch(client, world):
    ops = [{"op": "replace", "path": "/lifecycleStatus", "value": "active"}]
    r = client.patch("/fhir/Goal/alva-mal-skola", content=orjson.dumps(ops),
                     headers=PATCH_HEADERS | with_request_id(world[SOC], "patched"))
    assert r.status_code == 200, r.text
    [event] = request_events(client, "patched")
    assert event["subtype"][0]["code"] == "patch" and event["action"] == "U", event
    assert "Goal/alva-mal-skola" in entities(event) and ALVA in entities(event), event


# -- a conditional write that matched several ------------------------------------------------

def _transaction(entry: dict[str, Any]) -> bytes:
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [entry]})


@pytest.mark.parametrize("method,url,content,extra", [
    ("PUT", "/fhir/Goal?patient=alva", orjson.dumps(_goal()), {}),
    ("POST", "/fhir/Goal", orjson.dumps(_goal()), {"If-None-Exist": "patient=alva"}),
    ("POST", "/fhir", _transaction({"resource": _goal(), "request": {
        "method": "POST", "url": "Goal", "ifNoneExist": "patient=alva"}}), {}),
    ("POST", "/fhir", _transaction({"fullUrl": "urn:uuid:3f1c2b9e-0000-4000-8000-000000000001",
                                    "resource": _goal(), "request": {
                                        "method": "PUT", "url": "Goal?patient=alva"}}), {}),
    ("POST", "/fhir", _transaction({"resource": {
        "resourceType": "Task", "status": "requested", "intent": "order",
        "for": {"reference": ALVA}, "focus": {"reference": "Goal?patient=alva"}},
        "request": {"method": "POST", "url": "Task"}}), {}),
], ids=["put", "post", "bundle-post", "bundle-put", "bundle-reference"])
def test_a_conditional_write_that_matched_several_is_audited(client, world, method, url,
                                                            content, extra):
    """Its search told BUP that Alva has several goals (412), as a count would, which is
    logged: the search is in her access log, with the goals it found."""
    r = client.request(method, url, content=content,
                       headers=JSON_HEADERS | with_request_id(world[BUP], "cond-several") | extra)
    assert r.status_code == 412, r.text
    [event] = request_events(client, "cond-several")
    assert event["outcome"] == "4" and event["subtype"][0]["code"] == "search-type", event
    [search] = [e for e in event["entity"] if e.get("description") == "search"]
    assert base64.b64decode(search["query"]) == b"patient=alva", event
    assert ALVA in entities(event), event
    assert sum(ref.startswith("Goal/") for ref in entities(event)) >= 2, event


# -- an operation's answer holds what it read ------------------------------------------------

def test_invite_answers_the_care_team_it_read_and_audits_it(client, h):
    """A second $invite of an organisation already in the care team leaves the team as it
    is and answers it all the same: a read of the team, in the person's log."""
    assert sp.post(client, "CarePlan/alva-sip/$invite", h[SOC], sp.invitation(f.BUP)
                   ).status_code == 200
    r = sp.post(client, "CarePlan/alva-sip/$invite", with_request_id(h[SOC], "invite-again"),
                sp.invitation(f.BUP, start_days=12))
    assert r.status_code == 200, r.text
    assert any(p["name"] == "careTeam" for p in r.json()["parameter"])
    events = request_events(client, "invite-again")
    [read] = [e for e in events if "CareTeam/alva-sip" in entities(e)]
    assert read["subtype"][0]["code"] == "read" and read["outcome"] == "0", read
    assert ALVA in entities(read), read
