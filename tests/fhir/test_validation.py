"""sip_hub.fhir.validation: required bindings, ele-1 and invariants, on official and crafted R4."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sip_hub.errors import Issue, IssueCollector, Unprocessable
from sip_hub.fhir import models, validation

Json = dict[str, Any]
Mutation = Callable[[Json], object]  # lambdas may return what their calls return

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "tests" / "fixtures" / "r4-examples"
DEFINITIONS = REPO / "sip_hub" / "fhir" / "definitions"

CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"


def issues(resource: Json) -> list[Issue]:
    collector = IssueCollector()
    validation.check(resource, collector)
    return collector.issues


def keyed(found: list[Issue], key: str) -> list[Issue]:
    return [i for i in found if i.diagnostics.startswith(f"{key}:")]


def assert_issue(resource: Json, key: str, expression: str, code: str = "invariant") -> Issue:
    found = issues(resource)
    hits = [i for i in keyed(found, key) if i.expression == (expression,)]
    assert hits, f"expected {key} at {expression}, got {[(i.expression, i.diagnostics) for i in found]}"
    assert hits[0].code == code
    return hits[0]


# --- minimal valid resources, each accepted by models.validate and check ----------------------

def careplan() -> Json:
    return {"resourceType": "CarePlan", "id": "cp1", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/p1"},
            "activity": [{"detail": {"status": "not-started", "description": "Samordningsmöte"}}]}


def careteam() -> Json:
    return {"resourceType": "CareTeam", "id": "ct1", "status": "active",
            "subject": {"reference": "Patient/p1"},
            "participant": [{"member": {"reference": "Practitioner/pr1"},
                             "onBehalfOf": {"reference": "Organization/o1"}}]}


def consent() -> Json:
    return {"resourceType": "Consent", "id": "c1", "status": "active",
            "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
            "patient": {"reference": "Patient/p1"},
            "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                       "code": "OPTIN"}]},
            "provision": {"type": "permit", "provision": [{"type": "deny"}]}}


def patient() -> Json:
    return {"resourceType": "Patient", "id": "p1",
            "identifier": [{"use": "official",
                            "system": "http://electronichealth.se/identifier/personnummer",
                            "value": "191212121212"}],
            "name": [{"use": "official", "family": "Tolvansson", "given": ["Tolvan"]}],
            "telecom": [{"system": "phone", "value": "+46701234567", "use": "mobile"}],
            "gender": "male", "birthDate": "1912-12-12",
            "address": [{"use": "home", "city": "Stockholm"}],
            "contact": [{"name": {"family": "Tolvansson"},
                         "telecom": [{"system": "email", "value": "a@example.se"}]}]}


def organization() -> Json:
    return {"resourceType": "Organization", "id": "o1", "name": "Vårdcentralen",
            "identifier": [{"system": "urn:oid:1.2.752.29.4.19", "value": "SE2321000016-1234"}],
            "telecom": [{"system": "phone", "value": "08-123456", "use": "work"}]}


def appointment() -> Json:
    return {"resourceType": "Appointment", "id": "a1", "status": "booked",
            "start": "2024-03-01T10:00:00+01:00", "end": "2024-03-01T11:00:00+01:00",
            "participant": [{"actor": {"reference": "Patient/p1"}, "status": "accepted"}]}


def task() -> Json:
    return {"resourceType": "Task", "id": "t1", "status": "requested", "intent": "order",
            "authoredOn": "2024-03-01T10:00:00+01:00", "lastModified": "2024-03-01T10:00:00+01:00"}


def questionnaire_response() -> Json:
    return {"resourceType": "QuestionnaireResponse", "id": "q1", "status": "completed",
            "item": [{"linkId": "1", "item": [{"linkId": "1.1",
                                                "answer": [{"valueString": "Ja",
                                                            "item": [{"linkId": "1.1.1"}]}]}]}]}


def goal() -> Json:
    return {"resourceType": "Goal", "id": "g1", "lifecycleStatus": "active",
            "description": {"text": "Bo kvar hemma"}, "subject": {"reference": "Patient/p1"},
            "target": [{"measure": {"text": "Antal dagar"},
                        "detailQuantity": {"value": 5, "comparator": ">="}}]}


def bundle(btype: str = "collection") -> Json:
    return {"resourceType": "Bundle", "id": "b1", "type": btype,
            "entry": [{"fullUrl": "urn:uuid:8a0d6c4e-1b9b-4a0f-9b1e-0c2f8b1f7a10", "resource": patient()}]}


def message_bundle() -> Json:
    return {"resourceType": "Bundle", "id": "m1", "type": "message", "timestamp": "2024-03-01T10:00:00+01:00",
            "entry": [{"fullUrl": "urn:uuid:2f6b1a39-6f0e-4b4e-9c0a-55a1c9c0d5a1",
                       "resource": {"resourceType": "MessageHeader", "id": "h1",
                                    "eventCoding": {"system": "https://example.se/events", "code": "invite"},
                                    "source": {"endpoint": "https://hub.example.se"}}},
                      {"fullUrl": "urn:uuid:3f6b1a39-6f0e-4b4e-9c0a-55a1c9c0d5a2", "resource": careplan()}]}


def transaction_bundle() -> Json:
    return {"resourceType": "Bundle", "id": "tx1", "type": "transaction",
            "entry": [{"fullUrl": "urn:uuid:4f6b1a39-6f0e-4b4e-9c0a-55a1c9c0d5a3", "resource": careplan(),
                       "request": {"method": "POST", "url": "CarePlan"}}]}


def document() -> Json:
    composition = {"resourceType": "Composition", "id": "comp1", "status": "final",
                   "type": {"coding": [{"system": "http://loinc.org", "code": "18776-5"}]},
                   "date": "2024-03-01T10:00:00+01:00", "author": [{"reference": "Practitioner/pr1"}],
                   "title": "SIP"}
    return {"resourceType": "Bundle", "id": "d1", "type": "document",
            "identifier": {"system": "urn:ietf:rfc:3986", "value": "urn:uuid:6f6b1a39-6f0e-4b4e-9c0a-55a1c9c0d5a5"},
            "timestamp": "2024-03-01T10:00:00+01:00",
            "entry": [{"fullUrl": "urn:uuid:7f6b1a39-6f0e-4b4e-9c0a-55a1c9c0d5a6", "resource": composition},
                      {"fullUrl": "urn:uuid:8f6b1a39-6f0e-4b4e-9c0a-55a1c9c0d5a7", "resource": careplan()}]}


def audit_event() -> Json:
    return {"resourceType": "AuditEvent", "id": "ae1",
            "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
            "recorded": "2024-03-01T10:00:00+01:00",
            "agent": [{"who": {"reference": "Practitioner/pr1"}, "requestor": True}],
            "source": {"observer": {"reference": "Device/hub"}},
            "entity": [{"what": {"reference": "CarePlan/cp1"}, "name": "SIP"}]}


def with_contained() -> Json:
    """Contained resources both ways: referred to by the container, and referring to it ('#')."""
    plan = careplan()
    plan["contained"] = [
        {"resourceType": "Goal", "id": "goal1", "lifecycleStatus": "proposed",
         "description": {"text": "Delmål"}, "subject": {"reference": "Patient/p1"},
         "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Delmål</div>'}},
        {"resourceType": "Provenance", "id": "prov1", "target": [{"reference": "#"}],
         "recorded": "2024-03-01T10:00:00+01:00", "agent": [{"who": {"reference": "Practitioner/pr1"}}]},
    ]
    plan["goal"] = [{"reference": "#goal1"}]
    return plan


def primitive_pairs() -> Json:
    """Nulls as place holders in a primitive array paired with its _element array."""
    p = patient()
    p["name"][0]["given"] = ["Tolvan", None]
    p["name"][0]["_given"] = [None, {"extension": [{
        "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"}]}]
    p["_birthDate"] = {"extension": [{"url": "https://example.se/fhir/precision", "valueString": "exact"}]}
    return p


def period(start: str, end: str) -> Json:
    plan = careplan()
    plan["period"] = {"start": start, "end": end}
    return plan


# Partial precision: FHIRPath calls these "unknown", not false, so per-1 must not fire.
PERIODS_ACCEPTED = [
    ("2024-01-15", "2024-01"),
    ("2024", "2024-06-30"),
    ("2024-03-01T10:00:00+02:00", "2024-03-01T09:00:00Z"),  # 08:00Z <= 09:00Z
    ("2024-03-01", "2024-03-01T00:30:00+01:00"),  # no zone vs a zone: could be the same day
    ("2024-03-01T10:00:00.500Z", "2024-03-01T10:00:00.500Z"),
]

VALID: dict[str, Callable[[], Json]] = {
    "careplan": careplan, "careteam": careteam, "consent": consent, "patient": patient,
    "organization": organization, "appointment": appointment, "task": task,
    "questionnaire_response": questionnaire_response, "goal": goal, "bundle": bundle,
    "message_bundle": message_bundle, "transaction_bundle": transaction_bundle,
    "with_contained": with_contained, "primitive_pairs": primitive_pairs,
    "document": document, "audit_event": audit_event,
    **{f"period_{i}": functools.partial(period, s, e) for i, (s, e) in enumerate(PERIODS_ACCEPTED)},
}


def accepted_resources() -> list[tuple[str, Json]]:
    return ([(p.name, json.loads(p.read_text(encoding="utf-8"))) for p in sorted(EXAMPLES.glob("*.json"))]
            + [(name, make()) for name, make in VALID.items()])


# --- the official examples -------------------------------------------------------------------

def test_fixture_set_is_complete() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.json"))
    assert sum(n.startswith("CarePlan-") for n in names) == 11
    assert sum(n.startswith("CareTeam-") for n in names) == 1
    assert sum(n.startswith("Consent-") for n in names) == 12


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_official_examples_are_valid(path: Path) -> None:
    # All 24 official 4.0.1 examples keep every required binding and invariant checked here.
    resource = json.loads(path.read_text(encoding="utf-8"))
    models.validate(resource)
    assert issues(resource) == []


@pytest.mark.parametrize("name", sorted(VALID))
def test_crafted_valid_resources(name: str) -> None:
    resource = VALID[name]()
    models.validate(resource)
    assert issues(resource) == []


# --- the generated data ----------------------------------------------------------------------

@pytest.mark.parametrize(("path", "value_set", "code"), [
    ("CarePlan.status", "http://hl7.org/fhir/ValueSet/request-status", "revoked"),
    ("CarePlan.intent", "http://hl7.org/fhir/ValueSet/care-plan-intent", "option"),
    ("CarePlan.activity.detail.status", "http://hl7.org/fhir/ValueSet/care-plan-activity-status", "stopped"),
    ("Consent.provision.type", "http://hl7.org/fhir/ValueSet/consent-provision-type", "deny"),
    ("Bundle.entry.request.method", "http://hl7.org/fhir/ValueSet/http-verb", "PATCH"),
    ("Identifier.use", "http://hl7.org/fhir/ValueSet/identifier-use", "secondary"),
    ("HumanName.use", "http://hl7.org/fhir/ValueSet/name-use", "maiden"),
    ("ContactPoint.system", "http://hl7.org/fhir/ValueSet/contact-point-system", "sms"),
    ("Address.use", "http://hl7.org/fhir/ValueSet/address-use", "billing"),
    ("Narrative.status", "http://hl7.org/fhir/ValueSet/narrative-status", "empty"),
    ("Quantity.comparator", "http://hl7.org/fhir/ValueSet/quantity-comparator", ">="),
    ("Timing.repeat.periodUnit", "http://hl7.org/fhir/ValueSet/units-of-time", "wk"),
    ("Condition.clinicalStatus", "http://hl7.org/fhir/ValueSet/condition-clinical", "remission"),
])
def test_required_bindings_data(path: str, value_set: str, code: str) -> None:
    binding = validation.required_binding(path)
    assert binding is not None and binding.value_set == value_set and code in binding.codes


def test_external_terminologies_are_recorded_as_skipped() -> None:
    data = json.loads((DEFINITIONS / "required-bindings.json").read_text(encoding="utf-8"))
    assert data["fhirVersion"] == "4.0.1"
    assert data["skipped"]["Attachment.contentType"]["valueSet"] == "http://hl7.org/fhir/ValueSet/mimetypes"
    assert "urn:ietf:bcp:13" in data["skipped"]["Attachment.contentType"]["reason"]
    assert "Money.currency" in data["skipped"]
    assert validation.required_binding("Attachment.contentType") is None
    assert validation.required_binding("CarePlan.category") is None  # example binding only


def test_element_types_resolve_choices_and_content_references() -> None:
    types = json.loads((DEFINITIONS / "element-types.json").read_text(encoding="utf-8"))["types"]
    assert types["Questionnaire.item"]["item"] == "Questionnaire.item"
    assert types["QuestionnaireResponse.item.answer"]["item"] == "QuestionnaireResponse.item"
    assert types["Consent.provision"]["provision"] == "Consent.provision"
    assert "CodeableConcept" in types["Extension"]["value[x]"]
    assert types["CarePlan.activity"]["detail"] == "CarePlan.activity.detail"
    assert types["Bundle.entry"]["resource"] == "Resource"


# --- required bindings, wherever the element sits ---------------------------------------------

def _set(path: list[Any], value: Any) -> Callable[[Json], None]:
    def mutate(resource: Json) -> None:
        node = resource
        for step in path[:-1]:
            node = node[step]
        node[path[-1]] = value
    return mutate


BINDING_CASES: list[tuple[str, Callable[[], Json], Mutation, str, str]] = [
    ("careplan-status", careplan, _set(["status"], "bogus"), "CarePlan.status", "request-status"),
    ("careplan-intent", careplan, _set(["intent"], "wish"), "CarePlan.intent", "care-plan-intent"),
    ("activity-detail-status", careplan, _set(["activity", 0, "detail", "status"], "done"),
     "CarePlan.activity[0].detail.status", "care-plan-activity-status"),
    ("identifier-use", careplan, _set(["identifier"], [{"use": "primary", "value": "1"}]),
     "CarePlan.identifier[0].use", "identifier-use"),
    ("narrative-status", careplan,
     _set(["text"], {"status": "auto", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}),
     "CarePlan.text.status", "narrative-status"),
    ("timing-period-unit", careplan,
     _set(["activity", 0, "detail", "scheduledTiming"], {"repeat": {"period": 1, "periodUnit": "week"}}),
     "CarePlan.activity[0].detail.scheduledTiming.repeat.periodUnit", "units-of-time"),
    ("extension-value-datatype", careplan,
     _set(["extension"], [{"url": "https://example.se/fhir/contact", "valueContactPoint": {"system": "pigeon"}}]),
     "CarePlan.extension[0].valueContactPoint.system", "contact-point-system"),
    ("contained-goal", with_contained, _set(["contained", 0, "lifecycleStatus"], "someday"),
     "CarePlan.contained[0].lifecycleStatus", "goal-status"),
    ("telecom-system", patient, _set(["telecom", 0, "system"], "fax2"),
     "Patient.telecom[0].system", "contact-point-system"),
    ("contact-telecom-system", patient,
     _set(["contact", 0, "telecom"], [{"system": "email", "value": "a@b.se"}, {"system": "fax3", "value": "1"}]),
     "Patient.contact[0].telecom[1].system", "contact-point-system"),
    ("gender", patient, _set(["gender"], "M"), "Patient.gender", "administrative-gender"),
    ("name-use", patient, _set(["name", 0, "use"], "formal"), "Patient.name[0].use", "name-use"),
    ("address-use", patient, _set(["address", 0, "use"], "summer"), "Patient.address[0].use", "address-use"),
    ("consent-provision-type", consent, _set(["provision", "type"], "allow"),
     "Consent.provision.type", "consent-provision-type"),
    ("consent-nested-provision", consent, _set(["provision", "provision", 0, "type"], "maybe"),
     "Consent.provision.provision[0].type", "consent-provision-type"),
    ("quantity-comparator", goal, _set(["target", 0, "detailQuantity", "comparator"], "=>"),
     "Goal.target[0].detailQuantity.comparator", "quantity-comparator"),
    ("bundle-request-method", transaction_bundle, _set(["entry", 0, "request", "method"], "FETCH"),
     "Bundle.entry[0].request.method", "http-verb"),
    ("bundle-entry-resource", bundle, _set(["entry", 0, "resource", "gender"], "x"),
     "Bundle.entry[0].resource.gender", "administrative-gender"),
    ("questionnaire-nested-answer", questionnaire_response,
     _set(["item", 0, "item", 0, "answer", 0, "item", 0, "answer"], [{"valueQuantity": {"value": 1, "comparator": "~"}}]),
     "QuestionnaireResponse.item[0].item[0].answer[0].item[0].answer[0].valueQuantity.comparator",
     "quantity-comparator"),
    ("primitive-array", careplan,
     _set(["activity", 0, "detail", "scheduledTiming"], {"repeat": {"dayOfWeek": ["mon", "funday"]}}),
     "CarePlan.activity[0].detail.scheduledTiming.repeat.dayOfWeek[1]", "days-of-week"),
]


@pytest.mark.parametrize(("make", "mutate", "expression", "value_set"),
                         [c[1:] for c in BINDING_CASES], ids=[c[0] for c in BINDING_CASES])
def test_required_binding_violations(make: Callable[[], Json], mutate: Mutation,
                                     expression: str, value_set: str) -> None:
    resource = make()
    mutate(resource)
    models.validate(resource)  # structurally fine: only the binding is wrong
    found = issues(resource)
    assert [(i.code, i.expression) for i in found] == [("code-invalid", (expression,))]
    assert f"http://hl7.org/fhir/ValueSet/{value_set} for {expression}" in found[0].diagnostics


def test_binding_diagnostics() -> None:
    plan = careplan()
    plan["status"] = "bogus"
    (issue,) = issues(plan)
    assert issue.diagnostics == ("Value 'bogus' is not in the required value set "
                                 "http://hl7.org/fhir/ValueSet/request-status for CarePlan.status")


def test_codeable_concept_binding() -> None:
    cond: Json = {"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
                  "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                                 "code": "active"}]}}
    assert issues(cond) == []
    cond["clinicalStatus"]["coding"][0]["code"] = "sleeping"
    assert [(i.code, i.expression) for i in issues(cond)] == [("code-invalid", ("Condition.clinicalStatus",))]
    # the right code from another code system is not from the value set either
    cond["clinicalStatus"]["coding"] = [{"system": "https://example.se/status", "code": "active"}]
    assert [i.expression for i in issues(cond)] == [("Condition.clinicalStatus",)]
    cond["clinicalStatus"] = {"text": "active"}
    assert [i.expression for i in issues(cond)] == [("Condition.clinicalStatus",)]


# --- invariants ------------------------------------------------------------------------------

INVARIANT_CASES: list[tuple[str, Callable[[], Json], Mutation, str]] = [
    ("cpl-3", careplan, _set(["activity", 0, "reference"], {"reference": "Appointment/a1"}), "CarePlan.activity[0]"),
    ("ppc-1", consent, lambda r: r.pop("policyRule"), "Consent"),
    ("ppc-2", consent, lambda r: r.pop("patient"), "Consent"),
    ("ppc-3", consent, lambda r: (r.pop("patient"), _set(["scope", "coding", 0, "code"], "research")(r)), "Consent"),
    ("ppc-4", consent, lambda r: (r.pop("patient"), _set(["scope", "coding", 0, "code"], "adr")(r)), "Consent"),
    ("ppc-5", consent, lambda r: (r.pop("patient"), _set(["scope", "coding", 0, "code"], "treatment")(r)), "Consent"),
    ("ctm-1", careteam, _set(["participant", 0, "member"], {"reference": "Patient/p1"}), "CareTeam.participant[0]"),
    ("ctm-1", careteam, _set(["participant", 0, "member"], {"reference": "https://fhir.example.se/RelatedPerson/r1"}),
     "CareTeam.participant[0]"),
    ("pat-1", patient, _set(["contact", 0], {"gender": "female"}), "Patient.contact[0]"),
    ("org-1", organization, lambda r: (r.pop("name"), r.pop("identifier")), "Organization"),
    ("org-2", organization, _set(["address"], [{"use": "work", "city": "Lund"}, {"use": "home", "city": "Lund"}]),
     "Organization.address[1]"),
    ("org-3", organization, _set(["telecom", 0, "use"], "home"), "Organization.telecom[0]"),
    ("gol-1", goal, lambda r: r["target"][0].pop("measure"), "Goal.target[0]"),
    ("app-1", appointment, _set(["participant", 0], {"status": "accepted"}), "Appointment.participant[0]"),
    ("app-2", appointment, lambda r: r.pop("end"), "Appointment"),
    ("app-3", appointment, lambda r: (r.pop("start"), r.pop("end")), "Appointment"),
    ("app-4", appointment, _set(["cancelationReason"], {"text": "Sjuk"}), "Appointment"),
    ("inv-1", task, _set(["lastModified"], "2024-02-29T10:00:00+01:00"), "Task"),
    ("qrs-1", questionnaire_response, _set(["item", 0, "answer"], [{"valueBoolean": True}]),
     "QuestionnaireResponse.item[0]"),
    ("qrs-1", questionnaire_response,
     _set(["item", 0, "item", 0, "answer", 0, "item", 0], {"linkId": "x", "answer": [{"valueInteger": 1}],
                                                          "item": [{"linkId": "y"}]}),
     "QuestionnaireResponse.item[0].item[0].answer[0].item[0]"),
    ("per-1", careplan, _set(["period"], {"start": "2024-03-02", "end": "2024-03-01"}), "CarePlan.period"),
    ("per-1", careplan, _set(["period"], {"start": "2025", "end": "2024-12-31"}), "CarePlan.period"),
    ("per-1", careplan, _set(["period"], {"start": "2024-03-01T10:00:00Z", "end": "2024-03-01T09:59:59Z"}), "CarePlan.period"),
    ("per-1", careplan, _set(["period"], {"start": "2024-03-01T10:00:00+01:00", "end": "2024-03-01T08:00:00Z"}), "CarePlan.period"),
    ("ref-1", careplan, _set(["subject", "reference"], "#p1"), "CarePlan.subject.reference"),
    ("ref-1", with_contained, _set(["goal", 0, "reference"], "#goal2"), "CarePlan.goal[0].reference"),
    ("ext-1", careplan, _set(["extension"], [{"url": "https://example.se/x", "valueString": "a",
                                               "extension": [{"url": "b", "valueBoolean": True}]}]),
     "CarePlan.extension[0]"),
    ("ext-1", careplan, _set(["modifierExtension"], [{"url": "https://example.se/x"}]), "CarePlan.modifierExtension[0]"),
    ("ext-1", patient, _set(["_birthDate"], {"extension": [{"url": "https://example.se/x"}]}),
     "Patient.birthDate.extension[0]"),
    ("dom-2", with_contained, _set(["contained", 0, "contained"], [{"resourceType": "Patient", "id": "x"}]),
     "CarePlan.contained[0]"),
    ("dom-3", with_contained, lambda r: r.pop("goal"), "CarePlan.contained[0]"),
    ("dom-3", with_contained, _set(["contained", 1, "target", 0, "reference"], "CarePlan/cp1"), "CarePlan.contained[1]"),
    ("dom-4", with_contained, _set(["contained", 0, "meta"], {"versionId": "2"}), "CarePlan.contained[0]"),
    ("dom-4", with_contained, _set(["contained", 0, "meta"], {"lastUpdated": "2024-03-01T10:00:00Z"}),
     "CarePlan.contained[0]"),
    ("dom-5", with_contained,
     _set(["contained", 0, "meta"], {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                                   "code": "NOPATIENT"}]}),
     "CarePlan.contained[0]"),
    ("bdl-1", bundle, _set(["total"], 1), "Bundle"),
    ("bdl-2", bundle, _set(["entry", 0, "search"], {"mode": "match"}), "Bundle"),
    ("bdl-3", transaction_bundle, lambda r: r["entry"][0].pop("request"), "Bundle"),
    ("bdl-3", bundle, _set(["entry", 0, "request"], {"method": "GET", "url": "Patient/p1"}), "Bundle"),
    ("bdl-4", bundle, _set(["entry", 0, "response"], {"status": "200"}), "Bundle"),
    ("bdl-5", bundle, lambda r: r["entry"].append({"fullUrl": "urn:uuid:5f6b1a39-6f0e-4b4e-9c0a-55a1c9c0d5a4"}),
     "Bundle.entry[1]"),
    ("bdl-7", bundle, lambda r: r["entry"].append(copy.deepcopy(r["entry"][0])), "Bundle"),
    ("bdl-8", bundle, _set(["entry", 0, "fullUrl"], "https://fhir.example.se/Patient/p1/_history/2"),
     "Bundle.entry[0].fullUrl"),
    ("bdl-9", document, lambda r: r["identifier"].pop("value"), "Bundle"),
    ("bdl-10", document, lambda r: r.pop("timestamp"), "Bundle"),
    ("bdl-11", document, lambda r: r["entry"].reverse(), "Bundle"),
    ("bdl-12", message_bundle, lambda r: r["entry"].reverse(), "Bundle"),
    ("sev-1", audit_event, lambda r: r["entity"][0].update(query="cGF0aWVudD0x"), "AuditEvent.entity[0]"),
    ("cpt-2", patient, lambda r: r["telecom"][0].pop("system"), "Patient.telecom[0]"),
    ("qty-3", goal, _set(["target", 0, "detailQuantity", "code"], "d"), "Goal.target[0].detailQuantity"),
    ("att-1", careplan, _set(["extension"], [{"url": "https://example.se/x", "valueAttachment": {"data": "aGVq"}}]),
     "CarePlan.extension[0].valueAttachment"),
    ("rng-2", goal, lambda r: (r["target"][0].pop("detailQuantity"),
                               r["target"][0].update(detailRange={"low": {"value": 5}, "high": {"value": 2}})),
     "Goal.target[0].detailRange"),
    ("rat-1", goal, lambda r: (r["target"][0].pop("detailQuantity"),
                               r["target"][0].update(detailRatio={"numerator": {"value": 1}})),
     "Goal.target[0].detailRatio"),
    ("tim-1", careplan, _set(["activity", 0, "detail", "scheduledTiming"], {"repeat": {"duration": 1}}),
     "CarePlan.activity[0].detail.scheduledTiming.repeat"),
    ("tim-2", careplan, _set(["activity", 0, "detail", "scheduledTiming"], {"repeat": {"period": 1}}),
     "CarePlan.activity[0].detail.scheduledTiming.repeat"),
    ("tim-9", careplan, _set(["activity", 0, "detail", "scheduledTiming"], {"repeat": {"offset": 30, "when": ["C"]}}),
     "CarePlan.activity[0].detail.scheduledTiming.repeat"),
    ("tim-10", careplan,
     _set(["activity", 0, "detail", "scheduledTiming"], {"repeat": {"timeOfDay": ["08:00:00"], "when": ["MORN"]}}),
     "CarePlan.activity[0].detail.scheduledTiming.repeat"),
    ("drt-1", careplan,
     _set(["activity", 0, "detail", "scheduledTiming"],
          {"repeat": {"boundsDuration": {"value": 2, "code": "wk", "system": "https://example.se/units"}}}),
     "CarePlan.activity[0].detail.scheduledTiming.repeat.boundsDuration"),
]




@pytest.mark.parametrize(("key", "make", "mutate", "expression"), INVARIANT_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(INVARIANT_CASES)])
def test_invariant_violations(key: str, make: Callable[[], Json], mutate: Mutation,
                              expression: str) -> None:
    resource = make()
    assert keyed(issues(resource), key) == []
    mutate(resource)
    assert_issue(resource, key, expression)


def test_invariant_diagnostics_use_official_text() -> None:
    plan = careplan()
    plan["activity"][0]["reference"] = {"reference": "Appointment/a1"}
    (issue,) = issues(plan)
    assert issue.diagnostics == "cpl-3: Provide a reference or detail, not both"


@pytest.mark.parametrize("member", [
    {"reference": "Practitioner/pr1"},
    {"reference": "https://fhir.example.se/fhir/Practitioner/pr1/_history/3"},
    {"type": "Practitioner", "identifier": {"system": "urn:oid:1.2.752.29.4.19", "value": "SE1"}},
    {"identifier": {"system": "urn:oid:1.2.752.29.4.19", "value": "SE1"}},  # unresolvable: passes
])
def test_ctm_1_accepts_practitioners_and_unknown_members(member: Json) -> None:
    team = careteam()
    team["participant"][0]["member"] = member
    assert issues(team) == []


def test_ctm_1_resolves_contained_members() -> None:
    team = careteam()
    team["contained"] = [{"resourceType": "Practitioner", "id": "pr", "name": [{"family": "Läkare"}]}]
    team["participant"][0]["member"] = {"reference": "#pr"}
    assert issues(team) == []
    team["contained"][0] = {"resourceType": "Patient", "id": "pr"}
    assert_issue(team, "ctm-1", "CareTeam.participant[0]")


def test_ppc_ignores_scopes_from_other_systems() -> None:
    # The 4.0.1 expression's system='something' is a placeholder; the consentscope codes apply.
    c = consent()
    del c["patient"]
    c["scope"]["coding"][0]["system"] = "https://example.se/scope"
    assert keyed(issues(c), "ppc-2") == []


def test_contained_resources_share_the_containers_references() -> None:
    plan = with_contained()
    # The Provenance refers to the Goal: that also counts as "referred to from elsewhere".
    plan.pop("goal")
    plan["contained"][1]["entity"] = [{"role": "source", "what": {"reference": "#goal1"}}]
    assert issues(plan) == []


def test_each_bundle_entry_is_its_own_resource() -> None:
    b = bundle()
    b["entry"].append({"fullUrl": "urn:uuid:9f6b1a39-6f0e-4b4e-9c0a-55a1c9c0d5a8", "resource": with_contained()})
    assert issues(b) == []
    # a local reference resolves within its own entry only
    b["entry"][0]["resource"]["managingOrganization"] = {"reference": "#goal1"}
    assert_issue(b, "ref-1", "Bundle.entry[0].resource.managingOrganization.reference")


# --- ele-1: empty elements -------------------------------------------------------------------

EMPTY_CASES: list[tuple[str, Callable[[], Json], Mutation, str]] = [
    ("empty-object", careplan, _set(["subject"], {}), "CarePlan.subject"),
    ("empty-object-in-array", careplan, _set(["note"], [{}]), "CarePlan.note[0]"),
    ("nested-empty-object", patient, _set(["identifier", 0, "period"], {}), "Patient.identifier[0].period"),
    ("empty-array", careplan, _set(["category"], []), "CarePlan.category"),
    ("empty-nested-array", patient, _set(["name", 0, "given"], []), "Patient.name[0].given"),
    ("empty-string", careplan, _set(["title"], ""), "CarePlan.title"),
    ("whitespace-string", careplan, _set(["description"], " \t\n"), "CarePlan.description"),
    ("whitespace-in-array", patient, _set(["name", 0, "given"], ["Tolvan", "  "]), "Patient.name[0].given[1]"),
    ("whitespace-code", careplan, _set(["status"], " "), "CarePlan.status"),
    ("null-element", careplan, _set(["title"], None), "CarePlan.title"),
    ("null-object", careplan, _set(["period"], None), "CarePlan.period"),
    ("null-in-object-array", careplan, _set(["note"], [None]), "CarePlan.note[0]"),
    ("unpaired-null", patient, _set(["name", 0, "given"], ["Tolvan", None]), "Patient.name[0].given[1]"),
    ("null-in-both-arrays", primitive_pairs, _set(["name", 0, "_given"], [None, None]), "Patient.name[0].given[1]"),
    ("empty-extension-sibling", patient, _set(["_birthDate"], {}), "Patient.birthDate"),
    ("only-id", careplan, _set(["period"], {"id": "p"}), "CarePlan.period"),
    ("contained-empty", with_contained, _set(["contained", 0, "description", "text"], ""),
     "CarePlan.contained[0].description.text"),
    ("entry-resource-empty", bundle, _set(["entry", 0, "resource", "address"], [{}]),
     "Bundle.entry[0].resource.address[0]"),
]


@pytest.mark.parametrize(("make", "mutate", "expression"), [c[1:] for c in EMPTY_CASES],
                         ids=[c[0] for c in EMPTY_CASES])
def test_empty_elements(make: Callable[[], Json], mutate: Mutation, expression: str) -> None:
    resource = make()
    mutate(resource)
    found = issues(resource)
    assert [(i.code, i.expression, i.severity) for i in found] == [("structure", (expression,), "error")]
    assert found[0].diagnostics.startswith("ele-1: All FHIR elements must have a @value or children")


def test_parallel_arrays_must_line_up() -> None:
    p = primitive_pairs()
    p["name"][0]["_given"].append({"extension": [{"url": "https://example.se/x", "valueString": "y"}]})
    found = issues(p)
    assert [(i.code, i.expression) for i in found] == [("structure", ("Patient.name[0].given",))]
    assert "same length" in found[0].diagnostics


def test_all_problems_are_reported_at_once() -> None:
    plan = careplan()
    plan.update(status="bogus", title="", category=[],
                activity=[{"reference": {"reference": "#nowhere"}, "detail": {"status": "x"}}])
    found = issues(plan)
    assert sorted(i.diagnostics.split(":")[0] for i in found if i.code != "code-invalid") == [
        "cpl-3", "ele-1", "ele-1", "ref-1"]
    assert {i.expression[0] for i in found if i.code == "code-invalid"} == {
        "CarePlan.status", "CarePlan.activity[0].detail.status"}


@pytest.mark.parametrize("resource", [
    None, [], {"resourceType": "NoSuchType"}, {"status": "active"},
    {"resourceType": "CarePlan", "status": 5, "activity": "x", "subject": ["a"], "unknown": {}},
    {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"status": "x"}}, "junk"]},
])
def test_structurally_broken_input_does_not_crash(resource: Any) -> None:
    validation.check(resource, IssueCollector())  # models.validate is the one to report these


@pytest.mark.parametrize("inner, diagnostics", [
    ("Nope", "Unknown resourceType 'Nope'"),
    (5, "resourceType must be a string naming a resource type"),
    (None, "resourceType must be a string naming a resource type"),
    (["Patient"], "resourceType must be a string naming a resource type"),
])
def test_a_resource_inside_another_of_no_known_type_is_named(inner: Any,
                                                             diagnostics: str) -> None:
    """A Bundle entry's or a contained resource whose resourceType names no resource type is
    refused at its resourceType, each one, not with the library's failed lookup."""
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {"resourceType": "Patient", "id": "p1"}},
        {"resource": {"resourceType": inner, "id": "x"}}]}
    plan = {"resourceType": "CarePlan", "status": "draft", "intent": "plan",
            "subject": {"reference": "Patient/p1"},
            "contained": [{"resourceType": inner, "id": "a"}, {"resourceType": "Nope2"}]}
    with pytest.raises(Unprocessable) as bundle_err:
        models.validate(bundle)
    with pytest.raises(Unprocessable) as plan_err:
        models.validate(plan)
    assert [(i.diagnostics, i.expression) for i in bundle_err.value.issues] == [
        (diagnostics, ("Bundle.entry[1].resource.resourceType",))]
    assert str(bundle_err.value) == (f"Bundle is not valid FHIR R4: {diagnostics} at "
                                     "Bundle.entry[1].resource.resourceType")
    assert [(i.diagnostics, i.expression) for i in plan_err.value.issues] == [
        (diagnostics, ("CarePlan.contained[0].resourceType",)),
        ("Unknown resourceType 'Nope2'", ("CarePlan.contained[1].resourceType",))]


def _positions(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _positions(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _positions(v, (*path, i))
    return out


_GPVISIT = json.loads((EXAMPLES / "CarePlan-gpvisit.json").read_text(encoding="utf-8"))
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5)
    | st.sampled_from(["#", "#p1", "Patient/1", "2024-01", "home", "value", "_x"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "reference", "status", "start", "end", "value", "code", "extension",
                         "url", "resourceType", "contained", "_status", "detail", "system"]),
        inner, max_size=3),
    max_leaves=8)


@settings(max_examples=300, deadline=None, database=None)
@given(where=st.sampled_from(_positions(_GPVISIT)), value=_JSON_VALUES)
def test_any_value_anywhere_does_not_crash(where: tuple[Any, ...], value: Any) -> None:
    resource = copy.deepcopy(_GPVISIT)
    node = resource
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = value
    validation.check(resource, IssueCollector())


# --- cross-check with validators written by others ----------------------------------------------

@pytest.mark.node
def test_independent_validator_accepts_what_check_accepts(tmp_path: Path, fhir_validator) -> None:
    files = []
    for name, resource in accepted_resources():
        models.validate(resource)
        assert issues(resource) == [], name
        path = tmp_path / (name if name.endswith(".json") else f"{name}.json")
        path.write_text(json.dumps(resource, ensure_ascii=False), encoding="utf-8")
        files.append(str(path))
    run = fhir_validator.validate(*files)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"validated {len(files) + _bundled_entries()} resources, 0 problems" in run.stdout

    # and the tool is really checking: a binding error and cpl-3 that check finds, it finds too
    bad = careplan()
    bad["status"] = "bogus"
    bad["activity"][0]["reference"] = {"reference": "Appointment/a1"}
    assert {i.diagnostics.split(":")[0] for i in issues(bad) if i.code == "invariant"} == {"cpl-3"}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad), encoding="utf-8")
    run = fhir_validator.validate(path)
    assert run.returncode == 1 and "cpl-3" in run.stdout and "bogus" in run.stdout, run.stdout


def _bundled_entries() -> int:
    """validate.js also checks each Bundle entry on its own."""
    return sum(len(r.get("entry", [])) for _, r in accepted_resources() if r.get("resourceType") == "Bundle")
