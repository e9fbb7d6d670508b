"""The citizen's view of their SIP, for the national portal (1177).

Only plans that reached the established phase (approved with the person) are shown, also while
paused (on-hold) or closed; a plan labelled NOPATIENT never is; the kartläggning never is
(domain rules 8 and 9). The view carries the plan with what a reader needs to understand it:
goals, the care team and the responsible organisations. A goal, care team or insats marked
entered-in-error is left out: by FHIR's definition it should never have existed, and shown it
would be read as part of the person's plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from . import identifiers
from .errors import BadRequest, Forbidden, SipHubError
from .fhir import profiles, sip
from .fhir.indexing import split_reference
from .interactions import Context, bundle
from .process import ref_target
from .service import find_all
from .store import Stored, Tx

# The statuses of an established plan, paused (on-hold) too: the person approved each (the
# import demands their approval for every one). Only active and completed were shown, and an
# approved plan on hold disappeared from 1177.
SHOWN_STATUSES = sip.ESTABLISHED_STATUSES
ENTERED_IN_ERROR = "entered-in-error"
# The identities a citizen has (OperationDefinition sip-citizen-view): another system's value
# passed through unchecked into the identifier search, where a comma in it ("x,<system>|<pnr>")
# made one call a search for several persons.
PERSON_SYSTEMS = (identifiers.PERSONNUMMER, identifiers.SAMORDNINGSNUMMER)
_LINKED = (("goal", "Goal"), ("careTeam", "CareTeam"), ("author", "Organization"))
# What a plan (or what it links) may carry contained for the citizen to read: the directory's
# kinds, and goals and care teams about the person. Anything else (the kartläggning, another
# person's Patient, a RelatedPerson) is left out, and so are the references to it.
_CONTAINED_SHOWN = frozenset({"Organization", "Practitioner", "PractitionerRole", "Location",
                              "HealthcareService", "Goal", "CareTeam"})


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


def _in_error(resource: dict[str, Any]) -> bool:
    """A goal (Goal.lifecycleStatus) or a care team (CareTeam.status) entered in error: it
    should never have existed, so the citizen never sees it. (A goal cancelled, rejected or
    completed was part of the plan the person approved: it is shown, with its status.)"""
    key = "lifecycleStatus" if resource.get("resourceType") == "Goal" else "status"
    return resource.get(key) == ENTERED_IN_ERROR


def _insats_in_error(activity: Any) -> bool:
    """An insats (CarePlan.activity) whose detail.status is entered-in-error: a participant
    may mark its own so without a revision, and the citizen must not read it as planned."""
    detail = activity.get("detail") if isinstance(activity, dict) else None
    return isinstance(detail, dict) and detail.get("status") == ENTERED_IN_ERROR


def _patients(tx: Tx, patient_token: str) -> list[Stored]:
    """The Patient resources of the person the token names (400 for anything but a valid
    personnummer or samordningsnummer)."""
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
    return find_all(tx, "Patient", [("identifier", f"{system}|{value}")])


def plans_for(tx: Tx, patient_token: str) -> tuple[list[Stored], list[Stored], set[str]]:
    """(plans, linked resources, patient ids) of the citizen's view."""
    plans, extra, found = _view_of(tx, _patients(tx, patient_token))
    return plans, extra, {s.id for s in found}


def _view_of(tx: Tx, found: list[Stored]) -> tuple[list[Stored], list[Stored], list[Stored]]:
    patients = {s.id for s in found}
    plans: list[Stored] = []
    for pid in sorted(patients):
        for s in find_all(tx, "CarePlan", [("patient", f"Patient/{pid}"), ("intent", "plan"),
                                       ("status", ",".join(sorted(SHOWN_STATUSES)))]):
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
            if _insats_in_error(act):
                continue
            for perf in (act.get("detail") or {}).get("performer", []):
                target = split_reference(perf.get("reference", "")) if isinstance(
                    perf.get("reference"), str) else None
                if target and target[0] == "Organization":
                    linked.append(target)
    extra = [s for s in tx.current_many(list(dict.fromkeys(linked)))
             if s.type != "QuestionnaireResponse" and not _not_for_patient(s.json())
             and not _in_error(s.json()) and _of_the_person(s, patients)]
    return plans, extra, found


def _of_the_person(s: Stored, patients: set[str]) -> bool:
    """A goal or care team is shown only while it is about the person: a plan's write checks
    this, but a goal moved to another individual later is still linked from the plan, and
    would show that individual's goal to this citizen."""
    if s.type not in ("Goal", "CareTeam"):
        return True
    target = ref_target(s.json().get("subject"))
    return target is not None and target[0] == "Patient" and target[1] in patients


def _about_the_person(rtype: str, resource: dict[str, Any], patients: set[str]) -> bool:
    for key in ("subject", "patient"):
        if key in resource:
            target = ref_target(resource[key])
            return target is not None and target[0] == "Patient" and target[1] in patients
    return rtype not in ("Goal", "CareTeam")


def _drop_refs(node: Any, gone: set[str]) -> Any:
    """``node`` without the references to the contained resources ``gone`` ("#id"), and
    without what dropping them leaves empty (FHIR has no empty arrays or objects)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if isinstance(value, dict) and value.get("reference") in gone:
                continue
            kept = _drop_refs(value, gone)
            if kept or not isinstance(value, (dict, list)) or not value:
                out[key] = kept
        return out
    if isinstance(node, list):
        out_list = []
        for value in node:
            if isinstance(value, dict) and value.get("reference") in gone:
                continue
            kept = _drop_refs(value, gone)
            if kept or not isinstance(value, (dict, list)) or not value:
                out_list.append(kept)
        return out_list
    return node


def _without_insatser_in_error(resource: dict[str, Any]) -> dict[str, Any]:
    acts = resource.get("activity")
    if not isinstance(acts, list) or not any(_insats_in_error(a) for a in acts):
        return resource
    out = {k: v for k, v in resource.items() if k != "activity"}
    kept = [a for a in acts if not _insats_in_error(a)]
    if kept:  # (FHIR has no empty arrays)
        out["activity"] = kept
    return out


def shown(resource: dict[str, Any], patients: set[str]) -> dict[str, Any]:
    """The resource as the citizen may read it: without the insatser entered in error, and of
    its contained resources only the kinds in ``_CONTAINED_SHOWN`` that are about the person,
    not labelled NOPATIENT and not entered in error (the kartläggning contained in a plan is
    still the kartläggning: rule 8)."""
    resource = _without_insatser_in_error(resource)
    contained = resource.get("contained")
    if not isinstance(contained, list):
        return resource
    kept, gone = [], set()
    for c in contained:
        ok = isinstance(c, dict) and c.get("resourceType") in _CONTAINED_SHOWN and \
            not _not_for_patient(c) and not _in_error(c) and \
            _about_the_person(c["resourceType"], c, patients)
        if ok:
            kept.append(c)
        elif isinstance(c, dict) and isinstance(c.get("id"), str):
            gone.add("#" + c["id"])
    if len(kept) == len(contained):
        return resource
    out = _drop_refs({k: v for k, v in resource.items() if k != "contained"}, gone)
    if kept:
        out["contained"] = kept
    return out


def refused(tx: Tx, ctx: Context, patient_token: str | None, err: SipHubError,
            query: str) -> None:
    """A refused call names the person (``patient_token``, None when it names none): their
    access log shows who tried (also GetCarePlans', ``sip_hub.rivta``)."""
    try:
        found = _patients(tx, patient_token) if patient_token is not None else []
    except SipHubError:
        found = []
    ctx.record("search-type", found, outcome="4", rtype="CarePlan", detail=err.diagnostics,
               query=query)


@dataclass(frozen=True, slots=True)
class View:
    """What the citizen view read: the Bundle to answer with, and what it accessed (the
    Patients looked up, the plans and what they link), audited by ``delivered`` once the
    answer is made (or failed to be)."""

    bundle: dict[str, Any]
    accessed: list[Stored]
    query: str


def view(tx: Tx, ctx: Context, patient_token: str) -> View:
    """The citizen's view; not yet audited as read: the caller answers with it (in the form
    asked for), then calls ``delivered`` with how that went."""
    try:
        check_caller(ctx)
    except Forbidden as err:
        refused(tx, ctx, patient_token, err, f"$citizen-view?patient={patient_token}")
        raise
    plans, extra, found = _view_of(tx, _patients(tx, patient_token))
    patients = {s.id for s in found}
    entries = [{"fullUrl": f"{ctx.base_url}/{s.type}/{s.id}",
                "resource": shown(s.json(), patients), "search": {"mode": "match"}}
               for s in plans]
    entries += [{"fullUrl": f"{ctx.base_url}/{s.type}/{s.id}",
                 "resource": shown(s.json(), patients), "search": {"mode": "include"}}
                for s in extra]
    # The Patient looked up is part of what was accessed: a call that finds no approved plan
    # is in the person's access log too (rule 10).
    self_url = f"{ctx.base_url}/CarePlan/$citizen-view?{urlencode({'patient': patient_token})}"
    return View(bundle("searchset", entries, len(plans), [{"relation": "self", "url": self_url}]),
                found + plans + extra, f"$citizen-view?patient={patient_token}")


def delivered(ctx: Context, seen: View, failure: str | None = None) -> None:
    """Audit the view's access: a success when its answer was made, else (``failure``: why
    not) a serious failure (outcome 8) naming what was read but never delivered, so that the
    person's access log shows the attempt and that it did not reach the caller."""
    if failure is None:
        ctx.record("search-type", seen.accessed, rtype="CarePlan", query=seen.query)
    else:
        ctx.record("search-type", seen.accessed, outcome="8", rtype="CarePlan",
                   query=seen.query, detail=f"Not delivered: {failure}"[:1000])
