"""The SIP profiles: published definitions and their enforcement on write."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import sip_factory as f

from sip_hub.errors import Issue, IssueCollector
from sip_hub.fhir import models, profiles, sip
from sip_hub.identifiers import PERSONNUMMER

Json = dict[str, Any]



def run_check(resource: Json, resources: list[Json] | None = None) -> list[Issue]:
    collector = IssueCollector()
    profiles.check(resource, collector, f.resolver(f.demo_case() if resources is None
                                                    else resources))
    return collector.issues


def expressions(issues: list[Issue]) -> list[str]:
    return [e for i in issues for e in i.expression]


def without_ext(holder: Json, url: str) -> None:
    holder["extension"] = [e for e in holder["extension"] if e["url"] != url]


def ext(holder: Json, url: str) -> Json:
    return next(e for e in holder["extension"] if e["url"] == url)


# --------------------------------------------------------------------------- the demo case

def test_demo_case_is_valid_fhir_and_passes_the_profiles() -> None:
    case = f.demo_case()
    for resource in case:
        models.validate(resource)
        assert run_check(resource, case) == [], resource["id"]


def test_demo_case_passes_the_base_rules() -> None:
    validation = pytest.importorskip("sip_hub.fhir.validation")
    for resource in f.demo_case():
        collector = IssueCollector()
        validation.check(resource, collector)
        assert collector.issues == [], resource["id"]


def test_sip_resources_are_recognised_by_their_markers() -> None:
    expected = {"CarePlan": sip.PROFILE_CAREPLAN, "Consent": sip.PROFILE_CONSENT,
                "CareTeam": sip.PROFILE_CARETEAM, "Goal": sip.PROFILE_GOAL,
                "QuestionnaireResponse": sip.PROFILE_KARTLAGGNING}
    for resource in f.demo_case():
        assert "meta" not in resource
        assert profiles.applies(resource) == expected.get(resource["resourceType"])


# --------------------------------------------------------------------------- CarePlan content

RESPONSIBLE = f"CarePlan.activity[2].detail.extension('{sip.EXT_RESPONSIBLE_PARTY}')"
REQUIRED_CONTENT: list[tuple[str, Callable[[Json], None], str, str]] = [
    ("needs", lambda cp: without_ext(cp, sip.EXT_NEEDS),
     f"CarePlan.extension('{sip.EXT_NEEDS}')", "sip-cp-1"),
    ("goal", lambda cp: cp.pop("goal"), "CarePlan.goal", "sip-cp-2"),
    ("activity", lambda cp: cp.pop("activity"), "CarePlan.activity", "sip-cp-3"),
    ("principal", lambda cp: without_ext(cp, sip.EXT_PRINCIPAL),
     f"CarePlan.extension('{sip.EXT_PRINCIPAL}')", "sip-cp-4"),
    ("coordination", lambda cp: without_ext(cp, sip.EXT_COORDINATION),
     f"CarePlan.extension('{sip.EXT_COORDINATION}')", "sip-cp-5"),
    ("follow-up", lambda cp: without_ext(cp, sip.EXT_FOLLOW_UP),
     f"CarePlan.extension('{sip.EXT_FOLLOW_UP}')", "sip-cp-6"),
    ("careTeam", lambda cp: cp.pop("careTeam"), "CarePlan.careTeam", "sip-cp-7"),
    ("author", lambda cp: cp.pop("author"), "CarePlan.author", "sip-cp-8"),
    ("performer", lambda cp: cp["activity"][1]["detail"].pop("performer"),
     "CarePlan.activity[1].detail.performer", "sip-cp-9"),
    ("detail", lambda cp: cp["activity"].__setitem__(1, {"progress": [
        {"text": "Skolans insats bestäms på nästa möte."}]}),
     "CarePlan.activity[1].detail", "sip-cp-9, sip-cp-10, sip-cp-11"),
    ("description", lambda cp: cp["activity"][1]["detail"].pop("description"),
     "CarePlan.activity[1].detail.description", "sip-cp-10"),
    ("responsible-party", lambda cp: cp["activity"][2]["detail"].pop("extension"),
     RESPONSIBLE, "sip-cp-11"),
]
LAW_TERMS = {"needs": "behov", "principal": "huvudansvar", "coordination": "samordn",
             "follow-up": "uppföljning", "goal": "mål", "activity": "insats",
             "performer": "ansvarig verksamhet", "responsible-party": "kommun"}


@pytest.mark.parametrize("status", ["active", "on-hold", "completed"])
@pytest.mark.parametrize(("name", "remove", "expression", "key"), REQUIRED_CONTENT,
                         ids=[r[0] for r in REQUIRED_CONTENT])
def test_established_plan_must_carry_the_required_content(
        name: str, remove: Callable[[Json], None], expression: str, key: str,
        status: str) -> None:
    plan = f.sip_careplan(status=status)
    remove(plan)
    models.validate(plan)
    issues = run_check(plan)
    assert [(i.code, i.expression) for i in issues] == [("required", (expression,))]
    assert all(k in issues[0].diagnostics for k in key.split(", "))
    if name in LAW_TERMS:
        assert LAW_TERMS[name] in issues[0].diagnostics


@pytest.mark.parametrize(("name", "remove", "expression", "key"), REQUIRED_CONTENT,
                         ids=[r[0] for r in REQUIRED_CONTENT])
def test_draft_may_be_incomplete(name: str, remove: Callable[[Json], None], expression: str,
                                 key: str) -> None:
    plan = f.sip_careplan(status="draft")
    remove(plan)
    assert run_check(plan) == []


def test_bare_draft_passes() -> None:
    plan = {"resourceType": "CarePlan", "status": "draft", "intent": "plan",
            "category": [sip.SIP_CAREPLAN_TYPE.concept()], "subject": {"reference": f.PATIENT}}
    models.validate(plan)
    assert run_check(plan) == []


@pytest.mark.parametrize("status", ["draft", "active"])
def test_what_a_draft_carries_must_be_valid(status: str) -> None:
    plan = f.sip_careplan(status=status)
    ext(plan, sip.EXT_PRINCIPAL)["valueCode"] = "landsting"
    plan["activity"][0]["detail"]["extension"][0]["valueCode"] = "skola"
    plan["activity"][1]["detail"]["performer"] = [{"reference": "Practitioner/kim"}]
    plan["goal"].append({"reference": "CareTeam/alva-sip"})
    issues = run_check(plan)
    assert expressions(issues) == [
        f"CarePlan.extension('{sip.EXT_PRINCIPAL}')",
        "CarePlan.goal[3]",
        f"CarePlan.activity[0].detail.extension('{sip.EXT_RESPONSIBLE_PARTY}')",
        "CarePlan.activity[1].detail.performer[0]",
    ]
    assert "kommun | region" in issues[0].diagnostics
    assert issues[0].code == "code-invalid"
    assert "kommun | other | region" in issues[2].diagnostics


def test_principal_may_only_be_kommun_or_region() -> None:
    plan = f.sip_careplan()
    ext(plan, sip.EXT_PRINCIPAL)["valueCode"] = "other"  # a party type, not a principal
    issues = run_check(plan)
    assert [(i.code, i.expression[0]) for i in issues] == [
        ("code-invalid", f"CarePlan.extension('{sip.EXT_PRINCIPAL}')")]
    assert "huvudansvar" in issues[0].diagnostics


@pytest.mark.parametrize(("mutate", "expression"), [
    (lambda cp: ext(cp, sip.EXT_NEEDS).update(valueMarkdown="  "),
     f"CarePlan.extension('{sip.EXT_NEEDS}')"),
    (lambda cp: ext(cp, sip.EXT_FOLLOW_UP).update(valueDate="2027-02-15")
     or ext(cp, sip.EXT_FOLLOW_UP).pop("valueDateTime"),
     f"CarePlan.extension('{sip.EXT_FOLLOW_UP}')"),
    (lambda cp: cp["extension"].append({"url": sip.EXT_PRINCIPAL, "valueCode": "region"}),
     f"CarePlan.extension('{sip.EXT_PRINCIPAL}')"),
    (lambda cp: cp["extension"].append({"url": sip.CANONICAL + "/StructureDefinition/sip-need",
                                        "valueMarkdown": "x"}),
     f"CarePlan.extension('{sip.CANONICAL}/StructureDefinition/sip-need')"),
    (lambda cp: cp.update(intent="proposal"), "CarePlan.intent"),
    (lambda cp: cp["careTeam"].append({"reference": "CareTeam/other"}), "CarePlan.careTeam[1]"),
    (lambda cp: cp["activity"][0].update(reference={"reference": "ServiceRequest/1"}),
     "CarePlan.activity[0].reference"),
    (lambda cp: cp.update(author={"display": "Socialtjänsten"}), "CarePlan.author"),
    (lambda cp: cp.update(author={"identifier": {"system": "urn:oid:1.2.3", "value": "x"}}),
     "CarePlan.author.identifier"),
], ids=["empty-needs", "wrong-value-type", "twice", "unknown-sip-extension", "intent",
        "two-careteams", "activity-reference", "author-display-only", "author-identifier"])
def test_careplan_invariants(mutate: Callable[[Json], Any], expression: str) -> None:
    plan = f.sip_careplan()
    mutate(plan)
    issues = run_check(plan)
    assert [i.expression[0] for i in issues] == [expression]


def test_logical_organisation_reference_by_hsa_id_is_accepted() -> None:
    plan = f.sip_careplan()
    plan["author"] = {"type": "Organization",
                      "identifier": {"system": "urn:oid:1.2.752.29.4.19",
                                     "value": "SE2120000142-SOC1"}}
    assert run_check(plan) == []


def test_goals_and_careteam_of_the_plan_must_be_sip_and_of_the_same_individual() -> None:
    case = f.demo_case()
    other = f.patient()
    foreign_goal = f.sip_goal(f"Patient/{other['id']}", id="tolvan-mal")
    plain_goal = {"resourceType": "Goal", "id": "plain", "lifecycleStatus": "active",
                  "description": {"text": "x"}, "subject": {"reference": f.PATIENT}}
    foreign_team = f.sip_careteam(f"Patient/{other['id']}", id="tolvan-team")
    case += [other, foreign_goal, plain_goal, foreign_team]
    plan = f.sip_careplan(goal_refs=["Goal/tolvan-mal", "Goal/plain"],
                          careteam_ref="CareTeam/tolvan-team")
    issues = run_check(plan, case)
    assert expressions(issues) == ["CarePlan.goal[0]", "CarePlan.goal[1]",
                                   "CarePlan.careTeam[0]"]
    assert "another individual" in issues[0].diagnostics
    assert "not a SIP goal" in issues[1].diagnostics


# --------------------------------------------------------------------------- applies / plain FHIR

def test_plain_careplan_is_not_profiled() -> None:
    plan = {"resourceType": "CarePlan", "status": "active", "intent": "order",
            "category": [{"coding": [{"system": "http://snomed.info/sct",
                                      "code": "736285004"}]}],
            "subject": {"reference": "Patient/nobody"}}
    assert profiles.applies(plan) is None
    assert run_check(plan) == []
    before = copy.deepcopy(plan)
    profiles.stamp(plan)
    assert plan == before


@pytest.mark.parametrize("resource", [
    {"resourceType": "Consent", "status": "active",
     "scope": sip.PATIENT_PRIVACY.concept(), "category": [sip.PRIVACY_CONSENT.concept()],
     "policyRule": sip.OPTIN.concept(), "patient": {"reference": "Patient/x"}},
    {"resourceType": "CareTeam", "status": "active", "subject": {"reference": "Group/1"}},
    {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "x"},
     "subject": {"reference": "Group/1"}},
    {"resourceType": "QuestionnaireResponse", "status": "completed",
     "questionnaire": "http://example.org/Questionnaire/phq-9"},
    {"resourceType": "Patient"},
], ids=lambda r: r["resourceType"])
def test_plain_resources_are_left_alone(resource: Json) -> None:
    assert profiles.applies(resource) is None
    assert run_check(resource) == []


def test_a_profile_claim_makes_a_resource_sip() -> None:
    plan = {"resourceType": "CarePlan", "meta": {"profile": [sip.PROFILE_CAREPLAN + "|0.1.0"]},
            "status": "draft", "intent": "plan", "subject": {"reference": f.PATIENT}}
    assert profiles.applies(plan) == sip.PROFILE_CAREPLAN
    issues = run_check(plan)
    assert [(i.code, i.expression[0]) for i in issues] == [("required", "CarePlan.category")]


def test_claims_of_unknown_or_mismatched_sip_profiles_are_reported() -> None:
    goal = f.sip_goal()
    goal["meta"] = {"profile": [sip.PROFILE_CAREPLAN, sip.CANONICAL + "/StructureDefinition/x",
                                "http://example.org/StructureDefinition/other"]}
    issues = run_check(goal)
    assert expressions(issues) == ["Goal.meta.profile[0]", "Goal.meta.profile[1]"]
    assert "is for CarePlan" in issues[0].diagnostics


# --------------------------------------------------------------------------- the individual

@pytest.mark.parametrize("rtype", ["CarePlan", "Consent", "CareTeam", "Goal",
                                   "QuestionnaireResponse"])
def test_subject_without_personnummer_fails(rtype: str) -> None:
    # A reservnummer (local temporary id) is not enough to share a SIP.
    nameless = {"resourceType": "Patient", "id": "reserv",
                "identifier": [{"system": "urn:oid:1.2.752.97.3.1.3", "value": "99123456"}]}
    case = [*f.demo_case(), nameless]
    ref = "Patient/reserv"
    builders: dict[str, Callable[[], Json]] = {
        "CarePlan": lambda: f.sip_careplan(ref, status="draft", goal_refs=()),
        "Consent": lambda: f.sip_consent(ref),
        "CareTeam": lambda: f.sip_careteam(ref),
        "Goal": lambda: f.sip_goal(ref),
        "QuestionnaireResponse": lambda: f.kartlaggning(ref),
    }
    resource = builders[rtype]()
    if rtype == "CarePlan":
        resource.pop("careTeam")  # the demo team is Alva's, not this patient's
    field = "patient" if rtype == "Consent" else "subject"
    issues = run_check(resource, case)
    assert [(i.code, i.expression[0]) for i in issues] == [("invariant", f"{rtype}.{field}")]
    assert "personnummer" in issues[0].diagnostics


@pytest.mark.parametrize(("subject", "expression", "needle"), [
    ({"reference": "Patient/missing"}, "CarePlan.subject", "does not exist"),
    ({"reference": "Group/1"}, "CarePlan.subject", "Patient reference"),
    ({"display": "Alva"}, "CarePlan.subject", "display"),
    ({"identifier": {"system": "urn:oid:1.2.3", "value": "1"}}, "CarePlan.subject.identifier",
     "samordningsnummer"),
    ({"type": "Group", "identifier": {"system": PERSONNUMMER, "value": f.DEMO_PNR}},
     "CarePlan.subject.type", "Patient"),
])
def test_subject_must_identify_the_individual(subject: Json, expression: str,
                                              needle: str) -> None:
    plan = f.sip_careplan(status="draft", goal_refs=())
    plan.pop("careTeam")  # Alva's goals and team would (rightly) not match another subject
    plan["subject"] = subject
    issues = run_check(plan)
    assert [i.expression[0] for i in issues] == [expression]
    assert needle in issues[0].diagnostics


def test_logical_subject_by_personnummer_and_samordningsnummer_patient_pass() -> None:
    plan = f.sip_careplan()
    plan["subject"] = {"type": "Patient",
                       "identifier": {"system": PERSONNUMMER, "value": f.DEMO_PNR}}
    assert run_check(plan) == []
    case = [*f.demo_case(), f.patient(f.DEMO_SAMORDNINGSNUMMER, id="snr")]
    plan = f.sip_careplan("Patient/snr", status="draft", goal_refs=())
    plan.pop("careTeam")
    assert run_check(plan, case) == []


def test_transaction_reference_to_the_individual_is_resolved_by_its_full_url() -> None:
    urn = "urn:uuid:6f1c2b9e-3d4a-4f7e-9a51-0c8e2d7b1a34"
    alva = f.patient(f.DEMO_PNR)
    seen: list[tuple[str, str]] = []

    def resolve(rtype: str, rid: str) -> Json | None:
        seen.append((rtype, rid))
        return alva if (rtype, rid) == ("Patient", urn) else None

    goal = f.sip_goal(urn)
    collector = IssueCollector()
    profiles.check(goal, collector, resolve)
    assert collector.issues == []
    assert seen == [("Patient", urn)]


# --------------------------------------------------------------------------- CareTeam

def test_two_representatives_for_one_organisation_fail() -> None:
    team = f.sip_careteam(representatives=[(f.BUP_REPRESENTATIVE, f.BUP),
                                           (f.SCHOOL_REPRESENTATIVE, f.SCHOOL),
                                           ("Practitioner/other", f.BUP)])
    issues = run_check(team)
    assert [(i.code, i.expression[0]) for i in issues] == [
        ("invariant", "CareTeam.participant[5].onBehalfOf")]
    assert "participant[3]" in issues[0].diagnostics
    assert "representant" in issues[0].diagnostics


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda t: t["participant"].pop(2), [("required", "CareTeam.participant")]),
    (lambda t: t["participant"].pop(0), [("required", "CareTeam.participant")]),
    (lambda t: t["participant"][1]["role"][0]["coding"][0].update(code="mamma"),
     [("code-invalid", "CareTeam.participant[1].role[0]")]),
    (lambda t: t["participant"][1].pop("role"), [("required", "CareTeam.participant[1].role")]),
    (lambda t: t["participant"][1]["role"].append({"text": "Mamma"}),
     [("invariant", "CareTeam.participant[1].role")]),
    (lambda t: t["participant"][3].pop("onBehalfOf"),
     [("required", "CareTeam.participant[3].onBehalfOf")]),
    (lambda t: t["participant"][1]["role"][0]["coding"][0].update(code="individual"),
     [("invariant", "CareTeam.participant[1].member")]),
    (lambda t: t.pop("category"), [("required", "CareTeam.category")]),
], ids=["no-coordinator", "active-without-individual", "unknown-role", "no-role",
        "two-roles", "representative-without-organisation", "individual-is-not-subject",
        "claimed-without-category"])
def test_careteam_rules(mutate: Callable[[Json], Any], expected: list[tuple[str, str]]) -> None:
    team = f.sip_careteam()
    team["meta"] = {"profile": [sip.PROFILE_CARETEAM]}
    mutate(team)
    issues = run_check(team)
    assert [(i.code, i.expression[0]) for i in issues] == expected


def test_proposed_careteam_need_not_include_the_individual_yet() -> None:
    assert run_check(f.sip_careteam(status="proposed", include_individual=False)) == []


# --------------------------------------------------------------------------- Consent

@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda c: c["provision"].pop("actor"), [("required", "Consent.provision.actor")]),
    (lambda c: c["provision"]["period"].pop("start"),
     [("required", "Consent.provision.period.start")]),
    (lambda c: c["provision"]["actor"][0].update(role={"coding": [
        {"system": sip.PARTICIPATION_TYPE, "code": "AUT"}]}),
     [("invariant", "Consent.provision.actor[0].role")]),
    (lambda c: c["provision"]["actor"][1].update(reference={"reference": f.PATIENT}),
     [("invariant", "Consent.provision.actor[1].reference")]),
    (lambda c: c["provision"].update(type="deny"), [("invariant", "Consent.provision.type")]),
    (lambda c: c.update(policyRule={"coding": [{"system": sip.ACT_CODE, "code": "OPTOUT"}]}),
     [("invariant", "Consent.policyRule")]),
    (lambda c: c["category"].pop(0), [("required", "Consent.category")]),
    (lambda c: c.pop("dateTime"), [("required", "Consent.dateTime")]),
    (lambda c: c.update(scope={"coding": [{"system": sip.CONSENT_SCOPE, "code": "treatment"}]}),
     [("invariant", "Consent.scope")]),
], ids=["active-without-actors", "active-without-start", "actor-role", "actor-type",
        "deny", "opt-out", "no-loinc-category", "no-datetime", "scope"])
def test_consent_rules(mutate: Callable[[Json], Any], expected: list[tuple[str, str]]) -> None:
    consent = f.sip_consent()
    mutate(consent)
    issues = run_check(consent)
    assert [(i.code, i.expression[0]) for i in issues] == expected


def test_proposed_consent_may_leave_actors_and_period_open() -> None:
    consent = f.sip_consent(actor_refs=(), status="proposed")
    consent["provision"].pop("period")
    consent["provision"].pop("actor")
    assert run_check(consent) == []


# --------------------------------------------------------------------------- Goal

@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda g: g["category"][0]["coding"][0].update(code="skola"),
     [("code-invalid", "Goal.category[0]")]),
    (lambda g: g["category"].append({"text": "extra"}), [("invariant", "Goal.category[1]")]),
    (lambda g: g.update(description={"coding": [{"system": "http://snomed.info/sct",
                                                 "code": "1"}]}),
     [("required", "Goal.description.text")]),
    (lambda g: g["extension"][0].update(valueReference={"reference": "Goal/alva-delmal-narvaro"}),
     [("invariant", f"Goal.extension('{sip.EXT_PARENT_GOAL}')")]),
    (lambda g: g["extension"][0].update(valueReference={"reference": "CarePlan/alva-sip"}),
     [("invariant", f"Goal.extension('{sip.EXT_PARENT_GOAL}')")]),
], ids=["unknown-life-area", "two-categories", "no-text", "own-parent", "parent-not-goal"])
def test_goal_rules(mutate: Callable[[Json], Any], expected: list[tuple[str, str]]) -> None:
    goal = f.demo_goals()[1]
    mutate(goal)
    issues = run_check(goal)
    assert [(i.code, i.expression[0]) for i in issues] == expected


def test_subgoal_parent_must_belong_to_the_same_individual() -> None:
    case = [*f.demo_case(), f.patient(), f.sip_goal("Patient/tolvan", id="tolvan-mal")]
    goal = f.sip_goal(id="delmal", parent_ref="Goal/tolvan-mal")
    issues = run_check(goal, case)
    assert [i.expression[0] for i in issues] == [f"Goal.extension('{sip.EXT_PARENT_GOAL}')"]
    assert "another individual" in issues[0].diagnostics


# --------------------------------------------------------------------------- kartläggning

@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda q: q.pop("author"), [("required", "QuestionnaireResponse.author")]),
    (lambda q: q.update(author={"reference": f.SOCIAL_SERVICES}),
     [("invariant", "QuestionnaireResponse.author")]),
    (lambda q: q["item"].append({"linkId": "skola"}),
     [("invariant", "QuestionnaireResponse.item[5].linkId")]),
    (lambda q: q["item"][1]["item"].append({"linkId": "somn.behov"}),
     [("invariant", "QuestionnaireResponse.item[1].item[3].linkId")]),
    (lambda q: q["item"][1]["item"][0].update(answer=[{"valueInteger": 3}]),
     [("invariant", "QuestionnaireResponse.item[1].item[0].answer[0]")]),
    (lambda q: q["item"].append(copy.deepcopy(q["item"][1])),
     [("invariant", "QuestionnaireResponse.item[5].linkId")]),
    (lambda q: q.update(questionnaire=sip.QUESTIONNAIRE_KARTLAGGNING + "|0.1.0"), []),
], ids=["no-author", "author-organisation", "unknown-heading", "question-in-wrong-group",
        "non-text-answer", "heading-twice", "versioned-questionnaire"])
def test_kartlaggning_rules(mutate: Callable[[Json], Any],
                            expected: list[tuple[str, str]]) -> None:
    qr = f.kartlaggning()
    mutate(qr)
    issues = run_check(qr)
    assert [(i.code, i.expression[0]) for i in issues] == expected


# --------------------------------------------------------------------------- stamp

def test_stamp_claims_the_profile_once() -> None:
    plan = f.sip_careplan()
    profiles.stamp(plan)
    profiles.stamp(plan)
    assert plan["meta"] == {"profile": [sip.PROFILE_CAREPLAN]}
    versioned = f.sip_goal()
    versioned["meta"] = {"profile": [sip.PROFILE_GOAL + "|0.1.0"]}
    profiles.stamp(versioned)
    assert versioned["meta"]["profile"] == [sip.PROFILE_GOAL + "|0.1.0"]
    models.validate(plan)


def test_stamp_hides_the_kartlaggning_from_the_citizen() -> None:
    qr = f.kartlaggning()
    profiles.stamp(qr)
    profiles.stamp(qr)
    assert qr["meta"]["profile"] == [sip.PROFILE_KARTLAGGNING]
    assert qr["meta"]["security"] == [{"system": sip.ACT_CODE, "code": "NOPATIENT"}]
    models.validate(qr)
    assert run_check(qr) == []


# --------------------------------------------------------------------------- definitions

def test_definitions_are_valid_fhir_with_unique_urls() -> None:
    defs = profiles.definitions()
    # No fixed count: several features publish definitions; every file must load (below).
    assert len(defs) == len({d["url"] for d in defs}) >= 31
    files = sorted(p.name for p in profiles.DEFINITIONS_DIR.glob("*.json")
                   if "resourceType" in json.loads(p.read_text("utf-8")))
    assert files == sorted(f"{d['resourceType']}-{d['id']}.json" for d in defs)
    for d in defs:
        models.validate(d)
        assert d["url"] == f"{sip.CANONICAL}/{d['resourceType']}/{d['id']}"
        assert (d["version"], d["status"], d["publisher"]) == ("0.1.0", "active", "sip_hub")
        assert "**Svenska:**" in d["description"] and "**English:**" in d["description"]
        if d["resourceType"] == "StructureDefinition":
            assert (d["fhirVersion"], d["derivation"], d["abstract"]) == ("4.0.1", "constraint",
                                                                        False)
            assert "snapshot" not in d


def test_definitions_skip_plain_data_files_and_return_copies() -> None:
    assert all("resourceType" in d for d in profiles.definitions())
    profiles.definitions()[0]["url"] = "changed"
    assert profiles.definitions()[0]["url"] != "changed"


def test_definitions_pass_the_base_rules() -> None:
    validation = pytest.importorskip("sip_hub.fhir.validation")
    for d in profiles.definitions():
        collector = IssueCollector()
        validation.check(d, collector)
        assert collector.issues == [], d["id"]


def test_profiles_and_extensions_are_what_sip_py_names() -> None:
    by_url = {d["url"]: d for d in profiles.definitions()}
    for rtype, url in sip.PROFILE_BY_TYPE.items():
        assert (by_url[url]["kind"], by_url[url]["type"]) == ("resource", rtype)
        assert by_url[url]["baseDefinition"] == f"http://hl7.org/fhir/StructureDefinition/{rtype}"
    contexts = {sip.EXT_NEEDS: "CarePlan", sip.EXT_PRINCIPAL: "CarePlan",
                sip.EXT_COORDINATION: "CarePlan", sip.EXT_FOLLOW_UP: "CarePlan",
                sip.EXT_RESPONSIBLE_PARTY: "CarePlan.activity.detail", sip.EXT_PARENT_GOAL: "Goal"}
    for url, context in contexts.items():
        sd = by_url[url]
        assert (sd["kind"], sd["type"], sd["context"]) == (
            "complex-type", "Extension", [{"type": "element", "expression": context}])
        fixed = [e["fixedUri"] for e in sd["differential"]["element"] if "fixedUri" in e]
        assert fixed == [url]


def test_every_canonical_of_ours_that_a_definition_uses_is_defined() -> None:
    defs = profiles.definitions()
    known = {d["url"] for d in defs}
    used: set[str] = set()

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)
        elif isinstance(node, str) and node.startswith(sip.CANONICAL + "/") and " " not in node:
            used.add(node.split("|")[0])

    walk(defs)
    assert used - known == set()


def test_questionnaire_has_the_twelve_life_areas_of_the_codesystem() -> None:
    by_url = {d["url"]: d for d in profiles.definitions()}
    codesystem = by_url[sip.CS_LIFE_AREA]
    areas = [(c["code"], c["display"]) for c in codesystem["concept"]]
    assert len(areas) == codesystem["count"] == 12
    questionnaire = by_url[sip.QUESTIONNAIRE_KARTLAGGNING]
    groups = [i for i in questionnaire["item"] if i["type"] == "group"]
    assert [(g["linkId"], g["text"]) for g in groups] == areas
    assert [g["code"][0]["system"] for g in groups] == [sip.CS_LIFE_AREA] * 12
    others = [i["linkId"] for i in questionnaire["item"] if i["type"] != "group"]
    assert others == ["hela-situationen"]
    for g in groups:
        assert [i["linkId"] for i in g["item"]] == [
            f"{g['linkId']}.nulage", f"{g['linkId']}.egen-beskrivning", f"{g['linkId']}.behov"]
    assert {c for _, c in profiles.valueset_codes(sip.VS_LIFE_AREA)} == {a for a, _ in areas}


def test_conceptmap_covers_every_life_area_honestly() -> None:
    by_url = {d["url"]: d for d in profiles.definitions()}
    cm = by_url[sip.CONCEPTMAP_LIFE_AREA_TO_ICF]
    (group,) = cm["group"]
    assert (group["source"], group["target"]) == (sip.CS_LIFE_AREA, sip.ICF)
    codes = [c["code"] for c in by_url[sip.CS_LIFE_AREA]["concept"]]
    assert [e["code"] for e in group["element"]] == codes
    targets = [t for e in group["element"] for t in e["target"]]
    assert all(t["equivalence"] in ("relatedto", "wider", "narrower") for t in targets)
    assert all("comment" in t for t in targets if t["equivalence"] == "narrower")
    assert {t["code"] for e in group["element"] if e["code"] == "ekonomi"
            for t in e["target"]} == {"d860", "d865", "d870"}


def test_value_sets_expand_from_the_definitions() -> None:
    assert profiles.valueset_codes(sip.VS_PRINCIPAL) == {
        (sip.CS_PARTY_TYPE, "kommun"), (sip.CS_PARTY_TYPE, "region")}
    assert {c for _, c in profiles.valueset_codes(sip.VS_PARTICIPANT_ROLE)} == {
        "individual", "relative", "custodian", "guardian", "personal-representative",
        "coordinator", "organisation-representative", "other"}


# --------------------------------------------------------------------------- independent checks

@pytest.mark.node
def test_shared_validator_accepts_definitions_and_demo_case(tmp_path: Path, fhir_validator) -> None:
    case = tmp_path / "demo.json"
    case.write_text(json.dumps(f.demo_case()), "utf-8")
    files = [str(p) for p in sorted(profiles.DEFINITIONS_DIR.glob("*.json"))
             if "resourceType" in json.loads(p.read_text("utf-8"))]
    done = fhir_validator.validate(*files, case)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.node
def test_published_invariants_agree_with_the_enforcement(tmp_path: Path, fhir_validator) -> None:
    cases: list[tuple[Json, list[str]]] = []
    for resource in f.demo_case():
        cases.append((resource, []))
    for _, remove, _, key in REQUIRED_CONTENT:
        plan = f.sip_careplan()
        remove(plan)
        cases.append((plan, [key]))
        draft = f.sip_careplan(status="draft")
        remove(draft)
        cases.append((draft, []))
    team = f.sip_careteam(representatives=[(f.BUP_REPRESENTATIVE, f.BUP),
                                           ("Practitioner/other", f.BUP)])
    cases.append((team, ["sip-ct-2"]))
    team = f.sip_careteam(include_individual=False)
    team["participant"].pop(1)  # the coordinator (after the custodian)
    cases.append((team, ["sip-ct-1", "sip-ct-3"]))
    team = f.sip_careteam()
    team["participant"][3].pop("onBehalfOf")
    cases.append((team, ["sip-ct-4"]))
    consent = f.sip_consent()
    consent["provision"].pop("actor")
    consent["provision"]["period"].pop("start")
    cases.append((consent, ["sip-cs-1", "sip-cs-2"]))
    qr = f.kartlaggning()
    qr["questionnaire"] = "http://example.org/Questionnaire/other"
    cases.append((qr, ["sip-kl-1"]))

    failed = fhir_validator.failing_constraints(tmp_path, profiles.DEFINITIONS_DIR,
                                                [c for c, _ in cases])
    assert [sorted(keys) for keys in failed] == [
        sorted(k for key in keys for k in key.split(", ")) for _, keys in cases]
    # The Python side raises the same keys for the same resources.
    for resource, keys in cases:
        if keys and resource["resourceType"] != "QuestionnaireResponse":
            diagnostics = " ".join(i.diagnostics for i in run_check(resource))
            assert all(k in diagnostics for key in keys for k in key.split(", ")), (
                keys, diagnostics)
