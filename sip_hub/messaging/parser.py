"""Incoming message Bundles: read, check and say precisely what is wrong.

Two levels, because they are answered differently by ``$process-message``:

* ``envelope``: what identifies a message and its sender (Bundle.id, the MessageHeader and its
  id, the sender's HSA-id). Without these there is no message to answer: BadRequest (400).
* ``parse``: everything else (FHIR R4 structure, bindings and invariants; a known event with
  its sub-code, and its own MessageDefinition if one is named; source, destinations with
  endpoint and HSA-id; the focus the event's MessageDefinition asks for; the SIP the message
  concerns). Every problem is reported at once, by FHIRPath, in one Unprocessable; the
  sender gets it in a ``fatal-error`` response.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import BadRequest, IssueCollector, Unprocessable
from ..fhir import models, validation
from ..fhir.indexing import split_reference
from ..identifiers import HSA_ID, HSA_ID_ALT, InvalidIdentifier, normalise_hsa_id
from . import vocabulary as vocab

Json = dict[str, Any]
_H = "Bundle.entry[0].resource"


@dataclass(frozen=True, slots=True)
class Envelope:
    bundle_id: str
    header_id: str
    sender_org: str
    event: str | None
    source_endpoint: str | None
    focus: tuple[str, ...]  # the focus references as written


@dataclass(frozen=True, slots=True)
class Focused:
    type: str
    id: str | None  # None: an entry without id (the receiver assigns one)
    entry: int | None  # index into Message.entries; None: a resource the hub already holds


@dataclass(frozen=True, slots=True)
class Message:
    envelope: Envelope
    event: str
    reason: str | None
    destinations: tuple[str, ...]  # receivers' HSA-ids
    focus: tuple[Focused, ...]
    entries: tuple[Json, ...]  # every entry after the MessageHeader
    patient_id: str | None  # None when only a stored CarePlan names the patient
    careplan_id: str | None
    response: tuple[str, str] | None  # (request MessageHeader.id, code)

    @property
    def header_id(self) -> str:
        return self.envelope.header_id

    @property
    def sender_org(self) -> str:
        return self.envelope.sender_org


def _dict(value: Any) -> Json:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def org_of(ref: Any) -> str | None:
    """The HSA-id in a Reference's identifier (either HSA OID), normalised; None otherwise."""
    ident = ref.get("identifier") if isinstance(ref, dict) else None
    if not isinstance(ident, dict) or ident.get("system") not in (HSA_ID, HSA_ID_ALT):
        return None
    try:
        return normalise_hsa_id(ident.get("value", ""))
    except InvalidIdentifier:
        return None


def _header(body: Any) -> Json:
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise BadRequest("$process-message takes a Bundle of type 'message'")
    if body.get("type") != "message":
        raise BadRequest(f"Bundle.type must be 'message', not '{body.get('type')}'",
                         expression="Bundle.type")
    if not isinstance(body.get("id"), str) or not body["id"]:
        raise BadRequest("Bundle.id is required: reliable messaging tells resent messages "
                         "apart by it", expression="Bundle.id")
    validation.check_id(body["id"], "Bundle.id")  # the inbox keys resent messages by it
    entries = body.get("entry")
    first = entries[0] if isinstance(entries, list) and entries else None
    header = first.get("resource") if isinstance(first, dict) else None
    if not isinstance(header, dict) or header.get("resourceType") != "MessageHeader":
        raise BadRequest("The first entry of a message must be its MessageHeader",
                         expression="Bundle.entry[0].resource")
    if not isinstance(header.get("id"), str) or not header["id"]:
        raise BadRequest("MessageHeader.id is required: reliable messaging tells resent "
                         "messages apart by it", expression=f"{_H}.id")
    validation.check_id(header["id"], f"{_H}.id")
    return header


def envelope(body: Any) -> Envelope:
    """The message's identity and sender; BadRequest when they cannot be read."""
    header = _header(body)
    sender = org_of(header.get("sender"))
    if sender is None:
        raise BadRequest("MessageHeader.sender must identify the sending organisation by "
                         f"HSA-id (identifier.system {HSA_ID})", expression=f"{_H}.sender")
    coding = header.get("eventCoding")
    event = coding.get("code") if isinstance(coding, dict) and \
        coding.get("system") == vocab.CS_EVENT else None
    src = header.get("source")
    endpoint = src.get("endpoint") if isinstance(src, dict) else None
    focus = tuple(f["reference"] for f in _list(header.get("focus"))
                  if isinstance(f, dict) and isinstance(f.get("reference"), str))
    return Envelope(body["id"], header["id"], sender, event if isinstance(event, str) else None,
                    endpoint if isinstance(endpoint, str) else None, focus)


def parse(body: Any, base: str = "") -> Message:
    """The whole message, checked; Unprocessable listing every problem. ``base``: the hub's
    FHIR base, under which an absolute reference names a resource the hub holds."""
    env = envelope(body)
    issues = IssueCollector()
    try:
        models.validate(body)
    except Unprocessable as err:  # report it together with everything else
        issues.issues.extend(err.issues)
    validation.check(body, issues)
    header: Json = body["entry"][0]["resource"]
    entries: list[Json] = body["entry"][1:]
    spec = _event(header, env, issues)
    _definition(header, spec, issues)
    reason = _reason(header, spec, issues)
    if not _dict(header.get("source")).get("name"):
        issues.add(f"{_H}.source.name", "MessageHeader.source.name must name the sending "
                                        "system", "required")
    destinations = _destinations(header, issues)
    _entries(entries, issues)
    focus = _focus(header, entries, spec, issues, base)
    patient, plan = _sip(focus, entries, issues, base)
    response = _response(header, spec, issues)
    issues.raise_if_any("The message is not valid")
    assert spec is not None
    return Message(env, spec.code, reason, destinations, focus, tuple(entries), patient, plan,
                   response)


def _event(header: Json, env: Envelope, issues: IssueCollector) -> vocab.EventSpec | None:
    if env.event is None:
        issues.add(f"{_H}.eventCoding", f"MessageHeader.eventCoding must be a code of "
                                        f"{vocab.CS_EVENT}", "code-invalid")
        return None
    try:
        return vocab.spec(env.event)
    except KeyError:
        known = ", ".join(sorted(vocab.events()))
        issues.add(f"{_H}.eventCoding.code", f"Unknown SIP event '{env.event}'; the events "
                                             f"are: {known}", "code-invalid")
        return None


def _definition(header: Json, spec: vocab.EventSpec | None, issues: IssueCollector) -> None:
    """MessageHeader.definition, where the sender gives it, is the event's own
    MessageDefinition (a ``|version`` after it aside): one naming another event's says the
    message is something else than its eventCoding does, and which of them the sender meant
    is a guess."""
    given = header.get("definition")
    if spec is None or not isinstance(given, str) or \
            given.split("|", 1)[0] == spec.definition_url:
        return
    issues.add(f"{_H}.definition", f"MessageHeader.definition '{given[:200]}' is not the "
               f"MessageDefinition of the event '{spec.code}': send {spec.definition_url}, or "
               "no definition", "invalid")


def _reason(header: Json, spec: vocab.EventSpec | None, issues: IssueCollector) -> str | None:
    codes = [c.get("code") for c in _list(_dict(header.get("reason")).get("coding"))
             if isinstance(c, dict) and c.get("system") == vocab.CS_EVENT]
    if spec is None:
        return None
    if not spec.reasons:
        if codes:
            issues.add(f"{_H}.reason", f"The event '{spec.code}' has no sub-codes", "invalid")
        return None
    found = [c for c in codes if c in spec.reasons]
    if len(found) != 1:
        issues.add(f"{_H}.reason", f"The event '{spec.code}' needs exactly one of "
                                   f"{', '.join(sorted(spec.reasons))} in MessageHeader.reason "
                                   f"(system {vocab.CS_EVENT})", "required")
        return None
    return found[0]


def _destinations(header: Json, issues: IssueCollector) -> tuple[str, ...]:
    dests = _list(header.get("destination"))
    if not dests:
        issues.add(f"{_H}.destination", "A message names its destinations: at least one "
                                        "MessageHeader.destination", "required")
    out = []
    for i, d in enumerate(dests):
        org = org_of(d.get("receiver")) if isinstance(d, dict) else None
        if org is None:
            issues.add(f"{_H}.destination[{i}].receiver", "Each destination names the "
                       f"receiving organisation by HSA-id (identifier.system {HSA_ID})",
                       "required")
        else:
            out.append(org)
    return tuple(out)


def _entries(entries: list[Json], issues: IssueCollector) -> None:
    seen: dict[tuple[str, str], int] = {}
    for i, e in enumerate(entries, start=1):
        res = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(e, dict) or not isinstance(e.get("fullUrl"), str) or \
                not isinstance(res, dict):
            issues.add(f"Bundle.entry[{i}]", "Each entry of a message has a fullUrl and a "
                                             "resource", "required")
        elif res.get("resourceType") == "MessageHeader":
            issues.add(f"Bundle.entry[{i}].resource", "A message has one MessageHeader, its "
                                                      "first entry", "invalid")
        elif isinstance(res.get("id"), str) and isinstance(res.get("resourceType"), str):
            # Applied as one transaction of PUTs by id: two versions of one resource (under
            # different fullUrls) would both be written, or one taken as unchanged, and the
            # message say two things of it at once.
            key = (res["resourceType"], res["id"])
            if key in seen:
                issues.add(f"Bundle.entry[{i}].resource", f"The message carries "
                           f"{key[0]}/{key[1]} twice (also Bundle.entry[{seen[key]}]); a "
                           "message carries each resource once", "invalid")
            else:
                seen[key] = i


def _resolve(ref: str, entries: list[Json], base: str) -> Focused | None:
    """What a focus reference names: an entry of the message (by its fullUrl, or by
    ``Type/id``, also under the hub's ``base``), else a resource the hub holds."""
    target = split_reference(ref, base)
    if target is not None and ref not in (local := f"{target[0]}/{target[1]}",
                                          f"{base.rstrip('/')}/{local}"):
        target = None  # (a version, or a path of more parts)
    for i, e in enumerate(entries):
        res = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(res, dict):
            continue
        full = e.get("fullUrl")
        rtype, rid = res.get("resourceType"), res.get("id")
        if ref == full or (rid and (target == (rtype, rid) or
                                    (isinstance(full, str) and full.endswith("/" + ref)))):
            return Focused(str(rtype), rid if isinstance(rid, str) else None, i)
    return Focused(target[0], target[1], None) if target else None


def _focus(header: Json, entries: list[Json], spec: vocab.EventSpec | None,
           issues: IssueCollector, base: str) -> tuple[Focused, ...]:
    out: list[Focused] = []
    for i, f in enumerate(_list(header.get("focus"))):
        ref = f.get("reference") if isinstance(f, dict) else None
        found = _resolve(ref, entries, base) if isinstance(ref, str) else None
        if found is None:
            issues.add(f"{_H}.focus[{i}]", f"The focus '{ref}' is neither an entry of the "
                       "message nor a reference Type/id to a resource the hub holds",
                       "not-found")
            continue
        if spec is not None and spec.focus_for(found.type) is None:
            allowed = ", ".join(f.type for f in spec.focus)
            issues.add(f"{_H}.focus[{i}]", f"The event '{spec.code}' does not carry a "
                       f"{found.type} (its focus: {allowed})", "invalid")
        out.append(found)
    if spec is not None:
        for rule in spec.focus:
            n = sum(1 for f in out if f.type == rule.type)
            if n < rule.min or (rule.max is not None and n > rule.max):
                most = "*" if rule.max is None else rule.max
                issues.add(f"{_H}.focus", f"The event '{spec.code}' carries {rule.min}..{most} "
                           f"{rule.type} in its focus, not {n} ({spec.definition_url})",
                           "invalid")
    return tuple(out)


def _sip(focus: tuple[Focused, ...], entries: list[Json], issues: IssueCollector, base: str
         ) -> tuple[str | None, str | None]:
    """The SIP the message concerns: (patient id, plan id), as far as the message says."""
    patient = next((f.id for f in focus if f.type == "Patient" and f.id), None)
    plan: str | None = None
    for f in (f for f in focus if f.type == "CarePlan"):
        res = _dict(entries[f.entry].get("resource")) if f.entry is not None else {}
        replaced = [split_reference(r["reference"], base) for r in _list(res.get("replaces"))
                    if isinstance(r, dict) and isinstance(r.get("reference"), str)
                    ] if res.get("intent") == "proposal" else []
        sip_plan = next((t[1] for t in replaced if t and t[0] == "CarePlan"), None) or f.id
        plan = plan or sip_plan
        ref = _dict(res.get("subject")).get("reference")
        subject = split_reference(ref, base) if isinstance(ref, str) else None
        if patient is None and subject and subject[0] == "Patient":
            patient = subject[1]
    if patient is None and plan is None:
        issues.add(f"{_H}.focus", "Every message names the SIP it concerns: its CarePlan or "
                                  "its Patient in MessageHeader.focus", "required")
    return patient, plan


def _response(header: Json, spec: vocab.EventSpec | None, issues: IssueCollector
              ) -> tuple[str, str] | None:
    resp = header.get("response")
    if isinstance(resp, dict) and isinstance(resp.get("identifier"), str) and \
            resp.get("code") in vocab.RESPONSE_CODES:
        out: tuple[str, str] | None = (resp["identifier"], resp["code"])
    else:
        out = None
    if spec is not None and (spec.code == vocab.ACKNOWLEDGEMENT) != (out is not None):
        issues.add(f"{_H}.response", "An acknowledgement answers a message: it, and only it, "
                                     "carries MessageHeader.response (identifier and code)",
                   "invalid")
    return out
