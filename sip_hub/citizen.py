"""The citizen's view of their SIP, for the national portal (1177).

Only plans that reached the established phase (approved with the person) are shown; a plan
labelled NOPATIENT never is; the kartläggning never is (domain rules 8 and 9). The view carries
the plan with what a reader needs to understand it: goals, the care team and the responsible
organisations.
"""

from __future__ import annotations

from typing import Any

from . import identifiers
from .errors import BadRequest, Forbidden
from .fhir import profiles, sip
from .fhir.indexing import split_reference
from .service import find
from .interactions import Context, bundle
from .process import ref_target
from .store import Stored, Tx

SHOWN_STATUSES = frozenset({"active", "completed"})
# The identities a citizen has (OperationDefinition sip-citizen-view): another system's value
# passed through unchecked into the identifier search, where a comma in it ("x,<system>|<pnr>")
# made one call a search for several persons.
PERSON_SYSTEMS = (identifiers.PERSONNUMMER, identifiers.SAMORDNINGSNUMMER)
_LINKED = (("goal", "Goal"), ("careTeam", "CareTeam"), ("author", "Organization"))


def check_caller(ctx: Context) -> None:
    p = ctx.access.principal
    if p is None:
        return
    if p.role == "portal" or (p.role == "admin" and p.personal_data):
        p.require("CarePlan", "r")
        return
    raise Forbidden("The citizen view is for the national portal client")


def _not_for_patient(resource: dict[str, Any]) -> bool:
    labels = (resource.get("meta") or {}).get("security") or []
    return any(sip.NOPATIENT.matches(label) for label in labels)


def plans_for(tx: Tx, patient_token: str) -> tuple[list[Stored], list[Stored], set[str]]:
    """(plans, linked resources, patient ids) of the citizen's view."""
    system, sep, value = patient_token.partition("|")
    if not sep or not value:
        raise BadRequest("patient must be <system>|<value>, e.g. "
                         f"{identifiers.PERSONNUMMER}|191212121212", expression="patient")
    if system not in PERSON_SYSTEMS:
        raise BadRequest(f"patient must be a personnummer ({identifiers.PERSONNUMMER}) or a "
                         f"samordningsnummer ({identifiers.SAMORDNINGSNUMMER})",
                         expression="patient")
    try:
        system, value = identifiers.canonical_identifier(system, value)
    except identifiers.InvalidIdentifier as exc:
        raise BadRequest(f"Invalid patient identifier: {exc.reason}", expression="patient") \
            from None
    patients = {s.id for s in find(tx, "Patient", [("identifier", f"{system}|{value}")], 100)}
    plans: list[Stored] = []
    for pid in sorted(patients):
        for s in find(tx, "CarePlan", [("patient", f"Patient/{pid}")], 100):
            plan = s.json()
            # intent=plan: a proposed revision is not the plan until the person approves it.
            if profiles.applies(plan) == sip.PROFILE_CAREPLAN and plan.get("intent") == "plan" \
                    and plan.get("status") in SHOWN_STATUSES and not _not_for_patient(plan):
                plans.append(s)
    linked: list[tuple[str, str]] = []
    for s in plans:
        plan = s.json()
        for key, rtype in _LINKED:
            refs = plan.get(key)
            for ref in refs if isinstance(refs, list) else [refs]:
                target = split_reference(ref.get("reference", "")) if isinstance(ref, dict) \
                    and isinstance(ref.get("reference"), str) else None
                if target and target[0] == rtype:
                    linked.append(target)
        for act in plan.get("activity", []):
            for perf in (act.get("detail") or {}).get("performer", []):
                target = split_reference(perf.get("reference", "")) if isinstance(
                    perf.get("reference"), str) else None
                if target and target[0] == "Organization":
                    linked.append(target)
    extra = [s for s in tx.current_many(list(dict.fromkeys(linked)))
             if s.type != "QuestionnaireResponse" and not _not_for_patient(s.json())
             and _of_the_person(s, patients)]
    return plans, extra, patients


def _of_the_person(s: Stored, patients: set[str]) -> bool:
    """A goal or care team is shown only while it is about the person: a plan's write checks
    this, but a goal moved to another individual later is still linked from the plan, and
    would show that individual's goal to this citizen."""
    if s.type not in ("Goal", "CareTeam"):
        return True
    target = ref_target(s.json().get("subject"))
    return target is not None and target[0] == "Patient" and target[1] in patients


def view(tx: Tx, ctx: Context, patient_token: str) -> dict[str, Any]:
    check_caller(ctx)
    plans, extra, _ = plans_for(tx, patient_token)
    entries = [{"fullUrl": f"{ctx.base_url}/{s.type}/{s.id}", "resource": s.json(),
                "search": {"mode": "match"}} for s in plans]
    entries += [{"fullUrl": f"{ctx.base_url}/{s.type}/{s.id}", "resource": s.json(),
                 "search": {"mode": "include"}} for s in extra]
    ctx.record("search-type", plans + extra, rtype="CarePlan",
               query=f"$citizen-view?patient={patient_token}")
    return bundle("searchset", entries, len(plans))
