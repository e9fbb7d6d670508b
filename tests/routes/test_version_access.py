"""Who reads a record's earlier versions (vread, instance history), and what an organisation
shares by moving a record of its own to another person.

A care system relies on a version being shown only to those who may read it as it was: a
record deleted and written again is its new writer's, but the earlier record's versions stay
the person's; a record corrected to another person keeps its earlier versions from that
person's parties; a version that does not exist answers as one that does for a caller who
may not read the record. And on the withholding of what an organisation the person's consent
does not cover writes into the person's compartment: moving its own record there is such a
write.

Two persons with SIPs: Alva (demo case, coordinated by the social services, SOC; BUP and the
school take part and are covered) and Gösta (discharge case, coordinated by the vårdcentral,
VC). VC is covered for Gösta only, SOC and BUP for Alva only; the outsider for no one.
"""

from __future__ import annotations

import pytest

import sip_factory as f
import sip_process as sp
from fhirhttp import JSON_HEADERS, body

SOC, BUP, SCHOOL = "SE2120000142-SOC1", "SE2321000016-15CQ", "SE2120000142-SKO7"
VC = f.VARDCENTRAL_HSA
OUTSIDER = "SE2321000016-OUT1"
HSA = "urn:oid:1.2.752.29.4.19"


@pytest.fixture
def world(client, as_org):
    """Alva's established SIP (SOC) and Gösta's (VC); headers per organisation."""
    return sp.two_sips(client, as_org)


def _put(client, headers, res, status=(200, 201)):
    r = client.put(f"/fhir/{res['resourceType']}/{res['id']}", content=body(res)["content"],
                   headers=JSON_HEADERS | headers)
    assert r.status_code in status, r.text
    return r


def _alva_task(**changes):
    task = {"resourceType": "Task", "id": "t-moved", "status": "requested", "intent": "order",
            "for": {"reference": "Patient/alva"},
            "description": "Alva har berättat om självskadebeteende; BUP kontaktar mamman"}
    return task | changes


def _history(client, path, headers):
    r = client.get(f"/fhir/{path}/_history", headers=headers)
    assert r.status_code == 200, r.text
    b = r.json()
    versions = [e["response"]["etag"] for e in b.get("entry", [])]
    assert b["total"] == len(versions), b  # (a total counting hidden versions counts them)
    return versions, r.text


def _alva_goal(client, world) -> str:
    """A goal of Alva's that her established plan does not name (the plan's own goals are not
    deleted: they change only with her approval)."""
    goal = f.sip_goal(id="alva-mal-fritid", life_area="fritid",
                      text="Alva provar en fritidsaktivitet.")
    _put(client, world[SOC], goal, status=(201,))
    return "Goal/alva-mal-fritid"


# -- a record deleted and written again by another organisation --------------------------------

def test_recreating_a_deleted_record_does_not_open_the_persons_earlier_versions(client, world):
    goal = _alva_goal(client, world)
    r = client.delete(f"/fhir/{goal}", headers=world[SOC])
    assert r.status_code == 200, r.text
    h = world[OUTSIDER]
    _put(client, h, {"resourceType": "Patient", "id": "outsiders-own"})
    _put(client, h, {"resourceType": "Goal", "id": "alva-mal-fritid",
                     "lifecycleStatus": "proposed", "description": {"text": "x"},
                     "subject": {"reference": "Patient/outsiders-own"}})
    r = client.get(f"/fhir/{goal}/_history/1", headers=h)
    assert r.status_code == 403, r.text[:300]
    assert "Alva" not in r.text
    # Its own record's history is its own versions: not the deletion of Alva's goal either.
    versions, text = _history(client, goal, h)
    assert versions == ['W/"3"'], text[:600]
    assert "Alva" not in text and "Patient/alva" not in text, text[:600]
    assert client.get(f"/fhir/{goal}/_history/3", headers=h).status_code == 200
    # The hub's operators (personal-data access) read every version, as before.
    versions, _ = _history(client, goal, {})
    assert versions == ['W/"3"', 'W/"2"', 'W/"1"']
    assert client.get(f"/fhir/{goal}/_history/1").status_code == 200


def test_a_deleted_record_s_history_is_its_owners_and_its_covered_readers(client, world):
    # An outsider's withheld Task on Alva, deleted: the history stays the outsider's alone
    # (it was read by the version before the deletion as if it were shared and unowned).
    _put(client, world[OUTSIDER], _alva_task(id="t-outsider", description="Utomstående"))
    assert client.delete("/fhir/Task/t-outsider", headers=world[OUTSIDER]).status_code == 200
    versions, _ = _history(client, "Task/t-outsider", world[OUTSIDER])
    assert versions == ['W/"2"', 'W/"1"']
    r = client.get("/fhir/Task/t-outsider/_history", headers=world[BUP])
    assert r.status_code == 403, r.text[:300]
    assert "Utomstående" not in r.text
    # A shared record deleted: its covered readers still read its history, deletion and all.
    goal = _alva_goal(client, world)
    assert client.delete(f"/fhir/{goal}", headers=world[SOC]).status_code == 200
    versions, _ = _history(client, goal, world[BUP])
    assert versions == ['W/"2"', 'W/"1"']
    assert client.get(f"/fhir/{goal}/_history/1", headers=world[BUP]).status_code \
        == 200


# -- a record moved from one person to another -------------------------------------------------

def test_a_record_moved_to_another_person_keeps_its_earlier_versions_from_that_persons_parties(
        client, world):
    # SOC writes a Task about Alva; the hub's operator corrects it to Gösta (a wrong-patient
    # record repaired). VC, covered for Gösta only, reads the Task as it is now, not Alva's.
    _put(client, world[SOC], _alva_task())
    _put(client, {}, _alva_task(**{"for": {"reference": "Patient/gosta"},
                                   "description": "Ring Gösta"}))
    assert client.get("/fhir/Task/t-moved", headers=world[VC]).status_code == 200
    r = client.get("/fhir/Task/t-moved/_history/1", headers=world[VC])
    assert r.status_code == 403, r.text[:300]
    versions, text = _history(client, "Task/t-moved", world[VC])
    assert versions == ['W/"2"'], text[:600]
    assert "självskadebeteende" not in text and "Patient/alva" not in text, text[:600]
    # Its writer reads every version of its own record.
    versions, _ = _history(client, "Task/t-moved", world[SOC])
    assert versions == ['W/"2"', 'W/"1"']


# -- moving a record into the compartment of a person whose consent does not cover its writer --

def test_what_an_uncovered_organisation_moves_into_a_persons_compartment_is_withheld(
        client, world):
    # README: what an organisation the consent in force does not cover writes into the
    # person's compartment is stored for it alone. SOC is not covered by Gösta's consent.
    _put(client, world[SOC], _alva_task())
    _put(client, world[SOC], _alva_task(**{"for": {"reference": "Patient/gosta"},
                                           "description": "Socialtjänsten om Gösta"}))
    r = client.get("/fhir/Task/t-moved", headers=world[VC])
    assert r.status_code == 403, r.text[:300]
    b = client.get("/fhir/Task?patient=Patient/gosta", headers=world[VC]).json()
    assert b["total"] == 0, b
    # Stored for its writer, and it stays withheld when moved back.
    assert client.get("/fhir/Task/t-moved", headers=world[SOC]).status_code == 200
    _put(client, world[SOC], _alva_task())
    assert client.get("/fhir/Task/t-moved", headers=world[BUP]).status_code == 403


def test_a_record_of_another_organisations_is_not_moved_where_its_writer_is_not_covered(
        client, world):
    # BUP may write the Task it is the owner of, but withholding it would keep it for SOC,
    # who created it, and from BUP: the move is refused.
    task = _alva_task(owner={"identifier": {"system": HSA, "value": BUP}})
    _put(client, world[SOC], task)
    r = _put(client, world[BUP], task | {"for": {"reference": "Patient/gosta"},
                                         "description": "BUP om Gösta"}, status=(403,))
    assert r.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Task/t-moved", headers=world[BUP]).json()["for"] == \
        {"reference": "Patient/alva"}
    # A change that moves it nowhere is BUP's to make, as before.
    _put(client, world[BUP], task | {"status": "accepted"})


def test_an_update_within_the_persons_compartment_is_shared_as_before(client, world):
    # A change that moves the record to no one new leaves it shared, as it was.
    _put(client, world[SOC], _alva_task())
    _put(client, world[SOC], _alva_task(status="accepted"))
    assert client.get("/fhir/Task/t-moved", headers=world[BUP]).status_code == 200


# -- versions that do not exist ----------------------------------------------------------------

def test_vread_of_a_version_tells_nothing_of_a_record_the_caller_may_not_read(client, world):
    # Version 1 exists (403); asking for version 2 must not reveal that it does not (404):
    # an organisation counts the changes of a record it may not read.
    assert client.get("/fhir/Goal/alva-mal-skola/_history/1",
                      headers=world[VC]).status_code == 403
    r = client.get("/fhir/Goal/alva-mal-skola/_history/2", headers=world[VC])
    assert r.status_code == 403, r.text
    assert client.get("/fhir/Goal/alva-mal-skola/_history/x", headers=world[VC]).status_code \
        == 403
    # Who may read it learns that the version does not exist; no one reads an unknown record.
    assert client.get("/fhir/Goal/alva-mal-skola/_history/2",
                      headers=world[SOC]).status_code == 404
    assert client.get("/fhir/Goal/no-such-goal/_history/1", headers=world[VC]).status_code \
        == 404
