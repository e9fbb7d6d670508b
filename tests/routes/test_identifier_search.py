"""A person is found by their personnummer as people write it, without its system.

Writes store a personnummer or samordningsnummer as 12 digits ('19121212-1212' is kept as
'191212121212'). A search for the value alone (FHIR: any system) written with its separator
finds that person too, directly and through a chain, as the same search with the system does;
it never finds anyone else (20121212-1212 is another person), and bare digits, which may be
any identifier's, are searched for as they are.
"""

from __future__ import annotations

from typing import Any

import pytest

from fhirhttp import PNR, create, plain_careplan
from sip_hub.identifiers import SAMORDNINGSNUMMER, luhn_check_digit

# Tolvan, born 1912; the other, born 2012, has the same last ten digits.
TOLVAN, OTHER = "19121212-1212", "20121212-1212"
# A samordningsnummer (day of birth + 60) with its check digit.
SAMORDNING = f"19701063-238{luhn_check_digit('701063238')}"
# A personnummer's written form kept as sent, under a system writes do not canonicalise.
RIV_OID = "urn:oid:1.2.752.129.2.1.3.1"


def _patient(system: str, value: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": system, "value": value}]}


@pytest.fixture
def people(client) -> dict[str, str]:
    """The ids of Tolvan, the other person, a person with a samordningsnummer and one whose
    identifier is in the hyphenated form under another system; a plan for each of the first
    two."""
    ids = {"tolvan": create(client, _patient(PNR, TOLVAN))["id"],
           "other": create(client, _patient(PNR, OTHER))["id"],
           "samordning": create(client, _patient(SAMORDNINGSNUMMER, SAMORDNING))["id"],
           "riv": create(client, _patient(RIV_OID, "19121212-1212"))["id"]}
    for who in ("tolvan", "other"):
        ids[f"{who}-plan"] = create(client, plain_careplan(ids[who]))["id"]
    return ids


def _found(client, path: str, **params: str) -> set[str]:
    r = client.get(f"/fhir/{path}", params=params)
    assert r.status_code == 200, r.text[:300]
    return {e["resource"]["id"] for e in r.json().get("entry", [])}


def test_a_personnummer_with_its_hyphen_finds_the_person_without_a_system(client, people):
    tolvan = {people["tolvan"]}
    assert _found(client, "Patient", identifier=TOLVAN) == tolvan | {people["riv"]}
    assert _found(client, "Patient", identifier=f"{PNR}|{TOLVAN}") == tolvan
    assert _found(client, "Patient", identifier="191212121212") == tolvan
    assert _found(client, "Patient", identifier=OTHER) == {people["other"]}


def test_a_personnummer_with_its_hyphen_finds_the_persons_plans_through_a_chain(client,
                                                                                people):
    assert _found(client, "CarePlan", **{"patient.identifier": TOLVAN}) == {
        people["tolvan-plan"]}
    assert _found(client, "CarePlan", **{"subject:Patient.identifier": OTHER}) == {
        people["other-plan"]}


def test_the_ten_digit_forms_with_a_separator_name_their_century(client, people):
    """'+' marks a person of 100 or more: 121212+1212 is Tolvan, 121212-1212 the other."""
    assert _found(client, "Patient", identifier="121212+1212") == {people["tolvan"]}
    assert _found(client, "Patient", identifier="121212-1212") == {people["other"]}


def test_a_samordningsnummer_with_its_hyphen_is_found_too(client, people):
    assert _found(client, "Patient", identifier=SAMORDNING) == {people["samordning"]}


def test_bare_digits_and_invalid_numbers_are_searched_for_as_they_are(client, people):
    assert _found(client, "Patient", identifier="1212121212") == set()
    assert _found(client, "Patient", identifier="19121212-1213") == set()  # check digit


def test_not_leaves_out_the_person_in_either_form(client, people):
    everyone = set(_found(client, "Patient"))
    assert _found(client, "Patient", **{"identifier:not": TOLVAN}) == everyone - {
        people["tolvan"], people["riv"]}
