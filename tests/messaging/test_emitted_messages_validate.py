"""Every kind of message the hub emits passes validators written by others (Medplum, FHIR.js)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

import sip_factory as f
from harness import (BUP, OUTSIDER, SOC, URL, Hub, broker, hub, receivers,  # noqa: F401
                     status_change, world)
from sip_hub.messaging import parser, vocabulary as vocab
from sip_hub.messaging.process_message import process_accepted


@pytest.mark.node
def test_emitted_messages_pass_the_independent_validators(world: Hub, receivers: Any,
                                                          fhir_validator: Any,
                                                          tmp_path: Path) -> None:
    world.configure({BUP: receivers().url})
    emitted: list[dict] = []
    emitted.append(world.post(BUP, URL, status_change(world)).json())               # ok
    emitted.append(world.post(BUP, URL, status_change(world, destinations=(OUTSIDER,),
                                                      status="cancelled")).json())  # fatal
    world.post(BUP, URL + "?async=true", status_change(world, status="on-hold"))
    process_accepted(world.store, world.messaging)
    assert world.put(SOC, f.sip_consent(actor_refs=[f.SOCIAL_SERVICES, f.BUP])).status_code == 200
    emitted += [orjson.loads(d.content) for d in world.deliveries()]
    kinds = {(m["entry"][0]["resource"]["eventCoding"]["code"],
              (m["entry"][0]["resource"].get("response") or {}).get("code")) for m in emitted}
    assert kinds >= {("acknowledgement", "ok"), ("acknowledgement", "fatal-error"),
                     ("plan-established", None), ("insats-status-changed", None),
                     ("consent-changed", None)}
    for m in emitted:   # our own parser accepts what we send, too
        if m["entry"][0]["resource"].get("sender"):
            parser.parse(m)
    fhir_validator.validate_resources(tmp_path, emitted + vocab.message_definitions())
