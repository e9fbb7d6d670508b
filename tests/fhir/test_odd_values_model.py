"""The FHIR layer's part in refusing what the hub could not write back: the nesting limit the
validation walk counts, numbers from FHIR XML as JSON has them, and an XML writer that never
expands an entity a stored narrative declares."""

from __future__ import annotations

from typing import Any

import pytest

from sip_hub.errors import BadRequest, IssueCollector
from sip_hub.fhir import exact, models, validation

XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'


def _nested(depth: int) -> dict[str, Any]:
    ext: dict[str, Any] = {"url": "http://x.org/e", "valueString": "leaf"}
    for _ in range(depth - 1):
        ext = {"url": "http://x.org/e", "extension": [ext]}
    return {"resourceType": "Patient", "extension": [ext]}


def _issues(resource: dict[str, Any]) -> list[tuple[str, str]]:
    out = IssueCollector()
    validation.check(resource, out)
    return [(i.expression[0], i.diagnostics) for i in out.issues]


def test_elements_nest_at_most_max_depth_levels():
    assert _issues(_nested(validation.MAX_DEPTH)) == []
    deepest = "Patient" + ".extension[0]" * (validation.MAX_DEPTH + 1)
    assert _issues(_nested(validation.MAX_DEPTH + 1)) == [(deepest, validation.TOO_DEEP)]


def test_the_nesting_limit_counts_primitive_extensions_too():
    inner = _nested(validation.MAX_DEPTH)["extension"]
    patient = {"resourceType": "Patient", "gender": "other", "_gender": {"extension": inner}}
    assert [p for p, _ in _issues(patient)] == [
        "Patient.gender" + ".extension[0]" * validation.MAX_DEPTH]


def _goal_xml(value: str) -> bytes:
    return ('<Goal xmlns="http://hl7.org/fhir"><lifecycleStatus value="active"/><description>'
            '<text value="x"/></description><subject><reference value="Patient/1"/></subject>'
            '<target><measure><text value="h"/></measure><detailQuantity>'
            f'<value value="{value}"/></detailQuantity></target></Goal>').encode()


@pytest.mark.parametrize("value", ["100000000000000000000", "1e20", "-1E20",
                                   "18446744073709551616"])
def test_xml_gives_a_decimal_wider_than_64_bits_as_json_gives_it(value):
    got = models.from_xml(_goal_xml(value))["target"][0]["detailQuantity"]["value"]
    assert exact.dumps(got) == value.encode()  # as written: FHIR keeps a decimal's precision
    want = exact.loads(value.encode())
    assert type(got) is type(want) and got == want


def test_xml_keeps_a_decimal_within_64_bits_as_json_does():
    got = models.from_xml(_goal_xml("18446744073709551615"))
    assert got["target"][0]["detailQuantity"]["value"] == 18446744073709551615


def test_xml_refuses_a_decimal_beyond_a_double_naming_where():
    with pytest.raises(BadRequest) as err:
        models.from_xml(_goal_xml("1e400"))
    assert "out of range" in err.value.diagnostics
    assert "Goal.target[0].detailQuantity.value" in err.value.diagnostics


def test_the_xml_writer_never_expands_an_entity_a_stored_narrative_declares():
    div = f'<!DOCTYPE div [<!ENTITY x "EXPANDED">]><div {XHTML}>&x;</div>'
    org = {"resourceType": "Organization", "name": "x",
           "text": {"status": "generated", "div": div}}
    with pytest.raises(ValueError, match="declares its own entities"):
        models.to_xml(org)


def test_the_xml_writer_keeps_a_narratives_escapes_and_character_references():
    div = f"<div {XHTML}><p>a &amp; b &lt; c &#228;</p></div>"
    org = {"resourceType": "Organization", "name": "x",
           "text": {"status": "generated", "div": div}}
    assert "<p>a &amp; b &lt; c ä</p>" in models.to_xml(org).decode()
