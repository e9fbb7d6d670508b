"""What the CapabilityStatement says about messaging: its ``messaging`` element.

The ``$process-message`` operation itself is declared by its published OperationDefinition
(``sip_hub/fhir/definitions/OperationDefinition-sip-process-message.json``).
"""

from __future__ import annotations

from typing import Any

from . import vocabulary as vocab
from .process_message import reliable_cache_minutes
from .runtime import Messaging

Json = dict[str, Any]


def messaging_section(messaging: Messaging, fhir_base: str) -> list[Json]:
    """``CapabilityStatement.messaging``: the endpoint, the reliable cache, the messages."""
    definitions = sorted(spec.definition_url for spec in vocab.events().values())
    return [{
        "endpoint": [{"protocol": {"system": "http://terminology.hl7.org/CodeSystem/"
                                             "message-transport", "code": "http"},
                      "address": f"{fhir_base}/$process-message"}],
        "reliableCache": reliable_cache_minutes(messaging),
        "documentation": (
            "SIP messages between organisations, routed by the individual's consent. "
            "$process-message answers synchronously with the response message, or with 202 "
            "for async=true (the response follows to the sender's endpoint or response-url). "
            "Bundle.id and MessageHeader.id are remembered per sender for reliableCache "
            "minutes: a resent message gets its original response without a second effect; "
            "a reused Bundle.id with a new MessageHeader.id is refused (409)."),
        "supportedMessage": [{"mode": mode, "definition": url}
                             for url in definitions for mode in ("sender", "receiver")],
    }]

