"""``_include:iterate`` and ``_revinclude:iterate``: what the includes reach from what was
included, round after round (at most ``MAX_ITERATE`` rounds after the first), each resource
once, among what the caller may see."""

from __future__ import annotations

from typing import Any

import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body, refused_400, store_all
from sip_hub.fhir.search import MAX_ITERATE

Json = dict[str, Any]


@pytest.fixture
def alva(client: Any) -> dict[str, Json]:
    """The demo SIP stored; its resources by reference."""
    resources = f.demo_case()
    store_all(client, resources)
    return {f"{r['resourceType']}/{r['id']}": r for r in resources}


def _found(client: Any, query: str, headers: Any = None) -> tuple[list[str], list[str]]:
    """(matches, included) of a search, as references."""
    r = client.get(f"/fhir/{query}", headers={**JSON_HEADERS, **(headers or {})})
    assert r.status_code == 200, r.text
    out: dict[str, list[str]] = {"match": [], "include": []}
    for e in r.json().get("entry", []):
        res = e["resource"]
        out[e["search"]["mode"]].append(f"{res['resourceType']}/{res['id']}")
    included = out["include"]
    assert len(included) == len(set(included)), included  # each once
    return out["match"], included


def _chain(client: Any, n: int, *, loop: bool = False) -> list[str]:
    """``n`` Organizations, each part of the next (the last part of the first when
    ``loop``); their ids in that order."""
    ids = [f"org-{i}" for i in range(n)]
    for i in reversed(range(n)):
        org: Json = {"resourceType": "Organization", "id": ids[i], "name": f"Enhet {i}"}
        if i + 1 < n or loop:
            org["partOf"] = {"reference": f"Organization/{ids[(i + 1) % n]}"}
        r = client.put(f"/fhir/Organization/{ids[i]}", **body(org))
        assert r.status_code in (200, 201), r.text
    if loop:  # the last one, written before the first existed, points at it now
        r = client.put(f"/fhir/Organization/{ids[-1]}", **body(
            {"resourceType": "Organization", "id": ids[-1], "name": f"Enhet {n - 1}",
             "partOf": {"reference": f"Organization/{ids[0]}"}}))
        assert r.status_code == 200, r.text
    return ids


def test_iterate_reaches_the_members_of_an_included_care_team(client, alva):
    team = alva[f.CARETEAM]
    members = {p["member"]["reference"] for p in team["participant"]}
    plain = "CarePlan?_id=alva-sip&_include=CarePlan:care-team"
    assert _found(client, plain) == (["CarePlan/alva-sip"], [f.CARETEAM])
    matches, included = _found(client, plain + "&_include:iterate=CareTeam:participant")
    assert matches == ["CarePlan/alva-sip"]
    assert set(included) == {f.CARETEAM} | members
    # the same in one include of the plan's own type, iterated
    _, again = _found(client, "CarePlan?_id=alva-sip&_include:iterate=CarePlan:care-team"
                              "&_include:iterate=CareTeam:participant")
    assert set(again) == set(included)


def test_iterate_follows_a_chain_for_a_bounded_number_of_rounds(client, alva):
    ids = _chain(client, MAX_ITERATE + 4)
    _, one = _found(client, f"Organization?_id={ids[0]}&_include=Organization:partof")
    assert one == [f"Organization/{ids[1]}"]
    _, many = _found(client, f"Organization?_id={ids[0]}&_include:iterate=Organization:partof")
    assert many == [f"Organization/{i}" for i in ids[1:MAX_ITERATE + 2]]
    _, up = _found(client, f"Organization?_id={ids[3]}&_revinclude:iterate=Organization:partof")
    assert up == [f"Organization/{i}" for i in reversed(ids[:3])]


def test_iterate_around_a_loop_includes_each_once_and_ends(client, alva):
    ids = _chain(client, 3, loop=True)
    matches, included = _found(client, f"Organization?_id={ids[0]}"
                                       "&_include:iterate=Organization:partof"
                                       "&_revinclude:iterate=Organization:partof")
    assert matches == [f"Organization/{ids[0]}"]
    assert sorted(included) == [f"Organization/{i}" for i in ids[1:]]


def test_iterate_goes_through_nothing_the_caller_may_not_see(client, alva, as_org):
    query = ("Practitioner?_id=kim&_revinclude:iterate=CareTeam:participant"
             "&_include:iterate=CareTeam:patient&_include:iterate=CareTeam:participant")
    matches, seen = _found(client, query)  # the hub's operators see the SIP
    assert matches == ["Practitioner/kim"]
    assert {f.CARETEAM, f.PATIENT, f.MOTHER, "Practitioner/sara"} <= set(seen)
    outsider = as_org("SE2321000016-9XYZ")
    assert _found(client, query, outsider) == (["Practitioner/kim"], [])


@pytest.mark.parametrize("query, where", [
    ("CarePlan?_include:iterate=AuditEvent:entity", "_include:iterate"),
    ("CarePlan?_revinclude:iterate=AuditEvent:entity", "_revinclude:iterate"),
    ("CarePlan?_include:often=CarePlan:goal", "_include:often"),
    ("CarePlan?_include:iterate=CareTeam:nope", "_include:iterate"),
    ("CarePlan?_include=CareTeam:participant", "_include"),
])
def test_an_iterate_that_cannot_be_done_is_a_400(client, alva, query, where):
    refused_400(client, f"/fhir/{query}", where)
