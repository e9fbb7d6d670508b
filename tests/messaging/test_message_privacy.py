"""What the hub sends on in its notifications and forwarded messages is the data of the person
whose SIP they concern, and only what the sender may read itself (domain rule 1: nothing goes
to an organisation that person's consent does not cover).

A user relies on: a meeting or invitation cannot name another person's plan or meeting (the
write is refused, and a notification never carries another person's stored records, nor a
record withheld from the person's parties); a message cannot pass on, by naming it in its
focus, a stored record of another person or one its sender may not read; and only an
organisation's client, whose role and scopes let it read the person's plan and the person,
has a message sent on.

Two persons with SIPs: Alva (demo case, coordinated by the social services, SOC; BUP and the
school take part and are covered) and Gösta (discharge case, coordinated by the vårdcentral,
VC, whose consent covers VC only).
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

import sip_factory as f
import sip_process as sp
from conftest import issue_token
from fhirhttp import JSON_HEADERS
from harness import (BUP, OUTSIDER, SCHOOL, SOC, URL, Hub, broker, hub,  # noqa: F401
                     world)
from harness import current_plan, outcome_of, sip_message, status_change
from sip_hub.fhir import sip
from sip_hub.store import outbox as sql

VC = f.VARDCENTRAL_HSA
PLAN = "CarePlan/alva-sip"


@pytest.fixture
def two_sips(hub: Hub) -> Hub:  # noqa: F811
    c = hub.client
    hub.configure({o: f"http://127.0.0.1:9/{o}" for o in (SOC, BUP, SCHOOL, VC, OUTSIDER)})
    hub.headers[VC] = {"Authorization": f"Bearer {issue_token(c, hub.store, VC)}"}
    sp.write_case(c, hub.headers[SOC], f.demo_case())
    sp.write_case(c, hub.headers[VC], sp.gosta_case())
    return hub


def _sent(h: Hub) -> list[bytes]:
    with h.store.begin(write=False) as tx:
        return [d.content for d in sql.find(tx)]


def _carries_gosta(content: bytes) -> bool:
    return b"gosta" in content.lower() or "Gösta".encode() in content


def _meeting(rid: str, patient: str, plan: str | None = None) -> dict[str, Any]:
    appt: dict[str, Any] = {
        "resourceType": "Appointment", "id": rid, "status": "booked",
        "start": "2027-01-10T10:00:00+01:00", "end": "2027-01-10T11:00:00+01:00",
        "participant": [{"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}]}
    if plan is not None:
        appt["supportingInformation"] = [{"reference": f"CarePlan/{plan}"}]
    return appt


def _invitation(plan: str, meeting: str) -> dict[str, Any]:
    return {"resourceType": "Task", "id": "inv-school", "status": "requested",
            "intent": "order", "code": {"coding": [{"system": sip.CS_TASK,
                                                     "code": "invitation"}]},
            "basedOn": [{"reference": f"CarePlan/{plan}"}],
            "focus": {"reference": f"Appointment/{meeting}"},
            "for": {"reference": "Patient/alva"}, "owner": {"reference": f.SCHOOL}}


# -- 1. REST writes: a meeting or an invitation naming another person's plan or meeting -----

def test_a_meeting_naming_another_persons_plan_is_refused_and_tells_no_one(
        two_sips: Hub) -> None:
    h = two_sips
    before = len(_sent(h))
    appt = _meeting("m1", "alva", "gosta-sip")
    r = h.put(SOC, appt)
    assert r.status_code == 422, r.text
    assert "CarePlan/gosta-sip is the plan of another individual" in r.text
    # Nor can it be moved (which would tell Alva's parties, with Gösta's plan).
    r = h.put(SOC, appt | {"start": "2027-01-11T10:00:00+01:00",
                           "end": "2027-01-11T11:00:00+01:00"})
    assert r.status_code == 422, r.text
    assert len(_sent(h)) == before
    assert not any(_carries_gosta(c) for c in _sent(h))


def test_an_invitation_naming_another_persons_plan_or_meeting_is_refused(
        two_sips: Hub) -> None:
    h = two_sips
    assert h.put(VC, _meeting("m-gosta", "gosta", "gosta-sip")).status_code == 201
    assert h.put(SOC, _meeting("m-alva", "alva", "alva-sip")).status_code == 201
    r = h.put(SOC, _invitation("gosta-sip", "m-alva"))
    assert r.status_code == 422 and "plan of another individual" in r.text, r.text
    r = h.put(SOC, _invitation("alva-sip", "m-gosta"))
    assert r.status_code == 422, r.text
    assert "Appointment/m-gosta is the meeting of another individual" in r.text
    assert not any(_carries_gosta(c) for c in _sent(h))


def test_a_notification_carries_only_the_persons_own_stored_records(two_sips: Hub) -> None:
    """The emitter's own guard, whatever names them: another person's Consent in the focus
    is left out; another person's plan, or a meeting withheld from the person's parties
    (written by an organisation the consent does not cover), is not carried, and an event
    that needs it is not sent."""
    h = two_sips
    r = h.put(OUTSIDER, _meeting("m-outsider", "alva"))
    assert r.status_code == 201, r.text
    emitter = h.messaging.emitter
    with h.store.begin() as tx:
        told = emitter.emit(tx, "consent-changed", sender_org=SOC, patient_id="alva",
                            focus=("Consent/gosta-sip-samtycke", "Consent/alva-sip-samtycke"),
                            reason="granted")
        assert emitter.emit(tx, "insats-status-changed", sender_org=SOC, patient_id="alva",
                            careplan_id="gosta-sip", focus=("CarePlan/gosta-sip",)) is None
        assert emitter.emit(tx, "meeting-cancelled", sender_org=SOC, patient_id="alva",
                            careplan_id="alva-sip", focus=("Appointment/m-outsider",)) is None
    assert told is not None
    msg = next(m for m in map(orjson.loads, _sent(h))
               if m["entry"][0]["resource"]["id"] == told)
    carried = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in msg["entry"][1:]}
    assert carried == {"Consent/alva-sip-samtycke", PLAN, "Patient/alva"}
    assert not any(_carries_gosta(c) for c in _sent(h))
    assert not any(b"m-outsider" in c for c in _sent(h))


def test_a_notification_carries_the_persons_provenance_that_names_no_patient(
        two_sips: Hub) -> None:
    """A Provenance of the person's plan is the person's (of whom its target is), though it
    names no Patient itself (an agent who is the person's custodian, as text)."""
    h = two_sips
    prov = {"resourceType": "Provenance", "id": "alva-note",
            "target": [{"reference": PLAN}], "recorded": "2026-11-20T10:00:00+01:00",
            "agent": [{"who": {"display": "Alvas mamma"}}]}
    r = h.put(SOC, prov)
    assert r.status_code == 201, r.text
    with h.store.begin() as tx:
        told = h.messaging.emitter.emit(
            tx, "plan-established", sender_org=SOC, patient_id="alva", careplan_id="alva-sip",
            focus=(PLAN, "Provenance/alva-note"))
    assert told is not None
    msg = next(m for m in map(orjson.loads, _sent(h))
               if m["entry"][0]["resource"]["id"] == told)
    carried = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in msg["entry"][1:]}
    assert "Provenance/alva-note" in carried


# -- 2. $process-message: a focus naming another person's stored record ----------------------

def _audit_of(h: Hub, query: str) -> list[dict[str, Any]]:
    h.client.app.state.audit.flush()
    r = h.client.get(f"/fhir/AuditEvent?{query}&_count=1000", headers=h.headers["admin"])
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def test_a_message_cannot_send_on_another_persons_consent(two_sips: Hub) -> None:
    """SOC extends Alva's consent (a real change, told as granted) and names Gösta's Consent,
    which it may not read, in the focus: refused, nothing stored or sent, and the refusal is
    in Gösta's access log."""
    h = two_sips
    consent = h.client.get("/fhir/Consent/alva-sip-samtycke", headers=h.headers[SOC]).json()
    wider = copy.deepcopy(consent)
    wider.pop("meta")
    wider["provision"]["period"]["end"] = "2028-11-10"
    before = len(_sent(h))
    msg = sip_message("consent-changed", SOC, wider, reason="granted", destinations=(BUP,),
                      focus=["Consent/gosta-sip-samtycke", PLAN])
    r = h.client.post(URL, content=orjson.dumps(msg),
                      headers=JSON_HEADERS | {"X-Request-ID": "msg-gosta-consent"}
                      | h.headers[SOC])
    code, diagnostics = outcome_of(r)
    assert code == "fatal-error", diagnostics
    assert "consent does not cover" in diagnostics
    assert len(_sent(h)) == before and not any(_carries_gosta(c) for c in _sent(h))
    stored = h.client.get("/fhir/Consent/alva-sip-samtycke", headers=h.headers[SOC]).json()
    assert stored["meta"]["versionId"] == consent["meta"]["versionId"]
    refused = [e for e in _audit_of(h, "patient=gosta") if e["outcome"] == "4"
               and e["subtype"][0]["code"] == "operation"]
    assert refused, "the refused disclosure is not in Gösta's access log"
    # The same message without Gösta's Consent is sent on.
    msg = sip_message("consent-changed", SOC, wider, reason="granted", destinations=(BUP,),
                      focus=["Consent/alva-sip-samtycke", PLAN])
    code, diagnostics = outcome_of(h.client.post(URL, content=orjson.dumps(msg),
                                                 headers=JSON_HEADERS | h.headers[SOC]))
    assert code == "ok" and "sent on as" in diagnostics, diagnostics


# -- 3. $process-message: the sender's role and scopes -----------------------------------------

@pytest.mark.parametrize("client,unreadable", [
    pytest.param({"role": "portal", "scope": "system/*.cruds"}, PLAN, id="portal"),
    pytest.param({"role": "admin", "scope": "system/*.cruds"}, PLAN,
                 id="admin-without-personal-data"),
])
def test_a_message_from_a_client_that_is_no_organisations_is_refused(
        world: Hub, client: dict[str, Any], unreadable: str) -> None:
    """The portal's client and admin clients, registered for the coordinator's HSA-id, send
    no messages: refused before anything is read (403)."""
    headers = {"Authorization": "Bearer " + issue_token(world.client, world.store, SOC,
                                                         **client)}
    assert world.client.get(f"/fhir/{unreadable}", headers=headers).status_code == 403
    before = len(world.deliveries())
    msg = status_change(world, sender=SOC, destinations=(SCHOOL,))
    r = world.client.post(URL, content=orjson.dumps(msg),
                          headers={"content-type": "application/fhir+json"} | headers)
    assert r.status_code == 403, r.text
    assert "organisations' clients" in r.text
    assert len(world.deliveries()) == before


@pytest.mark.parametrize("scope,unreadable", [
    pytest.param("system/CarePlan.u", PLAN, id="may-update-the-plan-but-not-read-it"),
    pytest.param("system/CarePlan.cruds", "Patient/alva", id="may-not-read-the-person"),
])
def test_a_message_is_not_sent_on_for_a_token_that_may_not_read_the_sip(
        world: Hub, scope: str, unreadable: str) -> None:
    """An organisation's token whose scopes allow no read of the plan, or of the person, which
    a message is sent on with: the message (a real change) is refused, as the same token's
    GET is, and nothing is sent or stored."""
    headers = {"Authorization": "Bearer " + issue_token(world.client, world.store, SOC,
                                                         scope=scope)}
    assert world.client.get(f"/fhir/{unreadable}", headers=headers).status_code == 403
    before, plan = len(world.deliveries()), current_plan(world)
    msg = status_change(world, sender=SOC, destinations=(SCHOOL,))
    r = world.client.post(URL, content=orjson.dumps(msg),
                          headers={"content-type": "application/fhir+json"} | headers)
    code, diagnostics = outcome_of(r)
    assert code == "fatal-error", diagnostics
    assert len(world.deliveries()) == before
    assert current_plan(world)["meta"]["versionId"] == plan["meta"]["versionId"]
