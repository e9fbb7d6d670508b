"""Messages whose event is a SIP process operation: applied through the operation itself.

An organisation's system drives the SIP process by message under the same rules and with the
same effects as the REST operations (``sip_hub.routes.process``): the same entry point runs in
the message's transaction as the sender, and its own writes make the Provenance, the deadline
Tasks, the audit records and the notifications to the participants, exactly as the REST call
would. The message itself is therefore not sent on.

======================  ==========================  ==============================================
event                   operation                   what the message carries
======================  ==========================  ==============================================
invitation              CarePlan/$invite            the Parameters (the Tasks and Appointment its
                                                    focus names are the sender's view: $invite
                                                    writes the hub's)
invitation-response     Task/$respond               the Parameters (``answer`` may be left to
                                                    MessageHeader.reason), or the invitation Task
                                                    as answered (below)
plan-established        CarePlan/$transition        the Parameters with ``approvedBy`` and
                                                    ``approvedAt``; ``to`` is upprattad (implied)
follow-up-done          CarePlan/$transition        the same, for a plan in uppfoljning
sip-closed              CarePlan/$transition        the Parameters, or only the reason as
                                                    MessageHeader.reason.text; ``to`` is avslutad
plan-revision-proposed  CarePlan/$propose-revision  the Parameters, or the revised plan as a
                                                    CarePlan entry in MessageHeader.focus (intent
                                                    proposal, replacing the plan)
revision-approved       CarePlan/$approve-revision  the Parameters
======================  ==========================  ==============================================

``$respond`` answers the Task in MessageHeader.focus; the others act on the SIP plan the message
concerns (its CarePlan focus). What the event implies fills in what the Parameters leave out:
``to`` for ``$transition``, ``answer`` from MessageHeader.reason for ``$respond``, ``reason``
from MessageHeader.reason.text for the CarePlan operations. A ``to`` or ``answer`` that
contradicts the event is refused, and so is a message without the Parameters where they
cannot be derived. Other entries are context: the operation decides what is written.

An ``invitation-response`` without Parameters carries the invitation Task (its focus) with its
new status; the ``$respond`` input is read from it:

===========  ============  ========================================================================
Task.status  answer        from
===========  ============  ========================================================================
accepted     accept        representative: an output's valueReference (type ``representative``,
                           or any Practitioner), else the Practitioner authoring a new note
in-progress  propose-time  start, end: an output's valuePeriod (type ``proposed-time``)
rejected     decline       reason: Task.statusReason (text, or a coding's display or code)
===========  ============  ========================================================================

The text of notes the hub's Task does not have yet becomes the ``comment``. What is missing is
a fatal-error naming the element by FHIRPath; the operation's own errors, too, name the element
of the message a value came from (``Bundle.entry[n].resource...``).

Every other event (sip-initiated, invitation-cancelled, meeting-rescheduled, meeting-cancelled,
insats-status-changed, consent-changed, follow-up-scheduled) is applied as plain writes of its
resources. The phases
kartlaggning, mote and uppfoljning have no event of their own: they are entered with the REST
``$transition``.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .. import invitations, process as sp, revisions, transitions
from ..errors import BadRequest, Issue, SipHubError
from ..fhir import sip
from ..fhir.dates import now_utc
from ..interactions import Context
from ..operation import Operation
from ..store import Stored, Tx
from . import parser, vocabulary as vocab

Json = dict[str, Any]
_H = "Bundle.entry[0].resource"
_PARAM = re.compile(r"^Parameters\.parameter\.where\(name='([^']*)'\)")
# Task.status of an answered invitation -> the $respond answer -> MessageHeader.reason
_ANSWER_OF_STATUS = {"accepted": "accept", "in-progress": "propose-time", "rejected": "decline"}
_REASON_OF_ANSWER = {"accept": vocab.ACCEPT, "propose-time": vocab.NEW_TIME_PROPOSED,
                     "decline": vocab.DECLINE}


@dataclass(slots=True)
class _Input:
    """The operation's Parameters, and where in the message each value came from."""

    params: Json
    base: str | None = None  # FHIRPath of a Parameters resource the message carries
    sources: dict[str, str] = field(default_factory=dict)  # parameter name -> FHIRPath

    def has(self, name: str) -> bool:
        return any(p.get("name") == name for p in self.params.get("parameter", []))

    def value(self, name: str) -> Any:
        p = next((p for p in self.params.get("parameter", []) if p.get("name") == name), None)
        return next((v for k, v in p.items() if k.startswith("value")), None) if p else None

    def add(self, name: str, key: str, value: Any, source: str) -> None:
        self.params.setdefault("parameter", []).append({"name": name, key: value})
        self.sources[name] = source

    def where(self, name: str) -> str:
        if name in self.sources:
            return self.sources[name]
        return f"{self.base or 'Parameters'}.parameter.where(name='{name}')"

    def located(self, expression: str) -> str:
        """An expression on the Parameters, as the element of the message it came from."""
        m = _PARAM.match(expression)
        if m and m.group(1) in self.sources:
            return self.sources[m.group(1)] + expression[m.end():]
        if self.base is not None and expression.startswith("Parameters"):
            return self.base + expression[len("Parameters"):]
        return expression


@dataclass(frozen=True, slots=True)
class _Spec:
    operation: str  # as the REST route names it
    target: str  # the resource type it runs on
    run: Callable[[Operation, str, Any, str | None], Json]
    to: str | None = None  # $transition: the phase the event means
    phases: frozenset[str] | None = None  # the phases the event starts from (None: any)
    wrong_phase: str = ""  # what to send instead, outside ``phases``
    derive: Callable[[Operation, parser.Message, Json, str], _Input] | None = None


@dataclass(frozen=True, slots=True)
class Applied:
    """What ``apply`` did: the operation, and the stored resources the message names."""

    operation: str
    written: dict[int, Stored]  # message entry index -> the hub's current version


def _text(concept: Any) -> str | None:
    """A CodeableConcept as text: its text, else a display or code (not a sip-event code, which
    says what kind of message it is)."""
    if not isinstance(concept, dict):
        return None
    text = concept.get("text")
    if isinstance(text, str) and text.strip():
        return text.strip()
    for c in concept.get("coding", []):
        if isinstance(c, dict) and c.get("system") != vocab.CS_EVENT:
            shown = c.get("display") or c.get("code")
            if isinstance(shown, str) and shown.strip():
                return shown.strip()
    return None


def _closing(op: Operation, msg: parser.Message, header: Json, target: str) -> _Input:
    """sip-closed without Parameters: the reason is all $transition needs."""
    if _text(header.get("reason")) is None:
        raise BadRequest("A sip-closed message gives the reason for closing in "
                         "MessageHeader.reason (text), or carries the $transition Parameters",
                         expression=f"{_H}.reason")
    return _Input({"resourceType": "Parameters"})  # `to` and `reason` are filled in


def _revision(op: Operation, msg: parser.Message, header: Json, target: str) -> _Input:
    """plan-revision-proposed without Parameters: the revised plan is a focus entry."""
    for f in msg.focus:
        if f.type == "CarePlan" and f.entry is not None and f.id != target:
            return _Input({"resourceType": "Parameters", "parameter": [
                {"name": "revision", "resource": msg.entries[f.entry]["resource"]}]},
                sources={"revision": f"Bundle.entry[{f.entry + 1}].resource"})
    raise BadRequest(f"A plan-revision-proposed message carries the $propose-revision "
                     f"Parameters, or the revised plan as a CarePlan entry in "
                     f"MessageHeader.focus besides CarePlan/{target}", expression=f"{_H}.focus")


def _new_notes(task: Json, held: Json) -> list[tuple[int, Json]]:
    known = {n.get("text") for n in held.get("note", []) if isinstance(n, dict)}
    return [(i, n) for i, n in enumerate(task.get("note", []))
            if isinstance(n, dict) and n.get("text") not in known]


def _typed(output: Json, code: str) -> bool:
    return any(c.get("system") == sip.CS_TASK_PARAMETER and c.get("code") == code
               for c in (output.get("type") or {}).get("coding", []) if isinstance(c, dict))


def _practitioner(ref: Any) -> bool:
    return (sp.ref_target(ref) or ("",))[0] == "Practitioner"


def _representative(inp: _Input, task: Json, notes: list[tuple[int, Json]], at: str) -> None:
    outputs = [(i, o) for i, o in enumerate(task.get("output", [])) if isinstance(o, dict)]
    for i, o in sorted(outputs, key=lambda io: not _typed(io[1], "representative")):
        ref = o.get("valueReference")
        if isinstance(ref, dict) and (_typed(o, "representative") or _practitioner(ref)):
            inp.add("representative", "valueReference", ref, f"{at}.output[{i}].valueReference")
            return
    for i, n in notes:
        if _practitioner(n.get("authorReference")):
            inp.add("representative", "valueReference", n["authorReference"],
                    f"{at}.note[{i}].authorReference")
            return
    raise BadRequest("An accepted invitation names the organisation's representative: a "
                     "Task.output of type representative (CodeSystem "
                     f"{sip.CS_TASK_PARAMETER}) with a reference to the Practitioner, or a new "
                     "Task.note by the Practitioner", expression=f"{at}.output")


def _proposed_time(inp: _Input, task: Json, at: str) -> None:
    outputs = [(i, o) for i, o in enumerate(task.get("output", [])) if isinstance(o, dict)]
    for i, o in sorted(outputs, key=lambda io: not _typed(io[1], "proposed-time")):
        period = o.get("valuePeriod")
        if isinstance(period, dict) and period.get("start") and period.get("end"):
            for name in ("start", "end"):
                inp.add(name, "valueDateTime", period[name],
                        f"{at}.output[{i}].valuePeriod.{name}")
            return
    raise BadRequest("An invitation answered with a new time (in-progress) gives it as a "
                     "Task.output of type proposed-time with a valuePeriod (start and end)",
                     expression=f"{at}.output")


def _answered_task(op: Operation, msg: parser.Message, header: Json, target: str) -> _Input:
    """invitation-response without Parameters: the $respond input from the answered Task."""
    f = next((f for f in msg.focus if f.type == "Task" and f.entry is not None), None)
    if f is None:
        raise BadRequest("An invitation-response message carries the $respond Parameters, or "
                         "the answered invitation Task as the entry of its focus",
                         expression=f"{_H}.focus")
    at = f"Bundle.entry[{f.entry + 1}].resource"
    task: Json = msg.entries[f.entry]["resource"]
    answer = _ANSWER_OF_STATUS.get(str(task.get("status")))
    if answer is None:
        raise BadRequest(f"An answered invitation is accepted, in-progress (a new time "
                         f"proposed) or rejected, not '{task.get('status')}'",
                         expression=f"{at}.status")
    held = op.current("Task", target).json()
    notes = _new_notes(task, held)
    inp = _Input({"resourceType": "Parameters"})
    inp.add("answer", "valueCode", answer, f"{at}.status")
    if answer == "accept":
        _representative(inp, task, notes, at)
    elif answer == "propose-time":
        _proposed_time(inp, task, at)
    else:
        reason = _text(task.get("statusReason"))
        if reason is None:
            raise BadRequest("A declined invitation gives the reason in Task.statusReason",
                             expression=f"{at}.statusReason")
        inp.add("reason", "valueString", reason, f"{at}.statusReason")
    texts = [n["text"].strip() for _, n in notes
             if isinstance(n.get("text"), str) and n["text"].strip()]
    if texts:
        inp.add("comment", "valueString", "\n".join(texts), f"{at}.note")
    return inp


SPECS: dict[str, _Spec] = {
    vocab.INVITATION: _Spec("$invite", "CarePlan", invitations.invite),
    vocab.INVITATION_RESPONSE: _Spec("$respond", "Task", invitations.respond,
                                     derive=_answered_task),
    vocab.PLAN_ESTABLISHED: _Spec(
        "$transition", "CarePlan", transitions.run, to=sp.ESTABLISHED,
        phases=frozenset(sp.PHASES) - {sp.FOLLOW_UP},
        wrong_phase="a follow-up is concluded with the event follow-up-done"),
    vocab.FOLLOW_UP_DONE: _Spec(
        "$transition", "CarePlan", transitions.run, to=sp.ESTABLISHED,
        phases=frozenset({sp.FOLLOW_UP}),
        wrong_phase="follow-up-done concludes a follow-up (phase uppfoljning); a plan is first "
                    "established with plan-established"),
    vocab.SIP_CLOSED: _Spec("$transition", "CarePlan", transitions.run, to=sp.CLOSED,
                            derive=_closing),
    vocab.PLAN_REVISION_PROPOSED: _Spec("$propose-revision", "CarePlan", revisions.propose,
                                        derive=_revision),
    vocab.REVISION_APPROVED: _Spec("$approve-revision", "CarePlan", revisions.approve),
}
_TAKES_REASON = frozenset({"$transition", "$propose-revision", "$approve-revision"})


def _target(msg: parser.Message, spec: _Spec) -> str:
    if spec.target == "CarePlan" and msg.careplan_id:
        return msg.careplan_id
    found = next((f.id for f in msg.focus if f.type == spec.target and f.id), None)
    if found is None:
        raise BadRequest(f"A {msg.event} message names its {spec.target} by id in "
                         "MessageHeader.focus", expression=f"{_H}.focus")
    return found


def _carried(msg: parser.Message) -> _Input | None:
    found = [(i, e["resource"]) for i, e in enumerate(msg.entries)
             if e["resource"].get("resourceType") == "Parameters"]
    if len(found) > 1:
        raise BadRequest("A message carries its operation's Parameters once",
                         expression=f"Bundle.entry[{found[1][0] + 1}].resource")
    if not found:
        return None
    i, params = found[0]
    return _Input(copy.deepcopy(params), base=f"Bundle.entry[{i + 1}].resource")


def _implied(spec: _Spec, msg: parser.Message, header: Json, inp: _Input) -> None:
    """Fill in what the event says; refuse Parameters that say otherwise."""
    if spec.to is not None:
        if not inp.has("to"):
            inp.add("to", "valueCode", spec.to, f"{_H}.eventCoding")
        elif inp.value("to") != spec.to:
            raise BadRequest(f"A {msg.event} message moves the SIP to '{spec.to}', not to "
                             f"'{inp.value('to')}'", expression=inp.where("to"))
    if spec.operation in _TAKES_REASON and not inp.has("reason"):
        reason = _text(header.get("reason"))
        if reason is not None:
            inp.add("reason", "valueString", reason, f"{_H}.reason")
    if spec.operation == "$respond":
        if not inp.has("answer"):
            answer = next((a for a, r in _REASON_OF_ANSWER.items() if r == msg.reason), None)
            if answer is not None:
                inp.add("answer", "valueCode", answer, f"{_H}.reason")
        elif _REASON_OF_ANSWER.get(str(inp.value("answer"))) not in (None, msg.reason):
            raise BadRequest(f"The answer '{inp.value('answer')}' contradicts "
                             f"MessageHeader.reason '{msg.reason}'", expression=f"{_H}.reason")


def _check_phase(op: Operation, msg: parser.Message, spec: _Spec, target: str) -> None:
    if spec.phases is None:
        return
    _stored, plan = transitions.sip_plan(op, target)
    phase = sp.phase_of(plan)
    if phase not in spec.phases:
        raise sp.business_rule(f"The event {msg.event} does not fit a SIP in phase '{phase}': "
                               f"{spec.wrong_phase}")


def apply(tx: Tx, ctx: Context, msg: parser.Message, header: Json, *,
          inactive_days: int) -> Applied | None:
    """Run the operation ``msg``'s event stands for; None when it is not an operation's.
    ``inactive_days``: the hub's setting, as the REST operations and the deadline scan have
    it (the deadline Tasks an operation reconciles depend on it)."""
    spec = SPECS.get(msg.event)
    if spec is None:
        return None
    op = Operation(tx, ctx, now_utc(), inactive_days)
    target = _target(msg, spec)
    inp = _carried(msg)
    if inp is None:
        if spec.derive is None:
            raise BadRequest(f"A {msg.event} message carries the {spec.target}/"
                             f"{spec.operation} Parameters (a Parameters entry)",
                             expression="Bundle.entry")
        inp = spec.derive(op, msg, header, target)
    _implied(spec, msg, header, inp)
    _check_phase(op, msg, spec, target)
    try:
        spec.run(op, target, inp.params, None)
    except SipHubError as err:
        err.issues = [Issue(i.code, i.diagnostics, tuple(inp.located(e) for e in i.expression),
                            i.severity) for i in err.issues]
        raise
    written: dict[int, Stored] = {}
    for i, e in enumerate(msg.entries):
        res = e["resource"]
        rid = res.get("id")
        cur = tx.current(res["resourceType"], rid) if isinstance(rid, str) and \
            res["resourceType"] != "Parameters" else None
        if cur is not None and not cur.deleted:
            written[i] = cur
    return Applied(spec.operation, written)
