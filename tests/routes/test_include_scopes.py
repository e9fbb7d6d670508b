"""What a search adds by ``_include`` and ``_revinclude`` (``:iterate`` too) is limited to the
types the token's scopes let it read or search, as a read of them is: a token with only
``system/CarePlan.rs`` was refused ``GET Organization/socialtjansten`` (403) but got the
plan's Organizations as included entries, and the care team's Practitioners by
``_include:iterate``. Personal data stay limited by the person's consent as before."""

from __future__ import annotations

from typing import Any

import pytest

import test_access
from fhirhttp import JSON_HEADERS
from test_access import BUP, SOC

world = test_access.world  # the demo SIP written by its coordinator (a fixture)

PLAN = "CarePlan?_id=alva-sip"


def _found(client: Any, query: str, headers: Any) -> tuple[list[str], set[str]]:
    """(matches, included) of a search, as references."""
    r = client.get(f"/fhir/{query}", headers={**JSON_HEADERS, **headers})
    assert r.status_code == 200, r.text
    out: dict[str, list[str]] = {"match": [], "include": []}
    for e in r.json().get("entry", []):
        res = e["resource"]
        out[e["search"]["mode"]].append(f"{res['resourceType']}/{res['id']}")
    return out["match"], set(out["include"])


def _types(refs: set[str]) -> set[str]:
    return {r.split("/")[0] for r in refs}


@pytest.mark.parametrize("org", [SOC, BUP])
def test_includes_of_a_type_the_scopes_do_not_allow_are_left_out(client, world, as_org, org):
    h = as_org(org, scope="system/CarePlan.rs")
    assert client.get("/fhir/Organization/socialtjansten", headers=h).status_code == 403
    for query in (f"{PLAN}&_include=CarePlan:author&_include=CarePlan:performer",
                  f"{PLAN}&_include=CarePlan:care-team&_include:iterate=CareTeam:participant",
                  f"{PLAN}&_include:iterate=CarePlan:care-team"
                  "&_include:iterate=CareTeam:participant&_include=CarePlan:patient"
                  "&_include=CarePlan:goal",
                  f"{PLAN}&_revinclude=Provenance:target"):
        matches, included = _found(client, query, h)
        assert matches == ["CarePlan/alva-sip"] and included == set(), (query, included)


def test_includes_follow_each_type_the_scopes_allow(client, world, as_org):
    """Organizations readable, CareTeam searchable (``s`` alone): both come; Practitioners,
    Goals and the Patient, which the scopes do not name, do not."""
    h = as_org(BUP, scope="system/CarePlan.rs system/Organization.r system/CareTeam.s")
    _, included = _found(client, f"{PLAN}&_include=CarePlan:author&_include=CarePlan:performer"
                                 "&_include=CarePlan:care-team&_include=CarePlan:goal"
                                 "&_include=CarePlan:patient"
                                 "&_include:iterate=CareTeam:participant", h)
    assert _types(included) == {"Organization", "CareTeam"}, included
    assert "Organization/socialtjansten" in included
    # The full scopes see them all (consent permitting), as before.
    _, included = _found(client, f"{PLAN}&_include=CarePlan:author&_include=CarePlan:goal"
                                 "&_include=CarePlan:care-team"
                                 "&_include:iterate=CareTeam:participant", world[BUP])
    assert {"Organization", "CareTeam", "Practitioner", "Goal"} <= _types(included)


def test_revincludes_and_iterations_from_the_directory(client, world, as_org):
    """From a directory search, a revinclude or an iteration into a type outside the scopes
    (personal or not) adds nothing, and is not gone through either."""
    h = as_org(SOC, scope="system/Organization.rs system/Practitioner.rs")
    for query in ("Organization?_id=bup&_revinclude=CarePlan:performer",
                  "Practitioner?_id=kim&_revinclude=CareTeam:participant"
                  "&_include:iterate=CareTeam:participant",
                  "Organization?_id=socialtjansten&_revinclude:iterate=CarePlan:author"
                  "&_include:iterate=CarePlan:care-team"
                  "&_include:iterate=CareTeam:participant"):
        matches, included = _found(client, query, h)
        assert matches and included == set(), (query, included)
    # With the care team in its scopes: the team, and the Practitioners it names (the
    # Patient and RelatedPerson in it are outside them).
    h = as_org(SOC, scope="system/Practitioner.rs system/CareTeam.rs")
    _, included = _found(client, "Practitioner?_id=kim&_revinclude=CareTeam:participant"
                                 "&_include:iterate=CareTeam:participant", h)
    assert _types(included) == {"CareTeam", "Practitioner"}, included


def test_an_admin_with_personal_data_gets_only_the_types_of_its_scopes(client, world, as_org):
    h = as_org("SE2321000016-ADM1", scope="system/CarePlan.rs", role="admin",
               personal_data=True)
    matches, included = _found(client, f"{PLAN}&_include=CarePlan:author"
                                       "&_include=CarePlan:patient&_include=CarePlan:goal", h)
    assert matches == ["CarePlan/alva-sip"] and included == set(), included
