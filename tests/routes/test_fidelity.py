"""FHIR fidelity over HTTP: a decimal comes back as it was written (datatypes.html#decimal:
precision is kept), in JSON and XML, on every read and in the messages the hub forwards; a JSON
object with a key given twice and an integer in a form FHIR does not write are refused (400,
an OperationOutcome, nothing stored)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from lxml import etree

from fhirhttp import JSON_HEADERS, body, create, outcome_text, patient
from messaging import harness
from messaging.harness import BUP, SCHOOL, SOC, current_plan

# the messaging hub's fixtures
broker, hub, world, receivers = harness.broker, harness.hub, harness.world, harness.receivers

XML_IN = {"content-type": "application/fhir+xml", "accept": "application/fhir+json"}
XML_OUT = {"accept": "application/fhir+xml"}
NS = 'xmlns="http://hl7.org/fhir"'
F = "{http://hl7.org/fhir}"

# As written, each of which a float writes otherwise (1.5, 0.1, 100.0, 1.2345678901234568e16,
# 1.2345678901234568e23), and one it keeps.
DECIMALS = ["1.50", "0.10", "1e2", "12345678901234567.1", "123456789012345678901234", "2.5"]


def _goal_json(pid: str, values: list[str]) -> bytes:
    """A Goal with one target per value, its JSON written by hand so the numbers are as
    given."""
    targets = ",".join(f'{{"measure":{{"text":"m{i}"}},"detailQuantity":{{"value":{v}}}}}'
                       for i, v in enumerate(values))
    return (f'{{"resourceType":"Goal","lifecycleStatus":"active","description":{{"text":"x"}},'
            f'"subject":{{"reference":"Patient/{pid}"}},"target":[{targets}]}}').encode()


def _goal_xml(pid: str, values: list[str]) -> bytes:
    targets = "".join(f'<target><measure><text value="m{i}"/></measure>'
                      f'<detailQuantity><value value="{v}"/></detailQuantity></target>'
                      for i, v in enumerate(values))
    return (f'<Goal {NS}><lifecycleStatus value="active"/><description><text value="x"/>'
            f'</description>{targets}<subject><reference value="Patient/{pid}"/></subject>'
            '</Goal>').encode()


def _values_in_json(raw: bytes) -> list[str]:
    """The detailQuantity values of a Goal as its JSON text writes them."""
    out = []
    for part in raw.split(b'"detailQuantity":{"value":')[1:]:
        out.append(part.split(b"}", 1)[0].decode())
    return out


def _values_in_xml(raw: bytes) -> list[str]:
    root = etree.fromstring(raw)
    return [v.get("value") for v in root.iter(f"{F}detailQuantity")
            for v in v.iter(f"{F}value")]


def _every_read(client: Any, gid: str) -> None:
    """Each read of the Goal, in JSON and XML, gives the values as DECIMALS writes them."""
    base = f"/fhir/Goal/{gid}"
    for url in (base, f"{base}/_history/1", f"/fhir/Goal?_id={gid}", f"{base}/_history",
                "/fhir/Goal/_history"):
        r = client.get(url, headers={"accept": "application/fhir+json"})
        assert r.status_code == 200, r.text
        assert _values_in_json(r.content) == DECIMALS, (url, r.content)
        pretty = client.get(url, params={"_pretty": "true"}, headers=JSON_HEADERS)
        assert _values_in_json(pretty.content.replace(b": ", b":").replace(b"\n", b"")
                               .replace(b" ", b"")) == DECIMALS, url
        r = client.get(url, headers=XML_OUT)
        assert r.status_code == 200, r.text
        assert _values_in_xml(r.content) == DECIMALS, (url, r.content)


@pytest.mark.parametrize("form", ["json", "xml"])
def test_decimals_written_in_json_or_xml_come_back_as_written(client, form):
    pid = create(client, patient())["id"]
    r = client.post("/fhir/Goal", content=_goal_json(pid, DECIMALS) if form == "json"
                    else _goal_xml(pid, DECIMALS),
                    headers=JSON_HEADERS if form == "json" else XML_IN)
    assert r.status_code == 201, r.text
    assert _values_in_json(r.content) == DECIMALS
    _every_read(client, r.json()["id"])


def test_decimals_in_an_update_and_a_transaction_come_back_as_written(client):
    pid = create(client, patient())["id"]
    gid = create(client, orjson.loads(_goal_json(pid, ["1"] * len(DECIMALS))))["id"]
    goal = _goal_json(pid, DECIMALS).replace(b'{"resourceType":"Goal",',
                                             f'{{"resourceType":"Goal","id":"{gid}",'.encode())
    r = client.put(f"/fhir/Goal/{gid}", content=goal, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    assert _values_in_json(client.get(f"/fhir/Goal/{gid}").content) == DECIMALS
    bundle = (b'{"resourceType":"Bundle","type":"transaction","entry":[{"resource":'
              + _goal_json(pid, DECIMALS)
              + b',"request":{"method":"POST","url":"Goal"}}]}')
    r = client.post("/fhir", content=bundle, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    location = r.json()["entry"][0]["response"]["location"]
    new = location.split("/_history", 1)[0].rsplit("/", 2)[-1]
    assert _values_in_json(client.get(f"/fhir/Goal/{new}").content) == DECIMALS


def test_a_body_whose_numbers_a_float_keeps_is_stored_as_sent(client):
    pid = create(client, patient())["id"]
    sent = _goal_json(pid, ["1.5", "100", "-0.25", "1.0", "0"])
    r = client.post("/fhir/Goal", content=sent, headers=JSON_HEADERS)
    assert r.status_code == 201, r.text
    assert _values_in_json(r.content) == ["1.5", "100", "-0.25", "1.0", "0"]


def test_a_decimal_that_looks_like_one_inside_a_string_changes_nothing(client):
    pid = create(client, patient())["id"]
    sent = _goal_json(pid, ["1.50"]).replace(b'"text":"x"', b'"text":"a:1.50, [2.0e1"')
    r = client.post("/fhir/Goal", content=sent, headers=JSON_HEADERS)
    assert r.status_code == 201, r.text
    assert r.json()["description"]["text"] == "a:1.50, [2.0e1"
    assert _values_in_json(r.content) == ["1.50"]


def test_a_forwarded_message_keeps_the_decimal_as_written(world, receivers):
    hub = world
    hub.configure({org: receivers().url for org in (SOC, BUP, SCHOOL)})
    plan = current_plan(hub)  # a note (the plan decides nothing new) with a decimal
    plan.pop("meta")
    plan["note"] = [*plan.get("note", []), {"text": "Mätt", "extension": [
        {"url": "http://example.se/fhir/measured", "valueDecimal": "@D@"}]}]
    raw = orjson.dumps(plan).replace(b'"@D@"', b"1.50")
    before = {d.id for d in hub.deliveries()}
    r = hub.client.put("/fhir/CarePlan/alva-sip", content=raw,
                       headers=JSON_HEADERS | hub.headers[SOC])
    assert r.status_code == 200, r.text
    assert b'"valueDecimal":1.50' in r.content
    sent = [d for d in hub.deliveries() if d.id not in before]
    assert sent, "the change was forwarded to no one"
    for d in sent:
        assert b'"valueDecimal":1.50' in d.content, d.content[:400]


# -- a key given twice -------------------------------------------------------------------------

def _count(client: Any, rtype: str) -> int:
    r = client.get(f"/fhir/{rtype}", params={"_summary": "count"}, headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    return r.json()["total"]


def _refused_400(r: Any, *needles: str) -> None:
    assert r.status_code == 400, r.text
    text = outcome_text(r)
    for needle in needles:
        assert needle in text, text


@pytest.mark.parametrize("raw", [
    b'{"resourceType":"Patient","gender":"male","gender":"female"}',
    b'{"resourceType":"Patient","name":[{"family":"A","given":["B"],"family":"C"}]}',
    b'{\n  "resourceType": "Patient",\n  "gender" : "male",\n  "gender": "female"\n}',
    b'{"resourceType":"Patient","name":[{"family":"\\u00c5s","family":"\\u0022x"}]}',
    b'{"resourceType":"Patient","gender":"male","gen\\u0064er":"female"}',
    b'{"resourceType":"Patient","gender":"male","gender":"female","x":1.50}',
])
def test_a_key_given_twice_is_refused(client, raw):
    before = _count(client, "Patient")
    key = "family" if b"family" in raw else "gender"
    _refused_400(client.post("/fhir/Patient", content=raw, headers=JSON_HEADERS), key,
                 "twice")
    assert _count(client, "Patient") == before


def test_a_key_given_twice_in_a_transaction_entry_is_refused(client):
    before = _count(client, "Patient")
    raw = (b'{"resourceType":"Bundle","type":"transaction","entry":[{"resource":'
           b'{"resourceType":"Patient","active":true,"active":false},'
           b'"request":{"method":"POST","url":"Patient"}}]}')
    _refused_400(client.post("/fhir", content=raw, headers=JSON_HEADERS), "active")
    assert _count(client, "Patient") == before


@pytest.mark.parametrize("raw", [
    b'{"resourceType":"Patient","name":[{"family":"\\u00c5s"}],"gender":"male"}',
    b'{\n  "resourceType" : "Patient",\n  "name": [{"family": "a\\": b"}]\n}',
    b'{"resourceType":"Patient","name":[{"family":"\\u0022 :"}],"gender":"male"}',
])
def test_the_same_key_in_different_objects_and_look_alikes_in_strings_are_accepted(
        client, raw):
    r = client.post("/fhir/Patient", content=raw, headers=JSON_HEADERS)
    assert r.status_code == 201, r.text


# -- integers in a form FHIR does not write ----------------------------------------------------

@pytest.mark.parametrize("value", ["007", "+7", " 7", "7.0", "00"])
def test_an_xml_integer_in_another_form_is_refused(client, value):
    before = _count(client, "Patient")
    xml = (f'<Patient {NS}><name><family value="F"/></name>'
           f'<multipleBirthInteger value="{value}"/></Patient>')
    r = client.post("/fhir/Patient", content=xml, headers=XML_IN)
    _refused_400(r, "multipleBirthInteger")
    assert _count(client, "Patient") == before


@pytest.mark.parametrize("value", ["007", "+7", " 7", "7."])
def test_an_xml_decimal_in_another_form_is_refused(client, value):
    pid = create(client, patient())["id"]
    before = _count(client, "Goal")
    r = client.post("/fhir/Goal", content=_goal_xml(pid, [value]), headers=XML_IN)
    assert r.status_code in (400, 422), r.text
    assert "value" in outcome_text(r)  # (fhir_core names the element, not its path)
    assert _count(client, "Goal") == before


def test_an_xml_integer_as_fhir_writes_it_is_accepted(client):
    xml = (f'<Patient {NS}><name><family value="F"/></name>'
           '<multipleBirthInteger value="7"/></Patient>')
    r = client.post("/fhir/Patient", content=xml, headers=XML_IN)
    assert r.status_code == 201, r.text
    assert r.json()["multipleBirthInteger"] == 7


@pytest.mark.parametrize("value", [b"007", b"+7", b"07.5", b"-01"])
def test_a_json_number_with_a_leading_zero_or_plus_is_refused(client, value):
    before = _count(client, "Patient")
    raw = b'{"resourceType":"Patient","multipleBirthInteger":' + value + b"}"
    _refused_400(client.post("/fhir/Patient", content=raw, headers=JSON_HEADERS),
                 "Malformed JSON")
    assert _count(client, "Patient") == before


# -- what fhir_core read past in XML without a word ---------------------------------------------

@pytest.mark.parametrize(("body", "element"), [
    ('<gender value="male"/><gender value="female"/>', "gender"),     # the last one won
    ('<birthDate value="2001-01-01"/><birthDate value="2001-01-02"/>', "birthDate"),
    ('<name><family value="Ås"/><family value="Berg"/></name>', "family"),
    ('<maritalStatus><text value="a"/></maritalStatus>'
     '<maritalStatus><text value="b"/></maritalStatus>', "maritalStatus"),
])
def test_a_single_xml_element_given_twice_is_refused(client, body, element):
    before = _count(client, "Patient")
    r = client.post("/fhir/Patient", content=f"<Patient {NS}>{body}</Patient>",
                    headers=XML_IN)
    _refused_400(r, element)
    assert "more than once" in outcome_text(r)
    assert _count(client, "Patient") == before


@pytest.mark.parametrize("value", ["1", "0", "TRUE", "True", " true"])
def test_an_xml_boolean_in_another_form_is_refused(client, value):
    before = _count(client, "Patient")
    r = client.post("/fhir/Patient", content=f'<Patient {NS}><active value="{value}"/>'
                    '</Patient>', headers=XML_IN)
    assert r.status_code in (400, 422), r.text
    assert "active" in outcome_text(r) or "boolean" in outcome_text(r)
    assert _count(client, "Patient") == before


def test_repeating_xml_elements_and_booleans_as_fhir_writes_them_are_accepted(client):
    xml = (f'<Patient {NS}><active value="false"/><name><given value="Alva"/>'
           '<given value="Maja"/><family value="Åberg"/></name><name><family value="B"/>'
           '</name></Patient>')
    r = client.post("/fhir/Patient", content=xml, headers=XML_IN)
    assert r.status_code == 201, r.text
    assert r.json()["active"] is False
    assert [n.get("given") for n in r.json()["name"]] == [["Alva", "Maja"], None]


# -- an extension's value with an id and extensions of its own --------------------------------

TRANSLATION = "http://hl7.org/fhir/StructureDefinition/translation"


def _translated_org() -> dict[str, Any]:
    """An Organization whose extension's string value carries its English translation (the
    translation extension sits on the primitive value: ``_valueString``), and an id."""
    return {"resourceType": "Organization", "name": "Socialtjänsten",
            "extension": [{"url": "https://sip.example.se/fhir/StructureDefinition/unit-name",
                           "valueString": "Barn och unga",
                           "_valueString": {"id": "v1", "extension": [{
                               "url": TRANSLATION, "extension": [
                                   {"url": "lang", "valueCode": "en"},
                                   {"url": "content", "valueString": "Children and youth"}]}]}}]}


def _without_meta(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if k not in ("id", "meta")}


def test_an_extension_value_with_extensions_of_its_own_is_kept_in_json_and_xml(client):
    sent = _translated_org()
    made = create(client, sent)
    assert _without_meta(made) == sent
    url = f"/fhir/Organization/{made['id']}"
    assert _without_meta(client.get(url, headers=JSON_HEADERS).json()) == sent

    xml = client.get(url, headers=XML_OUT)
    assert xml.status_code == 200, xml.text
    value = etree.fromstring(xml.content).find(f"{F}extension/{F}valueString")
    assert value.get("value") == "Barn och unga" and value.get("id") == "v1"
    inner = value.find(f"{F}extension")
    assert inner.get("url") == TRANSLATION
    assert [e.find(f"{F}*").get("value") for e in inner] == ["en", "Children and youth"]

    # what the hub wrote in XML is taken back as it was
    r = client.put(url, content=xml.content, headers=XML_IN)
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "2"
    assert _without_meta(r.json()) == sent

    # as XML from the start
    r = client.post("/fhir/Organization", content=xml.content.replace(
        f"<id value=\"{made['id']}\"/>".encode(), b""), headers=XML_IN)
    assert r.status_code == 201, r.text
    assert _without_meta(r.json()) == sent


@pytest.mark.parametrize("ext, where", [
    ({"url": "http://e.se/x", "valueString": "a", "_valueCode": {"id": "c"}},
     "valueCode, valueString"),
    ({"url": "http://e.se/x", "_valueString": {"id": "s"}, "_valueCode": {"id": "c"}},
     "valueCode, valueString"),
    ({"url": "http://e.se/x", "valueString": "a", "_valueString": {"colour": "red"}},
     "_valueString"),
    ({"url": "http://e.se/x", "valueString": "a", "_valueString": ["a"]}, "_valueString"),
])
def test_an_extension_value_given_as_two_types_or_with_a_bad_sibling_is_refused(
        client, ext, where):
    before = _count(client, "Organization")
    r = client.post("/fhir/Organization", **body({"resourceType": "Organization",
                                                  "extension": [ext]}))
    assert r.status_code == 422, r.text
    text = outcome_text(r)
    assert where in text and "Organization.extension[0]" in text, text
    assert _count(client, "Organization") == before


@pytest.mark.node
def test_an_extension_value_with_extensions_of_its_own_validates_independently(
        client, fhir_validator, tmp_path):
    made = create(client, _translated_org())
    fhir_validator.validate_resources(tmp_path, [made])
