"""Message Bundles the hub sends: notifications of SIP events, and responses.

A message is a Bundle of type ``message`` whose first entry is the MessageHeader: the event
(``sip-event``), the source (the hub: name, software and its ``$process-message`` endpoint),
the sender (the organisation that caused the event, by HSA-id), one destination per receiving
organisation (its endpoint and HSA-id), the focus (the SIP resources the event is about, as
entries of the Bundle) and, for a response, ``response`` (the request's MessageHeader.id, the
code and an OperationOutcome entry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .. import __version__
from ..fhir.dates import format_instant, now_utc
from ..identifiers import HSA_ID
from ..ids import uuid4, uuid7
from ..store import Stored
from . import vocabulary as vocab

Json = dict[str, Any]
HUB_NAME = "sip_hub"


@dataclass(frozen=True, slots=True)
class Party:
    """An organisation by HSA-id, and where it receives messages."""

    org: str
    endpoint: str


def org_reference(org: str) -> Json:
    return {"type": "Organization", "identifier": {"system": HSA_ID, "value": org}}


def source(fhir_base: str) -> Json:
    return {"name": HUB_NAME, "software": HUB_NAME, "version": __version__,
            "endpoint": f"{fhir_base}/$process-message"}


def _entry(fhir_base: str, res: Json | Stored) -> Json:
    if isinstance(res, Stored):
        # As stored: the store wrote it with orjson, so its bytes are what serialising it
        # parsed would give (a stored resource is not parsed and serialised again).
        assert res.content is not None, "a version, not a deletion"
        return {"fullUrl": f"{fhir_base}/{res.type}/{res.id}",
                "resource": orjson.Fragment(res.content)}
    rid = res.get("id")
    full = f"{fhir_base}/{res['resourceType']}/{rid}" if rid else f"urn:uuid:{uuid4()}"
    return {"fullUrl": full, "resource": res}


def _bundle(header: Json, entries: list[Json], bundle_id: str | None) -> Json:
    return {"resourceType": "Bundle", "id": bundle_id or uuid7(), "type": "message",
            "timestamp": format_instant(now_utc()),
            "entry": [{"fullUrl": f"urn:uuid:{header['id']}", "resource": header}] + entries}


def message(event: str, *, fhir_base: str, sender: str | None, destinations: Sequence[Party],
            focus: Sequence[str], resources: Sequence[Json | Stored],
            reason: str | None = None,
            header_id: str | None = None, bundle_id: str | None = None) -> Json:
    """A notification of ``event``. ``focus`` holds ``Type/id`` references to resources among
    ``resources``; ``sender`` is the HSA-id of the organisation that caused the event (None:
    the hub itself)."""
    header: Json = {"resourceType": "MessageHeader", "id": header_id or uuid7(),
                    "eventCoding": vocab.event_coding(event)}
    header["destination"] = [{"endpoint": d.endpoint, "receiver": org_reference(d.org)}
                             for d in destinations]
    if sender:
        header["sender"] = org_reference(sender)
    header["source"] = source(fhir_base)
    if reason:
        header["reason"] = vocab.reason_concept(reason)
    if focus:
        header["focus"] = [{"reference": ref} for ref in focus]
    header["definition"] = vocab.spec(event).definition_url
    return _bundle(header, [_entry(fhir_base, r) for r in resources], bundle_id)


def response(request_header_id: str, code: str, *, fhir_base: str, destination: Party,
             focus: Sequence[str] = (), outcome: Json | None = None,
             hub_org: str | None = None) -> Json:
    """The response (an ``acknowledgement``) to the message ``request_header_id``."""
    header: Json = {"resourceType": "MessageHeader", "id": uuid7(),
                    "eventCoding": vocab.event_coding(vocab.ACKNOWLEDGEMENT),
                    "destination": [{"endpoint": destination.endpoint,
                                     "receiver": org_reference(destination.org)}]}
    if hub_org:
        header["sender"] = org_reference(hub_org)
    header["source"] = source(fhir_base)
    resp: Json = {"identifier": request_header_id, "code": code}
    entries: list[Json] = []
    if outcome is not None:
        oo = {"fullUrl": f"urn:uuid:{uuid4()}", "resource": outcome}
        resp["details"] = {"reference": oo["fullUrl"]}
        entries.append(oo)
    header["response"] = resp
    if focus:
        header["focus"] = [{"reference": ref} for ref in focus]
    header["definition"] = vocab.spec(vocab.ACKNOWLEDGEMENT).definition_url
    return _bundle(header, entries, None)
