"""Messages that do a process operation's work (``sip_hub.messaging.operations``): the
coordinator's system drives the SIP by message ($invite, $transition, $propose-revision,
$approve-revision) and an invited organisation answers ($respond, with its Parameters or with
the answered Task), under the same rules and with the same effects as the REST operations.

Tests parametrized by ``via`` take the same step over REST and by message and check the same
outcome: the plan, its Provenance, and the notifications written to the outbox for the other
participants the consent covers (none for an organisation that takes no part).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

import sip_factory as f
from harness import (BUP, OUTSIDER, SCHOOL, SOC, URL, Hub, broker, hub,  # noqa: F401
                     receivers)
from harness import sip_message, with_parameters
from sip_hub.fhir import sip
from sip_hub.messaging.process_message import process_accepted
from sip_process import (TASK_SYSTEM, alva_case, approval, at, code, dt, invitation, parameters,
                         phase, post, read, ref, resource, respond, string, tasks, transition,
                         values, write_case)

Json = dict[str, Any]
PLAN = "alva-sip"
VIA = pytest.mark.parametrize("via", ["rest", "message"])
BOTH_BROKERS = pytest.mark.parametrize(
    "broker", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)], indirect=True)


def _ok(resp: Any) -> Json:
    assert resp.status_code == 200, resp.text
    out: Json = resp.json()
    return out


# -- Alva's SIP at each step, driven over REST by its coordinator (SOC) ---------------------------

def _mapping(hub: Hub) -> None:
    write_case(hub.client, hub.headers[SOC], alva_case())
    _ok(transition(hub.client, hub.headers[SOC], PLAN, "kartlaggning"))


def _invited(hub: Hub, orgs: tuple[str, ...] = (f.BUP, f.SCHOOL), start_days: float = 10
             ) -> dict[str, str]:
    """The SIP in kallelse with ``orgs`` invited; their invitation Task ids by Organization."""
    _mapping(hub)
    out = _ok(post(hub.client, f"CarePlan/{PLAN}/$invite", hub.headers[SOC],
                   invitation(*orgs, start_days=start_days)))
    return {t["owner"]["reference"]: t["id"] for t in values(out, "task")}


def _held(hub: Hub) -> None:
    """The meeting held: BUP and the school accepted, the SIP in mote."""
    invited = _invited(hub, start_days=1)
    for org, org_ref, representative in ((BUP, f.BUP, f.BUP_REPRESENTATIVE),
                                         (SCHOOL, f.SCHOOL, f.SCHOOL_REPRESENTATIVE)):
        _ok(respond(hub.client, hub.headers[org], invited[org_ref], "accept",
                    ref("representative", representative)))
    _ok(transition(hub.client, hub.headers[SOC], PLAN, "mote"))


def _established(hub: Hub) -> None:
    _held(hub)
    _ok(transition(hub.client, hub.headers[SOC], PLAN, "upprattad",
                   *approval("Patient/alva", f.MOTHER)))


def _plan(hub: Hub) -> Json:
    return read(hub.client, f"CarePlan/{PLAN}", hub.headers[SOC])


def _provenance_of(hub: Hub, plan: Json) -> Json:
    """The Provenance of the plan's current version."""
    b = read(hub.client, f"Provenance?target=CarePlan/{PLAN}&_count=100", hub.headers[SOC])
    version = f"CarePlan/{PLAN}/_history/{plan['meta']['versionId']}"
    (prov,) = [e["resource"] for e in b.get("entry", [])
               if e["resource"]["target"] == [{"reference": version}]]
    return prov


def _provenance_count(hub: Hub) -> int:
    b = read(hub.client, f"Provenance?target=CarePlan/{PLAN}&_summary=count", hub.headers[SOC])
    total: int = b["total"]
    return total


def _agents(prov: Json, kind: str) -> list[Json]:
    return [a["who"] for a in prov["agent"] if a["type"]["coding"][0]["code"] == kind]


def _task(hub: Hub, task_id: str, org: str = BUP) -> Json:
    task = read(hub.client, f"Task/{task_id}", hub.headers[org])
    task.pop("meta")
    return task


# -- messages ----------------------------------------------------------------------------------





def _answer(resp: Any) -> tuple[str, Json]:
    """(response.code, the first issue of its OperationOutcome)."""
    assert resp.status_code == 200, resp.text
    entries = resp.json()["entry"]
    oo = next(e["resource"] for e in entries if e["resource"]["resourceType"] == "OperationOutcome")
    return entries[0]["resource"]["response"]["code"], oo["issue"][0]


def _notifications(hub: Hub, since: set[str]) -> list[tuple[str, str]]:
    """(event, destination) of the notifications written since the deliveries ``since``."""
    return sorted((d.event, d.dest_org) for d in hub.deliveries()
                  if d.id not in since and d.event != "acknowledgement")


def _step(hub: Hub, via: str, sender: str, message: Json, path: str = "",
          params: Json | None = None) -> list[tuple[str, str]]:
    """One step, over REST (``path`` with ``params``) or by ``message``; the notifications
    it caused."""
    before = {d.id for d in hub.deliveries()}
    if via == "rest":
        assert params is not None
        _ok(post(hub.client, path, hub.headers[sender], params))
    else:
        outcome, issue = _answer(hub.post(sender, URL, message))
        assert outcome == "ok", issue
    return _notifications(hub, before)


# -- the coordinator drives the process by message --------------------------------------------

@VIA
def test_establishing_the_plan_by_message_is_the_transition(hub: Hub, via: str) -> None:
    _held(hub)
    approved = approval("Patient/alva", f.MOTHER)
    told = _step(hub, via, SOC,
                 # `to` is what the event means; the message need not say it
                 with_parameters("plan-established", SOC, parameters(*approved),
                                  focus=[f"CarePlan/{PLAN}"]),
                 f"CarePlan/{PLAN}/$transition", parameters(code("to", "upprattad"), *approved))
    plan = _plan(hub)
    assert (phase(plan), plan["status"]) == ("upprattad", "active")
    prov = _provenance_of(hub, plan)
    assert prov["activity"]["coding"][0]["code"] == "upprattad"
    assert _agents(prov, "attester") == [{"reference": "Patient/alva"}, {"reference": f.MOTHER}]
    assert _agents(prov, "author") == [{"reference": f.SOCIAL_SERVICES}]
    assert told == sorted([("plan-established", BUP), ("plan-established", SCHOOL)])
    # Every participant receives the same plan: the version just established.
    sent = next(d for d in hub.deliveries() if d.event == "plan-established")
    carried = [e["resource"] for e in orjson.loads(sent.content)["entry"]
               if e["resource"]["resourceType"] == "CarePlan"]
    assert [c["meta"]["versionId"] for c in carried] == [plan["meta"]["versionId"]]


@VIA
def test_concluding_a_follow_up_by_message_is_the_transition(hub: Hub, via: str) -> None:
    _established(hub)
    _ok(transition(hub.client, hub.headers[SOC], PLAN, "uppfoljning"))
    following = _plan(hub)
    params = parameters(code("to", "upprattad"), *approval("Patient/alva", f.MOTHER))
    told = _step(hub, via, SOC,
                 with_parameters("follow-up-done", SOC, params, focus=[f"CarePlan/{PLAN}"]),
                 f"CarePlan/{PLAN}/$transition", params)
    plan = _plan(hub)
    assert (phase(plan), plan["status"]) == ("upprattad", "active")
    prov = _provenance_of(hub, plan)
    assert prov["entity"] == [{"role": "revision", "what": {
        "reference": f"CarePlan/{PLAN}/_history/{following['meta']['versionId']}"}}]
    assert told == sorted([("follow-up-done", BUP), ("follow-up-done", SCHOOL)])


@VIA
def test_closing_by_message_needs_only_the_reason(hub: Hub, via: str) -> None:
    invited = _invited(hub, (f.BUP,))
    because = "Alva vill inte ha någon SIP längre"
    told = _step(hub, via, SOC,
                 sip_message("sip-closed", SOC, focus=[f"CarePlan/{PLAN}"], because=because),
                 f"CarePlan/{PLAN}/$transition",
                 parameters(code("to", "avslutad"), string("reason", because)))
    plan = _plan(hub)
    assert (phase(plan), plan["status"]) == ("avslutad", "revoked")  # never established
    assert _provenance_of(hub, plan)["reason"] == [{"text": because}]
    # The open work is withdrawn: the meeting and BUP's invitation.
    task = _task(hub, invited[f.BUP], SOC)
    assert task["status"] == "cancelled" and because in task["statusReason"]["text"]
    meeting = read(hub.client, task["focus"]["reference"], hub.headers[SOC])
    assert meeting["status"] == "cancelled"
    # BUP takes part and is told, also that its invitation need not be answered; the school
    # (in the consent, not invited) and the outsider are not. The hub cancels the meeting and
    # the invitation itself, so the coordinator hears of that too.
    assert told == sorted([("invitation-cancelled", BUP), ("invitation-cancelled", SOC),
                           ("meeting-cancelled", BUP), ("meeting-cancelled", SOC),
                           ("sip-closed", BUP)])
    # Audited for the coordinator, also what the hub changed on its behalf.
    audits = read(hub.client, "AuditEvent?patient=Patient/alva&action=U&_count=500",
                  hub.headers["admin"])
    updaters = {a["who"]["identifier"]["value"] for e in audits.get("entry", [])
                if {"reference": f"Task/{invited[f.BUP]}"} in
                [x.get("what") for x in e["resource"]["entity"]]
                for a in e["resource"]["agent"] if a["who"].get("type") == "Organization"}
    assert updaters == {SOC}


def _revised(hub: Hub) -> Json:
    revision = _plan(hub)
    revision.pop("meta")
    revision["activity"][2]["detail"]["description"] = (
        "Familjebehandling i hemmet varannan vecka; morgonrutinerna fungerar nu.")
    return revision


@VIA
def test_a_revision_proposed_and_approved_by_message_are_the_operations(hub: Hub, via: str
                                                                        ) -> None:
    _established(hub)
    revision = _revised(hub)
    # By message, the revised plan itself is the proposal (the sender's id is its own).
    proposed = revision | {"id": "andring-1", "intent": "proposal", "status": "draft",
                           "replaces": [{"reference": f"CarePlan/{PLAN}"}]}
    told = _step(hub, via, SOC,
                 sip_message("plan-revision-proposed", SOC, proposed,
                          focus=["CarePlan/andring-1", f"CarePlan/{PLAN}"]),
                 f"CarePlan/{PLAN}/$propose-revision",
                 parameters(resource("revision", revision)))
    found = read(hub.client, f"CarePlan?replaces=CarePlan/{PLAN}", hub.headers[SOC])
    (proposal,) = [e["resource"] for e in found["entry"]]
    assert (proposal["intent"], proposal["status"]) == ("proposal", "draft")
    assert proposal["id"] != "andring-1"
    assert "NOPATIENT" in str(proposal["meta"]["security"])
    assert phase(_plan(hub)) == "upprattad"
    assert _plan(hub)["activity"][2]["detail"]["description"] != revision["activity"][2][
        "detail"]["description"]  # not in effect before the person approves
    assert told == sorted([("plan-revision-proposed", BUP),
                           ("plan-revision-proposed", SCHOOL)])

    approved = (ref("revision", f"CarePlan/{proposal['id']}"),
                *approval("Patient/alva", f.MOTHER))
    because = "Uppföljning med Alva och mamma"
    told = _step(hub, via, SOC,
                 # the reason as MessageHeader.reason text
                 with_parameters("revision-approved", SOC, parameters(*approved),
                                  focus=[f"CarePlan/{PLAN}"], because=because),
                 f"CarePlan/{PLAN}/$approve-revision",
                 parameters(*approved, string("reason", because)))
    plan = _plan(hub)
    assert plan["activity"][2]["detail"]["description"].endswith("fungerar nu.")
    assert (phase(plan), plan["status"], plan["intent"]) == ("upprattad", "active", "plan")
    prov = _provenance_of(hub, plan)
    assert {e["role"] for e in prov["entity"]} == {"source", "revision"}
    assert prov["reason"] == [{"text": because}]
    assert read(hub.client, f"CarePlan/{proposal['id']}", hub.headers[SOC])["status"] == \
        "completed"
    assert told == sorted([("revision-approved", BUP), ("revision-approved", SCHOOL)])


@VIA
def test_inviting_by_message_is_invite(hub: Hub, via: str) -> None:
    _mapping(hub)
    params = invitation(f.BUP)
    # The focus the invitation's MessageDefinition asks for, as the sender's system sees it;
    # $invite writes the hub's own.
    view = [{"resourceType": "Appointment", "id": "mote-1", "status": "proposed",
             "participant": [{"actor": {"reference": "Patient/alva"}, "status": "accepted"}]},
            {"resourceType": "Task", "id": "kallelse-bup", "status": "requested",
             "intent": "order", "owner": {"reference": f.BUP}}]
    told = _step(hub, via, SOC,
                 with_parameters("invitation", SOC, params, *view, focus=[
                     "Task/kallelse-bup", "Appointment/mote-1", f"CarePlan/{PLAN}"]),
                 f"CarePlan/{PLAN}/$invite", params)
    assert phase(_plan(hub)) == "kallelse"
    (task,) = tasks(hub.client, f"code={TASK_SYSTEM}|invitation&owner={f.BUP}", hub.headers[SOC])
    assert task["status"] == "requested" and task["id"] != "kallelse-bup"
    assert hub.client.get("/fhir/Task/kallelse-bup",
                          headers=hub.headers[SOC]).status_code == 404
    meeting = read(hub.client, task["focus"]["reference"], hub.headers[SOC])
    assert meeting["status"] == "pending"
    assert told == sorted([("invitation", BUP)])


def test_refused_operations_by_message_are_fatal_errors_and_store_nothing(hub: Hub) -> None:
    _held(hub)
    plan, provenances = _plan(hub), _provenance_count(hub)
    before = {d.id for d in hub.deliveries()}
    focus = [f"CarePlan/{PLAN}"]
    established = parameters(*approval("Patient/alva", f.MOTHER))
    refused = [
        # the person's approval is missing
        (SOC, with_parameters("plan-established", SOC,
                               parameters(dt("approvedAt", at(hours=-1))), focus=focus),
         "approvedBy", "Bundle.entry[1].resource.parameter.where(name='approvedBy')"),
        # only the coordinating organisation drives the process
        (BUP, with_parameters("plan-established", BUP, established, focus=focus),
         "only the coordinating organisation", None),
        # the event is an operation: without its Parameters there is nothing to do
        (SOC, sip_message("plan-established", SOC, focus=focus), "Parameters", "Bundle.entry"),
        # Parameters that contradict the event
        (SOC, with_parameters("plan-established", SOC, parameters(
            code("to", "avslutad"), string("reason", "Klart")), focus=focus),
         "'avslutad'", "Bundle.entry[1].resource.parameter.where(name='to')"),
        # the event does not fit the phase
        (SOC, with_parameters("follow-up-done", SOC, established, focus=focus),
         "concludes a follow-up", None),
        # closing needs a reason
        (SOC, sip_message("sip-closed", SOC, focus=focus), "reason",
         "Bundle.entry[0].resource.reason"),
    ]
    for sender, msg, words, where in refused:
        outcome, issue = _answer(hub.post(sender, URL, msg))
        assert outcome == "fatal-error" and words in issue["diagnostics"], issue
        if where is not None:
            assert issue["expression"] == [where], issue
    assert _plan(hub) == plan
    assert _provenance_count(hub) == provenances
    assert _notifications(hub, before) == []


# -- an invited organisation answers with the Task --------------------------------------------

def _answered(task: Json, reason: str) -> Json:
    """BUP's invitation-response carrying only the answered Task."""
    return sip_message("invitation-response", BUP, task, reason=reason,
                    focus=[f"Task/{task['id']}", f"CarePlan/{PLAN}"])


def _output(kind: str, **value: Any) -> Json:
    return {"type": {"coding": [{"system": sip.CS_TASK_PARAMETER, "code": kind}]}, **value}


@pytest.mark.parametrize("via", ["rest", "parameters", "task-output", "task-note"])
def test_an_invitation_accepted_by_message_is_respond(hub: Hub, via: str) -> None:
    task_id = _invited(hub)[f.BUP]
    params = parameters(code("answer", "accept"), ref("representative", f.BUP_REPRESENTATIVE))
    task = _task(hub, task_id) | {"status": "accepted"}
    if via == "task-output":
        task["output"] = [_output("representative",
                                  valueReference={"reference": f.BUP_REPRESENTATIVE})]
    elif via == "task-note":  # the representative writes the answer
        task["note"] = [{"authorReference": {"reference": f.BUP_REPRESENTATIVE},
                         "time": at(), "text": "Sara Lind kommer."}]
    msg = (with_parameters("invitation-response", BUP, params, reason="accept",
                            focus=[f"Task/{task_id}", f"CarePlan/{PLAN}"])
           if via == "parameters" else _answered(task, "accept"))
    told = _step(hub, "rest" if via == "rest" else "message", BUP, msg,
                 f"Task/{task_id}/$respond", params)
    stored = _task(hub, task_id)
    assert stored["status"] == "accepted"
    assert [o["valueReference"] for o in stored["output"]] == [
        {"reference": f.BUP_REPRESENTATIVE}]
    if via == "task-note":
        assert stored["note"][-1]["text"] == "Sara Lind kommer."
    team = read(hub.client, f"CareTeam/{PLAN}", hub.headers[SOC])
    assert {"member": {"reference": f.BUP_REPRESENTATIVE}, "onBehalfOf": {"reference": f.BUP}
            }.items() <= next(p for p in team["participant"]
                              if p.get("onBehalfOf") == {"reference": f.BUP}).items()
    meeting = read(hub.client, stored["focus"]["reference"], hub.headers[SOC])
    bup = next(p for p in meeting["participant"] if p.get("actor") == {
        "reference": f.BUP_REPRESENTATIVE})
    assert bup["status"] == "accepted"
    assert told == sorted([("invitation-response", SCHOOL), ("invitation-response", SOC)])


def test_a_task_message_proposes_another_time_then_declines(hub: Hub) -> None:
    task_id = _invited(hub)[f.BUP]
    start, end = at(days=12), at(days=12, hours=1)
    proposing = _task(hub, task_id) | {"status": "in-progress", "output": [
        _output("proposed-time", valuePeriod={"start": start, "end": end})]}
    told = _step(hub, "message", BUP, _answered(proposing, "new-time-proposed"))
    stored = _task(hub, task_id)
    assert stored["status"] == "in-progress"
    assert stored["output"][0]["valuePeriod"] == {"start": start, "end": end}
    assert told == sorted([("invitation-response", SCHOOL), ("invitation-response", SOC)])

    why = "Ingen av våra behandlare kan komma den veckan"
    declining = stored | {"status": "rejected", "statusReason": {"text": why}}
    before = {d.id for d in hub.deliveries()}
    told = _step(hub, "message", BUP, _answered(declining, "decline"))
    stored = _task(hub, task_id)
    assert stored["status"] == "rejected" and stored["statusReason"] == {"text": why}
    # Organisations are obliged to attend: the coordinator is to follow the decline up.
    (follow_up,) = tasks(hub.client, f"code={TASK_SYSTEM}|invitation-declined",
                         hub.headers[SOC])
    assert follow_up["status"] == "requested"
    assert follow_up["owner"] == {"reference": f.SOCIAL_SERVICES}
    assert told == sorted([("invitation-response", SCHOOL), ("invitation-response", SOC)])
    sent = next(d for d in hub.deliveries() if d.id not in before)
    header = orjson.loads(sent.content)["entry"][0]["resource"]
    assert header["reason"]["coding"][0]["code"] == "decline"


def test_a_task_message_lacking_what_respond_needs_is_a_fatal_error(hub: Hub) -> None:
    task_id = _invited(hub)[f.BUP]
    task = _task(hub, task_id)
    before = {d.id for d in hub.deliveries()}
    at_task = "Bundle.entry[1].resource"
    unknown = _output("representative", valueReference={"reference": "Practitioner/okand"})
    lacking = [
        (task | {"status": "accepted"}, "accept", "representative", f"{at_task}.output"),
        (task | {"status": "accepted", "output": [unknown]}, "accept", "Practitioner known",
         f"{at_task}.output[0].valueReference"),
        (task | {"status": "rejected"}, "decline", "statusReason", f"{at_task}.statusReason"),
        (task | {"status": "in-progress"}, "new-time-proposed", "proposed-time",
         f"{at_task}.output"),
        (task | {"status": "completed"}, "accept", "not 'completed'", f"{at_task}.status"),
        (task | {"status": "rejected", "statusReason": {"text": "Nej"}}, "accept",
         "contradicts", "Bundle.entry[0].resource.reason"),
    ]
    for answered, reason, words, where in lacking:
        outcome, issue = _answer(hub.post(BUP, URL, _answered(answered, reason)))
        assert outcome == "fatal-error" and words in issue["diagnostics"], issue
        assert issue["expression"] == [where], issue
    assert _task(hub, task_id)["status"] == "requested"
    assert _notifications(hub, before) == []


# -- the answer with the $respond Parameters ---------------------------------------------------

def _respond_message(task_id: str, *params: Json, reason: str = "accept") -> Json:
    return with_parameters("invitation-response", BUP, parameters(*params), reason=reason,
                            focus=[f"Task/{task_id}", f"CarePlan/{PLAN}"])


def test_an_answer_by_message_follows_the_operations_rules(hub: Hub) -> None:
    task_id = _invited(hub, (f.BUP,))[f.BUP]
    msg = _respond_message(task_id, code("answer", "accept"))  # no representative named
    outcome, issue = _answer(hub.post(BUP, URL, msg))
    assert outcome == "fatal-error" and "representative" in issue["diagnostics"]
    assert issue["expression"] == [
        "Bundle.entry[1].resource.parameter.where(name='representative')"]
    # The answer must be the one MessageHeader.reason names.
    msg = _respond_message(task_id, code("answer", "decline"), string("reason", "Nej"))
    outcome, issue = _answer(hub.post(BUP, URL, msg))
    assert outcome == "fatal-error" and "contradicts" in issue["diagnostics"]
    assert _task(hub, task_id)["status"] == "requested"
    # Only the invited organisation answers its invitation.
    other = _respond_message(task_id, code("answer", "decline"), string("reason", "Nej"),
                             reason="decline")
    other["entry"][0]["resource"]["sender"]["identifier"]["value"] = SOC
    outcome, _ = _answer(hub.post(SOC, URL, other))
    assert outcome == "fatal-error"
    assert _task(hub, task_id)["status"] == "requested"


# -- delivery and asynchronous processing -----------------------------------------------------

@BOTH_BROKERS
def test_the_participants_systems_receive_what_an_operation_by_message_caused(
        hub: Hub, receivers: Any) -> None:
    soc, bup, school, outsider = receivers(), receivers(), receivers(), receivers()
    hub.configure({SOC: soc.url, BUP: bup.url, SCHOOL: school.url, OUTSIDER: outsider.url})
    _invited(hub, (f.BUP,))
    outcome, issue = _answer(hub.post(SOC, URL, sip_message(
        "sip-closed", SOC, focus=[f"CarePlan/{PLAN}"], because="Behovet finns inte längre")))
    assert outcome == "ok", issue

    def events(r: Any) -> list[str]:
        return [m["entry"][0]["resource"]["eventCoding"]["code"] for m in r.received]
    hub.rounds(until=lambda: "sip-closed" in events(bup) and "meeting-cancelled" in events(soc))
    (closed,) = [m for m in bup.received
                 if m["entry"][0]["resource"]["eventCoding"]["code"] == "sip-closed"]
    plan = next(e["resource"] for e in closed["entry"]
                if e["resource"]["resourceType"] == "CarePlan")
    assert phase(plan) == "avslutad"
    assert school.received == [] and outsider.received == []
    assert not [d for d in hub.deliveries() if d.dest_org in (SCHOOL, OUTSIDER)]


def test_an_operation_sent_asynchronously_notifies_once_processed(hub: Hub) -> None:
    _invited(hub, (f.BUP,))
    before = {d.id for d in hub.deliveries()}
    r = hub.post(SOC, URL + "?async=true", sip_message(
        "sip-closed", SOC, focus=[f"CarePlan/{PLAN}"], because="Alva har flyttat"))
    assert r.status_code == 202, r.text
    assert phase(_plan(hub)) == "kallelse"
    assert process_accepted(hub.store, hub.messaging) == 1
    plan = _plan(hub)
    assert phase(plan) == "avslutad"
    assert _provenance_of(hub, plan)["reason"] == [{"text": "Alva har flyttat"}]
    assert ("sip-closed", BUP) in _notifications(hub, before)
    (response,) = [d for d in hub.deliveries()
                   if d.id not in before and d.event == "acknowledgement"]
    assert response.dest_org == SOC
    assert orjson.loads(response.content)["entry"][0]["resource"]["response"]["code"] == "ok"

