"""FHIR XML as a strict integrator sends and expects it (http://hl7.org/fhir/R4/xml.html):
element ids and primitive ids as attributes, values written back as the client wrote them,
and attributes FHIR XML does not define refused (400, nothing stored)."""

from __future__ import annotations

from typing import Any

import pytest
from lxml import etree

from fhirhttp import JSON_HEADERS, body, create, patient

XML_IN = {"content-type": "application/fhir+xml", "accept": "application/fhir+json"}
XML_OUT = {"accept": "application/fhir+xml"}
NS = 'xmlns="http://hl7.org/fhir"'
F = "{http://hl7.org/fhir}"


def _read_xml(client: Any, rtype: str, rid: str) -> etree._Element:
    r = client.get(f"/fhir/{rtype}/{rid}", headers=XML_OUT)
    assert r.status_code == 200, r.text
    return etree.fromstring(r.content)


def test_primitive_and_element_ids_survive_xml_in(client):
    xml = (f'<Patient {NS}><name id="n1"><given value="A" id="g0"/><given>'
           '<extension url="http://x.se/e"><valueString value="y"/></extension></given>'
           '</name><birthDate id="b1" value="1970-01-01"/></Patient>')
    r = client.post("/fhir/Patient", content=xml, headers=XML_IN)
    assert r.status_code == 201, r.text
    got = r.json()
    assert got["name"][0]["id"] == "n1"
    assert got["name"][0]["given"] == ["A", None]
    assert got["name"][0]["_given"][0] == {"id": "g0"}
    assert got["_birthDate"] == {"id": "b1"}


def test_element_and_primitive_ids_are_attributes_in_xml_out(client):
    res = {**patient(), "name": [{"id": "n1", "family": "F", "given": [None, "B"],
                                  "_given": [{"id": "g0", "extension": [
                                      {"url": "http://x.se/e", "valueCode": "a"}]}, None]}],
           "_birthDate": {"id": "b1"}}
    rid = create(client, res)["id"]
    root = _read_xml(client, "Patient", rid)
    name = root.find(f"{F}name")
    assert name.get("id") == "n1" and name.find(f"{F}id") is None
    assert name.findall(f"{F}given")[0].get("id") == "g0"
    assert root.find(f"{F}birthDate").get("id") == "b1"


def test_values_are_written_as_stored_not_as_the_model_reformats_them(client):
    pid = create(client, patient())["id"]
    goal = {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "x"},
            "subject": {"reference": f"Patient/{pid}"}, "startDate": "2020-01-01",
            "target": [{"measure": {"text": "a"}, "detailQuantity": {"value": 100}},
                       {"measure": {"text": "b"},
                        "detailQuantity": {"value": 12345678901234567890}},
                       {"measure": {"text": "c"}, "dueDate": "2021-02-03"}],
            "statusDate": "2020-01-02"}
    gid = create(client, goal)["id"]
    root = _read_xml(client, "Goal", gid)
    values = [q.get("value") for q in root.iter(f"{F}value")]
    assert values == ["100", "12345678901234567890"]
    last = root.find(f"{F}meta/{F}lastUpdated").get("value")
    stored = client.get(f"/fhir/Goal/{gid}").json()["meta"]["lastUpdated"]
    assert last == stored


def test_a_datetime_read_from_xml_is_kept_as_written(client):
    pid = create(client, patient())["id"]
    xml = (f'<CarePlan {NS}><status value="active"/><intent value="plan"/>'
           f'<subject><reference value="Patient/{pid}"/></subject>'
           '<period><start value="2020-01-01T10:00:00.000+01:00"/></period>'
           '<created value="2020-01-01T10:00:00.120Z"/></CarePlan>')
    r = client.post("/fhir/CarePlan", content=xml, headers=XML_IN)
    assert r.status_code == 201, r.text
    assert r.json()["period"]["start"] == "2020-01-01T10:00:00.000+01:00"
    assert r.json()["created"] == "2020-01-01T10:00:00.120Z"


@pytest.mark.parametrize("xml", [
    f'<Patient {NS}><active value="true" foo="bar"/></Patient>',
    f'<Patient {NS} foo="bar"><active value="true"/></Patient>',
    f'<Patient {NS} xmlns:x="urn:x"><name x:note="n"><family value="F"/></name></Patient>',
])
def test_an_attribute_fhir_xml_does_not_define_is_refused(client, xml):
    r = client.post("/fhir/Patient", content=xml, headers=XML_IN)
    assert r.status_code == 400, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "attribute" in r.json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 0


@pytest.mark.parametrize("xml, said", [
    (f'<Patient {NS}>text<active value="true"/></Patient>', "holds text"),
    (f'<Patient {NS}><active value="true"/>tail</Patient>', "holds text"),
    (f'<Patient {NS}><contained><Organization><id value="a"/><name value="A"/></Organization>'
     '<Organization><id value="b"/><name value="B"/></Organization></contained>'
     '<managingOrganization><reference value="#a"/></managingOrganization></Patient>',
     "exactly one resource"),
    (f'<Patient {NS}><contained><id value="a"/></contained></Patient>', "exactly one resource"),
])
def test_content_fhir_core_would_drop_is_refused(client, xml, said):
    r = client.post("/fhir/Patient", content=xml, headers=XML_IN)
    assert r.status_code == 400, r.text
    assert said in r.json()["issue"][0]["diagnostics"]
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 0


def test_a_transaction_bundle_in_xml_still_reads(client):
    xml = (f'<Bundle {NS}><type value="transaction"/><entry><fullUrl value="urn:uuid:'
           '8d2f0c8e-0000-4000-8000-000000000001"/><resource><Patient><identifier><system '
           'value="http://electronichealth.se/identifier/personnummer"/><value '
           'value="191212121212"/></identifier><birthDate id="b" value="1912-12-12"/>'
           '</Patient></resource><request><method value="POST"/><url value="Patient"/>'
           '</request></entry></Bundle>')
    r = client.post("/fhir", content=xml, headers=XML_IN)
    assert r.status_code == 200, r.text
    rid = r.json()["entry"][0]["response"]["location"].split("Patient/")[1].split("/")[0]
    got = client.get(f"/fhir/Patient/{rid}").json()
    assert got["_birthDate"] == {"id": "b"}, got


def test_json_with_ids_round_trips_through_xml(client):
    res = {**patient(), "name": [{"id": "n1", "family": "F", "given": ["A", None],
                                  "_given": [None, {"extension": [
                                      {"url": "http://x.se/e", "valueString": "s"}]}]}],
           "_birthDate": {"id": "b1", "extension": [
               {"url": "http://x.se/t", "valueDateTime": "1912-12-12T10:00:00+01:00"}]}}
    rid = create(client, res)["id"]
    xml = client.get(f"/fhir/Patient/{rid}", headers=XML_OUT).content
    back = client.put(f"/fhir/Patient/{rid}", content=xml,
                      headers={**XML_IN, "content-type": "application/fhir+xml"})
    assert back.status_code == 200, back.text
    got = back.json()
    for key in ("name", "_birthDate", "birthDate"):
        assert got[key] == res[key], key
    assert client.get(f"/fhir/Patient/{rid}", headers=JSON_HEADERS).json()["name"] == res[
        "name"]
    assert body  # (helpers shared with the other route tests)
