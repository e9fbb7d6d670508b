"""Probing the later SIP lifecycle carried by messages (``POST /fhir/$process-message``):
plan established, revisions (rule 3), insats status, consent changes while deliveries wait
(rule 1), follow-up, closing (avslut) and meetings, as a coordinator, a participating
organisation and a privacy officer would try to break them."""

from __future__ import annotations

import copy
import uuid
from typing import Any

import orjson
import pytest

import sip_factory as f
from harness import (BUP, OUTSIDER, SCHOOL, SOC, URL, Hub, broker, current_plan,  # noqa: F401
                     hub, receivers, status_change, world)
from harness import outcome_of, sip_message, with_parameters
from test_operations_by_message import _established, _held, _ok
from sip_hub.messaging import vocabulary as vocab
from sip_hub.store import outbox as sql
from sip_process import (approval, at, day, parameters, phase, read, ref, string,
                         transition)

Json = dict[str, Any]
PLAN = "alva-sip"
ORG_REF = {SOC: f.SOCIAL_SERVICES, BUP: f.BUP, SCHOOL: f.SCHOOL}


# -- helpers ----------------------------------------------------------------------------------









def _resent(msg: Json) -> Json:
    """The same message (MessageHeader.id) in a new Bundle: a resubmission."""
    out = copy.deepcopy(msg)
    out["id"] = str(uuid.uuid4())
    return out


def _plan(hub: Hub) -> Json:
    return read(hub.client, f"CarePlan/{PLAN}", hub.headers[SOC])


def _events_since(hub: Hub, before: set[str]) -> list[tuple[str, str]]:
    return sorted((d.event, d.dest_org) for d in hub.deliveries()
                  if d.id not in before and d.kind == sql.NOTIFICATION)


def _ids(hub: Hub) -> set[str]:
    return {d.id for d in hub.deliveries()}


def _provenances(hub: Hub) -> int:
    b = read(hub.client, f"Provenance?target=CarePlan/{PLAN}&_summary=count", hub.headers[SOC])
    total: int = b["total"]
    return total


def _event_of(m: Json) -> str:
    code_: str = m["entry"][0]["resource"]["eventCoding"]["code"]
    return code_


# -- Alva's SIP driven over REST by its coordinator --------------------------------------------







def _closed(hub: Hub) -> None:
    _established(hub)
    _ok(transition(hub.client, hub.headers[SOC], PLAN, "avslutad",
                   string("reason", "Alva behöver inte längre någon SIP")))


def _revision(hub: Hub, text: str = "Familjebehandling varannan vecka.") -> Json:
    revision = _plan(hub)
    revision.pop("meta")
    revision["activity"][2]["detail"]["description"] = text
    return revision


def _proposal_message(hub: Hub, text: str = "Familjebehandling varannan vecka.") -> Json:
    proposed = _revision(hub, text) | {"id": "andring-1", "intent": "proposal",
                                       "status": "draft",
                                       "replaces": [{"reference": f"CarePlan/{PLAN}"}]}
    return sip_message("plan-revision-proposed", SOC, proposed,
                    focus=["CarePlan/andring-1", f"CarePlan/{PLAN}"])


def _proposals(hub: Hub) -> list[Json]:
    found = read(hub.client, f"CarePlan?replaces=CarePlan/{PLAN}", hub.headers[SOC])
    return [e["resource"] for e in found.get("entry", [])]


def _approval_message(proposal_id: str, **kw: Any) -> Json:
    return with_parameters("revision-approved", SOC, parameters(
        ref("revision", f"CarePlan/{proposal_id}"), *approval("Patient/alva", f.MOTHER)),
        focus=[f"CarePlan/{PLAN}"], **kw)


def _set_consent(hub: Hub, actors: tuple[str, ...], status: str = "active") -> Json:
    return f.sip_consent(actor_refs=[ORG_REF[o] for o in (SOC, *actors)] + [f.MOTHER],
                         status=status, start=day(-10), end=day(365))


def _consent_message(consent: Json, reason: str,
                     destinations: tuple[str, ...] = (BUP, SCHOOL)) -> Json:
    return sip_message("consent-changed", SOC, consent, reason=reason,
                    focus=[f"Consent/{consent['id']}", "Patient/alva"],
                    destinations=destinations)


# -- out-of-phase and out-of-role events: refused, nothing stored, nothing routed ---------------

def _refused(hub: Hub, sender: str, msg: Json, words: str) -> None:
    plan, provenances, before = _plan(hub), _provenances(hub), _ids(hub)
    outcome, says = outcome_of(hub.post(sender, URL, msg))
    assert outcome == vocab.FATAL_ERROR and words in says, says
    assert _plan(hub) == plan
    assert _provenances(hub) == provenances
    assert _events_since(hub, before) == []


def test_a_revision_approved_before_any_was_proposed_is_refused(hub: Hub) -> None:
    _established(hub)
    _refused(hub, SOC, _approval_message("finns-inte"), "finns-inte")
    # Approving the plan itself as its own revision is no revision either.
    _refused(hub, SOC, _approval_message(PLAN), "not a proposed revision")


def test_a_revision_approved_twice_is_refused_the_second_time(hub: Hub) -> None:
    _established(hub)
    outcome, says = outcome_of(hub.post(SOC, URL, _proposal_message(hub)))
    assert outcome == vocab.OK, says
    (proposal,) = _proposals(hub)
    outcome, says = outcome_of(hub.post(SOC, URL, _approval_message(proposal["id"])))
    assert outcome == vocab.OK, says
    # A new message (new ids) approving the same, now completed, proposal.
    _refused(hub, SOC, _approval_message(proposal["id"]), "completed")


def test_establishing_an_established_plan_again_is_refused(hub: Hub) -> None:
    _established(hub)
    msg = with_parameters("plan-established", SOC,
                           parameters(*approval("Patient/alva", f.MOTHER)),
                           focus=[f"CarePlan/{PLAN}"])
    _refused(hub, SOC, msg, "cannot move to 'upprattad'")


def test_lifecycle_events_on_a_closed_sip_are_refused(hub: Hub) -> None:
    _established(hub)
    outcome, says = outcome_of(hub.post(SOC, URL, _proposal_message(hub)))
    assert outcome == vocab.OK, says
    (proposal,) = _proposals(hub)
    _ok(transition(hub.client, hub.headers[SOC], PLAN, "avslutad",
                   string("reason", "Alva har flyttat")))
    assert [p["status"] for p in _proposals(hub)] == ["revoked"]
    approved = parameters(*approval("Patient/alva", f.MOTHER))
    for msg, words in [
        (with_parameters("follow-up-done", SOC, approved, focus=[f"CarePlan/{PLAN}"]),
         "avslutad"),
        (with_parameters("plan-established", SOC, approved, focus=[f"CarePlan/{PLAN}"]),
         "avslutad"),
        (sip_message("sip-closed", SOC, focus=[f"CarePlan/{PLAN}"], because="Igen"),
         "avslutad"),
        (_approval_message(proposal["id"]), "avslutad"),
        (_proposal_message(hub, "Något nytt."), "avslutad"),
    ]:
        _refused(hub, SOC, msg, words)


def test_only_the_coordinator_drives_the_lifecycle_by_message(hub: Hub) -> None:
    _established(hub)
    msg = _proposal_message(hub)
    msg["entry"][0]["resource"]["sender"]["identifier"]["value"] = BUP
    _refused(hub, BUP, msg, "only the coordinating organisation")
    closing = sip_message("sip-closed", BUP, focus=[f"CarePlan/{PLAN}"], because="BUP vill")
    _refused(hub, BUP, closing, "only the coordinating organisation")


def test_an_insats_status_changed_by_an_organisation_not_its_performer_is_refused(
        world: Hub) -> None:
    # The school changes BUP's insats (index 0): not its own.
    msg = status_change(world, sender=SCHOOL, status="cancelled", insats=0)
    before = _ids(world)
    outcome, says = outcome_of(world.post(SCHOOL, URL, msg))
    assert outcome == vocab.FATAL_ERROR, says
    assert "coordinating organisation" in says
    assert current_plan(world)["meta"]["versionId"] == "1"
    assert _events_since(world, before) == []


# -- consent changed by message -----------------------------------------------------------------

@pytest.mark.parametrize("actors, status, reason", [
    ((BUP, SCHOOL), "inactive", vocab.WITHDRAWN),
    ((BUP,), "active", vocab.NARROWED),
])
def test_narrowing_or_withdrawing_the_consent_by_message_to_the_participants_is_taken(
        world: Hub, actors: tuple[str, ...], status: str, reason: str) -> None:
    """The coordinator tells the participants' systems, as they were addressed before, that
    the person narrowed or withdrew the consent. The person may withdraw at any time (rules 1
    and 2): the change must be stored; the organisations it no longer covers are not sent the
    message (nothing more is shared with them)."""
    before = _ids(world)
    consent = _set_consent(world, actors, status=status)
    outcome, says = outcome_of(world.post(SOC, URL, _consent_message(consent, reason)))
    assert outcome == vocab.OK, says
    stored = read(world.client, f"Consent/{consent['id']}", world.headers[SOC])
    assert stored["status"] == status
    assert _events_since(world, before) == [(vocab.CONSENT_CHANGED, o) for o in actors
                                            if status == "active"]


def _receiving(world: Hub, receivers: Any) -> dict[str, Any]:
    endpoint = {org: receivers() for org in (SOC, BUP, SCHOOL, OUTSIDER)}
    world.configure({org: r.url for org, r in endpoint.items()})
    world.rounds(lambda: all(d.state not in sql.OPEN for d in world.deliveries()))
    for r in endpoint.values():
        r.received.clear()
    return endpoint


def _settle(world: Hub) -> None:
    world.rounds(lambda: all(d.state not in sql.OPEN for d in world.deliveries()))


def test_a_consent_narrowed_by_message_stops_what_waits_for_the_removed_organisation(
        world: Hub, receivers: Any) -> None:
    endpoint = _receiving(world, receivers)
    first = world.post(BUP, URL, status_change(world, status="completed"))
    assert outcome_of(first)[0] == vocab.OK
    assert world.relay() >= 1  # on the bus for the school, not delivered yet
    second = world.post(BUP, URL, status_change(world, status="on-hold"))
    assert outcome_of(second)[0] == vocab.OK  # waiting behind the first
    narrowed = _set_consent(world, (BUP,))
    outcome, says = outcome_of(world.post(SOC, URL, _consent_message(
        narrowed, vocab.NARROWED, destinations=(BUP,))))
    assert outcome == vocab.OK, says
    _settle(world)
    assert endpoint[SCHOOL].received == []
    assert {d.state for d in world.deliveries() if d.dest_org == SCHOOL
            and d.event == vocab.INSATS_STATUS_CHANGED} == {sql.WITHDRAWN}
    assert [_event_of(m) for m in endpoint[SOC].received] == [vocab.INSATS_STATUS_CHANGED] * 2
    assert [_event_of(m) for m in endpoint[BUP].received] == [vocab.CONSENT_CHANGED]

    # Later messages do not reach the school either.
    third = world.post(BUP, URL, status_change(world, status="completed"))
    assert outcome_of(third)[0] == vocab.OK
    _settle(world)
    assert endpoint[SCHOOL].received == []

    # Granted again: the school hears of it and of what comes next, never of what was
    # withdrawn meanwhile.
    granted = _set_consent(world, (BUP, SCHOOL))
    outcome, says = outcome_of(world.post(SOC, URL, _consent_message(granted, vocab.GRANTED)))
    assert outcome == vocab.OK, says
    fourth = world.post(BUP, URL, status_change(world, status="in-progress"))
    assert outcome_of(fourth)[0] == vocab.OK
    _settle(world)
    assert [_event_of(m) for m in endpoint[SCHOOL].received] == [
        vocab.CONSENT_CHANGED, vocab.INSATS_STATUS_CHANGED]
    assert endpoint[SCHOOL].received[0]["entry"][0]["resource"]["reason"]["coding"][0][
        "code"] == vocab.GRANTED
    carried = [e["resource"] for e in endpoint[SCHOOL].received[1]["entry"]
               if e["resource"]["resourceType"] == "CarePlan"]
    assert [c["activity"][0]["detail"]["status"] for c in carried] == ["in-progress"]
    assert endpoint[OUTSIDER].received == []
    for r in endpoint.values():
        assert len(r.header_ids) == len(set(r.header_ids))


# -- a closed SIP refuses further changes, by message and by REST alike -------------------------

def _own_status(hub: Hub, status: str) -> Json:
    plan = _plan(hub)
    plan.pop("meta")
    plan["activity"][0]["detail"]["status"] = status  # BUP's insats
    return plan


@pytest.mark.parametrize("via", ["rest", "message"])
def test_an_insats_status_on_a_closed_sip_is_not_changed(hub: Hub, via: str) -> None:
    _closed(hub)
    plan, before = _plan(hub), _ids(hub)
    changed = _own_status(hub, "completed")
    if via == "rest":
        r = hub.put(BUP, changed)
        assert r.status_code in (403, 409), r.text
    else:
        msg = sip_message("insats-status-changed", BUP, changed, focus=[f"CarePlan/{PLAN}"])
        outcome, says = outcome_of(hub.post(BUP, URL, msg))
        assert outcome == vocab.FATAL_ERROR, says
    assert _plan(hub) == plan
    assert _events_since(hub, before) == []


def _meeting(hub: Hub) -> Json:
    b = read(hub.client, "Appointment?patient=Patient/alva", hub.headers[SOC])
    (appt,) = [e["resource"] for e in b["entry"]]
    appt.pop("meta")
    return appt


@pytest.mark.parametrize("via", ["rest", "message"])
def test_a_meeting_of_a_closed_sip_is_not_rescheduled(hub: Hub, via: str) -> None:
    _closed(hub)
    appt, before = _meeting(hub), _ids(hub)
    moved = appt | {"status": "booked", "start": at(days=20), "end": at(days=20, hours=1)}
    if via == "rest":
        r = hub.put(SOC, moved)
        assert r.status_code in (403, 409), r.text
    else:
        msg = sip_message("meeting-rescheduled", SOC, moved,
                       focus=[f"Appointment/{appt['id']}", f"CarePlan/{PLAN}"])
        outcome, says = outcome_of(hub.post(SOC, URL, msg))
        assert outcome == vocab.FATAL_ERROR, says
    assert _meeting(hub) == appt
    assert _events_since(hub, before) == []


# -- reliable messaging: a resubmitted lifecycle message has no second effect -------------------

def test_resubmitted_lifecycle_messages_have_no_second_effect(hub: Hub) -> None:
    _established(hub)
    proposing = _proposal_message(hub)
    first = outcome_of(hub.post(SOC, URL, proposing))
    assert first[0] == vocab.OK, first
    provenances, notes = _provenances(hub), len(_events_since(hub, set()))
    again = hub.post(SOC, URL, _resent(proposing))
    assert outcome_of(again) == first
    assert len(_proposals(hub)) == 1
    (proposal,) = _proposals(hub)

    approving = _approval_message(proposal["id"])
    first = outcome_of(hub.post(SOC, URL, approving))
    assert first[0] == vocab.OK, first
    plan, provenances = _plan(hub), _provenances(hub)
    notes = len(_events_since(hub, set()))
    for msg in (approving, _resent(approving)):
        assert outcome_of(hub.post(SOC, URL, msg)) == first
    assert _plan(hub) == plan and _provenances(hub) == provenances
    assert len(_events_since(hub, set())) == notes

    closing = sip_message("sip-closed", SOC, focus=[f"CarePlan/{PLAN}"], because="Klart")
    first = outcome_of(hub.post(SOC, URL, closing))
    assert first[0] == vocab.OK, first
    plan, provenances = _plan(hub), _provenances(hub)
    notes = len(_events_since(hub, set()))
    assert outcome_of(hub.post(SOC, URL, _resent(closing))) == first
    assert _plan(hub) == plan and _provenances(hub) == provenances
    assert len(_events_since(hub, set())) == notes


def test_a_refused_lifecycle_message_resent_is_refused_alike(hub: Hub) -> None:
    """A fatal-error is remembered: resent unchanged after the SIP moved on, it is not taken
    (the sender was told not to resend it unchanged)."""
    _held(hub)
    msg = with_parameters("follow-up-done", SOC, parameters(*approval("Patient/alva",
                                                                      f.MOTHER)),
                           focus=[f"CarePlan/{PLAN}"])
    first = outcome_of(hub.post(SOC, URL, msg))
    assert first[0] == vocab.FATAL_ERROR
    _ok(transition(hub.client, hub.headers[SOC], PLAN, "upprattad",
                   *approval("Patient/alva", f.MOTHER)))
    _ok(transition(hub.client, hub.headers[SOC], PLAN, "uppfoljning"))
    plan = _plan(hub)
    assert outcome_of(hub.post(SOC, URL, _resent(msg))) == first
    assert _plan(hub) == plan


# -- every covered participant gets each message once, in order, with what the store holds ------

def _carried_plan(m: Json) -> Json:
    (plan,) = [e["resource"] for e in m["entry"]
               if e["resource"]["resourceType"] == "CarePlan"
               and e["resource"].get("intent") == "plan"]
    return plan


def test_the_lifecycle_reaches_each_participant_once_in_order_as_stored(
        hub: Hub, receivers: Any) -> None:
    endpoint = {org: receivers() for org in (SOC, BUP, SCHOOL, OUTSIDER)}
    hub.configure({org: r.url for org, r in endpoint.items()})
    _established(hub)
    _settle(hub)
    for r in endpoint.values():
        r.received.clear()
    stored: dict[str, Json] = {}

    def send(msg: Json) -> None:
        outcome, says = outcome_of(hub.post(SOC, URL, msg))
        assert outcome == vocab.OK, says

    send(_proposal_message(hub, "Familjebehandling varannan vecka."))
    (proposal,) = _proposals(hub)
    send(_approval_message(proposal["id"]))
    stored["revision-approved"] = _plan(hub)
    changed = _own_status(hub, "completed")
    outcome, says = outcome_of(hub.post(BUP, URL, sip_message(
        "insats-status-changed", BUP, changed, focus=[f"CarePlan/{PLAN}"],
        destinations=(SOC, SCHOOL))))
    assert outcome == vocab.OK, says
    stored["insats-status-changed"] = _plan(hub)
    send(sip_message("sip-closed", SOC, focus=[f"CarePlan/{PLAN}"], because="Klart"))
    stored["sip-closed"] = _plan(hub)
    _settle(hub)

    want = ["plan-revision-proposed", "revision-approved", "insats-status-changed",
            "sip-closed"]
    assert [_event_of(m) for m in endpoint[SCHOOL].received] == want
    assert [_event_of(m) for m in endpoint[BUP].received] == [
        e for e in want if e != "insats-status-changed"]
    assert [_event_of(m) for m in endpoint[SOC].received] == ["insats-status-changed"]
    assert endpoint[OUTSIDER].received == []
    for org in (BUP, SCHOOL):
        for m in endpoint[org].received:
            event = _event_of(m)
            if event in stored:
                carried = _carried_plan(m)
                assert carried["meta"]["versionId"] == stored[event]["meta"]["versionId"]
                assert carried["activity"] == stored[event]["activity"], (org, event)


def _follow_up(plan: Json) -> str:
    date: str = next(e["valueDateTime"] for e in plan["extension"]
                     if e["url"].endswith("/sip-follow-up"))
    return date


def test_a_follow_up_concluded_with_a_revised_date_tells_the_participants(hub: Hub) -> None:
    """In uppfoljning the coordinator agrees the next follow-up date with the person (a
    revision approved) and concludes the follow-up. The participants are told that the
    revision they were sent was approved, what the new date is, and that the follow-up is
    done."""
    _established(hub)
    _ok(transition(hub.client, hub.headers[SOC], PLAN, "uppfoljning"))
    revision = _plan(hub)
    revision.pop("meta")
    for e in revision["extension"]:
        if e["url"].endswith("/sip-follow-up"):
            e["valueDateTime"] = at(days=200)
    revision = {k: v for k, v in revision.items()} | {
        "id": "andring-2", "intent": "proposal", "status": "draft",
        "replaces": [{"reference": f"CarePlan/{PLAN}"}]}
    before = _ids(hub)
    outcome, says = outcome_of(hub.post(SOC, URL, sip_message(
        "plan-revision-proposed", SOC, revision,
        focus=["CarePlan/andring-2", f"CarePlan/{PLAN}"])))
    assert outcome == vocab.OK, says
    (proposal,) = _proposals(hub)
    outcome, says = outcome_of(hub.post(SOC, URL, _approval_message(proposal["id"])))
    assert outcome == vocab.OK, says
    assert _follow_up(_plan(hub)) == _follow_up(revision)
    outcome, says = outcome_of(hub.post(SOC, URL, with_parameters(
        "follow-up-done", SOC, parameters(*approval("Patient/alva", f.MOTHER)),
        focus=[f"CarePlan/{PLAN}"])))
    assert outcome == vocab.OK, says
    told = [e for e, o in _events_since(hub, before) if o == BUP]
    assert sorted(told) == sorted(["plan-revision-proposed", "revision-approved",
                                   "follow-up-scheduled", "follow-up-done"]), told
    (approved,) = [d for d in hub.deliveries() if d.id not in before
                   and d.dest_org == BUP and d.event == "revision-approved"]
    assert _follow_up(_carried_plan(orjson.loads(approved.content))) == _follow_up(revision)


# -- what a lifecycle message carries is what is stored and told --------------------------------

def test_a_revision_sent_as_an_insats_status_change_is_refused(world: Hub) -> None:
    """The coordinator cannot slip a change of what the plan decides past the person (rule 3)
    by calling it an insats status change."""
    plan = current_plan(world)
    plan.pop("meta")
    plan["activity"][2]["detail"]["status"] = "in-progress"
    plan["activity"][2]["detail"]["description"] = "Familjebehandling en gång i månaden."
    before = _ids(world)
    outcome, says = outcome_of(world.post(SOC, URL, sip_message(
        "insats-status-changed", SOC, plan, focus=[f"CarePlan/{PLAN}"])))
    assert outcome == vocab.FATAL_ERROR and "approval" in says, says
    assert current_plan(world)["meta"]["versionId"] == "1"
    assert _events_since(world, before) == []


def test_a_stale_status_change_does_not_undo_a_participants_report(world: Hub) -> None:
    """BUP reports its insats completed; the coordinator's system, holding the plan as it was
    (version 1, as its meta says), then reports the coordinator's own insats. BUP's report
    must not be silently undone (and told to everyone as the news)."""
    stale = current_plan(world)
    assert outcome_of(world.post(BUP, URL, status_change(world, status="completed")))[0] == "ok"
    assert current_plan(world)["activity"][0]["detail"]["status"] == "completed"
    stale["activity"][2]["detail"]["status"] = "in-progress"
    outcome, says = outcome_of(world.post(SOC, URL, sip_message(
        "insats-status-changed", SOC, stale, focus=[f"CarePlan/{PLAN}"],
        destinations=(BUP, SCHOOL))))
    assert current_plan(world)["activity"][0]["detail"]["status"] == "completed", (
        outcome, says)


def test_a_consent_change_is_not_carried_under_another_event(world: Hub) -> None:
    """The participants' systems act on the event: a consent narrowed inside a message that
    says insats-status-changed would leave them unaware that the consent changed (and the
    hub's own consent-changed notification is not sent for a message's writes)."""
    plan = current_plan(world)
    plan.pop("meta")
    narrowed = _set_consent(world, (BUP,))
    msg = sip_message("insats-status-changed", SOC, plan, narrowed,
                   focus=[f"CarePlan/{PLAN}"], destinations=(BUP,))
    before = _ids(world)
    outcome, says = outcome_of(world.post(SOC, URL, msg))
    stored = read(world.client, f"Consent/{narrowed['id']}", world.headers[SOC])
    told = _events_since(world, before)
    # Either refused and nothing stored, or stored and the change told as what it is.
    if outcome == vocab.OK:
        assert (vocab.CONSENT_CHANGED, BUP) in told, (told, says)
    else:
        assert len(stored["provision"]["actor"]) == 4 and told == [], says


def test_a_refused_carried_plan_is_named_by_its_place_in_the_message(world: Hub) -> None:
    """The fatal-error names the element of the message that is refused: the CarePlan is
    Bundle.entry[1] of the message (entry[0] is the MessageHeader)."""
    msg = status_change(world, sender=SCHOOL, status="cancelled", insats=0)
    r = world.post(SCHOOL, URL, msg)
    assert r.status_code == 200, r.text
    (oo,) = [e["resource"] for e in r.json()["entry"]
             if e["resource"]["resourceType"] == "OperationOutcome"]
    issue = oo["issue"][0]
    where = issue["diagnostics"] + str(issue.get("expression"))
    assert "Bundle.entry[1]" in where and "Bundle.entry[0]" not in where, issue


# -- the person withdraws the consent, then ends the SIP ----------------------------------------

def test_without_consent_the_plan_is_not_revised(hub: Hub) -> None:
    _established(hub)
    _ok(transition(hub.client, hub.headers[SOC], PLAN, "uppfoljning"))
    r = hub.put(SOC, _set_consent(hub, (BUP, SCHOOL), status="inactive"))
    assert r.status_code == 200, r.text
    _refused(hub, SOC, _proposal_message(hub), "consent")
    approved = parameters(*approval("Patient/alva", f.MOTHER))
    _refused(hub, SOC, with_parameters("follow-up-done", SOC, approved,
                                        focus=[f"CarePlan/{PLAN}"]), "consent")


def test_without_consent_the_sip_is_closed_by_message_as_by_rest(hub: Hub) -> None:
    _established(hub)
    r = hub.put(SOC, _set_consent(hub, (BUP, SCHOOL), status="inactive"))
    assert r.status_code == 200, r.text
    before = _ids(hub)
    # Rule 2: the person may end the SIP at any time, consent or not ($transition needs no
    # consent to close); the coordinator's system addresses the participants' as usual.
    closing = sip_message("sip-closed", SOC, focus=[f"CarePlan/{PLAN}"], because="Alva vill",
                       destinations=(BUP, SCHOOL))
    outcome, says = outcome_of(hub.post(SOC, URL, closing))
    assert outcome == vocab.OK, says
    assert phase(_plan(hub)) == "avslutad"
    assert [o for _, o in _events_since(hub, before) if o in (BUP, SCHOOL)] == []


# -- what the fixes above keep: a carried version, an event and an entry named as they are ------

def _issues(resp: Any) -> list[Json]:
    assert resp.status_code == 200, resp.text
    (oo,) = [e["resource"] for e in resp.json()["entry"]
             if e["resource"]["resourceType"] == "OperationOutcome"]
    issues: list[Json] = oo["issue"]
    return issues


def _soc_insats(plan: Json, status: str) -> Json:
    plan["activity"][2]["detail"]["status"] = status  # the social services' own insats
    return plan


def test_a_stale_copy_is_a_version_conflict_and_the_current_one_is_taken(world: Hub) -> None:
    stale = current_plan(world)
    assert outcome_of(world.post(BUP, URL, status_change(world, status="completed")))[0] == "ok"
    before, plan = _ids(world), current_plan(world)
    r = world.post(SOC, URL, sip_message("insats-status-changed", SOC,
                                      _soc_insats(stale, "in-progress"),
                                      focus=[f"CarePlan/{PLAN}"], destinations=(BUP, SCHOOL)))
    (issue,) = _issues(r)
    assert r.json()["entry"][0]["resource"]["response"]["code"] == vocab.FATAL_ERROR
    assert issue["expression"] == ["Bundle.entry[1].resource.meta.versionId"], issue
    assert "Version conflict" in issue["diagnostics"] and "version 2" in issue["diagnostics"]
    assert current_plan(world) == plan and _events_since(world, before) == []
    # The same change made to the version the hub holds (as its meta says) is taken.
    outcome, says = outcome_of(world.post(SOC, URL, sip_message(
        "insats-status-changed", SOC, _soc_insats(current_plan(world), "in-progress"),
        focus=[f"CarePlan/{PLAN}"], destinations=(BUP, SCHOOL))))
    assert outcome == vocab.OK, says
    now = current_plan(world)
    assert now["meta"]["versionId"] == "3"
    assert [a["detail"]["status"] for a in now["activity"][::2]] == ["completed", "in-progress"]
    assert _events_since(world, before) == sorted([(vocab.INSATS_STATUS_CHANGED, BUP),
                                                   (vocab.INSATS_STATUS_CHANGED, SCHOOL)])


def test_a_consent_change_under_another_event_is_refused_naming_it(world: Hub) -> None:
    plan, consent = current_plan(world), read(world.client, "Consent/alva-sip-samtycke",
                                              world.headers[SOC])
    plan.pop("meta")
    narrowed = _set_consent(world, (BUP,))
    before = _ids(world)
    r = world.post(SOC, URL, sip_message("insats-status-changed", SOC, plan, narrowed,
                                      focus=[f"CarePlan/{PLAN}"], destinations=(BUP,)))
    (issue,) = _issues(r)
    assert r.json()["entry"][0]["resource"]["response"]["code"] == vocab.FATAL_ERROR
    assert issue["expression"] == ["Bundle.entry[2].resource"], issue
    assert "consent-changed (narrowed)" in issue["diagnostics"]
    assert "status of one of its interventions" in issue["diagnostics"]  # what it may change
    # Nor is a consent narrowed told as granted: the receivers act on the sub-code.
    r = world.post(SOC, URL, _consent_message(narrowed, vocab.GRANTED, destinations=(BUP,)))
    (issue,) = _issues(r)
    assert issue["expression"] == ["Bundle.entry[0].resource.reason"], issue
    assert "consent-changed (narrowed)" in issue["diagnostics"]
    assert read(world.client, "Consent/alva-sip-samtycke", world.headers[SOC]) == consent
    assert _events_since(world, before) == []


@pytest.mark.parametrize("via", ["rest", "message"])
def test_a_narrowed_consent_is_told_to_those_it_still_covers_only(world: Hub, via: str) -> None:
    """Rule 1, by REST and by message alike: the school, no longer covered, is not told."""
    before = _ids(world)
    narrowed = _set_consent(world, (BUP,))
    if via == "rest":
        assert world.put(SOC, narrowed).status_code == 200
    else:
        outcome, says = outcome_of(world.post(SOC, URL, _consent_message(narrowed,
                                                                      vocab.NARROWED)))
        assert outcome == vocab.OK, says
    assert _events_since(world, before) == [(vocab.CONSENT_CHANGED, BUP)]


def test_a_consent_change_to_an_organisation_taking_no_part_is_refused(world: Hub) -> None:
    consent = read(world.client, "Consent/alva-sip-samtycke", world.headers[SOC])
    before = _ids(world)
    narrowed = _set_consent(world, (BUP,))
    r = world.post(SOC, URL, _consent_message(narrowed, vocab.NARROWED,
                                              destinations=(BUP, OUTSIDER)))
    (issue,) = _issues(r)
    assert issue["expression"] == ["Bundle.entry[0].resource.destination"], issue
    assert OUTSIDER in issue["diagnostics"] and "no part" in issue["diagnostics"]
    assert read(world.client, "Consent/alva-sip-samtycke", world.headers[SOC]) == consent
    assert _events_since(world, before) == []


def test_a_refused_entry_is_named_by_its_place_also_after_unchanged_ones(world: Hub) -> None:
    """The unchanged Patient the message carries first is not written: the refused plan is
    still Bundle.entry[2], and the rule's element is named within it."""
    patient = read(world.client, "Patient/alva", world.headers[SOC])
    patient.pop("meta")
    plan = current_plan(world)
    plan.pop("meta")
    plan["status"] = "completed"  # a plan's status follows its phase
    before = _ids(world)
    r = world.post(SOC, URL, sip_message("insats-status-changed", SOC, patient, plan,
                                      focus=[f"CarePlan/{PLAN}"]))
    (issue,) = _issues(r)
    assert issue["expression"] == ["Bundle.entry[2].resource.status"], issue
    assert issue["diagnostics"].startswith("Bundle.entry[2]: "), issue
    assert current_plan(world)["meta"]["versionId"] == "1"
    assert _events_since(world, before) == []


def test_a_resource_new_to_the_hub_is_taken_whatever_version_it_was_sent_as(
        world: Hub) -> None:
    """A meta.versionId of a resource the hub does not hold is the sender's own numbering,
    not a version of the hub's: it guards nothing."""
    consent = _set_consent(world, (BUP, SCHOOL)) | {"id": "nytt-samtycke",
                                                   "meta": {"versionId": "7"}}
    before = _ids(world)
    outcome, says = outcome_of(world.post(SOC, URL, _consent_message(consent, vocab.GRANTED)))
    assert outcome == vocab.OK, says
    stored = read(world.client, "Consent/nytt-samtycke", world.headers[SOC])
    assert stored["meta"]["versionId"] == "1"
    assert _events_since(world, before) == sorted([(vocab.CONSENT_CHANGED, BUP),
                                                   (vocab.CONSENT_CHANGED, SCHOOL)])
