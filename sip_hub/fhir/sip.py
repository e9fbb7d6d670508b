"""Canonical URLs and fixed codes of the SIP information model.

Everything sip_hub publishes lives under ``CANONICAL``; the conformance resources themselves are
the JSON files in ``definitions/`` (loaded by ``profiles.definitions()``). Code lists (life
areas, participant roles, ...) are deliberately not repeated here: the CodeSystems and
ValueSets in ``definitions/`` are their one source, so the published model and the enforcement
cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone, tzinfo
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .dates import MAX_US, MIN_US, from_us, parse_range, parse_zoned, to_us

CANONICAL: Final = "https://sip-hub.se/fhir"
VERSION: Final = "0.1.0"

_SD: Final = f"{CANONICAL}/StructureDefinition"
_CS: Final = f"{CANONICAL}/CodeSystem"
_VS: Final = f"{CANONICAL}/ValueSet"

try:
    LOCAL: tzinfo = ZoneInfo("Europe/Stockholm")
except ZoneInfoNotFoundError:  # a system without a time zone database: standard time
    LOCAL = timezone(timedelta(hours=1))
"""The SIP's time zone: its dates (an approval, a follow-up, a consent's end) are Swedish
days."""

# Profiles
PROFILE_CAREPLAN: Final = f"{_SD}/sip-careplan"
PROFILE_CONSENT: Final = f"{_SD}/sip-consent"
PROFILE_CARETEAM: Final = f"{_SD}/sip-careteam"
PROFILE_GOAL: Final = f"{_SD}/sip-goal"
PROFILE_KARTLAGGNING: Final = f"{_SD}/sip-kartlaggning"

PROFILE_BY_TYPE: Final = {
    "CarePlan": PROFILE_CAREPLAN,
    "Consent": PROFILE_CONSENT,
    "CareTeam": PROFILE_CARETEAM,
    "Goal": PROFILE_GOAL,
    "QuestionnaireResponse": PROFILE_KARTLAGGNING,
}
TYPE_BY_PROFILE: Final = {url: rtype for rtype, url in PROFILE_BY_TYPE.items()}

# Extensions
EXT_NEEDS: Final = f"{_SD}/sip-needs"                       # CarePlan, valueMarkdown
EXT_PRINCIPAL: Final = f"{_SD}/sip-principal"               # CarePlan, valueCode
EXT_COORDINATION: Final = f"{_SD}/sip-coordination"         # CarePlan, valueMarkdown
EXT_FOLLOW_UP: Final = f"{_SD}/sip-follow-up"               # CarePlan, valueDateTime
EXT_RESPONSIBLE_PARTY: Final = f"{_SD}/sip-responsible-party"  # activity.detail, valueCode
EXT_PARENT_GOAL: Final = f"{_SD}/sip-parent-goal"           # Goal, valueReference(Goal)
EXT_PHASE: Final = f"{_SD}/sip-phase"                       # CarePlan, valueCode
EXT_MEETING_WISHES: Final = f"{_SD}/sip-meeting-wishes"     # Appointment, complex
EXT_INVITED_ORGANIZATION: Final = f"{_SD}/sip-invited-organization"
"""Appointment.participant, valueReference(Organization): the invited organisation a
participant represents (its representative, once appointed, is the actor)."""

# Code systems and value sets of ours
CS_LIFE_AREA: Final = f"{_CS}/sip-life-area"
CS_PARTY_TYPE: Final = f"{_CS}/sip-party-type"
CS_PARTICIPANT_ROLE: Final = f"{_CS}/sip-participant-role"
CS_CONSENT_CATEGORY: Final = f"{_CS}/sip-consent-category"
CS_CARETEAM_CATEGORY: Final = f"{_CS}/sip-careteam-category"
CS_PHASE: Final = f"{_CS}/sip-phase"
CS_TASK: Final = f"{_CS}/sip-task"
CS_TASK_PARAMETER: Final = f"{_CS}/sip-task-parameter"
CS_MEETING_SUPPORT: Final = f"{_CS}/sip-meeting-support"

VS_LIFE_AREA: Final = f"{_VS}/sip-life-area"
VS_PRINCIPAL: Final = f"{_VS}/sip-principal"
VS_PARTY_TYPE: Final = f"{_VS}/sip-party-type"
VS_PARTICIPANT_ROLE: Final = f"{_VS}/sip-participant-role"
VS_PHASE: Final = f"{_VS}/sip-phase"
VS_MEETING_SUPPORT: Final = f"{_VS}/sip-meeting-support"

QUESTIONNAIRE_KARTLAGGNING: Final = f"{CANONICAL}/Questionnaire/sip-kartlaggning"
CONCEPTMAP_LIFE_AREA_TO_ICF: Final = f"{CANONICAL}/ConceptMap/sip-life-area-to-icf"

# External code systems
TYPE_OF_CAREPLAN: Final = "https://fhir.inera.se/CodeSystem/typeofcareplan-cs"
ACT_CODE: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PROVENANCE_AGENT: Final = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
PARTICIPATION_TYPE: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
CONSENT_SCOPE: Final = "http://terminology.hl7.org/CodeSystem/consentscope"
LOINC: Final = "http://loinc.org"
# R4's terminology page lists ICF as http://hl7.org/fhir/sid/icf-nl; HL7 Terminology (THO)
# later defined http://hl7.org/fhir/sid/icf for the same OID (2.16.840.1.113883.6.254) and
# that is what current IGs use, so we emit it.
ICF: Final = "http://hl7.org/fhir/sid/icf"

# Participant roles (codes of CS_PARTICIPANT_ROLE) that the enforcement refers to by name.
ROLE_INDIVIDUAL: Final = "individual"
ROLE_COORDINATOR: Final = "coordinator"
ROLE_ORGANISATION_REPRESENTATIVE: Final = "organisation-representative"

ESTABLISHED_STATUSES: Final = frozenset({"active", "on-hold", "completed"})
"""CarePlan statuses in which the plan counts as upprättad and must carry all required content."""

# The CarePlan statuses each phase (codes of CS_PHASE) allows (sip-cp-13). The process
# (sip_hub.process) moves between phases; this table is the static rule every write keeps.
PHASE_STATUSES: Final[dict[str, frozenset[str]]] = {
    "behov-uppmarksammat": frozenset({"draft"}),
    "kartlaggning": frozenset({"draft"}),
    "kallelse": frozenset({"draft"}),
    "mote": frozenset({"draft"}),
    "upprattad": frozenset({"active", "on-hold"}),
    "uppfoljning": frozenset({"active", "on-hold"}),
    "avslutad": frozenset({"completed", "revoked"}),
}


@dataclass(frozen=True, slots=True)
class Code:
    """One fixed Coding: the markers and fixed values the profiles pin."""

    system: str
    code: str
    display: str | None = None

    def coding(self) -> dict[str, Any]:
        out = {"system": self.system, "code": self.code}
        if self.display is not None:
            out["display"] = self.display
        return out

    def concept(self) -> dict[str, Any]:
        return {"coding": [self.coding()]}

    def matches(self, coding: object) -> bool:
        return (isinstance(coding, dict) and coding.get("system") == self.system
                and coding.get("code") == self.code)

    def in_concept(self, concept: object) -> bool:
        """True when a CodeableConcept carries this code among its codings."""
        if not isinstance(concept, dict):
            return False
        codings = concept.get("coding")
        return isinstance(codings, list) and any(self.matches(c) for c in codings)

    def __str__(self) -> str:
        return f"{self.system}#{self.code}"


SIP_CAREPLAN_TYPE: Final = Code(TYPE_OF_CAREPLAN, "SIP", "Samordnad individuell plan")
SIP_CONSENT_CATEGORY: Final = Code(CS_CONSENT_CATEGORY, "sip",
                                   "Samtycke till samordnad individuell plan")
SIP_CARETEAM_CATEGORY: Final = Code(CS_CARETEAM_CATEGORY, "sip",
                                    "Deltagare i samordnad individuell plan")
PRIVACY_CONSENT: Final = Code(LOINC, "59284-0", "Patient Consent")
PATIENT_PRIVACY: Final = Code(CONSENT_SCOPE, "patient-privacy", "Privacy Consent")
OPTIN: Final = Code(ACT_CODE, "OPTIN", "opt-in")
IRCP: Final = Code(PARTICIPATION_TYPE, "IRCP", "information recipient")
# No display: the code comes from Inera's 1177 mapping and is not in the v3-ActCode release
# that R4 ships, so we do not claim a display text for it.
NOPATIENT: Final = Code(ACT_CODE, "NOPATIENT")
"""``meta.security`` label: not to be shown to the citizen on 1177 (Inera's mapping)."""


def swedish_range(value: str) -> tuple[int, int]:
    """The [low, high] range in UTC microseconds a FHIR date or dateTime covers in the SIP:
    a date without a time (a day, month or year) from Swedish midnight of its first day to
    Swedish midnight after its last, as the people who wrote it mean it (a consent that ends
    "today" ends when today is over in Sweden, not one or two hours later at UTC midnight); a
    dateTime the instants it names (``parse_range``), a time without a zone (which a search
    value may be, a stored one may not) read as Swedish time.

    Raises ValueError for anything that is not one.
    """
    low, high, zoned = parse_zoned(value)
    if zoned:
        return low, high
    if "T" in value:
        wall = from_us(low).replace(tzinfo=None)  # (read as UTC: the time as written)
        shift = to_us(wall.replace(tzinfo=LOCAL)) - low
        return max(MIN_US, min(MAX_US, low + shift)), max(MIN_US, min(MAX_US, high + shift))
    low = max(MIN_US, to_us(datetime.combine(from_us(low).date(), time(0), LOCAL)))
    try:
        after = from_us(high).date() + timedelta(days=1)
        high = min(MAX_US, to_us(datetime.combine(after, time(0), LOCAL)) - 1)
    except OverflowError:  # (the calendar's last day: it ends with the calendar)
        pass
    return low, high


def swedish_day(value: Any) -> str:
    """The day a date or dateTime names for a reader in Sweden: a dateTime's Swedish date (a
    follow-up at 00:30 in Sweden written in UTC is on the day before there), a date as
    written; anything else as it stands rather than nothing."""
    if not isinstance(value, str):
        return ""
    if "T" not in value:
        return value
    try:
        return from_us(parse_range(value)[0]).astimezone(LOCAL).date().isoformat()
    except (ValueError, OverflowError):
        return value
