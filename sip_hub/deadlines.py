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
                            deadline                                             organisation
``invitation-declined``     an invited organisation declined (opened by          coordinator
                            ``$respond``) and has not been invited again or
                            accepted since
==========================  ==================================================  ============

A Task is found again by its identifier (``https://sip-hub.se/fhir/NamingSystem/sip-task``,
value ``<kind>/<CarePlan id>/<episode>``) and its id is derived from that value, so scanning is
idempotent, also when two scans race (the second creation fails and is retried next round):
one open Task per kind and plan (per invitation for the invitation kinds). Resolved Tasks are
completed; those of a closed plan are cancelled. What is overdue for an organisation::

    GET /fhir/Task?code=https://sip-hub.se/fhir/CodeSystem/sip-task|document-plan
        &owner=Organization/<id>&status=requested
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any

from . import process as sp
from .audit import AuditLog
from .fhir import sip
from .fhir.dates import format_instant, from_us, now_utc, parse_range, to_us
from .interactions import Context
from .operation import Operation, ref
from .settings import Settings
from .store import Store, Stored, Tx

log = logging.getLogger("sip_hub.deadlines")
Json = dict[str, Any]

DOCUMENT_WITHIN_DAYS = 3
_WATCHED = (sp.TASK_DOCUMENT, sp.TASK_FOLLOW_UP, sp.TASK_INACTIVE, sp.TASK_UNANSWERED)
_MEETING_OFF = frozenset({"cancelled", "noshow", "entered-in-error"})
_OPEN_PLAN = "draft,active,on-hold"


@dataclass(slots=True)
class Report:
    created: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    skipped: bool = False  # another process was scanning

    def add(self, other: "Report") -> None:
        self.created += other.created
        self.closed += other.closed

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


def meetings(tx: Tx, plan_id: str) -> list[Stored]:
    """The SIP meetings held for a plan (Appointments with the plan as supporting info)."""
    return [s for s in sp.search(tx, "Appointment", [("supporting-info", f"CarePlan/{plan_id}")])
            if s.json().get("status") not in _MEETING_OFF]


def invitations(tx: Tx, plan_id: str) -> list[Stored]:
    return sp.search(tx, "Task", [("based-on", f"CarePlan/{plan_id}"),
                                  ("code", f"{sip.CS_TASK}|{sp.TASK_INVITATION}")])


def _open_tasks(tx: Tx, plan_id: str, kinds: tuple[str, ...]) -> list[Stored]:
    codes = ",".join(f"{sip.CS_TASK}|{k}" for k in kinds)
    return [s for s in sp.search(tx, "Task", [("based-on", f"CarePlan/{plan_id}"),
                                              ("code", codes)])
            if s.json().get("status") in sp.OPEN_TASK]


def last_activity(tx: Tx, plan: Stored) -> int:
    """When anything of the SIP was last written (the hub's deadline Tasks aside)."""
    content = plan.json()
    times = [plan.last_updated]
    team = sp.team_of(tx, content)
    if team is not None:
        times.append(team[0].last_updated)
    goals = [t for g in content.get("goal", []) if (t := sp.ref_target(g)) and t[0] == "Goal"]
    times += [s.last_updated for s in tx.current_many(goals)]
    pid = f"CarePlan/{plan.id}"
    times += [s.last_updated for s in sp.search(tx, "Appointment", [("supporting-info", pid)])]
    times += [s.last_updated for s in invitations(tx, plan.id)]
    times += [s.last_updated for s in sp.search(tx, "CarePlan", [("replaces", pid)])]
    return max(times)


def _end(value: Any) -> int | None:
    try:
        return parse_range(value)[1] if isinstance(value, str) else None
    except ValueError:
        return None


def _wanted(op: Operation, plan: Stored) -> list[_Want]:
    content = plan.json()
    phase = sp.phase_of(content)
    now = to_us(op.now)
    coordinator = sp.coordinator_ref(content)
    out: list[_Want] = []
    if phase in (sp.INVITATION, sp.MEETING):
        passed = []
        for m in meetings(op.tx, plan.id):
            end = _end(m.json().get("end"))
            if end is None:
                continue
            day = sp.local_date(from_us(end)) + timedelta(days=DOCUMENT_WITHIN_DAYS + 1)
            due = datetime.combine(day, time(0), sp.LOCAL)
            if to_us(due) <= now:
                passed.append((due, m))
        if passed:
            due, m = min(passed, key=lambda p: p[0])
            out.append(_Want(sp.TASK_DOCUMENT, m.id, coordinator, due.isoformat(),
                             f"Planen ska upprättas inom tre dagar efter SIP-mötet "
                             f"({m.json().get('end')}); den är ännu inte upprättad.", ref(m)))
    if phase == sp.ESTABLISHED:
        follow_up = next((e.get("valueDateTime") for e in content.get("extension", [])
                          if e.get("url") == sip.EXT_FOLLOW_UP), None)
        end = _end(follow_up)
        if end is not None and end < now:
            out.append(_Want(sp.TASK_FOLLOW_UP, str(follow_up), coordinator,
                             format_instant(from_us(end)),
                             f"Planen skulle följas upp {follow_up}; uppföljningen har inte "
                             "påbörjats."))
    last = last_activity(op.tx, plan)
    if now - last > op.inactive_days * 86_400_000_000:
        since = from_us(last)
        out.append(_Want(sp.TASK_INACTIVE, format_instant(since), coordinator,
                         format_instant(since + timedelta(days=op.inactive_days)),
                         f"Inget har skrivits i SIP:en sedan {sp.local_date(since)}; följ upp "
                         "den eller avsluta den."))
    for inv in invitations(op.tx, plan.id):
        task = inv.json()
        deadline = ((task.get("restriction") or {}).get("period") or {}).get("end")
        end = _end(deadline)
        if task.get("status") == "requested" and end is not None and end < now:
            out.append(_Want(sp.TASK_UNANSWERED, f"{inv.id}/{deadline}", task.get("owner", {}),
                             str(deadline), f"Kallelsen skulle besvaras senast {deadline}. En "
                             "kallad verksamhet är skyldig att delta och utse en representant.",
                             ref(inv)))
    return out


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
    if focus is None or focus.json().get("status") != "rejected":
        return True
    owner = focus.json().get("owner")
    authored = focus.json().get("authoredOn", "")
    return any(s.json().get("owner") == owner and s.json().get("authoredOn", "") > authored
               for s in invites)


def reconcile(op: Operation, plan: Stored) -> Report:
    """Open and close the plan's deadline Tasks as of ``op.now``."""
    report = Report()
    content = plan.json()
    closed_plan = not sp.is_sip_plan(content) or sp.phase_of(content) == sp.CLOSED
    wants = [] if closed_plan else _wanted(op, plan)
    values = {_value(w.kind, plan.id, w.episode): w for w in wants}
    for task in _open_tasks(op.tx, plan.id, _WATCHED):
        idents = [i.get("value") for i in task.json().get("identifier", [])]
        if not any(v in values for v in idents):
            close(op, task, "cancelled" if closed_plan else "completed")
            report.closed.append(task.id)
    invites = invitations(op.tx, plan.id)
    for task in _open_tasks(op.tx, plan.id, (sp.TASK_DECLINED,)):
        if closed_plan or _declined_resolved(task.json(), invites):
            close(op, task, "cancelled" if closed_plan else "completed")
            report.closed.append(task.id)
    if values:
        patient = sp.patient_ref(op.tx, content)
        for value, want in values.items():
            if op.tx.current("Task", task_id(value)) is None:
                op.update(_task(op, plan, want, value, patient), as_hub=True)
                report.created.append(task_id(value))
    return report


def declined(op: Operation, plan: Stored, invitation: Stored) -> Stored:
    """Open the coordinator's Task for a declined invitation (called by ``$respond``)."""
    content, task = plan.json(), invitation.json()
    reason = (task.get("statusReason") or {}).get("text", "")
    value = _value(sp.TASK_DECLINED, plan.id, f"{invitation.id}/{invitation.version_id}")
    want = _Want(sp.TASK_DECLINED, "", sp.coordinator_ref(content), op.instant,
                 f"{sp.name_of(op.tx, task.get('owner'))} har avböjt kallelsen: {reason} "
                 "En kallad verksamhet är skyldig att delta; följ upp och kalla igen.",
                 ref(invitation))
    return op.update(_task(op, plan, want, value, sp.patient_ref(op.tx, content)), as_hub=True)


def scan(tx: Tx, now: datetime, *, inactive_days: int = 90, audit: AuditLog | None = None,
         base_url: str = "") -> Report:
    """Bring every SIP's deadline Tasks up to date as of ``now``, in one transaction."""
    op = Operation(tx, Context(base_url, audit=audit), now, inactive_days)
    report = Report()
    open_plans: set[str] = set()
    offset = 0
    while True:
        page = sp.search(tx, "CarePlan", [("_profile", sip.PROFILE_CAREPLAN), ("intent", "plan"),
                                          ("status", _OPEN_PLAN), ("_offset", str(offset))], 500)
        for plan in page:
            open_plans.add(plan.id)
            report.add(reconcile(op, plan))
        if len(page) < 500:
            break
        offset += len(page)
    # Tasks of plans that closed (or went away) since they were opened.
    codes = ",".join(f"{sip.CS_TASK}|{k}" for k in sp.DEADLINE_TASKS)
    stale = [s for s in sp.search(tx, "Task", [("code", codes), ("status", "requested")], 10_000)
             if not any(t and t[0] == "CarePlan" and t[1] in open_plans
                        for t in (sp.ref_target(b) for b in s.json().get("basedOn", [])))]
    for task in stale:
        close(op, task, "cancelled")
        report.closed.append(task.id)
    return report


class Scheduler:
    """Runs ``scan`` every few minutes in a background thread of the API process."""

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

    def run_once(self) -> Report:
        """One scan, unless another process (every API worker runs a Scheduler) is scanning:
        the scan covers every SIP, so one at a time is enough."""
        with self.store.exclusive("deadline-scan") as mine:
            if not mine:
                return Report(skipped=True)
            with self.store.begin() as tx:
                return scan(tx, now_utc(), inactive_days=self.inactive_days,
                            audit=self.audit)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                report = self.run_once()
                if report.created or report.closed:
                    log.info("deadlines: %d tasks opened, %d closed", len(report.created),
                             len(report.closed))
            except Exception:  # a lost race or a database hiccup: the next round retries
                log.exception("deadline scan failed")
