"""The search parameters sip_hub supports, as data, with compiled extraction paths.

Extraction must be cheap (it runs in every write), so each parameter is a list of plain key
paths walked over the JSON, not FHIRPath evaluated per write. ``expression`` is the FHIRPath
the path implements, for the CapabilityStatement.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

ParamType = Literal["token", "reference", "date", "string", "uri"]


@dataclass(frozen=True, slots=True)
class SearchParam:
    resource: str
    name: str
    type: ParamType
    expression: str
    paths: tuple[tuple[str, ...], ...]
    # reference parameters: the target types this parameter may point at
    targets: tuple[str, ...] = ()
    documentation: str = ""

    def values(self, resource: dict[str, Any]) -> list[Any]:
        """The values at the parameter's paths, lists flattened (FHIR JSON never nests
        arrays directly), breadth first: a loop, not a recursive generator, as it runs for
        every parameter of every write."""
        out: list[Any] = []
        for path in self.paths:
            nodes: list[Any] = [resource]
            for key in path:
                found: list[Any] = []
                for node in nodes:
                    if isinstance(node, dict):
                        child = node.get(key)
                        if isinstance(child, list):
                            found.extend(c for c in child if c is not None)
                        elif child is not None:
                            found.append(child)
                nodes = found
                if not nodes:
                    break
            out.extend(nodes)
        return out


def _p(*dotted: str) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(d.split(".")) for d in dotted)


@dataclass(slots=True)
class _Registry:
    by_resource: dict[str, dict[str, SearchParam]] = field(default_factory=dict)

    def add(self, resource: str, name: str, type_: ParamType, expression: str,
            *paths: str, targets: tuple[str, ...] = (), doc: str = "") -> None:
        self.by_resource.setdefault(resource, {})[name] = SearchParam(
            resource, name, type_, expression, _p(*paths), targets, doc)


_r = _Registry()
_PATIENT = ("Patient",)
_ACTORS = ("Organization", "Practitioner", "PractitionerRole", "RelatedPerson", "Patient",
           "CareTeam")

# Common to every resource type (meta-based); _id and _lastUpdated are columns, not indexes.
COMMON = ("_profile", "_tag", "_security")


def _common(resource: str) -> None:
    _r.add(resource, "_profile", "uri", f"{resource}.meta.profile", "meta.profile")
    _r.add(resource, "_tag", "token", f"{resource}.meta.tag", "meta.tag")
    _r.add(resource, "_security", "token", f"{resource}.meta.security", "meta.security")


# CarePlan: the parameters of IHE Dynamic Care Planning.
_r.add("CarePlan", "patient", "reference", "CarePlan.subject.where(resolve() is Patient)",
       "subject", targets=_PATIENT, doc="The patient the plan is for")
_r.add("CarePlan", "subject", "reference", "CarePlan.subject", "subject",
       targets=("Patient", "Group"))
_r.add("CarePlan", "status", "token", "CarePlan.status", "status")
_r.add("CarePlan", "category", "token", "CarePlan.category", "category")
_r.add("CarePlan", "date", "date", "CarePlan.period", "period")
_r.add("CarePlan", "intent", "token", "CarePlan.intent", "intent")
_r.add("CarePlan", "care-team", "reference", "CarePlan.careTeam", "careTeam",
       targets=("CareTeam",))
_r.add("CarePlan", "goal", "reference", "CarePlan.goal", "goal", targets=("Goal",))
_r.add("CarePlan", "activity-code", "token", "CarePlan.activity.detail.code",
       "activity.detail.code")
_r.add("CarePlan", "performer", "reference", "CarePlan.activity.detail.performer",
       "activity.detail.performer", targets=_ACTORS)
_r.add("CarePlan", "identifier", "token", "CarePlan.identifier", "identifier")
_r.add("CarePlan", "author", "reference", "CarePlan.author", "author", targets=_ACTORS)
_r.add("CarePlan", "replaces", "reference", "CarePlan.replaces", "replaces",
       targets=("CarePlan",), doc="The plan a proposed revision (intent proposal) replaces")

_r.add("CareTeam", "patient", "reference", "CareTeam.subject.where(resolve() is Patient)",
       "subject", targets=_PATIENT)
_r.add("CareTeam", "subject", "reference", "CareTeam.subject", "subject",
       targets=("Patient", "Group"))
_r.add("CareTeam", "participant", "reference", "CareTeam.participant.member",
       "participant.member", targets=_ACTORS)
_r.add("CareTeam", "status", "token", "CareTeam.status", "status")
_r.add("CareTeam", "category", "token", "CareTeam.category", "category")
_r.add("CareTeam", "date", "date", "CareTeam.period", "period")
_r.add("CareTeam", "identifier", "token", "CareTeam.identifier", "identifier")

_r.add("Consent", "patient", "reference", "Consent.patient", "patient", targets=_PATIENT)
_r.add("Consent", "status", "token", "Consent.status", "status")
_r.add("Consent", "actor", "reference", "Consent.provision.actor.reference",
       "provision.actor.reference", targets=_ACTORS)
_r.add("Consent", "category", "token", "Consent.category", "category")
_r.add("Consent", "date", "date", "Consent.dateTime", "dateTime")
_r.add("Consent", "period", "date", "Consent.provision.period", "provision.period")
_r.add("Consent", "scope", "token", "Consent.scope", "scope")
_r.add("Consent", "identifier", "token", "Consent.identifier", "identifier")

_r.add("Patient", "identifier", "token", "Patient.identifier", "identifier")
_r.add("Patient", "name", "string", "Patient.name", "name.text", "name.family", "name.given",
       "name.prefix", "name.suffix")
_r.add("Patient", "family", "string", "Patient.name.family", "name.family")
_r.add("Patient", "given", "string", "Patient.name.given", "name.given")
_r.add("Patient", "birthdate", "date", "Patient.birthDate", "birthDate")
_r.add("Patient", "gender", "token", "Patient.gender", "gender")

_r.add("Organization", "identifier", "token", "Organization.identifier", "identifier")
_r.add("Organization", "name", "string", "Organization.name | Organization.alias", "name",
       "alias")
_r.add("Organization", "type", "token", "Organization.type", "type")
_r.add("Organization", "partof", "reference", "Organization.partOf", "partOf",
       targets=("Organization",))

_r.add("Goal", "patient", "reference", "Goal.subject.where(resolve() is Patient)", "subject",
       targets=_PATIENT)
_r.add("Goal", "subject", "reference", "Goal.subject", "subject",
       targets=("Patient", "Group", "Organization"))
_r.add("Goal", "lifecycle-status", "token", "Goal.lifecycleStatus", "lifecycleStatus")
_r.add("Goal", "category", "token", "Goal.category", "category")
_r.add("Goal", "identifier", "token", "Goal.identifier", "identifier")

_r.add("Appointment", "patient", "reference",
       "Appointment.participant.actor.where(resolve() is Patient)", "participant.actor",
       targets=_PATIENT)
_r.add("Appointment", "actor", "reference", "Appointment.participant.actor",
       "participant.actor", targets=_ACTORS + ("Location", "HealthcareService", "Device"))
_r.add("Appointment", "status", "token", "Appointment.status", "status")
_r.add("Appointment", "date", "date", "Appointment.start", "start")
_r.add("Appointment", "identifier", "token", "Appointment.identifier", "identifier")
_r.add("Appointment", "based-on", "reference", "Appointment.basedOn", "basedOn",
       targets=("CarePlan", "ServiceRequest"))
_r.add("Appointment", "supporting-info", "reference", "Appointment.supportingInformation",
       "supportingInformation", targets=("CarePlan",),
       doc="The SIP plan a SIP meeting (SIP-möte) is held for")

_r.add("Task", "patient", "reference", "Task.for.where(resolve() is Patient)", "for",
       targets=_PATIENT)
_r.add("Task", "subject", "reference", "Task.for", "for", targets=_PATIENT)
_r.add("Task", "status", "token", "Task.status", "status")
_r.add("Task", "code", "token", "Task.code", "code")
_r.add("Task", "owner", "reference", "Task.owner", "owner", targets=_ACTORS)
_r.add("Task", "requester", "reference", "Task.requester", "requester", targets=_ACTORS)
# (R4: Task.focus is a Reference(Any), and its parameter targets any type: a Task on a Patient
# or an Organization was stored unindexed and its search a 400 "cannot refer to Patient")
_r.add("Task", "focus", "reference", "Task.focus", "focus")
_r.add("Task", "based-on", "reference", "Task.basedOn", "basedOn", targets=("CarePlan",))
_r.add("Task", "identifier", "token", "Task.identifier", "identifier")
_r.add("Task", "authored-on", "date", "Task.authoredOn", "authoredOn")
_r.add("Task", "period", "date", "Task.executionPeriod", "executionPeriod")
_r.add("Task", "business-status", "token", "Task.businessStatus", "businessStatus")

_r.add("QuestionnaireResponse", "patient", "reference",
       "QuestionnaireResponse.subject.where(resolve() is Patient)", "subject",
       targets=_PATIENT)
_r.add("QuestionnaireResponse", "subject", "reference", "QuestionnaireResponse.subject",
       "subject", targets=_PATIENT)
_r.add("QuestionnaireResponse", "status", "token", "QuestionnaireResponse.status", "status")
_r.add("QuestionnaireResponse", "questionnaire", "uri", "QuestionnaireResponse.questionnaire",
       "questionnaire")
_r.add("QuestionnaireResponse", "author", "reference", "QuestionnaireResponse.author",
       "author", targets=_ACTORS)
_r.add("QuestionnaireResponse", "authored", "date", "QuestionnaireResponse.authored",
       "authored")
_r.add("QuestionnaireResponse", "based-on", "reference", "QuestionnaireResponse.basedOn",
       "basedOn", targets=("CarePlan", "ServiceRequest"))

_r.add("Provenance", "target", "reference", "Provenance.target", "target",
       targets=("CarePlan", "Consent", "CareTeam", "Goal", "Appointment", "Task",
                "QuestionnaireResponse", "Patient"))
_r.add("Provenance", "patient", "reference", "Provenance.target.where(resolve() is Patient)",
       "target", targets=_PATIENT,
       doc="The patient it targets, the patient of a resource it targets (a SIP plan's "
           "subject) and the patients among its agents (who approved the plan)")
_r.add("Provenance", "agent", "reference", "Provenance.agent.who", "agent.who",
       targets=_ACTORS)
_r.add("Provenance", "recorded", "date", "Provenance.recorded", "recorded")

_r.add("AuditEvent", "date", "date", "AuditEvent.recorded", "recorded")
_r.add("AuditEvent", "patient", "reference",
       "AuditEvent.entity.what.where(resolve() is Patient)", "entity.what", targets=_PATIENT)
_r.add("AuditEvent", "entity", "reference", "AuditEvent.entity.what", "entity.what")
_r.add("AuditEvent", "agent", "reference", "AuditEvent.agent.who", "agent.who",
       targets=_ACTORS)
_r.add("AuditEvent", "action", "token", "AuditEvent.action", "action")
_r.add("AuditEvent", "type", "token", "AuditEvent.type", "type")
_r.add("AuditEvent", "subtype", "token", "AuditEvent.subtype", "subtype")
_r.add("AuditEvent", "outcome", "token", "AuditEvent.outcome", "outcome")

_r.add("Practitioner", "identifier", "token", "Practitioner.identifier", "identifier")
_r.add("Practitioner", "name", "string", "Practitioner.name", "name.text", "name.family",
       "name.given")
_r.add("PractitionerRole", "identifier", "token", "PractitionerRole.identifier", "identifier")
_r.add("PractitionerRole", "practitioner", "reference", "PractitionerRole.practitioner",
       "practitioner", targets=("Practitioner",))
_r.add("PractitionerRole", "organization", "reference", "PractitionerRole.organization",
       "organization", targets=("Organization",))
_r.add("PractitionerRole", "role", "token", "PractitionerRole.code", "code")
_r.add("RelatedPerson", "identifier", "token", "RelatedPerson.identifier", "identifier")
_r.add("RelatedPerson", "patient", "reference", "RelatedPerson.patient", "patient",
       targets=_PATIENT)
_r.add("RelatedPerson", "name", "string", "RelatedPerson.name", "name.text", "name.family",
       "name.given")
_r.add("RelatedPerson", "relationship", "token", "RelatedPerson.relationship", "relationship")

# Canonical resources: their url and version identify them (``url=<canonical>|<version>``).
CANONICAL_TYPES = ("StructureDefinition", "CodeSystem", "ValueSet", "ConceptMap",
                   "Questionnaire", "OperationDefinition", "MessageDefinition")
for _conf in CANONICAL_TYPES:
    _r.add(_conf, "url", "uri", f"{_conf}.url", "url",
           doc="The canonical URL; <url>|<version> finds the resource of that version")
    _r.add(_conf, "name", "string", f"{_conf}.name", "name")
    _r.add(_conf, "status", "token", f"{_conf}.status", "status")
    _r.add(_conf, "version", "token", f"{_conf}.version", "version")
_r.add("StructureDefinition", "type", "token", "StructureDefinition.type", "type")
_r.add("MessageDefinition", "event", "token", "MessageDefinition.event", "eventCoding")

for _res in list(_r.by_resource):
    _common(_res)

# Types the hub stores, and which of them are read-only through the REST API because the hub
# publishes them itself (its own conformance resources).
RESOURCE_TYPES: tuple[str, ...] = tuple(sorted(_r.by_resource))
READ_ONLY_TYPES = frozenset({"StructureDefinition", "CodeSystem", "ValueSet", "ConceptMap",
                             "Questionnaire", "OperationDefinition", "MessageDefinition"})


def params_for(resource_type: str) -> dict[str, SearchParam]:
    return _r.by_resource.get(resource_type, {})


def supported(resource_type: str) -> bool:
    return resource_type in _r.by_resource
