"""The SIP process's deadlines as Tasks the hub opens and closes (domain rules 6 and 7).

Each kind (codes of the ``sip-task`` CodeSystem) watches one obligation of an open SIP plan:

==========================  ==================================================  ============
kind                        open while                                          owner
==========================  ==================================================  ============
``document-plan``           a meeting ended more than three days ago (local      coordinator
                            calendar days) and the plan is not established
``follow-up-overdue``       the follow-up date (``sip-follow-up``) has passed    coordinator
                            and the plan has not entered follow-up
``inactive-sip``            nothing was written in the SIP (plan, care team,     coordinator
                            goals, meetings, invitations, revisions) for
                            ``sip_inactive_days``
``invitation-unanswered``   an invitation is still unanswered after its answer   the invited
                            deadline (and its meeting neither held nor           organisation
                            cancelled, and the consent covers the organisation:
                            it can still be answered)
``invitation-declined``     an invited organisation declined (opened by          coordinator
                            ``$respond``) and has not been invited again or
                            accepted since
==========================  ==================================================  ============

A Task is found again by its identifier (``https://sip-hub.se/fhir/NamingSystem/sip-task``,
value ``<kind>/<CarePlan id>/<episode>``) and its id is derived from that value, so scanning is
idempotent, also when two scans race (the second creation fails and is retried next round):
one open Task per kind and plan (per invitation for the invitation kinds). Resolved Tasks are
completed; those of a closed plan are cancelled. A Task closed while its obligation holds (by a
round as of another time, ``--at``) is opened again. What is overdue for an organisation::

    GET /fhir/Task?code=https://sip-hub.se/fhir/CodeSystem/sip-task|document-plan
        &owner=Organization/<id>&status=requested

A round (``run``: ``Scheduler`` and ``sip-hub deadlines``) looks only at the plans whose Tasks
can have changed since the last completed round, in short transactions of ``BATCH`` plans:

- plans written since, or whose SIP was (care team, goals, meetings, invitations, revisions,
  the person's consents: what ``_wanted`` reads), found through the ``last_updated`` and
  reference indexes;
- plans whose next deadline has come: each reconcile records in ``deadline_due`` the first
  instant at which one of the plan's deadlines not yet passed will have (meeting + three days,
  follow-up date, inactivity horizon, invitation answer deadline, the consent's period
  beginning or ending for an invited organisation).

The watermark (when the last completed round started) is stored, and advances only when every
batch is done: after a failure the next round looks at the same writes again (reconciling is
idempotent). The first round (no watermark, or another ``sip_inactive_days``) and
``sip-hub deadlines --at`` look at every open plan, in the same batches; a round as of another
time (``--at``) clears the watermark, so that the next one, at the real time, looks at every
open plan again and puts right what it opened or closed as of that time.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any

from . import process as sp
from .access import org_hsa
from .audit import AuditLog
from .fhir import sip
from .fhir.dates import MAX_US, format_instant, from_us, now_utc, parse_range, to_us
from .fhir.indexing import extract
from .fhir.search import SearchQuery, parse as parse_search
from .interactions import Context
from .operation import Operation, ref
from .settings import Settings
from .store import Store, Stored, Tx
from .store import deadlines as store_scan
from .store.search import Grant

log = logging.getLogger("sip_hub.deadlines")
Json = dict[str, Any]

DOCUMENT_WITHIN_DAYS = 3
# A meeting ending later has its deadline past the calendar's end (year 9999): none is kept.
_LAST_MEETING_END = MAX_US - (DOCUMENT_WITHIN_DAYS + 2) * 86_400_000_000
# Plans per transaction: a round never holds the write lock for long.
BATCH = 200
# A write is stamped with its (process's) time before it commits: a round looks again at what
# was written this long before the last one started, so a write still in flight then, or
# stamped by a clock slightly behind, is not missed.
IN_FLIGHT = timedelta(minutes=10)
_WATCHED = (sp.TASK_DOCUMENT, sp.TASK_FOLLOW_UP, sp.TASK_INACTIVE, sp.TASK_UNANSWERED)
_MEETING_OFF = frozenset({"cancelled", "noshow", "entered-in-error"})
# (as for $respond: the invitations to such a meeting are answered no more)
_MEETING_GONE = _MEETING_OFF | {"fulfilled"}
_OPEN_PLANS = [("_profile", sip.PROFILE_CAREPLAN), ("intent", "plan"),
               ("status", "draft,active,on-hold")]
_OPEN_DEADLINE_TASKS = [("code", ",".join(f"{sip.CS_TASK}|{k}" for k in sp.DEADLINE_TASKS)),
                        ("status", "requested")]
# What ``_wanted`` reads of a SIP besides the plan: what the plan refers to (type, the plan's
# search parameter) ...
_REFERRED = (("CareTeam", "care-team"), ("Goal", "goal"))
# ... and what refers to the plan (type, search parameter, the token that picks it out).
_REFERRING: tuple[tuple[str, str, tuple[str, str, str] | None], ...] = (
    ("Appointment", "supporting-info", None),
    ("Task", "based-on", ("code", sip.CS_TASK, sp.TASK_INVITATION)),
    ("CarePlan", "replaces", None),
)


@dataclass(slots=True)
class Report:
    created: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    reconciled: int = 0  # open SIP plans looked at
    full: bool = False  # every open plan was looked at, not only those that can have changed
    skipped: bool = False  # another process was scanning

    def add(self, other: "Report") -> None:
        self.created += other.created
        self.closed += other.closed
        self.reconciled += other.reconciled

    def as_json(self) -> Json:
        return {"created": self.created, "closed": self.closed}


@dataclass(frozen=True, slots=True)
class _Want:
    kind: str
    episode: str
    owner: Json
    due: str
    description: str
    focus: Json | None = None


def _value(kind: str, plan_id: str, episode: str) -> str:
    return f"{kind}/{plan_id}/{episode}"


def task_id(value: str) -> str:
    """The Task id for an identifier value: the same value always names the same Task."""
    kind = value.split("/", 1)[0]
    return f"sip-{kind}-{hashlib.sha256(value.encode()).hexdigest()[:20]}"


def _held(appointments: list[Stored]) -> list[Stored]:
    """The SIP meetings among a plan's Appointments (not cancelled, no-show or in error)."""
    return [s for s in appointments if s.doc().get("status") not in _MEETING_OFF]


def _of_kind(tasks: list[Stored], kinds: tuple[str, ...], *, open_only: bool = False
             ) -> list[Stored]:
    """The Tasks carrying one of the ``sip-task`` codes ``kinds`` (as ``code=`` finds them),
    or only the open ones among them."""
    def coded(task: Json) -> bool:
        return any(isinstance(c, dict) and c.get("system") == sip.CS_TASK
                   and c.get("code") in kinds for c in (task.get("code") or {}).get("coding", []))
    return [s for s in tasks if coded(s.doc())
            and (not open_only or s.doc().get("status") in sp.OPEN_TASK)]


def meetings(tx: Tx, plan_id: str) -> list[Stored]:
    """The SIP meetings held for a plan (Appointments with the plan as supporting info)."""
    return _held(store_scan.referring(tx, "Appointment", "supporting-info", [plan_id])
                 .get(plan_id, []))


def invitations(tx: Tx, plan_id: str) -> list[Stored]:
    return _of_kind(store_scan.referring(tx, "Task", "based-on", [plan_id]).get(plan_id, []),
                    (sp.TASK_INVITATION,))


@dataclass(frozen=True, slots=True)
class _Sip:
    """What reconciling reads of a SIP besides the plan and what it refers to (its care team
    and goals, through ``Tx.current``): what refers to the plan, newest first."""

    appointments: list[Stored]  # with the plan as supporting info
    tasks: list[Stored]  # based on the plan
    revisions: list[Stored]  # CarePlans replacing it

    def meetings(self) -> list[Stored]:
        return _held(self.appointments)

    def tasks_of(self, kinds: tuple[str, ...], *, open_only: bool = False) -> list[Stored]:
        return _of_kind(self.tasks, kinds, open_only=open_only)


def _read_sips(tx: Tx, plan_ids: list[str], plans: list[Stored]) -> dict[str, _Sip]:
    """The ``_Sip`` of each of ``plan_ids``, read for all at once (a few statements for a
    batch of plans, where reading plan by plan took seven searches each); what ``plans``
    refer to is loaded for ``Tx.current`` to find."""
    referring = {rtype: store_scan.referring(tx, rtype, param, plan_ids)
                 for rtype, param, _ in _REFERRING}
    tx.load(t for p in plans for r in [*p.doc().get("careTeam", []), *p.doc().get("goal", [])]
            if (t := sp.ref_target(r)) and t[0] in ("CareTeam", "Goal"))
    return {i: _Sip(referring["Appointment"].get(i, []), referring["Task"].get(i, []),
                    referring["CarePlan"].get(i, [])) for i in plan_ids}


def last_activity(tx: Tx, plan: Stored, sip_of: _Sip) -> int:
    """When anything of the SIP was last written (the hub's deadline Tasks aside)."""
    content = plan.doc()
    times = [plan.last_updated]
    team = sp.team_of(tx, content)
    if team is not None:
        times.append(team[0].last_updated)
    goals = [t for g in content.get("goal", []) if (t := sp.ref_target(g)) and t[0] == "Goal"]
    times += [s.last_updated for g in goals if (s := tx.current(*g)) and not s.deleted]
    times += [s.last_updated for s in sip_of.appointments]
    times += [s.last_updated for s in sip_of.tasks_of((sp.TASK_INVITATION,))]
    times += [s.last_updated for s in sip_of.revisions]
    return max(times)


def _end(value: Any) -> int | None:
    try:
        return parse_range(value)[1] if isinstance(value, str) else None
    except ValueError:
        return None


def _local_end(value: Any) -> int | None:
    """``_end``, but a date without a time (a follow-up date "2027-04-05", an answer deadline)
    ends when its last day is over in Sweden, as the three days after a meeting do, not at UTC
    midnight (``sip.swedish_range``, as the process's checks read it)."""
    try:
        return sip.swedish_range(value)[1] if isinstance(value, str) else None
    except ValueError:
        return None


def _grants(tx: Tx, plan: Json) -> list[Grant]:
    """The grants of the plan's person: who the consent covers, and when."""
    found = sp.patient_of(tx, plan)
    return tx.grants(found[0]) if found is not None else []


def _coverage(grants: list[Grant], org: str | None, now: int) -> tuple[bool, int | None]:
    """Whether ``org`` holds a live reading grant at ``now`` (as ``outbox.covered`` and
    access read it), and the next instant at which that changes (None: not by time)."""
    mine = [g for g in grants if g.org == org and g.reads]
    changes = [t for g in mine for t in (g.valid_from, g.valid_until)
               if t is not None and t > now]
    return any(g.reads_at(now) for g in mine), min(changes, default=None)


def _wanted(op: Operation, plan: Stored, sip_of: _Sip) -> tuple[list[_Want], int | None]:
    """The obligations overdue as of ``op.now``, and the first instant after it at which
    another will be (None: none will by time alone)."""
    content = plan.doc()
    phase = sp.phase_of(content)
    now = to_us(op.now)
    coordinator = sp.coordinator_ref(content)
    out: list[_Want] = []
    coming: list[int] = []
    if phase in (sp.INVITATION, sp.MEETING):
        passed = []
        for m in sip_of.meetings():
            end = _end(m.doc().get("end"))
            if end is None or end > _LAST_MEETING_END:  # (its deadline: past year 9999)
                continue
            day = sp.local_date(from_us(end)) + timedelta(days=DOCUMENT_WITHIN_DAYS + 1)
            due = datetime.combine(day, time(0), sp.LOCAL)
            if to_us(due) <= now:
                passed.append((due, m))
            else:
                coming.append(to_us(due))
        if passed:
            due, m = min(passed, key=lambda p: p[0])
            out.append(_Want(sp.TASK_DOCUMENT, m.id, coordinator, due.isoformat(),
                             f"Planen ska upprättas inom tre dagar efter SIP-mötet "
                             f"({m.doc().get('end')}); den är ännu inte upprättad.", ref(m)))
    if phase == sp.ESTABLISHED:
        follow_up = next((e.get("valueDateTime") for e in content.get("extension", [])
                          if e.get("url") == sip.EXT_FOLLOW_UP), None)
        end = _local_end(follow_up)
        if end is not None and end < now:
            out.append(_Want(sp.TASK_FOLLOW_UP, str(follow_up), coordinator,
                             format_instant(from_us(end)),
                             f"Planen skulle följas upp {follow_up}; uppföljningen har inte "
                             "påbörjats."))
        elif end is not None:
            coming.append(end + 1)
    last = last_activity(op.tx, plan, sip_of)
    horizon = last + op.inactive_days * 86_400_000_000
    if now > horizon:
        since = from_us(last)
        out.append(_Want(sp.TASK_INACTIVE, format_instant(since), coordinator,
                         format_instant(since + timedelta(days=op.inactive_days)),
                         f"Inget har skrivits i SIP:en sedan {sp.local_date(since)}; följ upp "
                         "den eller avsluta den."))
    else:
        coming.append(horizon + 1)
    # An invitation to a meeting held, cancelled or gone can no longer be answered ($respond
    # refuses it): no Task may ask the organisation to.
    answerable = {m.id for m in sip_of.appointments if m.doc().get("status") not in _MEETING_GONE}
    grants = _grants(op.tx, content)
    for inv in sip_of.tasks_of((sp.TASK_INVITATION,)):
        task = inv.doc()
        deadline = ((task.get("restriction") or {}).get("period") or {}).get("end")
        end = _local_end(deadline)
        focus = sp.ref_target(task.get("focus"))
        if task.get("status") != "requested" or end is None or focus is None \
                or focus[0] != "Appointment" or focus[1] not in answerable:
            continue
        # Nor one the consent no longer covers (narrowed, ended, not begun): it can neither
        # read nor answer the invitation (rule 1), and its Task, open already, is completed.
        # When the consent's period begins or ends for it is a time to look again.
        covered, changes = _coverage(grants, org_hsa(op.tx, task.get("owner")), now)
        if changes is not None:
            coming.append(changes)
        if not covered:
            continue
        if end < now:
            out.append(_Want(sp.TASK_UNANSWERED, f"{inv.id}/{deadline}", task.get("owner", {}),
                             str(deadline), f"Kallelsen skulle besvaras senast {deadline}. En "
                             "kallad verksamhet är skyldig att delta och utse en representant.",
                             ref(inv)))
        else:
            coming.append(end + 1)
    return out, min(coming, default=None)


def _task(op: Operation, plan: Stored, want: _Want, value: str, patient: str) -> Json:
    task: Json = {
        "resourceType": "Task", "id": task_id(value),
        "identifier": [sp.task_identifier(value)],
        "basedOn": [ref(plan)], "status": "requested", "intent": "order",
        "priority": "urgent", "code": sp.task_code(want.kind),
        "description": want.description,
    }
    if want.focus:
        task["focus"] = want.focus
    task.update({"for": {"reference": patient}, "authoredOn": op.instant,
                 "lastModified": op.instant})
    if want.kind == sp.TASK_UNANSWERED:
        task["requester"] = sp.coordinator_ref(plan.json())
    task.update({"owner": want.owner, "restriction": {"period": {"end": want.due}}})
    return task


def close(op: Operation, task: Stored, status: str) -> Stored:
    content = task.json()
    authored = _end(content.get("authoredOn"))
    # Never before it was opened (inv-1), even if the clocks of two workers disagree.
    when = op.now if authored is None or authored <= to_us(op.now) else from_us(authored)
    content.update(status=status, lastModified=format_instant(when))
    return op.update(content, as_hub=True)


def _declined_resolved(declined: Json, invites: list[Stored]) -> bool:
    """Whether the organisation has accepted or been invited again since it declined."""
    target = sp.ref_target(declined.get("focus"))
    focus = next((s for s in invites if target == ("Task", s.id)), None)
    if focus is None or focus.doc().get("status") != "rejected":
        return True
    owner = focus.doc().get("owner")
    authored = focus.doc().get("authoredOn", "")
    return any(s.doc().get("owner") == owner and s.doc().get("authoredOn", "") > authored
               for s in invites)


@dataclass(slots=True)
class _Decision:
    """What reconciling a plan as of ``op.now`` changes, and when it next needs it by time
    alone (see ``_wanted``)."""
    close: list[tuple[Stored, str]] = field(default_factory=list)
    create: list[tuple[str, _Want]] = field(default_factory=list)
    reopen: list[tuple[Stored, str, _Want]] = field(default_factory=list)
    due: int | None = None


def reconcile(op: Operation, plan: Stored) -> Report:
    """Open and close the plan's deadline Tasks as of ``op.now``."""
    return _apply(op, plan, _decide(op, plan, _read_sips(op.tx, [plan.id], [plan])[plan.id]))


def _decide(op: Operation, plan: Stored, sip_of: _Sip) -> _Decision:
    """Only reads: a round decides outside its write transaction."""
    content = plan.doc()
    closed_plan = not sp.is_sip_plan(content) or sp.phase_of(content) == sp.CLOSED
    wants, due = ([], None) if closed_plan else _wanted(op, plan, sip_of)
    values = {_value(w.kind, plan.id, w.episode): w for w in wants}
    out = _Decision(due=due)
    ended = "cancelled" if closed_plan else "completed"
    for task in sip_of.tasks_of(_WATCHED, open_only=True):
        idents = [i.get("value") for i in task.doc().get("identifier", [])]
        if not any(v in values for v in idents):
            out.close.append((task, ended))
    invites = sip_of.tasks_of((sp.TASK_INVITATION,))
    for task in sip_of.tasks_of((sp.TASK_DECLINED,), open_only=True):
        if closed_plan or _declined_resolved(task.doc(), invites):
            out.close.append((task, ended))
    for value, want in values.items():
        cur = op.tx.current("Task", task_id(value))
        if cur is None:
            out.create.append((value, want))
        elif not cur.deleted and cur.doc().get("status") not in sp.OPEN_TASK:
            # Closed while the obligation still holds: by a round as of another time
            # (``sip-hub deadlines --at``) or an earlier state; its id is taken, so it is
            # opened again (never created anew, it stayed closed and the deadline silent).
            out.reopen.append((cur, value, want))
    return out


def _apply(op: Operation, plan: Stored, decision: _Decision) -> Report:
    """Write a decision. A Task changed since it was decided fails the write (If-Match on the
    version read: the next round decides again); one opened since is left as it is."""
    report = Report()
    for task, status in decision.close:
        close(op, task, status)
        report.closed.append(task.id)
    create = [(v, w) for v, w in decision.create if op.tx.current("Task", task_id(v)) is None]
    if create or decision.reopen:
        patient = sp.patient_ref(op.tx, plan.doc())
        for value, want in create:
            op.update(_task(op, plan, want, value, patient), as_hub=True)
            report.created.append(task_id(value))
        for task, value, want in decision.reopen:
            content = task.json()  # (its version: one changed since fails the write)
            fresh = _task(op, plan, want, value, patient)
            content.update({k: fresh[k] for k in ("status", "description", "authoredOn",
                                                  "lastModified", "owner", "restriction")})
            op.update(content, as_hub=True)
            report.created.append(task.id)
    return report


def declined(op: Operation, plan: Stored, invitation: Stored) -> Stored:
    """Open the coordinator's Task for a declined invitation (called by ``$respond``); when
    the organisation declines again before that Task is done, the open one is brought up to
    date (with the new reason) rather than a second one opened."""
    content, task = plan.json(), invitation.json()
    reason = (task.get("statusReason") or {}).get("text", "")
    value = _value(sp.TASK_DECLINED, plan.id, f"{invitation.id}/{invitation.version_id}")
    want = _Want(sp.TASK_DECLINED, "", sp.coordinator_ref(content), op.instant,
                 f"{sp.name_of(op.tx, task.get('owner'))} har avböjt kallelsen: {reason} "
                 "En kallad verksamhet är skyldig att delta; följ upp och kalla igen.",
                 ref(invitation))
    fresh = _task(op, plan, want, value, sp.patient_ref(op.tx, content))
    earlier = _of_kind(store_scan.referring(op.tx, "Task", "based-on", [plan.id])
                       .get(plan.id, []), (sp.TASK_DECLINED,), open_only=True)
    still_open = next((s for s in earlier if s.doc().get("focus") == ref(invitation)), None)
    if still_open is None:
        return op.update(fresh, as_hub=True)
    again = still_open.json()
    again.update(description=fresh["description"], lastModified=fresh["lastModified"],
                 restriction=fresh["restriction"])
    return op.update(again, as_hub=True)


def _query(rtype: str, items: list[tuple[str, str]]) -> SearchQuery:
    return parse_search(rtype, items, default_count=1, max_count=1)


def _everything(tx: Tx) -> tuple[list[str], list[str]]:
    """Every open SIP plan and every plan with an open deadline Task; and the open deadline
    Tasks based on no plan at all."""
    plans = set(store_scan.matching(tx, _query("CarePlan", _OPEN_PLANS)))
    plans |= store_scan.plans_referred(tx, _query("Task", _OPEN_DEADLINE_TASKS), "based-on")
    orphans = store_scan.matching(tx, _query("Task", [*_OPEN_DEADLINE_TASKS,
                                                      ("based-on:missing", "true")]))
    return sorted(plans), orphans


def _changed(tx: Tx, since: int) -> set[str]:
    """The plans whose deadlines a write at or after ``since`` may have changed: a write of the
    plan, or of what ``_wanted`` reads of its SIP, as it refers to the plan now and as it
    referred to it before (a deleted or changed resource's index rows are gone); and the plans
    of the persons whose consent was written (whom it covers: who is asked to answer)."""
    plans = set(store_scan.written_since(tx, "CarePlan", since))
    plans |= store_scan.plans_of_patients(tx, "Consent", since, {
        i for old in store_scan.earlier(tx, "Consent", since)
        for p, t, i in extract(old.json()).reference if p == "patient" and t == "Patient"})
    for rtype, param in _REFERRED:
        plans |= store_scan.plans_referring(tx, param, rtype, since)
    after = ("_lastUpdated", f"ge{format_instant(from_us(since))}")
    for rtype, param, token in _REFERRING:
        picked = [(token[0], f"{token[1]}|{token[2]}")] if token else []
        plans |= store_scan.plans_referred(tx, _query(rtype, [after, *picked]), param)
        for old in store_scan.earlier(tx, rtype, since):
            rows = extract(old.json())
            if token is None or token in rows.token:
                plans |= {i for p, t, i in rows.reference if p == param and t == "CarePlan"}
    return plans


@dataclass(slots=True)
class _Batch:
    plans: list[tuple[Stored, _Decision]]  # the open SIP plans, and what reconciling changes
    retired: list[Stored]  # open deadline Tasks of the other plans
    due: dict[str, int | None]


def _decide_batch(op: Operation, plan_ids: list[str]) -> _Batch:
    """Decide for the open SIP plans among ``plan_ids``; the others (closed, deleted, no longer
    a SIP plan) have their deadline Tasks cancelled."""
    plans = sp.search(op.tx, "CarePlan", [*_OPEN_PLANS, ("_id", ",".join(plan_ids))],
                      len(plan_ids))
    sips = _read_sips(op.tx, plan_ids, plans)
    decided = [(plan, _decide(op, plan, sips[plan.id])) for plan in plans]
    others = sorted(set(plan_ids).difference(p.id for p in plans))
    return _Batch(decided, [t for p in others
                            for t in sips[p].tasks_of(sp.DEADLINE_TASKS, open_only=True)],
                  dict.fromkeys(plan_ids) | {p.id: d.due for p, d in decided})


def _apply_batch(op: Operation, batch: _Batch) -> Report:
    report = Report(reconciled=len(batch.plans))
    for plan, decision in batch.plans:
        report.add(_apply(op, plan, decision))
    for task in batch.retired:
        close(op, task, "cancelled")
        report.closed.append(task.id)
    store_scan.set_due(op.tx, batch.due)
    return report


def _close_orphans(op: Operation, task_ids: list[str]) -> Report:
    report = Report()
    for task in op.tx.current_many([("Task", t) for t in task_ids]):
        close(op, task, "cancelled")
        report.closed.append(task.id)
    return report


def scan(tx: Tx, now: datetime, *, inactive_days: int = 90, audit: AuditLog | None = None,
         base_url: str = "") -> Report:
    """Bring every SIP's deadline Tasks up to date as of ``now`` in one transaction (``run``
    does it in short ones); the watermark is left as it is."""
    op = Operation(tx, Context(base_url, audit=audit), now, inactive_days)
    plans, orphans = _everything(tx)
    report = Report(full=True)
    for i in range(0, len(plans), BATCH):
        report.add(_apply_batch(op, _decide_batch(op, plans[i:i + BATCH])))
    report.add(_close_orphans(op, orphans))
    return report


def run(store: Store, now: datetime, *, full: bool = False, inactive_days: int = 90,
        audit: AuditLog | None = None, base_url: str = "", batch: int = BATCH,
        real_time: bool = True) -> Report:
    """One round as of ``now`` in transactions of ``batch`` plans: the plans whose deadline
    Tasks can have changed since the last completed round, or every open plan (``full``, or
    no round has completed with this ``inactive_days``). Run one at a time (``Scheduler``).

    A round as of another time than the clock's (``real_time`` False: ``sip-hub deadlines
    --at``) looks at every open plan and leaves no watermark: what it opened before it was due,
    or closed while due, and the next deadlines it recorded as of that time, are for the next
    round, a full one again, to put right (it looked only at what changed, and the Tasks an
    operator's look ahead opened stayed with the organisations)."""
    started = to_us(now_utc())
    full = full or not real_time
    with store.begin(write=False) as tx:
        mark = store_scan.watermark(tx)
        if full or mark is None or mark.inactive_days != inactive_days:
            report = Report(full=True)
            plans, orphans = _everything(tx)
        else:
            report = Report()
            since = mark.scanned_at - IN_FLIGHT // timedelta(microseconds=1)
            plans = sorted(_changed(tx, since).union(store_scan.due(tx, to_us(now))))
            orphans = []
    ctx = Context(base_url, audit=audit)
    for i in range(0, len(plans), batch):
        # The reads, nearly all of the work, outside the write transaction (on SQLite, the
        # one writer lock): it only writes what changes.
        with store.begin(write=False) as tx:
            decided = _decide_batch(Operation(tx, ctx, now, inactive_days), plans[i:i + batch])
        with store.begin() as tx:
            report.add(_apply_batch(Operation(tx, ctx, now, inactive_days), decided))
    with store.begin() as tx:
        report.add(_close_orphans(Operation(tx, ctx, now, inactive_days), orphans))
        if real_time:
            store_scan.set_watermark(tx, store_scan.Watermark(started, inactive_days))
        else:
            store_scan.clear_watermark(tx)
    return report


class Scheduler:
    """Runs a round (``run``) every few minutes in a background thread of the API process."""

    def __init__(self, store: Store, settings: Settings, audit: AuditLog | None) -> None:
        self.store, self.audit = store, audit
        self.interval = settings.sip_deadline_scan_minutes * 60
        self.inactive_days = settings.sip_inactive_days
        # Tests drive scans themselves, with the time they need.
        self.enabled = self.interval > 0 and settings.env != "test"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sip-deadlines", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def run_once(self, at: datetime | None = None) -> Report:
        """One round as of now, or a full one as of ``at`` (``sip-hub deadlines --at``), unless
        another process (every API worker runs a Scheduler) is scanning: a round covers every
        SIP, so one at a time is enough."""
        with self.store.exclusive("deadline-scan") as mine:
            if not mine:
                return Report(skipped=True)
            return run(self.store, at or now_utc(), full=at is not None, real_time=at is None,
                       inactive_days=self.inactive_days, audit=self.audit)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                report = self.run_once()
                if report.created or report.closed or report.full:
                    log.info("deadlines: %d plans looked at%s, %d tasks opened, %d closed",
                             report.reconciled, " (all)" if report.full else "",
                             len(report.created), len(report.closed))
            except Exception:  # a lost race or a database hiccup: the next round retries
                log.exception("deadline scan failed")
