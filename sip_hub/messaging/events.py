"""SIP events from the write path: what a write means, and the notification it sends.

``Emitter.after_write`` is the one hook the write path calls (after the grant refresh, in the
write's transaction). It withdraws undelivered notifications the consent no longer covers and
turns the write into events (``classify``), each written to the outbox as one message to the
covered organisations. Writes made while a received message is applied
(``applying_message``) emit nothing for the message's own event: that message itself is
forwarded, with it. (``$process-message`` refuses a message whose writes mean another event:
a message's event says what it changes.)

``classify`` reads only the old and new resource:

==========================  ==============================================================
write                       event
==========================  ==============================================================
SIP CarePlan created        sip-initiated (plan-established / sip-closed if created so)
phase -> upprattad          plan-established (follow-up-done when coming from uppfoljning)
phase -> avslutad           sip-closed
established plan changed    insats-status-changed when only insatser's status changed,
                            else revision-approved
sip-follow-up date changed  follow-up-scheduled
revision proposal created   plan-revision-proposed
SIP Consent changed         consent-changed: granted | narrowed | withdrawn
invitation Task             invitation (created or asked again); invitation-response:
                            accept | new-time-proposed | decline (status accepted,
                            in-progress, rejected; also a new representative, proposed
                            time or reason); invitation-cancelled (status cancelled)
SIP meeting Appointment     meeting-cancelled (status cancelled); meeting-rescheduled
                            (start, end or place changed)
==========================  ==============================================================
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence, Set as AbstractSet
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from .. import process as sp
from ..access import patients_of
from ..fhir import profiles, sip
from ..fhir.indexing import split_reference
from ..metrics import MESSAGES_ENQUEUED, count_committed
from ..service import tx_resolver
from ..store import Stored, Tx
from . import builder, vocabulary as vocab
from .endpoints import Endpoints
from .outbox import SipKey, destinations_for, enqueue, withdraw_uncovered

if TYPE_CHECKING:
    from ..interactions import Context

Json = dict[str, Any]
log = logging.getLogger("sip_hub.messaging")

@dataclass(slots=True)
class _Applying:
    """A received message being applied: its event and sub-code (MessageHeader.reason), and
    what its writes mean beyond them ((type, id, fact) of each)."""
    event: str
    reason: str | None
    untold: list[tuple[str, str, Fact]] = field(default_factory=list)


_APPLYING: ContextVar[_Applying | None] = ContextVar("sip_hub_applying_message", default=None)
_CLOSED_STATUS = frozenset({"completed", "revoked", "entered-in-error"})


@contextmanager
def applying_message(event: str, reason: str | None = None
                     ) -> Iterator[list[tuple[str, str, Fact]]]:
    """While a received message's resources are written: the hook emits nothing for them
    (the message itself is forwarded). What a write means beyond what the message tells
    (its ``event``, with its sub-code ``reason``, see ``tells``) is yielded, (type, id,
    fact) each, for the caller to refuse: a message's event says what it changes."""
    state = _Applying(event, reason)
    token = _APPLYING.set(state)
    try:
        yield state.untold
    finally:
        _APPLYING.reset(token)


@dataclass(frozen=True, slots=True)
class Fact:
    """One event a write stands for."""

    event: str
    patient_id: str
    careplan_id: str | None  # None: the patient's SIP plan, looked up when emitting
    focus: tuple[str, ...]  # Type/id
    reason: str | None = None


def tells(fact: Fact, event: str, reason: str | None) -> bool:
    """Whether a message of ``event`` (sub-code ``reason``) tells what ``fact`` is: the same
    event, and the same sub-code where the fact has one (a consent narrowed is not told as
    granted)."""
    return fact.event == event and (fact.reason is None or fact.reason == reason)


# -- classify -----------------------------------------------------------------------------------

def _patient(ref: Any) -> str | None:
    target = sp.ref_target(ref)
    return target[1] if target and target[0] == "Patient" else None


def _ext(res: Json, url: str) -> Any:
    return next((e.get("valueDateTime") for e in res.get("extension", [])
                 if isinstance(e, dict) and e.get("url") == url), None)


def _content(plan: Json, *, statuses: bool) -> Json:
    """What an established plan says, without phase and follow-up (events of their own)."""
    out = dict(plan) if statuses else sp.decided(plan)  # compared only, never changed
    for key in ("meta", "text"):
        out.pop(key, None)
    out["extension"] = [e for e in out.get("extension", []) if isinstance(e, dict) and
                        e.get("url") not in (sip.EXT_PHASE, sip.EXT_FOLLOW_UP)]
    return out


def _plan(old: Json | None, new: Json) -> list[Fact]:
    if profiles.applies(new) != sip.PROFILE_CAREPLAN or not new.get("id"):
        return []
    patient = _patient(new.get("subject"))
    if patient is None:
        return []
    me = f"CarePlan/{new['id']}"
    if sp.is_proposal(new):
        replaced = [split_reference(r.get("reference", "")) for r in new.get("replaces", [])]
        plan = next((t[1] for t in replaced if t and t[0] == "CarePlan"), None)
        if old is not None or plan is None:
            return []
        return [Fact(vocab.PLAN_REVISION_PROPOSED, patient, plan, (me, f"CarePlan/{plan}"))]
    if not sp.is_sip_plan(new):
        return []
    to = sp.phase_of(new)
    facts: list[Fact] = []
    if old is None:
        event = {sp.ESTABLISHED: vocab.PLAN_ESTABLISHED, sp.FOLLOW_UP: vocab.PLAN_ESTABLISHED,
                 sp.CLOSED: vocab.SIP_CLOSED}.get(to, vocab.SIP_INITIATED)
        facts.append(Fact(event, patient, new["id"], (me,)))
    else:
        frm = sp.phase_of(old)
        if frm != to and to == sp.CLOSED:
            facts.append(Fact(vocab.SIP_CLOSED, patient, new["id"], (me,)))
        elif frm != to and to == sp.ESTABLISHED:
            event = vocab.FOLLOW_UP_DONE if frm == sp.FOLLOW_UP else vocab.PLAN_ESTABLISHED
            facts.append(Fact(event, patient, new["id"], (me,)))
        elif frm == to and to in (sp.ESTABLISHED, sp.FOLLOW_UP) and \
                _content(old, statuses=True) != _content(new, statuses=True):
            event = (vocab.INSATS_STATUS_CHANGED
                     if _content(old, statuses=False) == _content(new, statuses=False)
                     else vocab.REVISION_APPROVED)
            facts.append(Fact(event, patient, new["id"], (me,)))
    # A new plan's follow-up date travels in its own message; later changes are events.
    follow_up = _ext(new, sip.EXT_FOLLOW_UP)
    if old is not None and to != sp.CLOSED and follow_up and \
            _ext(old, sip.EXT_FOLLOW_UP) != follow_up:
        facts.append(Fact(vocab.FOLLOW_UP_SCHEDULED, patient, new["id"], (me,)))
    return facts


def _permits(consent: Json | None) -> bool:
    return consent is not None and consent.get("status") == "active" and \
        (consent.get("provision") or {}).get("type", "permit") == "permit"


def _actors(consent: Json) -> frozenset[bytes]:
    return frozenset(orjson.dumps(a.get("reference"), option=orjson.OPT_SORT_KEYS)
                     for a in (consent.get("provision") or {}).get("actor", [])
                     if isinstance(a, dict))


def _bound(consent: Json, which: str, open_: int) -> int:
    """When the consent starts (``which`` "start") or ends ("end"), as the grants and
    ``process.consents_in_force`` read it (a date from Swedish midnight of it, or until
    Swedish midnight after it); ``open_`` when the period is open on that side."""
    value = ((consent.get("provision") or {}).get("period") or {}).get(which)
    try:
        return sip.swedish_range(value)[0 if which == "start" else 1] \
            if isinstance(value, str) else open_
    except ValueError:
        return open_


def _from(consent: Json) -> int:
    return _bound(consent, "start", -2 ** 62)


def _until(consent: Json) -> int:
    return _bound(consent, "end", 2 ** 62)


def _consent(old: Json | None, new: Json) -> list[Fact]:
    if profiles.applies(new) != sip.PROFILE_CONSENT or not new.get("id"):
        return []
    patient = _patient(new.get("patient"))
    was, now = _permits(old), _permits(new)
    if patient is None or not (was or now):
        return []
    if not now:
        reason = vocab.WITHDRAWN
    elif not was:
        reason = vocab.GRANTED
    else:
        assert old is not None
        before, after = _actors(old), _actors(new)
        # (a period moved is a consent changed: a later start or an earlier end covers less,
        # an earlier start or a later end more; the grants follow it at once)
        if not before <= after or _until(new) < _until(old) or _from(new) > _from(old):
            reason = vocab.NARROWED
        elif after != before or _until(new) > _until(old) or _from(new) < _from(old):
            reason = vocab.GRANTED
        else:
            return []
    return [Fact(vocab.CONSENT_CHANGED, patient, None, (f"Consent/{new['id']}",), reason)]


_ANSWER = {"accepted": vocab.ACCEPT, "in-progress": vocab.NEW_TIME_PROPOSED,
           "rejected": vocab.DECLINE}


def _task(old: Json | None, new: Json) -> list[Fact]:
    if sp.task_kind(new) != sp.TASK_INVITATION or not new.get("id"):
        return []
    patient = _patient(new.get("for"))
    plan = next((t[1] for t in (sp.ref_target(r) for r in new.get("basedOn", []))
                 if t and t[0] == "CarePlan"), None)
    meeting = sp.ref_target(new.get("focus"))
    if patient is None or plan is None:
        return []
    refs = [f"Task/{new['id']}"]
    if meeting and meeting[0] == "Appointment":
        refs.append(f"Appointment/{meeting[1]}")
    refs.append(f"CarePlan/{plan}")
    status, before = new.get("status"), (old or {}).get("status")
    if status == "requested" and before != "requested":
        return [Fact(vocab.INVITATION, patient, plan, tuple(refs))]
    if old is not None and status in _ANSWER and _answer(old) != _answer(new):
        return [Fact(vocab.INVITATION_RESPONSE, patient, plan, tuple(refs), _ANSWER[status])]
    if old is not None and status == "cancelled" and before != "cancelled":
        return [Fact(vocab.INVITATION_CANCELLED, patient, plan, tuple(refs))]
    return []


def _answer(task: Json) -> tuple[Any, ...]:
    """What an invitation's answer tells: the answer (status), the representative or the time
    proposed (output) and why it declines (statusReason). A new representative or a second
    time proposed is an answer of its own (the coordinator plans the meeting on it), though
    the status stays; the same answer written again (a retry, a comment) is not."""
    return task.get("status"), task.get("output"), task.get("statusReason")


def _meeting_place(appt: Json) -> Any:
    return [c for c in appt.get("contained", []) if c.get("resourceType") == "Location"]


def _appointment(old: Json | None, new: Json) -> list[Fact]:
    if old is None or not new.get("id"):
        return []  # a new meeting is told about by its invitations
    plan = next((t[1] for t in (sp.ref_target(r) for r in new.get("supportingInformation", []))
                 if t and t[0] == "CarePlan"), None)
    patient = next((p for p in (_patient(part.get("actor"))
                                for part in new.get("participant", [])) if p), None)
    if plan is None or patient is None:
        return []
    refs = (f"Appointment/{new['id']}", f"CarePlan/{plan}")
    if new.get("status") == "cancelled" and old.get("status") != "cancelled":
        return [Fact(vocab.MEETING_CANCELLED, patient, plan, refs)]
    if new.get("status") != "cancelled" and (
            (old.get("start"), old.get("end"), _meeting_place(old)) !=
            (new.get("start"), new.get("end"), _meeting_place(new))):
        return [Fact(vocab.MEETING_RESCHEDULED, patient, plan, refs)]
    return []


_CLASSIFIERS = {"CarePlan": _plan, "Consent": _consent, "Task": _task,
                "Appointment": _appointment}


def classify(rtype: str, old: Json | None, new: Json | None) -> list[Fact]:
    """The events a write of ``rtype`` from ``old`` to ``new`` stands for (deletes: none)."""
    fn = _CLASSIFIERS.get(rtype)
    return fn(old, new) if fn is not None and new is not None else []


# -- emit -------------------------------------------------------------------------------------

def sip_plan_of(tx: Tx, patient_id: str) -> str | None:
    """The patient's open SIP plan, if there is one."""
    for stored in sp.search(tx, "CarePlan", [("patient", f"Patient/{patient_id}"),
                                             ("_sort", "-_lastUpdated")]):
        plan = stored.doc()
        if sp.is_sip_plan(plan) and plan.get("status") not in _CLOSED_STATUS:
            return stored.id
    return None


def _of_person(tx: Tx, stored: Stored, patient_id: str) -> bool:
    """Whether a stored resource may travel in a notification about ``patient_id``, which
    goes to the organisations that person's consent covers (rule 1): it is in that person's
    compartment and no one else's, and not withheld (kept for its writer, whom the consent
    does not cover). What a write or a message names is not trusted to be: a meeting naming
    another person's plan sent that plan to the first person's parties."""
    return not stored.withheld and \
        patients_of(stored.type, stored.doc(), stored.id, tx_resolver(tx)) == {patient_id}


@dataclass(frozen=True, slots=True)
class Emitter:
    """Writes notifications to the outbox. ``fhir_base`` is the hub's public FHIR base (the
    source of its messages); ``hub_org`` the hub's HSA-id, if it has one."""

    fhir_base: str
    endpoints: Endpoints
    hub_org: str | None = None

    def emit(self, tx: Tx, event: str, *, sender_org: str | None, patient_id: str,
             careplan_id: str | None = None, focus: Sequence[str] = (),
             resources: Sequence[Json] = (), reason: str | None = None,
             base: str | None = None) -> str | None:
        """Tell the organisations the consent covers (except the sender, who knows) about
        ``event``. ``focus`` names stored resources (``Type/id``; carried only when they are
        the person's, see ``_of_person``), or resources in ``resources``, which are carried
        as given. Returns the MessageHeader.id, or None when there is no one to tell or the
        focus the event needs is missing. ``base``: the FHIR base of the request that caused
        it (its fullUrls), else ``fhir_base``."""
        plan = careplan_id if careplan_id is not None else sip_plan_of(tx, patient_id)
        held = tx.current("CarePlan", plan) if plan else None
        if held is not None and not held.deleted and not _of_person(tx, held, patient_id):
            plan = None  # (another person's plan is not this one's SIP: it is not carried)
        dests = [o for o in destinations_for(tx, patient_id, sender_org) if o != sender_org]
        if not dests:
            return None
        carried = {f"{r['resourceType']}/{r.get('id')}": r for r in resources}
        refs = list(dict.fromkeys(list(focus) + ([f"CarePlan/{plan}"] if plan else [])
                                  + [f"Patient/{patient_id}"]))
        spec = vocab.spec(event)
        found: list[str] = []
        out: list[Json | Stored] = list(resources)
        for ref in refs:
            target = split_reference(ref)
            if target is None or spec.focus_for(target[0]) is None:
                continue
            if ref in carried:
                found.append(ref)
                continue
            cur = tx.current(*target)
            if cur is not None and not cur.deleted and _of_person(tx, cur, patient_id):
                found.append(ref)
                out.append(cur)
        for rule in spec.focus:
            n = sum(1 for r in found if r.startswith(rule.type + "/"))
            if n < rule.min:
                log.warning("not sending %s about Patient/%s: no %s to carry", event,
                            patient_id, rule.type)
                return None
        bundle = builder.message(
            event, fhir_base=base or self.fhir_base, sender=sender_org or self.hub_org,
            destinations=[builder.Party(o, self.endpoints.address(o)) for o in dests],
            focus=found, resources=out, reason=reason)
        enqueue(tx, bundle, dests, sip=SipKey(patient_id, plan or ""))
        count_committed(tx, MESSAGES_ENQUEUED.labels(event), len(dests))
        return str(bundle["entry"][0]["resource"]["id"])

    def revision_approved(self, tx: Tx, ctx: "Context", old: Json, new: Json) -> None:
        """``$approve-revision`` wrote ``new`` over ``old``: when what it changed is not told
        as revision-approved by the write itself (a revision of the follow-up date only, told
        as follow-up-scheduled, or of the insatser's status with it), tell it here: the
        participants were sent the proposal and learn that the person approved it."""
        if any(fact.event == vocab.REVISION_APPROVED for fact in classify("CarePlan", old, new)):
            return
        patient = _patient(new.get("subject"))
        if patient is None or not new.get("id"):
            return
        self.emit(tx, vocab.REVISION_APPROVED, sender_org=ctx.access.org, patient_id=patient,
                  careplan_id=new["id"], focus=(f"CarePlan/{new['id']}",), base=ctx.base_url)

    def after_write(self, tx: Tx, ctx: "Context", rtype: str, old: Json | None,
                    new: Json | None, regranted: AbstractSet[str] = frozenset()) -> None:
        """The write path's hook: call after ``access.after_write``, in the same transaction,
        for every create, update and delete; ``regranted`` are the patients whose grants that
        changed (only their undelivered notifications can have lost their coverage)."""
        self.after_transaction(tx, ctx, [(rtype, old, new, frozenset(regranted))])

    def after_transaction(self, tx: Tx, ctx: "Context", changes: Sequence[
            tuple[str, Json | None, Json | None, AbstractSet[str]]]) -> None:
        """``after_write`` for each of ``changes`` (type, old, new, patients regranted), the
        writes of a transaction Bundle once all are written: its notifications come from its
        final state (plans and grants as it leaves them), whatever its entries' order. A
        consent given with the SIP plan it covers (created by the same transaction) is told
        by the plan's message, as when the Consent is written first (then no plan is there
        to carry): emitted as each was written, a plan listed before it was told to no one
        (no grant yet) and the parties heard only of the consent."""
        for patient in sorted(set().union(*(c[3] for c in changes))):
            withdraw_uncovered(tx, patient)
        facts = [(rtype, old, new, fact) for rtype, old, new, _ in changes
                 for fact in classify(rtype, old, new)]
        planned = {fact.patient_id for rtype, old, _, fact in facts
                   if rtype == "CarePlan" and old is None and fact.event in _NEW_SIP}
        applying = _APPLYING.get()
        for rtype, old, new, fact in facts:
            if applying is not None:  # (the message itself is forwarded)
                if not tells(fact, applying.event, applying.reason):
                    rid = (new or old or {}).get("id")
                    applying.untold.append((rtype, rid if isinstance(rid, str) else "", fact))
                continue
            if fact.event == vocab.CONSENT_CHANGED and fact.patient_id in planned:
                continue
            self.emit(tx, fact.event, sender_org=ctx.access.org, patient_id=fact.patient_id,
                      careplan_id=fact.careplan_id, focus=fact.focus, reason=fact.reason,
                      base=ctx.base_url)


# What a SIP plan created is told as (``_plan``).
_NEW_SIP = frozenset({vocab.SIP_INITIATED, vocab.PLAN_ESTABLISHED, vocab.SIP_CLOSED})
