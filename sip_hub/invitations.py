"""Invitations to the SIP meeting (kallelse) and the invited organisations' answers.

``POST /fhir/CarePlan/{id}/$invite`` (the coordinating organisation). Input (Parameters):

====================  =======================================  =====  =========================
name                  type                                     card.  notes
====================  =======================================  =====  =========================
appointment           Reference(Appointment)                   0..1   invite more to a meeting
                                                                      of this plan; else:
start, end            dateTime with time and zone              1..1   a new meeting
place                 string                                   1..1   where it is held
description           string                                   0..1
answerBy              dateTime                                 0..1   default: two days
                                                                      before the start
meetingWishes         parts: place, timeOfDay, disturbances,   0..1   the person's wishes
                      environment (string), maxDuration               (a Coding: of the code
                      (Duration, UCUM s|min|h), support               system the code is
                      (parts: type code interpreter|                  bound to)
                      picture-support|other, language code
                      (BCP-47), description string) 0..*
invitedOrganization   parts: organization Reference            0..*   each gets a Task
                      (Organization) 1..1, profession
                      (CodeableConcept, Coding or string) 0..1
invitedPerson         Reference(RelatedPerson)                 0..*
====================  =======================================  =====  =========================

Output: ``appointment``, ``careTeam``, ``task`` (0..*) and, when the plan moved from
kartläggning to kallelse, ``carePlan`` and ``provenance``.

Invitations carry personal data, so the person's consent must cover every invited
organisation (rule 1); the organisations join the SIP CareTeam at once (as participants whose
representative is not yet named) so that the consent lets them read their invitation and
prepare (the kartläggning is readable by participants, rule 8).

``POST /fhir/Task/{id}/$respond`` (the invited organisation, the Task's owner). Input:
``answer`` (code ``accept`` | ``propose-time`` | ``decline``, 1..1), ``representative``
(Reference(Practitioner), for accept: the inviter may wish for a profession, the organisation
chooses the person), ``start`` and ``end`` (dateTime, for propose-time), ``reason`` (string,
for decline), ``comment`` (string, 0..1). Output: ``task``, ``appointment``, ``careTeam``
(accept), ``followUpTask`` (decline: the coordinator's Task to follow up, since invited
organisations are obliged to attend, rule 6). The Task becomes accepted, in-progress (a time
proposed) or rejected; the organisation's participant in the Appointment accepted, tentative
or declined; the meeting is booked once every invited organisation and person has accepted.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from . import deadlines, identifiers, parameters, process as sp
from .access import org_hsa
from .errors import BadRequest, Forbidden
from .fhir import profiles, sip
from .fhir.dates import format_instant, from_us, to_us
from .operation import Operation, audited, ref
from .parameters import Param, Params
from .store import Stored
from .transitions import move, sip_plan

Json = dict[str, Any]

_SUPPORT = (Param("type", ("valueCode", "valueCoding"), required=True),
            Param("language", ("valueCode", "valueCoding")),
            Param("description", ("valueString",)))
_WISHES = (Param("place", ("valueString",)), Param("timeOfDay", ("valueString",)),
           Param("maxDuration", ("valueDuration",)), Param("disturbances", ("valueString",)),
           Param("environment", ("valueString",)),
           Param("support", repeats=True, parts=_SUPPORT))
INVITE = (
    Param("appointment", ("valueReference",)),
    Param("start", ("valueDateTime",)), Param("end", ("valueDateTime",)),
    Param("place", ("valueString",)), Param("description", ("valueString",)),
    Param("answerBy", ("valueDateTime",)),
    Param("meetingWishes", parts=_WISHES),
    Param("invitedOrganization", repeats=True, parts=(
        Param("organization", ("valueReference",), required=True),
        Param("profession", ("valueCodeableConcept", "valueCoding", "valueString")))),
    Param("invitedPerson", ("valueReference",), repeats=True),
)
RESPOND = (
    Param("answer", ("valueCode",), required=True),
    Param("representative", ("valueReference",)),
    Param("start", ("valueDateTime",)), Param("end", ("valueDateTime",)),
    Param("reason", ("valueString",)), Param("comment", ("valueString",)),
)
ANSWERS = ("accept", "propose-time", "decline")
INVITE_PHASES = frozenset({sp.MAPPING, sp.INVITATION, sp.MEETING, sp.FOLLOW_UP})
ANSWERABLE = frozenset({"requested", "received", "in-progress", "accepted", "rejected"})
_GONE_MEETING = frozenset({"cancelled", "fulfilled", "noshow", "entered-in-error"})
_BCP47 = "urn:ietf:bcp:47"
_LOCATION_ID = "plats"
MIN_MEETING, MAX_MEETING = timedelta(minutes=1), timedelta(hours=24)
# The units (UCUM) a wished maximum length of the meeting may be given in (a meeting lasts at
# most 24 hours: a length in days or more is no wish it can follow).
_TIME_UNITS = frozenset({"s", "min", "h"})
_UCUM = "http://unitsofmeasure.org"
# The shape of a BCP-47 language tag (RFC 5646 langtag, or private use): language (with
# extlangs), script, region, variants, extensions, private use.
_LANGUAGE_TAG = re.compile(
    r"(?:[a-z]{2,3}(?:-[a-z]{3}){0,3}|[a-z]{4,8})(?:-[a-z]{4})?(?:-(?:[a-z]{2}|\d{3}))?"
    r"(?:-(?:[a-z\d]{5,8}|\d[a-z\d]{3}))*(?:-[a-wyz\d](?:-[a-z\d]{2,8})+)*"
    r"(?:-x(?:-[a-z\d]{1,8})+)?|x(?:-[a-z\d]{1,8})+", re.IGNORECASE)


def _role(code: str) -> Json:
    return {"coding": [{"system": sip.CS_PARTICIPANT_ROLE, "code": code}]}


def _param_type(code: str) -> Json:
    return {"coding": [sp.coding(sip.CS_TASK_PARAMETER, code)]}


def _invited_org(participant: Json) -> Json | None:
    for e in participant.get("extension", []):
        if e.get("url") == sip.EXT_INVITED_ORGANIZATION:
            value = e.get("valueReference")
            return value if isinstance(value, dict) else None
    return None


def meeting_status(appt: Json) -> str:
    """booked when everyone who must come has accepted, else pending."""
    needed = [p for p in appt.get("participant", []) if p.get("required") != "information-only"]
    return "booked" if all(p.get("status") == "accepted" for p in needed) else "pending"


# -- $invite -----------------------------------------------------------------------------------

def _organisation(op: Operation, params: Params, name: str) -> tuple[Json, str, str]:
    """(literal reference, HSA-id, name) of an Organization known to the hub."""
    reference = params.reference(name) or {}
    target = sp.ref_target(reference)
    found: Stored | None = None
    if target and target[0] == "Organization":
        cur = op.tx.current("Organization", target[1])
        found = cur if cur is not None and not cur.deleted else None
    elif isinstance(reference.get("identifier"), dict):
        ident = reference["identifier"]
        hits = sp.search(op.tx, "Organization",
                         [("identifier", f"{ident.get('system')}|{ident.get('value')}")], 2)
        found = hits[0] if len(hits) == 1 else None
    hsa = org_hsa(op.tx, ref(found)) if found else None
    if found is None or hsa is None:
        raise params.invalid(name, "the invited organisation must be an Organization known to "
                                   "the hub, with an HSA-id")
    return ref(found), hsa, str(found.json().get("name", hsa))


def _support(part: Params) -> Json:
    kind = part.code("type", sip.CS_MEETING_SUPPORT)
    if (sip.CS_MEETING_SUPPORT, kind) not in profiles.valueset_codes(sip.VS_MEETING_SUPPORT):
        raise part.invalid("type", f"'{kind}' is not a kind of support: interpreter | "
                                   "picture-support | other")
    assert kind is not None
    out = [{"url": "type", "valueCoding": sp.coding(sip.CS_MEETING_SUPPORT, kind)}]
    language = part.code("language", _BCP47)
    if language is not None and not _LANGUAGE_TAG.fullmatch(language):
        raise part.invalid("language", f"'{language}' is not a language tag (BCP-47), e.g. ar, "
                                       "sv, so or prs-AF: the invited book the interpreter "
                                       "from it")
    if language:
        out.append({"url": "language", "valueCoding": {"system": _BCP47, "code": language}})
    elif kind == "interpreter":
        raise part.invalid("language", "an interpreter (tolk) needs the language")
    if part.has("description"):
        out.append({"url": "description", "valueString": part.string("description")})
    elif kind == "other":
        raise part.invalid("description", "describe the other support needed")
    return {"url": "support", "extension": out}


def _max_duration(w: Params, duration: Any) -> Json:
    """A wished maximum length: a positive length of time, its unit a UCUM code (a Duration
    has a code when it has a value, and it is a time, drt-1; a code has its system, qty-3).
    A negative one, one without a value, one in kilograms, or a bare 60 or "2 kg" as text
    only was kept and shown to every participant as the person's wish."""
    value = duration.get("value") if isinstance(duration, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise w.invalid("maxDuration", "the longest the meeting may last is a positive value, "
                                       "e.g. 60 min")
    unit = duration.get("code")
    if duration.get("system") != _UCUM or unit not in _TIME_UNITS:
        given = f"'{unit}' is not" if unit is not None else "it needs"
        raise w.invalid("maxDuration", f"{given} a unit of time as a UCUM code (code, system "
                                       f"{_UCUM}): {' | '.join(sorted(_TIME_UNITS))}")
    return duration


def _wishes(params: Params) -> Json | None:
    parts = params.parts("meetingWishes")
    if not parts:
        return None
    w = parts[0]
    exts: list[Json] = []
    for name in ("place", "timeOfDay"):
        if w.has(name):
            exts.append({"url": name, "valueString": w.string(name)})
    duration = w.value("maxDuration")
    if duration is not None:
        exts.append({"url": "maxDuration", "valueDuration": _max_duration(w, duration[1])})
    for name in ("disturbances", "environment"):
        if w.has(name):
            exts.append({"url": name, "valueString": w.string(name)})
    exts += [_support(s) for s in w.parts("support")]
    if not exts:
        raise params.invalid("meetingWishes", "give at least one wish")
    return {"url": sip.EXT_MEETING_WISHES, "extension": exts}


def _new_meeting(op: Operation, params: Params, plan_id: str, plan: Json, patient: str,
                 coordinator_member: Json | None) -> Json:
    params.require("start", "end", "place")
    start, end = params.instant("start"), params.instant("end")
    assert start is not None and end is not None
    if end[1] <= start[1]:
        raise params.invalid("end", "the meeting ends after it starts")
    if start[1] <= op.now:
        raise params.invalid("start", "the meeting lies in the future")
    # Appointment.minutesDuration is a positiveInt (it failed validation as a 422 naming an
    # element the client never sent); a SIP meeting is one sitting of minutes to hours.
    if not MIN_MEETING <= end[1] - start[1] <= MAX_MEETING:
        raise params.invalid("end", "a SIP meeting lasts from a minute to 24 hours")
    appt: Json = {"resourceType": "Appointment",
                  "contained": [{"resourceType": "Location", "id": _LOCATION_ID,
                                 "status": "active", "name": params.string("place"),
                                 "mode": "instance"}]}
    wishes = _wishes(params)
    if wishes:
        appt["extension"] = [wishes]
    # The person planned the meeting with the coordinator (the wishes are theirs); the
    # invited answer.
    participants: list[Json] = [
        {"actor": {"reference": patient}, "required": "required", "status": "accepted"}]
    if coordinator_member is not None:
        participants.append({"type": [_role(sip.ROLE_COORDINATOR)],
                             "actor": coordinator_member, "required": "required",
                             "status": "accepted"})
    participants.append({"actor": {"reference": f"#{_LOCATION_ID}"},
                         "required": "information-only", "status": "accepted"})
    appt.update({
        "status": "pending",
        "serviceType": [{"text": "SIP-möte / SIP meeting"}],
        "description": params.string("description") or f"SIP-möte: {plan.get('title') or 'SIP'}",
        "supportingInformation": [{"reference": f"CarePlan/{plan_id}"}],
        "start": start[0], "end": end[0],
        "minutesDuration": int((end[1] - start[1]).total_seconds() // 60),
        "created": op.instant, "participant": participants,
    })
    return appt


def _existing_meeting(op: Operation, params: Params, plan_id: str) -> tuple[Stored, Json]:
    params.forbid(("start", "end", "place", "meetingWishes", "description"),
                  "is given for a new meeting; change an existing one with a PUT of the "
                  "Appointment")
    target = sp.ref_target(params.reference("appointment"))
    if not target or target[0] != "Appointment":
        raise params.invalid("appointment", "must reference an Appointment")
    stored = op.current("Appointment", target[1])
    appt = stored.json()
    if {"reference": f"CarePlan/{plan_id}"} not in appt.get("supportingInformation", []):
        raise params.invalid("appointment", f"Appointment/{target[1]} is not a meeting of "
                                            f"CarePlan/{plan_id}")
    if appt.get("status") in _GONE_MEETING:
        raise sp.business_rule(f"Appointment/{target[1]} is {appt.get('status')}: invite to a "
                               "new meeting")
    # An invitation names the meeting's time and an answer deadline before it: a meeting
    # without a time (a proposed Appointment may have none) was a 5xx, one begun is too late.
    start = sp.time_of(appt.get("start"))
    if start is None:
        raise sp.business_rule(f"Appointment/{target[1]} has no time (start): set its start "
                               "and end with a PUT of the Appointment before inviting to it",
                               "Appointment.start")
    if from_us(start) <= op.now:
        raise sp.business_rule(f"Appointment/{target[1]} has begun or is over: invite to a new "
                               "meeting", "Appointment.start")
    return stored, appt


@dataclass(frozen=True, slots=True)
class _Invited:
    """An invited organisation: its literal reference, HSA-id, name and wished profession."""

    ref: Json
    hsa: str
    name: str
    profession: Json | None


def _invited_organisations(op: Operation, params: Params, consents: list[Json],
                           coordinator: str | None) -> list[_Invited]:
    out: list[_Invited] = []
    for part in params.parts("invitedOrganization"):
        org_ref, hsa, name = _organisation(op, part, "organization")
        if hsa == coordinator:
            raise part.invalid("organization", "the coordinating organisation takes part as "
                                               "coordinator; it is not invited")
        if any(hsa == o.hsa for o in out):
            raise part.invalid("organization", f"{name} is invited twice")
        if not any(sp.consent_covers(op.tx, consent, hsa) for consent in consents):
            raise sp.business_rule(f"The person's consent does not cover {name} ({hsa}): an "
                                   "invitation shares personal data, so the consent must name "
                                   "the organisation first (rule 1)")
        out.append(_Invited(org_ref, hsa, name, part.concept("profession")))
    return out


def _invited_persons(op: Operation, params: Params, patient: str) -> list[Json]:
    """The invited persons, each once, as the organisations: one named twice is a client's
    mistake (a list built twice), not to be taken silently."""
    persons = params.references("invitedPerson")
    seen: set[tuple[str, str] | None] = set()
    for i, person in enumerate(persons):
        target = sp.ref_target(person)
        rp = sp.current_json(op.tx, *target) if target and target[0] == "RelatedPerson" else None
        if rp is None or sp.ref_target(rp.get("patient")) != tuple(patient.split("/", 1)):
            raise BadRequest(f"$invite: invitedPerson {i + 1} must be a RelatedPerson of "
                             f"{patient}", expression=params.where("invitedPerson"))
        if target in seen:
            raise BadRequest(f"$invite: invitedPerson {i + 1} ({person['reference']}) is "
                             "invited twice", expression=params.where("invitedPerson"))
        seen.add(target)
    return persons


def _answer_by(op: Operation, params: Params, appt: Json) -> str:
    """The answer deadline: as given (between now and the meeting), else two days before the
    meeting but at least a day from now, and never after the meeting begins. A date given is
    a Swedish day, answered until it is over in Sweden (as the deadline scan reads it): today
    may be given, the meeting's own day may not (it ends after the meeting begins)."""
    start = from_us(sp.time_of(appt.get("start")) or 0)  # (a new or checked meeting's)
    given = params.when("answerBy")
    if given is None:
        # Never after the meeting (a meeting less than a day ahead was to be answered after
        # it was held).
        return format_instant(min(start, max(op.now + timedelta(days=1),
                                             start - timedelta(days=2))))
    low, high = sip.swedish_range(given[0])  # (a dateTime: params.when has read it)
    due = low if "T" in given[0] else high + 1
    if due <= to_us(op.now) or due > to_us(start):
        raise params.invalid("answerBy", "the answer deadline lies between now and the meeting")
    return given[0]


def _add_participants(op: Operation, appt: Json, orgs: list[_Invited],
                      persons: list[Json]) -> None:
    """One participant per invited organisation (its representative becomes the actor once
    named) and per invited person; inviting again asks for a new answer."""
    parts = appt.setdefault("participant", [])
    for org in orgs:
        mine = next((p for p in parts if org_hsa(op.tx, _invited_org(p)) == org.hsa), None)
        if mine is None:
            parts.append({"extension": [{"url": sip.EXT_INVITED_ORGANIZATION,
                                         "valueReference": copy.deepcopy(org.ref)}],
                          "type": [_role(sip.ROLE_ORGANISATION_REPRESENTATIVE)],
                          "required": "required", "status": "needs-action"})
        else:
            mine["status"] = "needs-action"
    for person in persons:
        mine = next((p for p in parts
                     if sp.ref_target(p.get("actor")) == sp.ref_target(person)), None)
        if mine is None:
            parts.append({"actor": {"reference": person["reference"]}, "required": "required",
                          "status": "needs-action"})
        else:
            mine["status"] = "needs-action"
    appt["status"] = meeting_status(appt)


@audited("$invite")
def invite(op: Operation, plan_id: str, body: Any, if_match: str | None) -> Json:
    params = parameters.read(body, "$invite", INVITE)
    stored, plan = sip_plan(op, plan_id, if_match)
    sp.require_coordinator(op.tx, op.ctx, plan, "$invite")
    phase = sp.phase_of(plan)
    if phase not in INVITE_PHASES:
        raise sp.business_rule(f"Invitations go out in the phases kartlaggning, kallelse, mote "
                               f"and uppfoljning; this SIP is in '{phase}'")
    sp.require_consent(op.tx, plan, op.now, "Inviting to the SIP meeting")
    sp.require_custodian_if_minor(op.tx, plan, op.now)
    found = sp.team_of(op.tx, plan)
    if found is None:
        raise sp.business_rule("Record the SIP's participants (a SIP CareTeam in "
                               "CarePlan.careTeam) before inviting", "CarePlan.careTeam")
    team_stored, team = found
    patient = sp.patient_ref(op.tx, plan)
    # Covered by any of the person's consents in force (each names the organisations it
    # covers; the first alone refused one only the second names).
    consents = list(sp.consents_in_force(op.tx, patient.split("/", 1)[1], op.now))
    orgs = _invited_organisations(op, params, consents, org_hsa(op.tx, plan.get("author")))
    persons = _invited_persons(op, params, patient)
    if not orgs and not persons:
        raise BadRequest("$invite: invite at least one organisation or person",
                         expression=params.where("invitedOrganization"))

    if params.has("appointment"):
        appt_stored, appt = _existing_meeting(op, params, plan_id)
    else:
        coordinator = next((copy.deepcopy(p["member"]) for p in team.get("participant", [])
                            if sp.role_of(p) == sip.ROLE_COORDINATOR
                            and (sp.ref_target(p.get("member")) or ("",))[0]
                            in ("Practitioner", "PractitionerRole")), None)
        appt_stored, appt = None, _new_meeting(op, params, plan_id, plan, patient, coordinator)
    answer_by = _answer_by(op, params, appt)
    _add_participants(op, appt, orgs, persons)
    appt_written = op.update(appt) if appt_stored else op.create(appt)
    team_written = _join_team(op, team_stored, team, orgs)
    tasks = [_invitation(op, stored, appt_written, org, patient, answer_by) for org in orgs]

    moved: tuple[Stored, Stored, list[str]] | None = None
    if phase == sp.MAPPING:
        moved = move(op, stored, sp.INVITATION, reason="Kallelser skickade / invitations sent")
    else:
        deadlines.reconcile(op, stored)
    return parameters.out(
        parameters.resource("appointment", appt_written.json()),
        parameters.resource("careTeam", team_written.json()),
        *(parameters.resource("task", t.json()) for t in tasks),
        parameters.resource("carePlan", moved[0].json()) if moved else None,
        parameters.resource("provenance", moved[1].json()) if moved else None)


def _join_team(op: Operation, stored: Stored, team: Json, orgs: list[_Invited]) -> Stored:
    """Invited organisations take part from the invitation (as the organisation itself: the
    representative is named when they accept). A proposed team becomes active: the SIP work
    with others has begun."""
    changed = team.get("status") != "active"
    team["status"] = "active"
    for org in orgs:
        if not any(sp.represents(op.tx, p) == org.hsa for p in team.get("participant", [])):
            team.setdefault("participant", []).append(
                {"role": [_role(sip.ROLE_ORGANISATION_REPRESENTATIVE)],
                 "member": copy.deepcopy(org.ref)})
            changed = True
    return op.update(team) if changed else op.unchanged(stored)


def _invitation(op: Operation, plan: Stored, appt: Stored, org: _Invited, patient: str,
                answer_by: str) -> Stored:
    """The organisation's invitation Task: a new one, or the earlier one for this meeting
    asked again (after a decline or a proposed time)."""
    earlier = next((s for s in sp.search(op.tx, "Task", [
        ("focus", f"Appointment/{appt.id}"), ("code", f"{sip.CS_TASK}|{sp.TASK_INVITATION}"),
        ("owner", org.ref["reference"])])), None)
    content = appt.json()
    task: Json = earlier.json() if earlier else {"resourceType": "Task"}
    for key in ("statusReason", "output", "businessStatus"):
        task.pop(key, None)
    task.update({
        "basedOn": [ref(plan)], "status": "requested", "intent": "order", "priority": "routine",
        "code": sp.task_code(sp.TASK_INVITATION),
        "description": f"Kallelse till SIP-möte {content.get('start')}–{content.get('end')} "
                       f"för {sp.name_of(op.tx, {'reference': patient})}. Utse en "
                       "representant och svara senast " + answer_by + ".",
        "focus": ref(appt), "for": {"reference": patient},
        "authoredOn": task.get("authoredOn", op.instant), "lastModified": op.instant,
        "requester": sp.coordinator_ref(plan.json()), "owner": copy.deepcopy(org.ref),
        "restriction": {"period": {"end": answer_by}},
    })
    task.pop("input", None)
    if org.profession:
        task["input"] = [{"type": _param_type("wished-profession"),
                          "valueCodeableConcept": org.profession}]
    return op.update(task) if earlier else op.create(task)


# -- $respond ----------------------------------------------------------------------------------

@audited("$respond")
def respond(op: Operation, task_id: str, body: Any, if_match: str | None) -> Json:
    params = parameters.read(body, "$respond", RESPOND)
    task_stored = op.current("Task", task_id, if_match)
    task = task_stored.json()
    if sp.task_kind(task) != sp.TASK_INVITATION:
        raise sp.business_rule(f"Task/{task_id} is not an invitation (kallelse) to a SIP meeting")
    p = op.ctx.access.principal
    owner = org_hsa(op.tx, task.get("owner"))
    if p is None or p.role != "organization" or p.org != owner:
        raise Forbidden(f"$respond: only the invited organisation ({owner}) answers its "
                        "invitation")
    if task.get("status") not in ANSWERABLE:
        raise sp.business_rule(f"The invitation is {task.get('status')}; it can no longer be "
                               "answered")
    plan_target = next((t for b in task.get("basedOn", []) if (t := sp.ref_target(b))
                        and t[0] == "CarePlan"), None)
    plan = op.tx.current("CarePlan", plan_target[1]) if plan_target else None
    if plan is None or plan.deleted or sp.phase_of(plan.json()) == sp.CLOSED:
        raise sp.business_rule("The SIP of this invitation is closed")
    appt_target = sp.ref_target(task.get("focus"))
    appt_stored = op.tx.current("Appointment", appt_target[1]) if appt_target else None
    if appt_stored is None or appt_stored.deleted or \
            appt_stored.json().get("status") in _GONE_MEETING:
        raise sp.business_rule("The meeting of this invitation is cancelled or over")

    answer = params.code("answer")
    if answer not in ANSWERS:
        raise params.invalid("answer", f"'{answer}' is not an answer: {' | '.join(ANSWERS)}")
    representative: Json | None = None
    if answer == "accept":
        params.require("representative")
        params.forbid(("start", "end", "reason"), "is not part of an acceptance")
        representative = _representative(op, params, owner)
        status, participant_status = "accepted", "accepted"
        task["output"] = [{"type": _param_type("representative"),
                           "valueReference": representative}]
        task.pop("statusReason", None)
    elif answer == "propose-time":
        params.require("start", "end")
        params.forbid(("representative", "reason"), "is not part of a proposed time")
        start, end = params.instant("start"), params.instant("end")
        assert start is not None and end is not None
        if start[1] <= op.now:
            raise params.invalid("start", "the proposed meeting lies in the future")
        if not MIN_MEETING <= end[1] - start[1] <= MAX_MEETING:
            raise params.invalid("end", "the proposed meeting ends after it starts and lasts "
                                        "from a minute to 24 hours")
        status, participant_status = "in-progress", "tentative"
        task["output"] = [{"type": _param_type("proposed-time"),
                           "valuePeriod": {"start": start[0], "end": end[0]}}]
        task.pop("statusReason", None)
    else:
        params.require("reason")
        params.forbid(("representative", "start", "end"), "is not part of a decline")
        status, participant_status = "rejected", "declined"
        task["statusReason"] = {"text": params.string("reason")}
        task.pop("output", None)
    task.update(status=status, lastModified=op.instant)
    if params.has("comment"):
        task.setdefault("note", []).append({"authorReference": copy.deepcopy(task["owner"]),
                                            "time": op.instant,
                                            "text": params.string("comment")})
    task_written = op.update(task)

    appt = appt_stored.json()
    for part in appt.get("participant", []):
        if org_hsa(op.tx, _invited_org(part)) == owner:
            part["status"] = participant_status
            if representative is not None:
                part["actor"] = copy.deepcopy(representative)
    appt["status"] = meeting_status(appt)
    appt_written = op.update(appt, as_hub=True)

    team_written = _name_representative(op, plan, task["owner"], representative) \
        if representative is not None else None
    follow_up = deadlines.declined(op, plan, task_written) if answer == "decline" else None
    deadlines.reconcile(op, plan)
    return parameters.out(
        parameters.resource("task", task_written.json()),
        parameters.resource("appointment", appt_written.json()),
        parameters.resource("careTeam", team_written.json()) if team_written else None,
        parameters.resource("followUpTask", follow_up.json()) if follow_up else None)


def _representative(op: Operation, params: Params, org: str | None) -> Json:
    """A Practitioner: in the CareTeam the representative acts onBehalfOf the organisation,
    which FHIR allows beside a Practitioner only (ctm-1). One whose HSA-id is issued under
    another principal than the organisation's (a kommun's social secretary for the
    region's BUP) is not the organisation's to name."""
    target = sp.ref_target(params.reference("representative"))
    found = sp.current_json(op.tx, *target) if target and target[0] == "Practitioner" else None
    if found is None:
        raise params.invalid("representative", "the representative is a Practitioner known to "
                                               "the hub")
    if org is not None:
        theirs = [v for i in found.get("identifier", []) if i.get("system") == identifiers.HSA_ID
                  and isinstance(v := i.get("value"), str) and "-" in v]
        if theirs and all(identifiers.hsa_organisation(v) != identifiers.hsa_organisation(org)
                          for v in theirs):
            raise params.invalid("representative", f"Practitioner/{target[1]} ({theirs[0]}) "
                                 f"is not of the organisation {org}'s principal: it names its "
                                 "own representative")
    return {"reference": f"Practitioner/{target[1]}"}


def _name_representative(op: Operation, plan: Stored, org_ref: Json, member: Json) -> Stored:
    """The organisation's representative joins the SIP CareTeam, in place of an earlier one
    (one representative per organisation, sip-ct-2). Written by the hub: only the coordinator
    writes the care team, but the organisation chooses who represents it."""
    found = sp.team_of(op.tx, plan.json())
    if found is None:
        raise sp.business_rule("The SIP has no CareTeam to join")
    stored, team = found
    before = copy.deepcopy(team)
    hsa = org_hsa(op.tx, org_ref)
    parts = team.setdefault("participant", [])
    mine = next((p for p in parts if sp.represents(op.tx, p) == hsa), None)
    if mine is None:
        mine = {"role": [_role(sip.ROLE_ORGANISATION_REPRESENTATIVE)]}
        parts.append(mine)
    mine.update(member=copy.deepcopy(member), onBehalfOf=copy.deepcopy(org_ref))
    # The same representative again (a retried answer) changes no one's part: no new version
    # of the team, nor an update in the person's access log.
    return op.update(team, as_hub=True) if team != before else op.unchanged(stored)

