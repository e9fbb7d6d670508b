"""The SIP process operations and writes, given seeded mutations of valid input (an element of
another type, or missing): a clear OperationOutcome with a 4xx, or success, never a 5xx."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS
from mutations import mutated
from sip_process import (BUP, SCHOOL, SOC, alva_case, code, invitation, parameters, post,
                         transition, write_case)

PLAN = "alva-sip"


@pytest.fixture
def h(client: Any, as_org: Any) -> dict[str, dict[str, str]]:
    headers = {org: as_org(org) for org in (SOC, BUP, SCHOOL)}
    write_case(client, headers[SOC], alva_case())
    assert transition(client, headers[SOC], PLAN, "kartlaggning").status_code == 200
    return headers


def _clear(r: Any, what: Any, unclear: list[Any]) -> None:
    if r.status_code >= 500 or (r.status_code >= 400
                                and r.json().get("resourceType") != "OperationOutcome"):
        unclear.append((what, r.status_code, r.text[:300]))


@pytest.mark.parametrize("seed", range(3))
def test_odd_invitations_and_transitions_are_clear_4xx(client: Any, h: Any, seed: int) -> None:
    rnd, unclear = random.Random(seed), []
    for base, path in ((invitation(f.BUP, f.SCHOOL), f"CarePlan/{PLAN}/$invite"),
                       (parameters(code("to", "mote")), f"CarePlan/{PLAN}/$transition")):
        for _ in range(50):
            doc, where = mutated(base, rnd)
            _clear(post(client, path, h[SOC], doc), (path, where), unclear)
    assert not unclear, unclear


@pytest.mark.parametrize("seed", range(3))
def test_odd_sip_resources_are_clear_4xx(client: Any, h: Any, seed: int) -> None:
    rnd, unclear = random.Random(100 + seed), []
    for res in alva_case():
        for _ in range(10):
            doc, where = mutated(res, rnd)
            if not isinstance(doc, dict) or doc.get("id") != res["id"] or \
                    doc.get("resourceType") != res["resourceType"]:
                continue  # a URL of its own
            r = client.put(f"/fhir/{res['resourceType']}/{res['id']}",
                           content=orjson.dumps(doc), headers=JSON_HEADERS | h[SOC])
            _clear(r, (res["resourceType"], where), unclear)
    assert not unclear, unclear
