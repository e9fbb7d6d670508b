"""The SIP message vocabulary: the ``sip-event`` CodeSystem and one MessageDefinition per event.

Both are published JSON in ``sip_hub/fhir/definitions/`` and are the one source: the events,
their sub-codes (carried in ``MessageHeader.reason``), the focus each event carries and whether
it needs a response are read from there, never repeated in code. The names below are the codes
the hub refers to itself when it tells about a write.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from ..fhir import sip
from ..fhir.profiles import DEFINITIONS_DIR

Json = dict[str, Any]

CS_EVENT: Final = f"{sip.CANONICAL}/CodeSystem/sip-event"
RESPONSE_CODES: Final = frozenset({"ok", "transient-error", "fatal-error"})
OK: Final = "ok"
TRANSIENT_ERROR: Final = "transient-error"
FATAL_ERROR: Final = "fatal-error"

SIP_INITIATED: Final = "sip-initiated"
INVITATION: Final = "invitation"
INVITATION_RESPONSE: Final = "invitation-response"
INVITATION_CANCELLED: Final = "invitation-cancelled"
MEETING_RESCHEDULED: Final = "meeting-rescheduled"
MEETING_CANCELLED: Final = "meeting-cancelled"
PLAN_ESTABLISHED: Final = "plan-established"
PLAN_REVISION_PROPOSED: Final = "plan-revision-proposed"
REVISION_APPROVED: Final = "revision-approved"
INSATS_STATUS_CHANGED: Final = "insats-status-changed"
CONSENT_CHANGED: Final = "consent-changed"
FOLLOW_UP_SCHEDULED: Final = "follow-up-scheduled"
FOLLOW_UP_DONE: Final = "follow-up-done"
SIP_CLOSED: Final = "sip-closed"
ACKNOWLEDGEMENT: Final = "acknowledgement"
# Sub-codes (MessageHeader.reason)
ACCEPT: Final = "accept"
NEW_TIME_PROPOSED: Final = "new-time-proposed"
DECLINE: Final = "decline"
GRANTED: Final = "granted"
NARROWED: Final = "narrowed"
WITHDRAWN: Final = "withdrawn"


@dataclass(frozen=True, slots=True)
class Focus:
    """One MessageDefinition.focus: how many resources of ``type`` the message carries."""

    type: str
    profile: str | None
    min: int
    max: int | None  # None: unbounded ("*")


@dataclass(frozen=True, slots=True)
class EventSpec:
    code: str
    display: str
    definition_url: str
    category: str  # consequence | notification
    response_required: str  # always | on-error | never
    focus: tuple[Focus, ...]
    reasons: frozenset[str]  # the event's sub-codes; a message must carry one when non-empty

    def focus_for(self, rtype: str) -> Focus | None:
        return next((f for f in self.focus if f.type == rtype), None)


def _load(name: str) -> Json:
    data: Json = json.loads((DEFINITIONS_DIR / name).read_text(encoding="utf-8"))
    return data


@lru_cache(maxsize=1)
def _definitions() -> tuple[Json, ...]:
    return tuple(_load(p.name) for p in sorted(DEFINITIONS_DIR.glob("MessageDefinition-*.json")))


@lru_cache(maxsize=1)
def _code_system() -> Json:
    return _load("CodeSystem-sip-event.json")


def code_system() -> Json:
    return copy.deepcopy(_code_system())


def message_definitions() -> list[Json]:
    """The MessageDefinitions, as published (copies the caller may change)."""
    return copy.deepcopy(list(_definitions()))


@lru_cache(maxsize=1)
def events() -> dict[str, EventSpec]:
    """Every event by code, joined from the CodeSystem and its MessageDefinition."""
    concepts = {c["code"]: c for c in _code_system()["concept"]}
    out: dict[str, EventSpec] = {}
    for md in _definitions():
        code = md["eventCoding"]["code"]
        concept = concepts[code]
        focus = tuple(Focus(f["code"], f.get("profile"), int(f["min"]),
                            None if f.get("max", "*") == "*" else int(f["max"]))
                      for f in md.get("focus", []))
        out[code] = EventSpec(code, concept["display"], md["url"], md["category"],
                              md["responseRequired"], focus,
                              frozenset(c["code"] for c in concept.get("concept", [])))
    return out


def spec(event: str) -> EventSpec:
    """The event's specification; KeyError for a code that is not a SIP event."""
    return events()[event]


def event_coding(event: str) -> Json:
    return {"system": CS_EVENT, "code": event, "display": spec(event).display}


def reason_concept(reason: str) -> Json:
    return {"coding": [{"system": CS_EVENT, "code": reason}]}
