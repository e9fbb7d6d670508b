"""Seeded mutations of a valid message (an element of another type, or missing), sent to
$process-message synchronously and asynchronously: a response message or a clear 4xx
OperationOutcome, never a 5xx."""

from __future__ import annotations

import random
from typing import Any

import pytest

from harness import BUP, URL, Hub, broker, hub, status_change, world  # noqa: F401
from mutations import mutated


@pytest.mark.parametrize("seed", range(4))
def test_odd_messages_get_a_response_or_a_clear_4xx(world: Hub, seed: int) -> None:
    rnd, unclear = random.Random(seed), []
    for _ in range(50):
        doc, where = mutated(status_change(world), rnd)
        for url in (URL, URL + "?async=true"):
            r = world.post(BUP, url, doc)
            kind = r.json().get("resourceType") if r.content else None
            if r.status_code >= 500 or (r.status_code >= 400 and kind != "OperationOutcome") \
                    or (r.status_code == 200 and kind != "Bundle"):
                unclear.append((url, where, r.status_code, r.text[:300]))
    assert not unclear, unclear
