"""The SIP process as a state machine: its phases, the transitions between them, and the
rules that keep plain writes from going around it (docs/domain.md rules 1, 2, 3 and 6).

The phase is the ``sip-phase`` extension on the SIP CarePlan; the plan's status follows it
(``sip.PHASE_STATUSES``, enforced by the profile on every write). A plan without the extension
(written before the process existed, or imported already established) is in the phase its
status implies. Only the operations (``transitions``, ``invitations``, ``revisions``) change a
phase; ``check_plain_update``, ``check_plain_create`` and ``check_plain_delete`` are the hooks in
``interactions`` (so in REST, Bundle entries and messages alike) that refuse a plain write doing
their work or going around them: changing the phase or status, changing what an established
plan decides (also through its goals) without the person's approval, answering an invitation
without ``$respond`` or sending one without ``$invite``, or changing a closed SIP.

This module holds rules only; it writes nothing, so ``interactions`` can import it.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from .access import org_hsa, without_status
from .errors import Conflict, Forbidden, Issue
from .fhir import profiles, sip
from .fhir.dates import from_us, parse_range, to_us
from .fhir.indexing import split_reference
from .service import find as search  # the process modules read as the hub
from .identifiers import PERSONNUMMER, SAMORDNINGSNUMMER
from .store import Stored, Tx

if TYPE_CHECKING:
    from .interactions import Context

Json = dict[str, Any]

NEED: Final = "behov-uppmarksammat"
MAPPING: Final = "kartlaggning"
INVITATION: Final = "kallelse"
MEETING: Final = "mote"
ESTABLISHED: Final = "upprattad"
FOLLOW_UP: Final = "uppfoljning"
CLOSED: Final = "avslutad"
PHASES: Final = (NEED, MAPPING, INVITATION, MEETING, ESTABLISHED, FOLLOW_UP, CLOSED)

# Forward one step; a follow-up ends in the (possibly revised) established plan or in another
# follow-up; any open phase may close (rule 2: the person may end the SIP at any time).
NEXT: Final[dict[str, frozenset[str]]] = {
    NEED: frozenset({MAPPING, CLOSED}),
    MAPPING: frozenset({INVITATION, CLOSED}),
    INVITATION: frozenset({MEETING, CLOSED}),
    MEETING: frozenset({ESTABLISHED, CLOSED}),
    ESTABLISHED: frozenset({FOLLOW_UP, CLOSED}),
    FOLLOW_UP: frozenset({ESTABLISHED, FOLLOW_UP, CLOSED}),
    CLOSED: frozenset(),
}
# Before these the person's information is not shared beyond the coordinator: leaving the
# mapping needs the consent (rule 1).
CONSENT_PHASES: Final = frozenset({INVITATION, MEETING, ESTABLISHED, FOLLOW_UP})
# The plan's content is fixed: it changes only by an approved revision (rule 3), or not at all.
FIXED_PHASES: Final = frozenset({ESTABLISHED, FOLLOW_UP, CLOSED})
# Where the operations refer to SIP Tasks by code (codes of sip.CS_TASK).
TASK_INVITATION: Final = "invitation"
TASK_DECLINED: Final = "invitation-declined"
TASK_UNANSWERED: Final = "invitation-unanswered"
TASK_DOCUMENT: Final = "document-plan"
TASK_FOLLOW_UP: Final = "follow-up-overdue"
TASK_INACTIVE: Final = "inactive-sip"
DEADLINE_TASKS: Final = (TASK_DOCUMENT, TASK_FOLLOW_UP, TASK_INACTIVE, TASK_UNANSWERED,
                         TASK_DECLINED)
OPEN_TASK: Final = frozenset({"requested", "received", "accepted", "ready", "in-progress",
                              "on-hold"})
ADULT_AGE: Final = 18
ZONE_US: Final = 14 * 3_600_000_000  # the widest UTC offset FHIR allows
# Who may approve the plan for the person besides the person themselves (rule 3).
REPRESENTATIVE_ROLES: Final = frozenset({"custodian", "guardian", "personal-representative"})
_TASK_IDENTIFIER: Final = f"{sip.CANONICAL}/NamingSystem/sip-task"

LOCAL: Final = sip.LOCAL


def business_rule(text: str, expression: str | None = None) -> Conflict:
    """A 409 for a request the SIP's current state does not allow."""
    return Conflict(text, issues=[Issue("business-rule", text,
                                        (expression,) if expression else ())])


@cache
def _displays() -> dict[tuple[str, str], str]:
    out: dict[tuple[str, str], str] = {}
    for d in profiles.definitions():
        if d["resourceType"] == "CodeSystem":
            for c in d.get("concept", []):
                out[(d["url"], c["code"])] = c.get("display", c["code"])
    return out


def coding(system: str, code: str) -> Json:
    """A Coding of one of our code systems, with its published display."""
    return {"system": system, "code": code, "display": _displays()[(system, code)]}


def task_code(kind: str) -> Json:
    return {"coding": [coding(sip.CS_TASK, kind)]}


def task_kind(task: Json) -> str | None:
    """The sip-task code of a Task, or None for other Tasks."""
    for c in (task.get("code") or {}).get("coding", []):
        if isinstance(c, dict) and c.get("system") == sip.CS_TASK:
            return c.get("code")
    return None


def task_identifier(value: str) -> Json:
    return {"system": _TASK_IDENTIFIER, "value": value}


# -- phases ------------------------------------------------------------------------------------

def is_sip_plan(plan: Json) -> bool:
    return profiles.applies(plan) == sip.PROFILE_CAREPLAN and plan.get("intent") == "plan"


def is_proposal(plan: Json) -> bool:
    return profiles.applies(plan) == sip.PROFILE_CAREPLAN and plan.get("intent") == "proposal"


def phase_ext(plan: Json) -> str | None:
    for e in plan.get("extension", []):
        if isinstance(e, dict) and e.get("url") == sip.EXT_PHASE:
            value = e.get("valueCode")
            return value if isinstance(value, str) else None
    return None


def phase_of(plan: Json) -> str:
    """The plan's phase: its sip-phase extension, else the phase its status implies."""
    stated = phase_ext(plan)
    if stated in PHASES:
        return stated
    status = plan.get("status")
    if status in ("active", "on-hold"):
        return ESTABLISHED
    if status in ("completed", "revoked", "entered-in-error"):
        return CLOSED
    return NEED


def with_phase(plan: Json, phase: str | None) -> Json:
    """A copy of ``plan`` in ``phase`` (None: without the extension), in place of the old one."""
    out = copy.deepcopy(plan)
    exts = [e for e in out.get("extension", []) if not (
        isinstance(e, dict) and e.get("url") == sip.EXT_PHASE)]
    if phase is not None:
        exts.append({"url": sip.EXT_PHASE, "valueCode": phase})
    if exts:
        out["extension"] = exts
    else:
        out.pop("extension", None)
    return out


def allowed(frm: str, to: str) -> bool:
    return to in NEXT.get(frm, frozenset())


def status_for(to: str, frm: str) -> str:
    """The CarePlan status in phase ``to`` when coming from ``frm``."""
    if to == CLOSED:
        return "completed" if frm in (ESTABLISHED, FOLLOW_UP) else "revoked"
    return "active" if to in (ESTABLISHED, FOLLOW_UP) else "draft"


# -- the person, the consent and the participants ---------------------------------------------

def ref_target(ref: Any) -> tuple[str, str] | None:
    if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
        return split_reference(ref["reference"])
    return None


def time_of(value: Any) -> int | None:
    """The UTC microsecond a stored date or dateTime begins at; None when it is not one (a
    stored value the rules did not check, e.g. an Appointment's start, must not make an
    operation a 5xx)."""
    try:
        return parse_range(value)[0] if isinstance(value, str) else None
    except ValueError:
        return None


def current_json(tx: Tx, rtype: str, rid: str) -> Json | None:
    cur = tx.current(rtype, rid)
    return cur.json() if cur is not None and not cur.deleted else None


def name_of(tx: Tx, ref: Any) -> str:
    """A readable name for a reference: its display, or the name of what it points at."""
    if isinstance(ref, dict) and isinstance(ref.get("display"), str):
        return ref["display"]
    target = ref_target(ref)
    found = current_json(tx, *target) if target else None
    name = found.get("name") if found else None
    if isinstance(name, str):
        return name
    if isinstance(name, list) and name and isinstance(name[0], dict):
        n = name[0]
        return " ".join([*n.get("given", []), n.get("family", "")]).strip() or "?"
    return f"{target[0]}/{target[1]}" if target else "?"


def patient_of(tx: Tx, plan: Json) -> tuple[str, Json] | None:
    """(id, Patient) of the plan's subject, by literal reference or by personnummer."""
    subject = plan.get("subject") or {}
    target = ref_target(subject)
    if target is not None and target[0] == "Patient":
        found = current_json(tx, "Patient", target[1])
        return (target[1], found) if found is not None else None
    ident = subject.get("identifier") if isinstance(subject, dict) else None
    if isinstance(ident, dict) and ident.get("value"):
        hits = search(tx, "Patient", [("identifier", f"{ident.get('system')}|{ident['value']}")],
                      2)
        if len(hits) == 1:
            return hits[0].id, hits[0].json()
    return None


def patient_ref(tx: Tx, plan: Json) -> str:
    found = patient_of(tx, plan)
    if found is None:
        raise business_rule("The plan's individual (den enskilde) is not a Patient known to the "
                            "hub", "CarePlan.subject")
    return f"Patient/{found[0]}"


def birth_date(patient: Json) -> date | None:
    """From the personnummer or samordningsnummer (day + 60), else Patient.birthDate."""
    for ident in patient.get("identifier", []):
        value = ident.get("value") if isinstance(ident, dict) else None
        if ident.get("system") in (PERSONNUMMER, SAMORDNINGSNUMMER) and isinstance(value, str) \
                and len(value) == 12 and value.isdigit():
            day = int(value[6:8])
            try:
                return date(int(value[:4]), int(value[4:6]), day - 60 if day > 60 else day)
            except ValueError:
                continue
    text = patient.get("birthDate")
    if isinstance(text, str) and len(text) == 10:
        try:
            return date.fromisoformat(text)
        except ValueError:
            return None
    return None


def age_on(born: date, day: date) -> int:
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))


def local_date(when: datetime) -> date:
    return when.astimezone(LOCAL).date()


def approval_time(value: Any) -> datetime | None:
    """When an approval (a date or dateTime) was given, as the rules judge it: a dateTime's
    instant, a date's Swedish midnight (the day began then for the person who approved); None
    when it is not one."""
    try:
        return from_us(sip.swedish_range(value)[0]) if isinstance(value, str) else None
    except ValueError:
        return None


def active_consent(tx: Tx, patient_id: str, now: datetime) -> Json | None:
    """The person's SIP consent in force at ``now`` (active, permitting, within its period)."""
    return next(consents_in_force(tx, patient_id, now), None)


def consents_in_force(tx: Tx, patient_id: str, now: datetime) -> Iterator[Json]:
    """Each of the person's SIP consents in force at ``now`` (a person may have given more
    than one: each covers the organisations it names)."""
    at = to_us(now)
    for consent in _sip_consents(tx, patient_id):
        period = (consent.get("provision") or {}).get("period") or {}
        try:
            if period.get("start") and sip.swedish_range(period["start"])[0] > at:
                continue
            if period.get("end") and sip.swedish_range(period["end"])[1] < at:
                continue
        except ValueError:
            continue
        yield consent


def _sip_consents(tx: Tx, patient_id: str) -> Iterator[Json]:
    """The person's active SIP consents that permit (whatever their period)."""
    for s in search(tx, "Consent", [("patient", f"Patient/{patient_id}"), ("status", "active")]):
        consent = s.json()
        if profiles.applies(consent) == sip.PROFILE_CONSENT and \
                (consent.get("provision") or {}).get("type", "permit") == "permit":
            yield consent


def _consent_begins(consent: Json) -> tuple[int, str] | None:
    """(UTC microsecond, text) of the earliest the consent speaks for: when the person gave it
    (dateTime) or the start of its provision.period, whichever is earlier (a consent recorded
    after the fact may say it applied before); a date as early as any zone has it."""
    start = ((consent.get("provision") or {}).get("period") or {}).get("start")
    out = []
    for text in (consent.get("dateTime"), start):
        began = time_of(text)
        if began is not None:
            out.append((began - ZONE_US if "T" not in text else began, text))
    return min(out) if out else None


def require_approval_after_consent(tx: Tx, plan: Json, approved: str, expression: str,
                                   what: str = "The approval") -> None:
    """The person cannot have approved the plan before they consented to the SIP (rule 1:
    no SIP work without consent): ``approved`` (a date or dateTime) is refused when it ends
    before the earliest of the person's active, permitting SIP consents begins (its dateTime
    or provision.period.start, the earlier). Consents whose period has ended count: the plan
    may have been approved under a consent since replaced."""
    found = patient_of(tx, plan)
    if found is None:
        return
    begins = [b for consent in _sip_consents(tx, found[0])
              if (b := _consent_begins(consent)) is not None]
    try:
        end = parse_range(approved)[1]
    except ValueError:
        return
    if begins and end < min(begins)[0]:
        raise business_rule(f"{what} ({approved}) lies before the person consented to the SIP "
                            f"({min(begins)[1]}, the consent's dateTime or "
                            "provision.period.start): a SIP plan is not approved before the "
                            "consent to it", expression)


def require_consent(tx: Tx, plan: Json, now: datetime, what: str) -> Json:
    patient = patient_ref(tx, plan).split("/", 1)[1]
    consent = active_consent(tx, patient, now)
    if consent is None:
        raise business_rule(f"{what} needs the person's active SIP consent (samtycke): no SIP "
                            f"work starts and nothing is shared without it. Record the consent "
                            f"for Patient/{patient} first")
    return consent


def consent_covers(tx: Tx, consent: Json, org: str) -> bool:
    return any(org_hsa(tx, a.get("reference")) == org
               for a in (consent.get("provision") or {}).get("actor", []))


def team_of(tx: Tx, plan: Json) -> tuple[Stored, Json] | None:
    """The plan's SIP CareTeam (stored, content)."""
    for ref in plan.get("careTeam", []):
        target = ref_target(ref)
        if target and target[0] == "CareTeam":
            cur = tx.current("CareTeam", target[1])
            if cur is not None and not cur.deleted:
                team = cur.json()
                if profiles.applies(team) == sip.PROFILE_CARETEAM:
                    return cur, team
    return None


def role_of(participant: Json) -> str | None:
    for concept in participant.get("role", []):
        for c in concept.get("coding", []) if isinstance(concept, dict) else []:
            if c.get("system") == sip.CS_PARTICIPANT_ROLE:
                return c.get("code")
    return None


def organisation_of(participant: Json) -> Any:
    """The Reference to the organisation a care team participant takes part for: its
    onBehalfOf, or its member where that is the Organization itself (an invited organisation
    that has not named its representative: the profile's sip-ct-4, as ``invitations``
    writes it); None for a person taking part on no organisation's behalf."""
    if participant.get("onBehalfOf"):
        return participant["onBehalfOf"]
    member = participant.get("member")
    return member if profiles.is_organization(member) else None


def represents(tx: Tx, participant: Json) -> str | None:
    """The HSA-id of the organisation an organisation-representative participant stands for:
    its onBehalfOf, or its member while the organisation has not named its representative."""
    if role_of(participant) != sip.ROLE_ORGANISATION_REPRESENTATIVE:
        return None
    return org_hsa(tx, organisation_of(participant))


def members_with_roles(tx: Tx, team: Json, patient_id: str, roles: frozenset[str]
                       ) -> list[str]:
    """``RelatedPerson/<id>`` of the person's relatives in the team with one of ``roles``."""
    out = []
    for part in team.get("participant", []):
        target = ref_target(part.get("member"))
        if role_of(part) in roles and target and target[0] == "RelatedPerson":
            rp = current_json(tx, "RelatedPerson", target[1])
            if rp is not None and ref_target(rp.get("patient")) == ("Patient", patient_id):
                out.append(f"RelatedPerson/{target[1]}")
    return out


def is_minor(tx: Tx, plan: Json, now: datetime) -> bool:
    """Whether the individual is under 18 on the Swedish day of ``now``."""
    found = patient_of(tx, plan)
    born = birth_date(found[1]) if found else None
    if born is None:
        raise business_rule("The individual's age cannot be told from the personnummer or the "
                            "birth date; it decides whether custodians must take part",
                            "CarePlan.subject")
    return age_on(born, local_date(now)) < ADULT_AGE


def custodians(tx: Tx, plan: Json) -> list[str]:
    found = team_of(tx, plan)
    if found is None:
        return []
    return members_with_roles(tx, found[1], patient_ref(tx, plan).split("/", 1)[1],
                              frozenset({"custodian"}))


def require_custodian_if_minor(tx: Tx, plan: Json, now: datetime) -> None:
    """Under 18 the custodians take part: one must be in the SIP CareTeam before invitations
    go out (domain: 'Under 18: the custodians must be involved')."""
    if is_minor(tx, plan, now) and not custodians(tx, plan):
        raise business_rule("The individual is under 18: a custodian (vårdnadshavare) must take "
                            "part before invitations go out. Add the custodian to the SIP "
                            "CareTeam (a RelatedPerson with role 'custodian')", "CarePlan.careTeam")


def check_person(tx: Tx, plan: Json, refs: list[Json], expression: str, what: str,
                 at: datetime | None = None) -> None:
    """Each of ``refs`` is the individual, or a custodian, guardian or personal representative
    who takes part in the SIP (CareTeam) on their behalf. With ``at`` (when they act): a
    custodian (vårdnadshavare) only while the individual is under 18; an adult has none
    (their guardian, god man or förvaltare, or personal representative acts for them)."""
    patient = patient_ref(tx, plan)
    team = team_of(tx, plan)
    pid = patient.split("/", 1)[1]
    representatives = members_with_roles(tx, team[1], pid, REPRESENTATIVE_ROLES) if team else []
    others: list[str] | None = None
    for ref in refs:
        target = ref_target(ref)
        text = f"{target[0]}/{target[1]}" if target else None
        if text != patient and text not in representatives:
            raise business_rule(f"{text or 'A display-only reference'} cannot {what}: the "
                                f"individual ({patient}) does, or a custodian, guardian or "
                                "personal representative who takes part in the SIP (CareTeam)",
                                expression)
        if text == patient or at is None or team is None:
            continue
        if others is None:
            others = members_with_roles(tx, team[1], pid, REPRESENTATIVE_ROLES - {"custodian"})
        if text not in others and not is_minor(tx, plan, at):
            raise business_rule(f"{text} takes part in the SIP as custodian (vårdnadshavare) "
                                f"and cannot {what}: the individual ({patient}) is an adult, "
                                "and custodians act only for persons under 18. The individual "
                                "does, or their guardian (god man, förvaltare, role 'guardian') "
                                "or personal representative in the SIP CareTeam", expression)


def check_approvers(tx: Tx, plan: Json, approvers: list[Json], approved: datetime,
                    expression: str) -> None:
    """The person approves the plan (rule 3), or their representative; under 18 a custodian
    approves too, so one must take part in the CareTeam (an imported plan, or a team that
    lost its custodian after the invitations, has none to ask). The age is the person's on
    the day they approved (``approved``), not on the day the approval is entered: a child
    who has come of age since approved with the custodian, as the rule asked then."""
    check_person(tx, plan, approvers, expression, "approve this plan", approved)
    if is_minor(tx, plan, approved):
        guardians = set(custodians(tx, plan))
        given = {f"{t[0]}/{t[1]}" for r in approvers if (t := ref_target(r))}
        if not guardians:
            raise business_rule("The individual is under 18: a custodian (vårdnadshavare) "
                                "approves the plan too; add the custodian to the SIP CareTeam "
                                "(a RelatedPerson with role 'custodian') and name them as "
                                "approver", expression)
        if not given & guardians:
            raise business_rule("The individual is under 18: a custodian (vårdnadshavare) "
                                "approves the plan too", expression)


def coordinator_ref(plan: Json) -> Json:
    author = plan.get("author")
    return copy.deepcopy(author) if isinstance(author, dict) else {}


def require_coordinator(tx: Tx, ctx: Context, plan: Json, what: str) -> str:
    """Only the coordinating organisation (the plan's author) drives the process."""
    principal = ctx.access.principal
    coordinator = org_hsa(tx, plan.get("author"))
    if principal is None or principal.role != "organization" or principal.org != coordinator:
        raise Forbidden(f"{what}: only the coordinating organisation "
                        f"({coordinator or 'the plan author'}) drives the SIP process")
    return principal.org


# -- a plan written as established: the person's approval comes with it -----------------------

_ESTABLISH = ("Establish a SIP plan with CarePlan/$transition (to=upprattad, approvedBy, "
              "approvedAt); a plan established outside the hub is imported in a transaction "
              "Bundle with a Provenance that targets it and names who approved it (agent.type "
              f"'attester' of {sip.PROVENANCE_AGENT}) and when (occurredDateTime)")


@dataclass(slots=True)
class Approvals:
    """What one transaction writes that bears on approval: the Provenances it writes and the
    SIP plans it writes as established, which those must approve (checked once all of its
    entries are written, as the approvers are checked against its CareTeam)."""
    provenances: list[Json] = field(default_factory=list)
    plans: list[Json] = field(default_factory=list)
    # The ids of the SIP plans it writes that were none before (an import): what they
    # reference is the transaction's own content, not that of a SIP it changes.
    new_plans: set[str] = field(default_factory=set)


def needs_approval(plan: Json) -> bool:
    """A SIP plan that says it is established, or closed after it was (rule 3: the person
    approved it; rule 9: the citizen sees it as approved)."""
    if plan.get("resourceType") != "CarePlan" or not is_sip_plan(plan):
        return False
    phase = phase_of(plan)
    return phase in (ESTABLISHED, FOLLOW_UP) or (
        phase == CLOSED and plan.get("status") == "completed")


def check_new_plan(ctx: Context, old: Json | None, new: Json, rid: str | None = None) -> None:
    """A plain write that makes an established SIP plan of something that was none (a create,
    a write over a deleted or a non-SIP CarePlan) carries the person's approval: outside a
    transaction it cannot, so it is refused; inside one, its Provenance is checked at the end
    (``require_approval``). Operators (unrestricted) repair data without it. ``rid``: the id
    the write gives it (a POST's resource has none of its own, and the check names it)."""
    if ctx.access.unrestricted:
        return
    if new.get("resourceType") == "Provenance" and ctx.approvals is not None:
        ctx.approvals.provenances.append(new)
    if old is not None and is_sip_plan(old):
        return
    if ctx.approvals is not None and rid and new.get("resourceType") == "CarePlan" and \
            is_sip_plan(new):
        ctx.approvals.new_plans.add(rid)
    if not needs_approval(new):
        return
    if ctx.approvals is None:
        raise business_rule(f"A SIP plan written as established needs the person's "
                            f"approval. {_ESTABLISH}", "CarePlan.status")
    ctx.approvals.plans.append({**new, "id": rid} if rid else new)


def _targets(ref: Any, plan_id: str, version: int | None) -> bool:
    """``ref`` names the plan, or the version of it the transaction writes: an approval of
    another version (one deleted since, say) approved other content."""
    if ref_target(ref) != ("CarePlan", plan_id):
        return False
    parts = ref["reference"].split("/_history/", 1)
    return len(parts) == 1 or version is None or parts[1].strip("/") == str(version)


def _approvals_of(provenances: list[Json], plan_id: str, version: int | None) -> list[Json]:
    return [p for p in provenances
            if any(_targets(t, plan_id, version) for t in p.get("target") or [])]


def _attesters(provenance: Json) -> list[Json]:
    return [a["who"] for a in provenance.get("agent") or []
            if isinstance(a, dict) and isinstance(a.get("who"), dict)
            and any(c.get("system") == sip.PROVENANCE_AGENT and c.get("code") == "attester"
                    for c in (a.get("type") or {}).get("coding") or [] if isinstance(c, dict))]


def require_approval(tx: Tx, provenances: list[Json], plan: Json, now: datetime) -> None:
    """A plan a transaction wrote as established has a Provenance in it that targets it,
    names the person (or a custodian, guardian or personal representative in its CareTeam;
    under 18 a custodian too) as attester, and says when they approved, not later than now.
    A Provenance of the plan without an attester (who wrote it, say) is no approval: it
    neither gives one nor spoils the one beside it. A date (occurredDateTime without a time)
    is the Swedish day, which has begun once it is that day in Sweden."""
    cur = tx.current("CarePlan", plan["id"])
    found = _approvals_of(provenances, plan["id"], cur.version_id if cur else None)
    if not found:
        raise business_rule(f"CarePlan/{plan['id']} is written as established without the "
                            f"person's approval. {_ESTABLISH}", "CarePlan.status")
    approvals = [p for p in found if _attesters(p)] or found
    for prov in approvals:
        attesters = _attesters(prov)
        when = approval_time(prov.get("occurredDateTime"))
        if not attesters or when is None:
            raise business_rule(f"The Provenance of CarePlan/{plan['id']} does not say who "
                                f"approved the plan and when. {_ESTABLISH}", "CarePlan.status")
        if when > now:
            raise business_rule(f"The approval of CarePlan/{plan['id']} cannot lie in the "
                                "future (Provenance.occurredDateTime)", "CarePlan.status")
        require_approval_after_consent(tx, plan, prov["occurredDateTime"], "CarePlan.status",
                                       f"The approval of CarePlan/{plan['id']} "
                                       "(Provenance.occurredDateTime)")
        check_approvers(tx, plan, attesters, when, "CarePlan.status")


# -- the hook on plain updates ---------------------------------------------------------------

_GOAL_STATUS_KEYS = frozenset({"lifecycleStatus", "achievementStatus", "statusDate",
                               "statusReason", "outcomeCode", "outcomeReference", "note"})
_REVISE = ("Propose a revision with CarePlan/$propose-revision and apply it, once the person "
           "has approved it, with CarePlan/$approve-revision")


def decided(plan: Json) -> Json:
    """What a plan decides: without bookkeeping, notes, and the insatser's progress. For
    comparing: it shares what it keeps with ``plan`` (copies only the containers it leaves
    something out of), so it must not be changed."""
    out = {k: v for k, v in plan.items() if k not in ("meta", "text", "note")}
    acts = out.get("activity")
    if isinstance(acts, list):
        out["activity"] = [without_status(act) for act in acts]
    return out


def _closed_content(plan: Json) -> Json:
    """What a closed plan holds, without bookkeeping and notes (its status is checked on its
    own: a closed plan may still be marked entered-in-error)."""
    return {k: v for k, v in plan.items() if k not in ("meta", "text", "note", "status")}


def _plan_update(old: Json, new: Json) -> None:
    if phase_ext(old) != phase_ext(new):
        raise business_rule("The SIP phase changes only through CarePlan/$transition; keep the "
                            f"extension {sip.EXT_PHASE} as it is",
                            f"CarePlan.extension('{sip.EXT_PHASE}')")
    if old.get("status") != new.get("status") and new.get("status") != "entered-in-error":
        raise business_rule("A SIP plan's status follows its phase: change it with "
                            "CarePlan/$transition (to=upprattad to establish the plan, "
                            "to=avslutad to close it)", "CarePlan.status")
    phase = phase_of(old)
    # Closed, the plan is no longer changed at all: not the insatser's status either (the
    # message carrying such a change, insats-status-changed, is refused too).
    if phase == CLOSED and _closed_content(old) != _closed_content(new):
        raise business_rule("The SIP is closed (avslutad): its plan is no longer changed")
    if phase in FIXED_PHASES and decided(old) != decided(new):
        raise business_rule("The plan is established (upprättad): what it decides changes only "
                            f"with the person's approval. {_REVISE}")


def _proposal_update(old: Json, new: Json) -> None:
    for key in ("intent", "replaces", "subject"):
        if old.get(key) != new.get(key):
            raise business_rule(f"A proposed revision keeps its {key}", f"CarePlan.{key}")
    if old.get("status") != "draft":
        raise business_rule("This proposed revision is closed; propose a new one")
    if new.get("status") not in ("draft", "revoked", "entered-in-error"):
        raise business_rule("A proposed revision takes effect only through "
                            "CarePlan/$approve-revision; it may be withdrawn (revoked)",
                            "CarePlan.status")


def _referencing_plans(tx: Tx, ctx: Context, param: str, ref: str,
                       phases: frozenset[str]) -> list[Stored]:
    """The SIP plans in one of ``phases`` that reference ``ref`` (by the CarePlan search
    parameter ``param``), but for those the transaction writes as new (an import: their
    content, and the approval checked at its end, are the transaction's own)."""
    mine = ctx.approvals.new_plans if ctx.approvals is not None else set()
    return [s for s in search(tx, "CarePlan", [(param, ref)])
            if s.id not in mine and is_sip_plan(p := s.json()) and phase_of(p) in phases]


def _goal_update(tx: Tx, ctx: Context, old: Json, new: Json) -> None:
    gid = old.get("id")
    fixed = _referencing_plans(tx, ctx, "goal", f"Goal/{gid}", FIXED_PHASES)
    if not fixed:
        return
    a, b = ({k: v for k, v in g.items() if k not in _GOAL_STATUS_KEYS | {"meta", "text"}}
            for g in (old, new))
    if a != b:
        raise business_rule(f"Goal/{gid} belongs to the established plan CarePlan/{fixed[0].id}: "
                            "only its status and outcome change without the person's approval. "
                            f"{_REVISE}, referencing a new Goal")


def _goal_written_anew(tx: Tx, ctx: Context, gid: str) -> None:
    """A goal an established plan names is not written anew under its id once it is gone (an
    operator deleted it): the plan, the participants and 1177 would show the new content as
    a goal the person approved."""
    fixed = _referencing_plans(tx, ctx, "goal", f"Goal/{gid}", FIXED_PHASES)
    if fixed:
        raise business_rule(f"Goal/{gid} is named by the established plan "
                            f"CarePlan/{fixed[0].id}: a goal of it is written only with the "
                            f"person's approval. {_REVISE}, referencing a new Goal")


def _task_update(tx: Tx, ctx: Context, old: Json, new: Json) -> None:
    kind = task_kind(old)
    if kind is None:
        if task_kind(new) is not None:
            _hub_task(new)  # (another Task made one of the hub's)
        return
    a, b = ({k: v for k, v in t.items() if k not in ("meta", "text", "note", "lastModified")}
            for t in (old, new))
    if a == b:
        return
    org = ctx.access.org
    if kind == TASK_INVITATION:
        rest_a = {k: v for k, v in a.items() if k != "status"}
        rest_b = {k: v for k, v in b.items() if k != "status"}
        if rest_a == rest_b and new.get("status") == "cancelled" and \
                org_hsa(tx, old.get("requester")) == org:
            return  # the inviter withdraws an invitation
        raise business_rule("An invitation (kallelse) is answered with Task/$respond; the "
                            "inviter may only withdraw it (status cancelled)", "Task.status")
    if kind == TASK_DECLINED and new.get("status") in ("completed", "cancelled") and \
            {k: v for k, v in a.items() if k != "status"} == \
            {k: v for k, v in b.items() if k != "status"} and \
            org_hsa(tx, old.get("owner")) == org:
        return  # the coordinator has resolved the decline outside the hub
    raise business_rule("The hub opens and closes this SIP Task when what it watches is "
                        "resolved; add a note if needed", "Task.status")


def _hub_task(new: Json) -> None:
    """The SIP Tasks (codes of sip-task) are the hub's: an invitation is sent by $invite,
    which checks the SIP's phase, the consent and the meeting (and refuses a closed SIP); the
    deadline Tasks are opened by the deadline scan while their obligation holds. Written as
    plain resources they would oblige an organisation to answer (rule 6) what no rule
    checked, also for a SIP the person has ended (rule 2)."""
    if task_kind(new) == TASK_INVITATION:
        raise business_rule("An invitation (kallelse) is sent with CarePlan/$invite, which "
                            "creates the meeting and one invitation Task per organisation",
                            "Task.code")
    raise business_rule(f"The hub opens the SIP Tasks ({sip.CS_TASK}) itself when what they "
                        "watch is due; write the Task with a code of your own",
                        "Task.code")


def _closed_plan(tx: Tx, ctx: Context, refs: Any) -> str | None:
    """The id of a closed SIP plan among ``refs`` (but one the transaction writes as new)."""
    mine = ctx.approvals.new_plans if ctx.approvals is not None else set()
    for ref in refs if isinstance(refs, list) else []:
        target = ref_target(ref)
        if target is None or target[0] != "CarePlan" or target[1] in mine:
            continue
        plan = current_json(tx, *target)
        if plan is not None and is_sip_plan(plan) and phase_of(plan) == CLOSED:
            return target[1]
    return None


def _meeting_update(tx: Tx, ctx: Context, old: Json, new: Json) -> None:
    """A closed SIP's meetings stay as the SIP left them: not moved, booked or cancelled again
    (which would also tell the participants of a meeting in a SIP that has ended), nor is
    another meeting made one of it."""
    a, b = ({k: v for k, v in m.items() if k not in ("meta", "text", "comment")}
            for m in (old, new))
    if a == b:
        return
    closed = _closed_plan(tx, ctx, old.get("supportingInformation")) or \
        _closed_plan(tx, ctx, new.get("supportingInformation"))
    if closed:
        raise business_rule(f"The meeting belongs to CarePlan/{closed}, a SIP that is "
                            "closed (avslutad): its meetings are no longer changed",
                            "Appointment")


def _new_meeting(tx: Tx, ctx: Context, new: Json) -> None:
    """No meeting is booked for a SIP the person has ended (rule 2): $invite refuses a
    closed plan, and a plain create would call the organisations to it all the same."""
    closed = _closed_plan(tx, ctx, new.get("supportingInformation"))
    if closed:
        raise business_rule(f"CarePlan/{closed} is a SIP that is closed (avslutad): no "
                            "meeting is booked for it. A new SIP is started with a new plan",
                            "Appointment.supportingInformation")


def _team_update(tx: Tx, ctx: Context, old: Json, new: Json) -> None:
    """A closed SIP's care team stays as the SIP left it: it says who took part, and who
    may read the SIP's record."""
    a, b = ({k: v for k, v in t.items() if k not in ("meta", "text", "note")}
            for t in (old, new))
    if a == b:
        return
    closed = _referencing_plans(tx, ctx, "care-team", f"CareTeam/{old.get('id')}",
                                frozenset({CLOSED}))
    if closed:
        raise business_rule(f"The care team belongs to CarePlan/{closed[0].id}, a SIP that "
                            "is closed (avslutad): its care team is no longer changed")


_LIVE_MEETING: Final = "proposed,pending,booked"


def check_plain_delete(ctx: Context, old: Json, tx: Tx | None = None) -> None:
    """An established plan is the person's: it is closed with $transition, never deleted.
    Nor is a draft whose invitations went out: its open invitations and planned meetings
    would stay open with the organisations for ever (none can answer them, no deadline
    watches them); closing it with $transition cancels them and tells the organisations.
    What an established or closed plan references is not deleted under it either: its goals
    (what it decides, rule 3), its care team (who takes part and reads it, rule 5), and a
    closed SIP's meetings."""
    if ctx.access.unrestricted:
        return
    rtype = old.get("resourceType")
    if rtype == "CarePlan" and is_sip_plan(old):
        _plan_delete(old, tx)
    elif tx is None:
        return
    elif rtype == "Goal":
        fixed = _referencing_plans(tx, ctx, "goal", f"Goal/{old.get('id')}", FIXED_PHASES)
        if fixed:
            raise business_rule(f"Goal/{old.get('id')} belongs to the established plan "
                                f"CarePlan/{fixed[0].id}: what the plan decides changes only "
                                f"with the person's approval. {_REVISE}, leaving the goal "
                                "out; the goal itself may be marked cancelled or completed "
                                "(lifecycleStatus)")
    elif rtype == "CareTeam":
        fixed = _referencing_plans(tx, ctx, "care-team", f"CareTeam/{old.get('id')}",
                                   FIXED_PHASES)
        if fixed:
            plan = f"CarePlan/{fixed[0].id}"
            raise business_rule(
                f"The care team belongs to {plan}, a SIP that is closed (avslutad): it is "
                "kept as the SIP left it" if phase_of(fixed[0].json()) == CLOSED else
                f"The care team belongs to the established plan {plan}: the participants "
                "read the SIP and are told of it by it. Change who takes part by updating "
                "the care team; the SIP is ended with CarePlan/$transition (to=avslutad, "
                "with the reason), not by deleting its care team")
    elif rtype == "Appointment":
        closed = _closed_plan(tx, ctx, old.get("supportingInformation"))
        if closed:
            raise business_rule(f"The meeting belongs to CarePlan/{closed}, a SIP that is "
                                "closed (avslutad): its meetings are no longer changed")


def _plan_delete(old: Json, tx: Tx | None) -> None:
    if phase_of(old) in FIXED_PHASES:
        raise business_rule("An established SIP is ended with CarePlan/$transition "
                            "(to=avslutad, with the reason), not deleted")
    if tx is None:
        return
    plan = f"CarePlan/{old.get('id')}"
    invited = [f"Task/{s.id}" for s in search(tx, "Task", [("based-on", plan)])
               if task_kind(t := s.json()) == TASK_INVITATION and t.get("status") in OPEN_TASK]
    meetings = [f"Appointment/{s.id}" for s in search(
        tx, "Appointment", [("supporting-info", plan), ("status", _LIVE_MEETING)])]
    if invited or meetings:
        raise business_rule(f"{plan} has invitations out ({', '.join(invited + meetings)}): a "
                            "SIP whose invitations went out is ended with "
                            "CarePlan/$transition (to=avslutad, with the reason), which "
                            "cancels its meeting and invitations and tells the invited "
                            "organisations, not deleted")


def check_plain_create(tx: Tx, ctx: Context, new: Json, rid: str | None) -> None:
    """Refuse a plain create (POST, a PUT of a new id or of a deleted one, a Bundle entry)
    that would do an operation's work or go around the SIP's state: one of the hub's SIP
    Tasks (an invitation is $invite's), a meeting of a closed SIP, a goal an established plan
    names written anew. ``rid``: the id it is written under (None: the store assigns one,
    which nothing names yet)."""
    if ctx.access.unrestricted:
        return
    rtype = new.get("resourceType")
    if rtype == "Task" and task_kind(new) is not None:
        _hub_task(new)
    elif rtype == "Appointment":
        _new_meeting(tx, ctx, new)
    elif rtype == "Goal" and rid is not None:
        _goal_written_anew(tx, ctx, rid)


def check_plain_update(tx: Tx, ctx: Context, old: Json | None, new: Json) -> None:
    """Refuse a plain update (PUT, a Bundle entry) that would do an operation's work. ``old``
    is the stored version as the transaction read it (``Stored.doc``, shared): only read;
    None: the write creates the resource (``check_plain_create``).

    Applies to organisations' clients; the hub's operators (admin clients with personal-data
    access) may repair data, and their writes are audited like any other.
    """
    if ctx.access.unrestricted:
        return
    if old is None:
        check_plain_create(tx, ctx, new, new.get("id"))
        return
    rtype = new.get("resourceType")
    if rtype == "CarePlan":
        if is_sip_plan(old):
            _plan_update(old, new)
        elif is_proposal(old):
            _proposal_update(old, new)
    elif rtype == "Goal" and profiles.applies(old) == sip.PROFILE_GOAL:
        _goal_update(tx, ctx, old, new)
    elif rtype == "Task":
        _task_update(tx, ctx, old, new)
    elif rtype == "Appointment":
        _meeting_update(tx, ctx, old, new)
    elif rtype == "CareTeam":
        _team_update(tx, ctx, old, new)
