"""Values a fuzzer found the hub could accept but not write back: numbers wider than 64 bits
from FHIR XML, resources nested deeper than a JSON writer goes, and content XML cannot carry.
Each is refused (a 4xx OperationOutcome that stores nothing) or stored, the same in JSON and
XML, and nothing stored makes a later read or search in either format fail; on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from fhirhttp import JSON_HEADERS, body, create, outcome_text, patient

XML_IN = {"content-type": "application/fhir+xml", "accept": "application/fhir+json"}
XML_OUT = {"accept": "application/fhir+xml"}
XHTML = 'xmlns="http://www.w3.org/1999/xhtml"'


def _goal_xml(patient_id: str, value: str) -> str:
    return ('<Goal xmlns="http://hl7.org/fhir"><lifecycleStatus value="active"/>'
            '<description><text value="x"/></description>'
            f'<subject><reference value="Patient/{patient_id}"/></subject><target>'
            '<measure><text value="h"/></measure>'
            f'<detailQuantity><value value="{value}"/></detailQuantity></target></Goal>')


def _goal_json(patient_id: str, value: str) -> bytes:
    return ('{"resourceType":"Goal","lifecycleStatus":"active","description":{"text":"x"},'
            f'"subject":{{"reference":"Patient/{patient_id}"}},"target":[{{"measure":'
            f'{{"text":"h"}},"detailQuantity":{{"value":{value}}}}}]}}').encode()


def _count(client: Any, rtype: str) -> int:
    return client.get(f"/fhir/{rtype}?_summary=count").json()["total"]


@pytest.mark.parametrize("value", ["100000000000000000000", "1e20", "1E+20",
                                   "123456789012345678901", "-100000000000000000000"])
def test_a_decimal_wider_than_64_bits_is_stored_from_xml_as_from_json(client, value):
    pid = create(client, patient())["id"]
    from_json = client.post("/fhir/Goal", content=_goal_json(pid, value), headers=JSON_HEADERS)
    from_xml = client.post("/fhir/Goal", content=_goal_xml(pid, value), headers=XML_IN)
    assert (from_json.status_code, from_xml.status_code) == (201, 201), from_xml.text
    stored = [r.json()["target"][0]["detailQuantity"]["value"] for r in (from_json, from_xml)]
    assert stored[0] == stored[1] == json.loads(value)  # (as written: FHIR keeps precision)
    read = client.get(f"/fhir/Goal/{from_xml.json()['id']}", headers=XML_OUT)
    assert read.status_code == 200 and b"<detailQuantity>" in read.content


@pytest.mark.parametrize("value", ["1e400", "-1e400", "1" + "0" * 400])
def test_a_decimal_beyond_a_double_is_refused_from_xml_as_from_json(client, value):
    pid = create(client, patient())["id"]
    from_json = client.post("/fhir/Goal", content=_goal_json(pid, value), headers=JSON_HEADERS)
    from_xml = client.post("/fhir/Goal", content=_goal_xml(pid, value), headers=XML_IN)
    assert from_json.status_code == from_xml.status_code == 400, from_xml.text
    assert "out of range" in outcome_text(from_xml)
    assert _count(client, "Goal") == 0


def test_a_wide_decimal_in_an_xml_transaction_bundle_is_stored(client):
    pid = create(client, patient())["id"]
    goal = _goal_xml(pid, "1e20").replace(' xmlns="http://hl7.org/fhir"', "")
    bundle = ('<Bundle xmlns="http://hl7.org/fhir"><type value="transaction"/><entry>'
              f'<resource>{goal}</resource><request><method value="POST"/>'
              '<url value="Goal"/></request></entry></Bundle>')
    r = client.post("/fhir", content=bundle, headers=XML_IN)
    assert r.status_code == 200, r.text
    assert _count(client, "Goal") == 1


def _nested_extensions(depth: int) -> bytes:
    return ('{"resourceType":"Patient","extension":'
            + '[{"url":"http://x.org/e","extension":' * (depth - 1)
            + '[{"url":"http://x.org/e","valueString":"leaf"}]' + '}]' * (depth - 1)
            + '}').encode()


def test_extensions_nested_to_the_limit_are_stored_and_read_back_in_both_formats(client):
    r = client.post("/fhir/Patient", content=_nested_extensions(100), headers=JSON_HEADERS)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    assert client.get(f"/fhir/Patient/{rid}").status_code == 200
    assert client.get(f"/fhir/Patient/{rid}", headers=XML_OUT).status_code == 200


@pytest.mark.parametrize("depth", [101, 127, 130, 200, 300, 500])
def test_a_resource_nested_deeper_than_the_limit_is_refused(client, depth):
    r = client.post("/fhir/Patient", content=_nested_extensions(depth), headers=JSON_HEADERS)
    assert r.status_code == 422, r.text
    assert "deeper than 100" in outcome_text(r)
    assert r.json()["issue"][0]["code"] == "structure"
    assert _count(client, "Patient") == 0


def test_a_too_deep_resource_is_refused_in_a_transaction_and_as_an_update(client):
    deep = orjson.loads(_nested_extensions(110))  # (a Bundle of a deeper one orjson cannot write)
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": patient(), "request": {"method": "POST", "url": "Patient"}},
                        {"resource": deep, "request": {"method": "POST", "url": "Patient"}}]}
    r = client.post("/fhir", **body(bundle))
    assert r.status_code == 422 and "deeper than 100" in outcome_text(r)
    assert _count(client, "Patient") == 0
    rid = create(client, patient())["id"]
    r = client.put(f"/fhir/Patient/{rid}", **body(deep | {"id": rid}))
    assert r.status_code == 422 and "deeper than 100" in outcome_text(r)
    assert client.get(f"/fhir/Patient/{rid}").json()["meta"]["versionId"] == "1"


def test_a_too_deep_resource_is_refused_from_xml(client):
    depth = 130
    xml = ('<Patient xmlns="http://hl7.org/fhir">' + '<extension url="http://x.org/e">' * depth
           + '<valueString value="leaf"/>' + "</extension>" * depth + "</Patient>")
    r = client.post("/fhir/Patient", content=xml, headers=XML_IN)
    assert r.status_code == 422 and "deeper than 100" in outcome_text(r)
    assert _count(client, "Patient") == 0


def _org(name: str, div: str | None = None) -> dict[str, Any]:
    org: dict[str, Any] = {"resourceType": "Organization", "name": name}
    if div is not None:
        org["text"] = {"status": "generated", "div": div}
    return org


@pytest.mark.parametrize("name", ["Org \uffff", "Org \ufffe", "Org \u0001", "Org \u001f"])
def test_a_string_xml_cannot_carry_is_refused(client, name):
    r = client.post("/fhir/Organization", **body(_org(name)))
    assert r.status_code == 422, r.text
    assert r.json()["issue"][0]["expression"] == ["Organization.name"]
    assert _count(client, "Organization") == 0


BAD_DIVS = {
    "an undefined entity": f"<div {XHTML}>a&nbsp;b</div>",
    "unclosed tags": "<p>unclosed <b>bold</p>",
    "a bare p as root": f"<p {XHTML}>text</p>",
    "no XHTML namespace": "<div>text</div>",
    "a DOCTYPE with entities": f'<!DOCTYPE div [<!ENTITY x "boom">]><div {XHTML}>&x;</div>',
    "a script": f"<div {XHTML}><p>hi</p><script>alert(1)</script></div>",
    "an event handler": f'<div {XHTML}><p onclick="alert(1)">hi</p></div>',
    "a foreign element": f'<div {XHTML}><p>hi</p><svg xmlns="http://www.w3.org/2000/svg"/></div>',
    "no content": f"<div {XHTML}>  <p> </p></div>",
    "not XML at all": "just text",
}


@pytest.mark.parametrize("label", BAD_DIVS)
def test_a_narrative_that_is_not_plain_xhtml_is_refused_from_json(client, label):
    r = client.post("/fhir/Organization", **body(_org("Org", BAD_DIVS[label])))
    assert r.status_code == 422, r.text
    assert r.json()["issue"][0]["expression"] == ["Organization.text.div"]
    assert _count(client, "Organization") == 0


@pytest.mark.parametrize("div", [f"<div {XHTML}><p>hi</p><script>alert(1)</script></div>",
                                 f'<div {XHTML}><p onclick="alert(1)">hi</p></div>',
                                 f"<div {XHTML}> </div>"])
def test_a_narrative_that_is_not_plain_xhtml_is_refused_from_xml(client, div):
    xml = (f'<Organization xmlns="http://hl7.org/fhir"><text><status value="generated"/>'
           f'{div}</text><name value="Org"/></Organization>')
    r = client.post("/fhir/Organization", content=xml, headers=XML_IN)
    assert r.status_code == 422, r.text
    assert r.json()["issue"][0]["expression"] == ["Organization.text.div"]
    assert _count(client, "Organization") == 0


def test_a_contained_resources_narrative_is_checked_too(client):
    org = _org("Org") | {"contained": [_org("Inner", "<p>x") | {"id": "inner"}],
                         "partOf": {"reference": "#inner"}}
    r = client.post("/fhir/Organization", **body(org))
    assert r.status_code == 422
    assert r.json()["issue"][0]["expression"] == ["Organization.contained[0].text.div"]


def test_a_plain_narrative_is_stored_and_served_as_xml_to_every_client(client, as_org):
    div = (f'<div {XHTML} xml:lang="sv"><p class="x">Hej &amp; <b>v&#228;lkommen</b></p>'
           '<table border="1"><tr><td colspan="2">a</td></tr></table>'
           '<a href="https://example.org">l</a><img src="#i" alt="i"/></div>')
    rid = create(client, _org("Odd Narrative AB", div))["id"]
    read = client.get(f"/fhir/Organization/{rid}", headers=XML_OUT)
    assert read.status_code == 200 and "välkommen" in read.text
    other = as_org("SE2321000198-VC01")
    found = client.get("/fhir/Organization?name=Odd", headers=XML_OUT | other)
    assert found.status_code == 200 and "Odd Narrative AB" in found.text
