"""The SIP profiles: which resources they apply to, and their enforcement on write.

The published model is the set of conformance resources in ``definitions/`` (see
``definitions()``); this module enforces the same rules in plain Python, because the write path
cannot afford a FHIRPath engine (see docs/standards.md). The invariant keys in the diagnostics
(``sip-cp-4`` ...) are the keys of the constraints in the StructureDefinitions.

``check`` assumes the resource already passed structural validation (``models.validate``) and
identifier normalisation (``identifiers.normalise_in_resource``); it still never trusts shapes,
because a stored resource reached through ``Resolve`` may be older than today's rules.

A resource is SIP-profiled when it claims a SIP profile in ``meta.profile`` or carries the SIP
marker (see ``applies``). Everything else is plain FHIR and is left alone.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from ..errors import IssueCollector
from ..identifiers import HSA_ID, ORGANISATIONSNUMMER, PERSONNUMMER, SAMORDNINGSNUMMER
from . import sip
from .indexing import is_absolute, split_reference

Resolve = Callable[[str, str], dict[str, Any] | None]
"""(resourceType, id) -> the current stored resource, or None. Within a transaction it also sees
earlier entries; a reference not yet rewritten from an entry's fullUrl is asked for with the
whole ``urn:uuid:...`` as id."""

DEFINITIONS_DIR = Path(__file__).parent / "definitions"
CONFORMANCE_TYPES = frozenset(
    {"StructureDefinition", "CodeSystem", "ValueSet", "ConceptMap", "Questionnaire",
     "OperationDefinition", "MessageDefinition"})

_PERSON_SYSTEMS = frozenset({PERSONNUMMER, SAMORDNINGSNUMMER})
_ORG_SYSTEMS = frozenset({HSA_ID, ORGANISATIONSNUMMER})
_OURS = sip.CANONICAL + "/"
_QUESTIONNAIRE_VERSIONED = sip.QUESTIONNAIRE_KARTLAGGNING + "|"

Json = dict[str, Any]


# --------------------------------------------------------------------------- definitions

@lru_cache(maxsize=1)
def _loaded() -> tuple[Json, ...]:
    out: list[Json] = []
    for path in sorted(DEFINITIONS_DIR.glob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        # The folder also holds plain data tables of other modules (required-bindings.json
        # ...): only our own conformance resources belong to the published model.
        if (isinstance(data, dict) and data.get("resourceType") in CONFORMANCE_TYPES
                and isinstance(data.get("url"), str) and data["url"].startswith(_OURS)):
            out.append(data)
    return tuple(out)


def definitions() -> list[Json]:
    """Our conformance resources (StructureDefinition, CodeSystem, ValueSet, ConceptMap,
    Questionnaire, OperationDefinition, MessageDefinition), read once; each call returns copies
    the caller may change."""
    return copy.deepcopy(list(_loaded()))


@lru_cache(maxsize=1)
def _by_url() -> dict[str, Json]:
    return {d["url"]: d for d in _loaded()}


def _walk_concepts(concepts: object) -> Iterator[Json]:
    for concept in _dicts(concepts):
        yield concept
        yield from _walk_concepts(concept.get("concept"))


@cache
def valueset_codes(url: str) -> frozenset[tuple[str, str]]:
    """The (system, code) pairs of one of our ValueSets, expanded from ``definitions/``.

    Only the compose forms our ValueSets use (whole code system, or enumerated concepts of
    one) are supported; KeyError for a ValueSet that is not ours.
    """
    vs = _by_url()[url]
    codes: set[tuple[str, str]] = set()
    for include in _dicts(vs.get("compose", {}).get("include")):
        system = include["system"]
        listed = _dicts(include.get("concept"))
        if listed:
            codes.update((system, c["code"]) for c in listed)
        else:
            codes.update((system, c["code"])
                         for c in _walk_concepts(_by_url()[system].get("concept")))
    return frozenset(codes)


def _codes_in(url: str, system: str) -> list[str]:
    return sorted(code for s, code in valueset_codes(url) if s == system)


# --------------------------------------------------------------------------- small helpers

def _dicts(value: object) -> list[Json]:
    """The dict items of a JSON array; anything else counts as empty."""
    if isinstance(value, list):
        return [v for v in value if isinstance(v, dict)]
    return []


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _ext_path(path: str, url: str) -> str:
    return f"{path}.extension('{url}')"


def _extensions(holder: Json, url: str) -> list[Json]:
    return [e for e in _dicts(holder.get("extension")) if e.get("url") == url]


def _strip_version(canonical: str) -> str:
    return canonical.split("|", 1)[0]


def _claimed(resource: Json) -> list[str]:
    meta = resource.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("profile"), list):
        return []
    return [_strip_version(p) for p in meta["profile"] if isinstance(p, str)]


def _subject_key(ref: object) -> tuple[str, str, str] | None:
    """What a reference identifies: ('reference', type, id) or ('identifier', system, value)."""
    if not isinstance(ref, dict):
        return None
    literal = ref.get("reference")
    if isinstance(literal, str):
        target = split_reference(literal)
        return ("reference", *target) if target is not None else None
    ident = ref.get("identifier")
    if isinstance(ident, dict) and isinstance(ident.get("system"), str) and isinstance(
            ident.get("value"), str):
        return "identifier", ident["system"], ident["value"]
    return None


def _same_subject(a: object, b: object) -> bool:
    """False only when both references are identifiable the same way and differ (a literal
    reference and a logical one cannot be compared without a lookup, so they pass)."""
    ka, kb = _subject_key(a), _subject_key(b)
    if ka is None or kb is None or ka[0] != kb[0]:
        return True
    return ka == kb


# --------------------------------------------------------------------------- applies / stamp

def _careplan_marker(r: Json) -> bool:
    return any(sip.SIP_CAREPLAN_TYPE.in_concept(c) for c in _dicts(r.get("category")))


def _consent_marker(r: Json) -> bool:
    return any(sip.SIP_CONSENT_CATEGORY.in_concept(c) for c in _dicts(r.get("category")))


def _careteam_marker(r: Json) -> bool:
    return any(sip.SIP_CARETEAM_CATEGORY.in_concept(c) for c in _dicts(r.get("category")))


def _goal_marker(r: Json) -> bool:
    return any(coding.get("system") == sip.CS_LIFE_AREA
               for cat in _dicts(r.get("category")) for coding in _dicts(cat.get("coding")))


def _is_kartlaggning_canonical(value: object) -> bool:
    return isinstance(value, str) and (value == sip.QUESTIONNAIRE_KARTLAGGNING
                                       or value.startswith(_QUESTIONNAIRE_VERSIONED))


def _kartlaggning_marker(r: Json) -> bool:
    return _is_kartlaggning_canonical(r.get("questionnaire"))


_MARKERS: dict[str, Callable[[Json], bool]] = {
    "CarePlan": _careplan_marker,
    "Consent": _consent_marker,
    "CareTeam": _careteam_marker,
    "Goal": _goal_marker,
    "QuestionnaireResponse": _kartlaggning_marker,
}


def applies(resource: Json) -> str | None:
    """The URL of the SIP profile that applies to ``resource``, or None for plain FHIR.

    A profile applies when the resource claims it in ``meta.profile`` (with or without
    ``|version``) or carries the SIP marker: the Inera plan type SIP on a CarePlan, our sip
    category on a Consent or CareTeam, a life-area category on a Goal, our kartläggning
    questionnaire on a QuestionnaireResponse.
    """
    if not isinstance(resource, dict):
        return None
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return None
    profile = sip.PROFILE_BY_TYPE.get(rtype)
    if profile is None:
        return None
    if profile in _claimed(resource) or _MARKERS[rtype](resource):
        return profile
    return None


def stamp(resource: Json) -> None:
    """Make a SIP resource say what it is: add the profile URL to ``meta.profile``.

    A kartläggning also gets the ``meta.security`` label NOPATIENT: the law-side rule that
    it is never shown to the citizen on 1177 must travel with the resource to every copy.
    """
    profile = applies(resource)
    if profile is None:
        return
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        meta = resource["meta"] = {}
    profiles = meta.get("profile")
    if not isinstance(profiles, list):
        profiles = meta["profile"] = []
    if profile not in _claimed(resource):
        profiles.append(profile)
    if profile == sip.PROFILE_KARTLAGGNING:
        labels = meta.get("security")
        if not isinstance(labels, list):
            labels = meta["security"] = []
        if not any(sip.NOPATIENT.matches(label) for label in labels):
            labels.append(sip.NOPATIENT.coding())


# --------------------------------------------------------------------------- shared checks

def _check_claims(resource: Json, rtype: str, c: IssueCollector) -> None:
    meta = resource.get("meta")
    claims = meta.get("profile") if isinstance(meta, dict) else None
    if not isinstance(claims, list):
        return
    for i, claimed in enumerate(claims):
        if not isinstance(claimed, str) or not claimed.startswith(_OURS):
            continue
        base = _strip_version(claimed)
        target = sip.TYPE_BY_PROFILE.get(base)
        if target is None:
            c.add(f"{rtype}.meta.profile[{i}]",
                  f"'{claimed}' is not a SIP profile; the SIP profiles are "
                  f"{', '.join(sorted(sip.TYPE_BY_PROFILE))}")
        elif target != rtype:
            c.add(f"{rtype}.meta.profile[{i}]",
                  f"The SIP profile '{base}' is for {target}, not {rtype}")


def _check_subject(ref: object, expr: str, c: IssueCollector, resolve: Resolve) -> None:
    """The individual (den enskilde): a Patient that exists and carries a personnummer or
    samordningsnummer, or a logical reference by one of those two identifiers."""
    if not isinstance(ref, dict) or not ref:
        c.add(expr, "A SIP resource must name the individual (den enskilde) as a Patient",
              "required")
        return
    literal = ref.get("reference")
    if isinstance(literal, str):
        target = _literal_target(ref)
        if target is None and is_absolute(literal) and \
                not literal.startswith(("urn:uuid:", "urn:oid:")):
            c.add(expr, f"The individual (den enskilde) must be a Patient held by this hub: "
                        f"'{literal}' is a reference to another server")
            return
        if target is None or target[0] != "Patient":
            c.add(expr, f"The individual (den enskilde) must be a Patient reference "
                        f"'Patient/<id>', not '{literal}'")
            return
        patient = resolve("Patient", target[1])
        if patient is None:
            c.add(expr, f"The individual (den enskilde) {literal} does not exist")
            return
        if not any(i.get("system") in _PERSON_SYSTEMS and _text(i.get("value"))
                   for i in _dicts(patient.get("identifier"))):
            c.add(expr, f"The individual (den enskilde) {literal} has no personnummer or "
                        "samordningsnummer; a SIP needs one to reach every participant and "
                        "1177")
        return
    ident = ref.get("identifier")
    if isinstance(ident, dict):
        if ref.get("type") not in (None, "Patient"):
            c.add(f"{expr}.type", "The individual (den enskilde) must be a Patient, not "
                                  f"{ref.get('type')}")
        if ident.get("system") not in _PERSON_SYSTEMS or not _text(ident.get("value")):
            c.add(f"{expr}.identifier",
                  "A logical reference to the individual (den enskilde) must use a "
                  f"personnummer ({PERSONNUMMER}) or samordningsnummer ({SAMORDNINGSNUMMER})")
        return
    c.add(expr, "The individual (den enskilde) must be identified by a Patient reference or "
                "a personnummer / samordningsnummer identifier, not by display text only",
          "required")


def _check_ref_type(ref: object, allowed: tuple[str, ...], expr: str, what: str,
                    c: IssueCollector) -> None:
    """A reference must point to one of ``allowed``; logical references must identify."""
    if not isinstance(ref, dict):
        return
    kinds = " or ".join(allowed)
    literal = ref.get("reference")
    if isinstance(literal, str):
        target = split_reference(literal)
        # urn:uuid: and #contained references carry no type in the string: use `type`.
        rtype = target[0] if target else ref.get("type")
        if rtype is not None and rtype not in allowed:
            c.add(expr, f"{what} must reference {kinds}, not '{literal}'")
        return
    if ref.get("type") is not None and ref.get("type") not in allowed:
        c.add(f"{expr}.type", f"{what} must be {kinds}, not {ref.get('type')}")
    ident = ref.get("identifier")
    if not isinstance(ident, dict) or not _text(ident.get("value")):
        c.add(expr, f"{what} must identify the {kinds} by reference or identifier, not by "
                    "display text only")
    elif allowed == ("Organization",) and ident.get("system") not in _ORG_SYSTEMS:
        c.add(f"{expr}.identifier",
              f"{what} must be identified by HSA-id ({HSA_ID}) or organisationsnummer "
              f"({ORGANISATIONSNUMMER})")


def _literal_target(ref: Json) -> tuple[str, str] | None:
    """(type, id) of a literal reference; a transaction's ``urn:uuid:`` reference keeps the
    whole URN as id and takes its type from ``Reference.type`` (Patient when absent, since
    only the individual is required to resolve)."""
    literal = ref["reference"]
    if literal.startswith(("urn:uuid:", "urn:oid:")):
        rtype = ref.get("type")
        return (rtype if isinstance(rtype, str) else "Patient"), literal
    return split_reference(literal)


def _resolve_literal(ref: object, rtype: str, resolve: Resolve) -> tuple[str, Json] | None:
    """(reference text, stored resource) for a literal reference to ``rtype`` that resolves."""
    if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
        return None
    target = split_reference(ref["reference"])
    if target is None or target[0] != rtype:
        return None
    found = resolve(rtype, target[1])
    return (ref["reference"], found) if isinstance(found, dict) else None


@dataclass(frozen=True, slots=True)
class _Ext:
    url: str
    value: str       # the one value[x] key allowed
    label: str       # what it means, with the Swedish term users know
    valueset: str | None = None
    system: str | None = None


_NEEDS = _Ext(sip.EXT_NEEDS, "valueMarkdown", "the individual's needs today (behov)")
_PRINCIPAL = _Ext(sip.EXT_PRINCIPAL, "valueCode",
                  "the principal with overall responsibility (huvudman med huvudansvar)",
                  sip.VS_PRINCIPAL, sip.CS_PARTY_TYPE)
_COORDINATION = _Ext(sip.EXT_COORDINATION, "valueMarkdown",
                     "how the interventions are coordinated (samordning av insatserna)")
_FOLLOW_UP = _Ext(sip.EXT_FOLLOW_UP, "valueDateTime",
                  "when the plan is followed up (uppföljning)")
_RESPONSIBLE = _Ext(sip.EXT_RESPONSIBLE_PARTY, "valueCode",
                    "whose intervention it is: kommun, region or other (ansvarig aktör)",
                    sip.VS_PARTY_TYPE, sip.CS_PARTY_TYPE)
_PARENT_GOAL = _Ext(sip.EXT_PARENT_GOAL, "valueReference",
                    "the goal this sub-goal belongs to (delmål till mål)")
_PHASE = _Ext(sip.EXT_PHASE, "valueCode", "the phase of the SIP work (fas)", sip.VS_PHASE,
              sip.CS_PHASE)


def _check_ext(holder: Json, path: str, spec: _Ext, c: IssueCollector) -> Json | None:
    """Validate the 0..1 extension ``spec`` on ``holder``; return it when present."""
    found = _extensions(holder, spec.url)
    if not found:
        return None
    expr = _ext_path(path, spec.url)
    if len(found) > 1:
        c.add(expr, f"State {spec.label} once, not {len(found)} times")
    ext = found[0]
    values = [k for k in ext if k.startswith("value")]
    if values != [spec.value]:
        c.add(expr, f"The extension for {spec.label} takes {spec.value}"
                    + (f", not {', '.join(values)}" if values else ""))
        return ext
    value = ext[spec.value]
    if isinstance(value, str) and not value.strip():
        c.add(expr, f"{spec.label[0].upper()}{spec.label[1:]} is empty")
    elif spec.valueset is not None and spec.system is not None and (
            spec.system, value) not in valueset_codes(spec.valueset):
        allowed = " | ".join(_codes_in(spec.valueset, spec.system))
        c.add(expr, f"'{value}' is not a valid code for {spec.label}: use {allowed} "
                    f"(ValueSet {spec.valueset})", "code-invalid")
    return ext


def _check_unknown_exts(holder: Json, path: str, allowed: frozenset[str],
                        c: IssueCollector) -> None:
    """Our extensions only where they are defined: catches typos in SIP extension URLs,
    which would otherwise be kept silently as some unknown extension."""
    for ext in _dicts(holder.get("extension")):
        url = ext.get("url")
        if isinstance(url, str) and url.startswith(_OURS) and url not in allowed:
            c.add(_ext_path(path, url), f"'{url}' is not a SIP extension defined on {path}")


# --------------------------------------------------------------------------- CarePlan

_CAREPLAN_EXTS = frozenset({sip.EXT_NEEDS, sip.EXT_PRINCIPAL, sip.EXT_COORDINATION,
                            sip.EXT_FOLLOW_UP, sip.EXT_PHASE})
_DETAIL_EXTS = frozenset({sip.EXT_RESPONSIBLE_PARTY})
_GOAL_EXTS = frozenset({sip.EXT_PARENT_GOAL})


def _check_careplan(cp: Json, c: IssueCollector, resolve: Resolve) -> None:
    status = cp.get("status")
    established = status in sip.ESTABLISHED_STATUSES
    why = f"an established SIP (status '{status}', upprättad plan) must state"

    def require(expr: str, what: str, key: str) -> None:
        c.add(expr, f"{why[0].upper()}{why[1:]} {what} ({key})", "required")

    if not _careplan_marker(cp):
        c.add("CarePlan.category", f"A SIP CarePlan carries the plan type {sip.SIP_CAREPLAN_TYPE}"
                                   " (samordnad individuell plan) in category", "required")
    if cp.get("intent") == "proposal":
        _check_replaces(cp, c, resolve)
    elif cp.get("intent") != "plan":
        c.add("CarePlan.intent", f"A SIP is a plan: intent must be 'plan' (or 'proposal' for a "
                                 f"proposed revision), not '{cp.get('intent')}' (sip-cp-12)")
    _check_subject(cp.get("subject"), "CarePlan.subject", c, resolve)

    _check_unknown_exts(cp, "CarePlan", _CAREPLAN_EXTS, c)
    phase = _check_ext(cp, "CarePlan", _PHASE, c)
    allowed = sip.PHASE_STATUSES.get(str((phase or {}).get("valueCode")))
    if allowed is not None and status != "entered-in-error" and status not in allowed:
        c.add("CarePlan.status", f"In phase '{phase and phase['valueCode']}' a SIP has status "
                                 f"{' or '.join(sorted(allowed))}, not '{status}': the status "
                                 "follows the phase (sip-cp-13)")
    for spec, key in ((_NEEDS, "sip-cp-1"), (_PRINCIPAL, "sip-cp-4"),
                      (_COORDINATION, "sip-cp-5"), (_FOLLOW_UP, "sip-cp-6")):
        if _check_ext(cp, "CarePlan", spec, c) is None and established:
            require(_ext_path("CarePlan", spec.url), spec.label, key)

    goals = _dicts(cp.get("goal"))
    if not goals and established:
        require("CarePlan.goal", "at least one goal (mål)", "sip-cp-2")
    for i, goal_ref in enumerate(goals):
        expr = f"CarePlan.goal[{i}]"
        _check_ref_type(goal_ref, ("Goal",), expr, "A SIP goal (mål)", c)
        found = _resolve_literal(goal_ref, "Goal", resolve)
        if found is not None:
            text, goal = found
            if applies(goal) != sip.PROFILE_GOAL:
                c.add(expr, f"{text} is not a SIP goal: a SIP goal (mål) carries a life area "
                            f"(livsområde) from {sip.CS_LIFE_AREA} as category")
            elif not _same_subject(goal.get("subject"), cp.get("subject")):
                c.add(expr, f"{text} is a goal of another individual (den enskilde)")

    teams = _dicts(cp.get("careTeam"))
    if not teams and established:
        require("CarePlan.careTeam", "its participants (deltagare) as a CareTeam", "sip-cp-7")
    if len(teams) > 1:
        c.add("CarePlan.careTeam[1]", "A SIP has one set of participants: one careTeam")
    for i, team_ref in enumerate(teams):
        expr = f"CarePlan.careTeam[{i}]"
        _check_ref_type(team_ref, ("CareTeam",), expr, "The SIP participants (deltagare)", c)
        found = _resolve_literal(team_ref, "CareTeam", resolve)
        if found is not None:
            text, team = found
            if applies(team) != sip.PROFILE_CARETEAM:
                c.add(expr, f"{text} is not a SIP CareTeam (category {sip.SIP_CARETEAM_CATEGORY}"
                            " marks the participants of a SIP)")
            elif not _same_subject(team.get("subject"), cp.get("subject")):
                c.add(expr, f"{text} is the care team of another individual (den enskilde)")

    author = cp.get("author")
    if author is None:
        if established:
            require("CarePlan.author", "the coordinating organisation (samordnande verksamhet) "
                                       "as author", "sip-cp-8")
    else:
        _check_ref_type(author, ("Organization",), "CarePlan.author",
                        "The author (samordnande verksamhet)", c)

    activities = _dicts(cp.get("activity"))
    if not activities and established:
        require("CarePlan.activity", "at least one intervention (insats)", "sip-cp-3")
    for i, activity in enumerate(activities):
        _check_activity(activity, f"CarePlan.activity[{i}]", established, require, c)


def _check_replaces(cp: Json, c: IssueCollector, resolve: Resolve) -> None:
    """A proposed revision (intent proposal) names the one SIP plan of the same individual it
    would replace."""
    replaced = _dicts(cp.get("replaces"))
    if not replaced:
        # Reported on intent: without `replaces` the resource is no revision, so the intent
        # is what is wrong.
        c.add("CarePlan.intent", "A SIP is a plan: intent 'proposal' is only for a proposed "
                                 "revision, which names the established plan it replaces in "
                                 "CarePlan.replaces (sip-cp-12)")
        return
    if len(replaced) > 1:
        c.add("CarePlan.replaces[1]", "A proposed revision replaces one established SIP plan")
    _check_ref_type(replaced[0], ("CarePlan",), "CarePlan.replaces[0]",
                    "The plan a proposed revision replaces", c)
    found = _resolve_literal(replaced[0], "CarePlan", resolve)
    if found is not None:
        text, plan = found
        if applies(plan) != sip.PROFILE_CAREPLAN or plan.get("intent") != "plan":
            c.add("CarePlan.replaces[0]", f"{text} is not a SIP plan")
        elif not _same_subject(plan.get("subject"), cp.get("subject")):
            c.add("CarePlan.replaces[0]", f"{text} is the plan of another individual "
                                          "(den enskilde)")


def _check_activity(activity: Json, path: str, established: bool,
                    require: Callable[[str, str, str], None], c: IssueCollector) -> None:
    if activity.get("reference") is not None:
        c.add(f"{path}.reference", "A SIP intervention (insats) is written out in "
                                   "activity.detail, not referenced")
    detail = activity.get("detail")
    if not isinstance(detail, dict):
        if established:
            require(f"{path}.detail", "every intervention (insats) in activity.detail: "
                                      "who does it, what it is and whose it is",
                    "sip-cp-9, sip-cp-10, sip-cp-11")
        return
    dpath = f"{path}.detail"
    performers = _dicts(detail.get("performer"))
    for k, performer in enumerate(performers):
        _check_ref_type(performer, ("Organization",), f"{dpath}.performer[{k}]",
                        "The organisation responsible for the intervention (ansvarig "
                        "verksamhet)", c)
    if not performers and established:
        require(f"{dpath}.performer", "for every intervention (insats) the organisation "
                                      "responsible for it (ansvarig verksamhet)", "sip-cp-9")
    if not _text(detail.get("description")) and established:
        require(f"{dpath}.description", "for every intervention (insats) what it is "
                                        "(description)", "sip-cp-10")
    _check_unknown_exts(detail, dpath, _DETAIL_EXTS, c)
    if _check_ext(detail, dpath, _RESPONSIBLE, c) is None and established:
        require(_ext_path(dpath, sip.EXT_RESPONSIBLE_PARTY),
                "for every intervention (insats) whether it is the kommun's, the region's or "
                "another party's", "sip-cp-11")


# --------------------------------------------------------------------------- Consent

_CONSENT_ACTOR_TYPES = ("Organization", "RelatedPerson", "Practitioner")


def _check_consent(consent: Json, c: IssueCollector, resolve: Resolve) -> None:
    scope = consent.get("scope")
    if scope is None:
        c.add("Consent.scope", f"A SIP consent (samtycke) has scope {sip.PATIENT_PRIVACY}",
              "required")
    elif not sip.PATIENT_PRIVACY.in_concept(scope):
        c.add("Consent.scope", f"A SIP consent (samtycke) is a privacy consent: scope must be "
                               f"{sip.PATIENT_PRIVACY}")
    categories = _dicts(consent.get("category"))
    for code in (sip.PRIVACY_CONSENT, sip.SIP_CONSENT_CATEGORY):
        if not any(code.in_concept(cat) for cat in categories):
            c.add("Consent.category", f"A SIP consent (samtycke) carries category {code}",
                  "required")
    _check_subject(consent.get("patient"), "Consent.patient", c, resolve)
    if not _text(consent.get("dateTime")):
        c.add("Consent.dateTime", "A SIP consent (samtycke) states when it was given "
                                  "(dateTime)", "required")
    rule = consent.get("policyRule")
    if rule is None:
        c.add("Consent.policyRule", f"A SIP consent (samtycke) is an opt-in: policyRule "
                                    f"{sip.OPTIN}", "required")
    elif not sip.OPTIN.in_concept(rule):
        c.add("Consent.policyRule", f"A SIP consent (samtycke) is an opt-in: policyRule must "
                                    f"be {sip.OPTIN}")

    provision = consent.get("provision")
    if not isinstance(provision, dict):
        c.add("Consent.provision", "A SIP consent (samtycke) states what it permits and to "
                                   "whom (provision)", "required")
        provision = {}
    else:
        ptype = provision.get("type")
        if ptype is None:
            c.add("Consent.provision.type", "A SIP consent (samtycke) permits: provision.type "
                                            "'permit'", "required")
        elif ptype != "permit":
            c.add("Consent.provision.type", "A SIP consent (samtycke) permits information "
                                            f"exchange: provision.type must be 'permit', not "
                                            f"'{ptype}'")
    if provision.get("provision") is not None:
        # The hub decides who is covered from provision.actor alone; an exception nested in
        # it (a deny for one party) would be ignored and that party would still read.
        c.add("Consent.provision.provision",
              "A SIP consent (samtycke) names every party it covers in provision.actor and no "
              "exceptions (nested provisions): to leave a party out, remove its actor")
    actors = _dicts(provision.get("actor"))
    for i, actor in enumerate(actors):
        expr = f"Consent.provision.actor[{i}]"
        role = actor.get("role")
        if role is None:
            c.add(f"{expr}.role", f"Each party covered by the consent has role {sip.IRCP}",
                  "required")
        elif not sip.IRCP.in_concept(role):
            c.add(f"{expr}.role", "The parties a SIP consent covers receive information: "
                                  f"role must be {sip.IRCP}")
        _check_ref_type(actor.get("reference"), _CONSENT_ACTOR_TYPES, f"{expr}.reference",
                        "A party covered by the consent (samtycke)", c)
    if consent.get("status") == "active":
        if not actors:
            c.add("Consent.provision.actor",
                  "An active SIP consent (samtycke) names the organisations and persons who "
                  "may exchange information (sip-cs-1)", "required")
        period = provision.get("period")
        if not isinstance(period, dict) or not _text(period.get("start")):
            c.add("Consent.provision.period.start",
                  "An active SIP consent (samtycke) states from when it applies (sip-cs-2)",
                  "required")


# --------------------------------------------------------------------------- CareTeam

def _org_key(ref: object) -> tuple[str, str] | None:
    if not isinstance(ref, dict):
        return None
    literal = ref.get("reference")
    if isinstance(literal, str):
        target = split_reference(literal)
        return target if target is not None else ("", literal)
    ident = ref.get("identifier")
    if isinstance(ident, dict) and _text(ident.get("value")):
        return str(ident.get("system")), ident["value"]
    return None


def is_organization(ref: object) -> bool:
    """Whether a Reference names an Organization (its literal reference, else its type)."""
    if not isinstance(ref, dict):
        return False
    literal = ref.get("reference")
    if isinstance(literal, str):
        return (split_reference(literal) or ("",))[0] == "Organization"
    return ref.get("type") == "Organization"


def _check_careteam(team: Json, c: IssueCollector, resolve: Resolve) -> None:
    if not _careteam_marker(team):
        c.add("CareTeam.category", "The participants of a SIP (deltagare) carry category "
                                   f"{sip.SIP_CARETEAM_CATEGORY}", "required")
    subject = team.get("subject")
    _check_subject(subject, "CareTeam.subject", c, resolve)
    roles = valueset_codes(sip.VS_PARTICIPANT_ROLE)
    allowed = " | ".join(_codes_in(sip.VS_PARTICIPANT_ROLE, sip.CS_PARTICIPANT_ROLE))
    coordinators = 0
    individual_present = False
    represented: dict[tuple[str, str], int] = {}
    participants = _dicts(team.get("participant"))
    for i, part in enumerate(participants):
        path = f"CareTeam.participant[{i}]"
        role = _participant_role(part, path, roles, allowed, c)
        member = part.get("member")
        if member is None:
            c.add(f"{path}.member", "Each participant (deltagare) names who takes part "
                                    "(member)", "required")
        on_behalf = part.get("onBehalfOf")
        if on_behalf is not None:
            _check_ref_type(on_behalf, ("Organization",), f"{path}.onBehalfOf",
                            "The organisation a participant represents", c)
        if role == sip.ROLE_COORDINATOR:
            coordinators += 1
        elif role == sip.ROLE_INDIVIDUAL:
            if _same_subject(member, subject):
                individual_present = True
            else:
                c.add(f"{path}.member", "The role 'individual' (den enskilde) is for the "
                                        "person the plan is about: member must be the "
                                        "CareTeam subject")
        elif role == sip.ROLE_ORGANISATION_REPRESENTATIVE:
            # Until an invited organisation names its representative, the participant is the
            # organisation itself (ctm-1 allows onBehalfOf only beside a Practitioner).
            key = _org_key(member if on_behalf is None and is_organization(member)
                           else on_behalf)
            if key is None:
                c.add(f"{path}.onBehalfOf", "An organisation representative (verksamhetens "
                                            "representant) names the organisation it "
                                            "represents, or is that organisation until it has "
                                            "named its representative (sip-ct-4)", "required")
            elif key in represented:
                c.add(f"{path}.onBehalfOf",
                      f"{'/'.join(key)} already has a representative (verksamhetens "
                      f"representant) in participant[{represented[key]}]: an invited "
                      "organisation (kallad verksamhet) appoints one representative (sip-ct-2)")
            else:
                represented[key] = i
    if coordinators == 0:
        c.add("CareTeam.participant", "A SIP has a coordinator (samordningsansvarig): one "
                                      "participant with role 'coordinator' (sip-ct-1)",
              "required")
    if team.get("status") == "active" and not individual_present:
        c.add("CareTeam.participant", "In an active SIP the individual (den enskilde) takes "
                                      "part: a participant with role 'individual' whose "
                                      "member is the subject (sip-ct-3)", "required")


def _participant_role(part: Json, path: str, roles: frozenset[tuple[str, str]], allowed: str,
                      c: IssueCollector) -> str | None:
    """The participant's SIP role code, after reporting what is wrong with it."""
    concepts = _dicts(part.get("role"))
    if not concepts:
        c.add(f"{path}.role", f"Each participant (deltagare) has a SIP role: {allowed}",
              "required")
        return None
    if len(concepts) > 1:
        c.add(f"{path}.role", "A participant (deltagare) has exactly one SIP role; put "
                              "professions in the member's PractitionerRole")
    ours = [cd for cd in _dicts(concepts[0].get("coding"))
            if cd.get("system") == sip.CS_PARTICIPANT_ROLE]
    if not ours:
        c.add(f"{path}.role[0]", f"The role must come from {sip.CS_PARTICIPANT_ROLE}: "
                                 f"{allowed}", "code-invalid")
        return None
    code = ours[0].get("code")
    if (sip.CS_PARTICIPANT_ROLE, code) not in roles:
        c.add(f"{path}.role[0]", f"'{code}' is not a SIP participant role: {allowed}",
              "code-invalid")
        return None
    return code if isinstance(code, str) else None


# --------------------------------------------------------------------------- Goal

def _check_goal(goal: Json, c: IssueCollector, resolve: Resolve) -> None:
    areas = valueset_codes(sip.VS_LIFE_AREA)
    categories = _dicts(goal.get("category"))
    if not categories:
        c.add("Goal.category", "A SIP goal (mål) is filed under one life area (livsområde) "
                               f"from {sip.CS_LIFE_AREA}", "required")
    elif len(categories) > 1:
        c.add("Goal.category[1]", "A SIP goal (mål) has exactly one category: its life area "
                                  "(livsområde)")
    if categories:
        codes = [cd.get("code") for cd in _dicts(categories[0].get("coding"))
                 if cd.get("system") == sip.CS_LIFE_AREA]
        if not codes:
            c.add("Goal.category[0]", "A SIP goal (mål) is filed under a life area (livsområde)"
                                      f" from {sip.CS_LIFE_AREA}", "required")
        elif (sip.CS_LIFE_AREA, codes[0]) not in areas:
            allowed = ", ".join(_codes_in(sip.VS_LIFE_AREA, sip.CS_LIFE_AREA))
            c.add("Goal.category[0]", f"'{codes[0]}' is not a life area (livsområde); use one "
                                      f"of {allowed}", "code-invalid")
    _check_subject(goal.get("subject"), "Goal.subject", c, resolve)
    description = goal.get("description")
    if not isinstance(description, dict) or not _text(description.get("text")):
        c.add("Goal.description.text", "A SIP goal (mål) is written out in words "
                                       "(description.text): it is shown to the individual",
              "required")
    _check_unknown_exts(goal, "Goal", _GOAL_EXTS, c)
    ext = _check_ext(goal, "Goal", _PARENT_GOAL, c)
    if ext is None or not isinstance(ext.get("valueReference"), dict):
        return
    parent = ext["valueReference"]
    expr = _ext_path("Goal", sip.EXT_PARENT_GOAL)
    _check_ref_type(parent, ("Goal",), expr, "The goal of a sub-goal (delmål)", c)
    found = _resolve_literal(parent, "Goal", resolve)
    target = split_reference(parent.get("reference") or "")
    if target is not None and target == ("Goal", goal.get("id")):
        c.add(expr, "A sub-goal (delmål) cannot be its own goal")
    elif found is not None:
        text, stored = found
        if applies(stored) != sip.PROFILE_GOAL:
            c.add(expr, f"{text} is not a SIP goal (mål)")
        elif not _same_subject(stored.get("subject"), goal.get("subject")):
            c.add(expr, f"{text} is a goal of another individual (den enskilde)")


# --------------------------------------------------------------------------- meetings, Tasks

# What a meeting or a Task names that is not its own but its person's: the SIP plan a meeting
# belongs to, the plan a Task is based on and the meeting it is about. Their notifications
# carry it to the organisations the person's consent covers (rule 1), so it must be that
# person's; these are plain FHIR types, checked whether or not a SIP profile applies.
_LINKS: dict[str, tuple[tuple[str, str], ...]] = {
    "Appointment": (("supportingInformation", "CarePlan"),),
    "Task": (("basedOn", "CarePlan"), ("focus", "Appointment")),
}


def links_checked(resource: Json) -> bool:
    """Whether ``check_links`` has anything to check in ``resource``."""
    return isinstance(resource, dict) and resource.get("resourceType") in _LINKS


def _individuals(resource: Json) -> list[object]:
    """The references to the individual a meeting (its Patient participants) or a Task
    (``for``) is for."""
    if resource.get("resourceType") == "Task":
        return [resource["for"]] if isinstance(resource.get("for"), dict) else []
    return [p["actor"] for p in _dicts(resource.get("participant")) if _is_person(p.get("actor"))]


def _is_person(ref: object) -> bool:
    key = _subject_key(ref)
    return key is not None and (key[1] == "Patient" if key[0] == "reference"
                                else key[1] in _PERSON_SYSTEMS)


def check_links(resource: Json, c: IssueCollector, resolve: Resolve) -> None:
    """A meeting or Task names the SIP plan, and a Task the meeting, of the individual it is
    for: one of another individual's would be sent with its notifications to those the
    first one's consent covers."""
    rtype = str(resource.get("resourceType"))
    individuals = _individuals(resource) if rtype in _LINKS else []
    if not individuals:
        return
    for key, target in _LINKS[rtype]:
        value = resource.get(key)
        for i, ref in enumerate(value if isinstance(value, list) else [value]):
            found = _resolve_literal(ref, target, resolve)
            if found is None:
                continue
            text, stored = found
            theirs = _individuals(stored) if target == "Appointment" else [stored.get("subject")]
            if any(not _same_subject(a, b) for a in theirs for b in individuals):
                what = "plan" if target == "CarePlan" else "meeting"
                at = f"{rtype}.{key}" + (f"[{i}]" if isinstance(value, list) else "")
                c.add(at, f"{text} is the {what} of another individual (den enskilde)")


# --------------------------------------------------------------------------- kartläggning

def _check_kartlaggning(qr: Json, c: IssueCollector, resolve: Resolve) -> None:
    if not _kartlaggning_marker(qr):
        c.add("QuestionnaireResponse.questionnaire",
              f"A kartläggning answers {sip.QUESTIONNAIRE_KARTLAGGNING}",
              "required" if qr.get("questionnaire") is None else "invariant")
    _check_subject(qr.get("subject"), "QuestionnaireResponse.subject", c, resolve)
    author = qr.get("author")
    if author is None:
        c.add("QuestionnaireResponse.author", "The kartläggning is written by the coordinator "
                                              "(samordningsansvarig), who is its author",
              "required")
    else:
        _check_ref_type(author, ("Practitioner", "PractitionerRole"),
                        "QuestionnaireResponse.author",
                        "The author of the kartläggning (samordningsansvarig)", c)
    questionnaire = _by_url().get(sip.QUESTIONNAIRE_KARTLAGGNING)
    if questionnaire is not None:
        _check_items(qr.get("item"), _item_defs(questionnaire.get("item")),
                     "QuestionnaireResponse", c)


def _item_defs(items: object) -> dict[str, Json]:
    return {i["linkId"]: i for i in _dicts(items) if isinstance(i.get("linkId"), str)}


def _check_items(items: object, defs: dict[str, Json], path: str, c: IssueCollector) -> None:
    """Answers follow the kartläggning's structure: known linkIds, groups hold items, text
    questions hold valueString answers."""
    seen: set[str] = set()
    for i, item in enumerate(_dicts(items)):
        ipath = f"{path}.item[{i}]"
        link = item.get("linkId")
        definition = defs.get(link) if isinstance(link, str) else None
        if definition is None or not isinstance(link, str):
            known = ", ".join(defs)
            c.add(f"{ipath}.linkId", f"'{link}' is not an item here in the kartläggning; "
                                     f"expected one of {known}")
            continue
        if link in seen and not definition.get("repeats"):
            c.add(f"{ipath}.linkId", f"'{link}' is answered more than once")
        seen.add(link)
        if definition.get("type") == "group":
            if item.get("answer") is not None:
                c.add(f"{ipath}.answer", f"'{link}' is a heading (group): put answers in its "
                                         "items")
            _check_items(item.get("item"), _item_defs(definition.get("item")), ipath, c)
            continue
        if item.get("item") is not None:
            c.add(f"{ipath}.item", f"'{link}' is a question, not a group")
        for k, answer in enumerate(_dicts(item.get("answer"))):
            if [key for key in answer if key.startswith("value")] != ["valueString"]:
                c.add(f"{ipath}.answer[{k}]", f"'{link}' is answered in text (valueString)")


# --------------------------------------------------------------------------- entry point

_CHECKS: dict[str, Callable[[Json, IssueCollector, Resolve], None]] = {
    sip.PROFILE_CAREPLAN: _check_careplan,
    sip.PROFILE_CONSENT: _check_consent,
    sip.PROFILE_CARETEAM: _check_careteam,
    sip.PROFILE_GOAL: _check_goal,
    sip.PROFILE_KARTLAGGNING: _check_kartlaggning,
}


def check(resource: Json, collector: IssueCollector, resolve: Resolve) -> None:
    """Enforce the SIP profile that applies to ``resource``; plain FHIR passes untouched.

    Adds one issue per broken rule: ``required`` for missing content, ``invariant`` for
    content that breaks a rule, ``code-invalid`` for a code outside its ValueSet.
    """
    if not isinstance(resource, dict):
        return
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return
    _check_claims(resource, rtype, collector)
    profile = applies(resource)
    if profile is not None:
        _CHECKS[profile](resource, collector, resolve)
