"""``POST /fhir/CarePlan/{id}/$transition``: move a SIP to another phase.

Input (Parameters):

=============  ==================================  =====  ===============================
name           type                                card.  notes
=============  ==================================  =====  ===============================
to             code (sip-phase)                    1..1
reason         string                              0..1   required for ``avslutad``
approvedBy     Reference(Patient|RelatedPerson)    0..*   required for ``upprattad``
approvedAt     dateTime                            0..1   required for ``upprattad``
requestedBy    Reference(Patient|RelatedPerson)    0..1   who asked, e.g. the person ending
                                                          the SIP
=============  ==================================  =====  ===============================

Output (Parameters): ``from`` and ``to`` (code), ``carePlan`` and ``provenance`` (resources),
``closedTask`` (Reference, 0..*: invitations and deadline Tasks the transition closed).

The plan is written as the caller (the coordinating organisation), so the write pipeline runs:
establishing writes the plan as ``active`` and the SIP profile demands the law's required
content. The Provenance targets the new plan version; its ``entity`` is the version before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from . import deadlines, parameters, process as sp
from .fhir import sip
from .fhir.dates import parse_range, to_us
from .operation import Operation, audited
from .parameters import Param
from .store import Stored

Json = dict[str, Any]

PARAMS = (
    Param("to", ("valueCode",), required=True),
    Param("reason", ("valueString",)),
    Param("approvedBy", ("valueReference",), repeats=True),
    Param("approvedAt", ("valueDateTime",)),
    Param("requestedBy", ("valueReference",)),
)
_LIVE_MEETING = frozenset({"proposed", "pending", "booked"})
_UNANSWERED = frozenset({"requested", "received", "in-progress"})


def sip_plan(op: Operation, plan_id: str, if_match: str | None = None
             ) -> tuple[Stored, Json]:
    """The current SIP plan ``plan_id``, which the caller may read."""
    stored = op.current("CarePlan", plan_id, if_match)
    plan = stored.json()
    if not sp.is_sip_plan(plan):
        raise sp.business_rule(f"CarePlan/{plan_id} is not a SIP plan (a CarePlan with the SIP "
                               "category and intent 'plan')")
    return stored, plan


@audited("$transition")
def run(op: Operation, plan_id: str, body: Any, if_match: str | None) -> Json:
    params = parameters.read(body, "$transition", PARAMS)
    stored, plan = sip_plan(op, plan_id, if_match)
    sp.require_coordinator(op.tx, op.ctx, plan, "$transition")
    to = params.code("to") or ""
    if to not in sp.PHASES:
        raise params.invalid("to", f"'{to}' is not a SIP phase: {' | '.join(sp.PHASES)}")
    frm = sp.phase_of(plan)
    if not sp.allowed(frm, to):
        nxt = " | ".join(p for p in sp.PHASES if p in sp.NEXT[frm]) or "nothing (closed)"
        raise sp.business_rule(f"A SIP in phase '{frm}' cannot move to '{to}'; it may move to "
                               f"{nxt}")
    reason = params.string("reason")
    approvers = params.references("approvedBy")
    approved = params.when("approvedAt")
    requested_by = params.reference("requestedBy")
    if requested_by is not None:
        sp.check_person(op.tx, plan, [requested_by], params.where("requestedBy"),
                        "ask for this transition", op.now)
    if to == sp.CLOSED:
        params.require("reason")
    if to == sp.ESTABLISHED:
        params.require("approvedBy", "approvedAt")
        assert approved is not None
        if approved[1] > op.now:
            raise params.invalid("approvedAt", "the approval cannot lie in the future")
        sp.require_approval_after_consent(op.tx, plan, approved[0], params.where("approvedAt"))
        sp.check_approvers(op.tx, plan, approvers, approved[1], params.where("approvedBy"))
    else:
        params.forbid(("approvedBy", "approvedAt"), "is given only when the plan is established "
                                                    "(to=upprattad)")
    if to in sp.CONSENT_PHASES:
        sp.require_consent(op.tx, plan, op.now, f"Moving the SIP to '{to}'")
    if to == sp.INVITATION:
        sp.require_custodian_if_minor(op.tx, plan, op.now)
    if to == sp.MEETING and not deadlines.meetings(op.tx, plan_id):
        raise sp.business_rule("There is no SIP meeting to hold: invite to it with "
                               f"CarePlan/{plan_id}/$invite first")
    if to == sp.ESTABLISHED:
        _require_next_follow_up(op, plan, first=frm != sp.FOLLOW_UP)

    written, prov, closed = move(op, stored, to, reason=reason,
                                 approved_at=approved[0] if approved else None,
                                 approvers=approvers, requested_by=requested_by)
    return parameters.out(
        parameters.value("from", "valueCode", frm), parameters.value("to", "valueCode", to),
        parameters.resource("carePlan", written.json()),
        parameters.resource("provenance", prov.json()),
        *(parameters.value("closedTask", "valueReference", {"reference": f"Task/{t}"})
          for t in closed))


def move(op: Operation, stored: Stored, to: str, *, reason: str | None = None,
         approved_at: str | None = None, approvers: Sequence[Json] = (),
         requested_by: Json | None = None) -> tuple[Stored, Stored, list[str]]:
    """Write the plan in phase ``to`` and its Provenance; the caller has checked the rules.

    Returns the new plan version, the Provenance and the Tasks closed on the way.
    """
    plan = stored.json()
    frm = sp.phase_of(plan)
    new = sp.with_phase(plan, to)
    new["status"] = sp.status_for(to, frm)
    _set_period(op, new, to, approved_at)
    written = op.update(new)
    closed = _hold_meeting(op, stored.id) if to == sp.MEETING else []
    if to == sp.CLOSED:
        closed += _close_work(op, stored.id, reason or "")
    activity = {"coding": [sp.coding(sip.CS_PHASE, to)],
                "text": f"{sp.coding(sip.CS_PHASE, frm)['display']} → "
                        f"{sp.coding(sip.CS_PHASE, to)['display']}"}
    prov = op.create(op.provenance(
        written, activity, org_ref=sp.coordinator_ref(plan), reason=reason, occurred=approved_at,
        attesters=approvers, informants=[requested_by] if requested_by else [],
        entities=[("revision", stored)]))
    closed += deadlines.reconcile(op, written).closed
    return written, prov, list(dict.fromkeys(closed))


def _require_next_follow_up(op: Operation, plan: Json, *, first: bool = False) -> None:
    """The plan says when it is followed up (rule 4), and that is still to come: concluding a
    follow-up needs the next date, agreed in an approved revision; a plan established the
    first time (``first``) needs one not yet passed (a missing one the profile refuses, as the
    rest of the required content). A date is a Swedish day, as the deadline scan reads it:
    passed once it is over in Sweden, so a date of today is still to come, the first time and
    after a follow-up alike (``follow-up-overdue`` opens at Swedish midnight after it)."""
    follow_up = next((e.get("valueDateTime") for e in plan.get("extension", [])
                      if e.get("url") == sip.EXT_FOLLOW_UP), None)
    try:
        passed = sip.swedish_range(follow_up)[1] <= to_us(op.now) \
            if isinstance(follow_up, str) else not first
    except ValueError:
        passed = not first
    if passed and first:
        raise sp.business_rule(
            f"The plan's follow-up date ({follow_up}) has passed: a plan is established with "
            "the date it will be followed up (a date to come); change it in the draft (PUT) "
            "first", f"CarePlan.extension('{sip.EXT_FOLLOW_UP}')")
    if passed:
        raise sp.business_rule(
            f"The plan's follow-up date ({follow_up}) has passed: agree the next one with the "
            "person in a revision ($propose-revision, $approve-revision) before the plan is "
            "established again", f"CarePlan.extension('{sip.EXT_FOLLOW_UP}')")


def _set_period(op: Operation, plan: Json, to: str, approved_at: str | None) -> None:
    """The plan applies from its establishment until it is closed."""
    period = plan.get("period") if isinstance(plan.get("period"), dict) else {}
    today = sp.local_date(op.now).isoformat()
    if to == sp.ESTABLISHED and not period.get("start") and approved_at:
        # (its Swedish day: one approved at 00:30 in Sweden, written in UTC, began the day
        # before in UTC)
        plan["period"] = {**period, "start": sip.swedish_day(approved_at)}
    elif to == sp.CLOSED and not period.get("end"):
        # Begun when its start (a Swedish day, as set above) has begun in Sweden: one closed at
        # 00:35 on the day it was established began 35 minutes ago, not at UTC midnight an
        # hour or two from now. (A stored start that is no date, a leap second, was a 5xx.)
        try:
            start = sip.swedish_range(period["start"])[0] \
                if isinstance(period.get("start"), str) else None
        except ValueError:
            start = None
        if start is None or start <= to_us(op.now):
            plan["period"] = {**period, "end": today}


def _start(appt: Json) -> int:
    try:
        return parse_range(appt["start"])[0]
    except (KeyError, TypeError, ValueError):
        return 2**62  # an appointment without a time is not the one being held


def _hold_meeting(op: Operation, plan_id: str) -> list[str]:
    """The meeting is held (genomföra): the first one still planned took place. Returns the
    invitations it closed (the answer's ``closedTask``: the coordinator learns which
    organisations never answered)."""
    closed: list[str] = []
    live = [m for m in deadlines.meetings(op.tx, plan_id)
            if m.json().get("status") in _LIVE_MEETING]
    if live:
        first = min(live, key=lambda m: _start(m.json()))
        appt = first.json()
        appt["status"] = "fulfilled"
        op.update(appt, as_hub=True)
        # Its invitations never answered can be answered no more ($respond refuses them):
        # closed, not left open with the organisations for ever.
        for inv in deadlines.invitations(op.tx, plan_id):
            task = inv.json()
            if task.get("status") in _UNANSWERED and \
                    sp.ref_target(task.get("focus")) == ("Appointment", first.id):
                task.update(status="cancelled", lastModified=op.instant, statusReason={
                    "text": "Mötet har hållits utan svar på kallelsen"})
                op.update(task, as_hub=True)
                closed.append(inv.id)
    return closed


def _close_work(op: Operation, plan_id: str, reason: str) -> list[str]:
    """When the SIP closes: cancel its coming meetings, the invitations to them and the
    invitations never answered, and withdraw pending revisions. What happened stays as it
    was (an accepted invitation to a meeting that was held)."""
    closed: list[str] = []
    cancelled: set[tuple[str, str]] = set()
    for meeting in deadlines.meetings(op.tx, plan_id):
        appt = meeting.json()
        if appt.get("status") in _LIVE_MEETING and _start(appt) > to_us(op.now):
            appt.update(status="cancelled", cancelationReason={"text": f"SIP avslutad: {reason}"})
            op.update(appt, as_hub=True)
            cancelled.add(("Appointment", meeting.id))
    for inv in deadlines.invitations(op.tx, plan_id):
        task = inv.json()
        status = task.get("status")
        if status in _UNANSWERED or (status in sp.OPEN_TASK
                                     and sp.ref_target(task.get("focus")) in cancelled):
            task.update(status="cancelled", lastModified=op.instant,
                        statusReason={"text": f"SIP avslutad: {reason}"})
            op.update(task, as_hub=True)
            closed.append(inv.id)
    revoke_proposals(op, plan_id)
    return closed


def revoke_proposals(op: Operation, plan_id: str) -> None:
    """Revoke the revision proposals still open on the plan (it closed, or another revision
    was approved)."""
    for proposal in sp.search(op.tx, "CarePlan", [("replaces", f"CarePlan/{plan_id}"),
                                                  ("status", "draft")]):
        content = proposal.json()
        if sp.is_proposal(content):
            content["status"] = "revoked"
            op.update(content, as_hub=True)

