"""FHIR XML beyond single resources (http://hl7.org/fhir/R4/xml.html, http.html): search and
history Bundles, errors, operations' Parameters and messages in XML, checked against the hub's
own JSON and against an independent reader (FHIR.js, in ../shared/tools/fhir-validate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from lxml import etree

import sip_factory as f
from fhirhttp import JSON_HEADERS, body, create, patient, plain_careplan
from messaging import harness
from messaging.harness import BUP, URL, status_change
from sip_hub.fhir import models
from sip_process import (SCHOOL, SOC, alva_case, code, invitation, parameters, ref, string,
                         values, write_case)

XML_OUT = {"accept": "application/fhir+xml"}
XML_IN = {"content-type": "application/fhir+xml", "accept": "application/fhir+xml"}
NS = 'xmlns="http://hl7.org/fhir"'
F = "{http://hl7.org/fhir}"
EXAMPLES = sorted((Path(__file__).parent.parent / "fixtures" / "r4-examples").glob("*.json"))
PLAN = "alva-sip"
# the messaging tests' fixtures: a hub with messaging, the demo SIP written in it
broker, hub, world = harness.broker, harness.hub, harness.world


def _xml(r: Any, status: int = 200) -> etree._Element:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/fhir+xml"), r.headers
    return etree.fromstring(r.content)


def _as_json(r: Any, status: int = 200) -> dict[str, Any]:
    """An XML answer read back by the hub's own reader, to compare with its JSON answer."""
    _xml(r, status)
    return models.from_xml(r.content)


# -- search and history ----------------------------------------------------------------------

def test_a_search_with_an_include_is_an_xml_bundle_with_each_resource_in_its_element(client):
    pid = create(client, patient())["id"]
    cid = create(client, plain_careplan(pid, title="Plan <&> åäö"))["id"]
    url = f"/fhir/CarePlan?subject=Patient/{pid}&_include=CarePlan:subject"
    root = _xml(client.get(url, headers=XML_OUT))
    assert root.tag == f"{F}Bundle"
    assert root.find(f"{F}type").get("value") == "searchset"
    assert root.find(f"{F}total").get("value") == "1"
    assert root.find(f"{F}link/{F}relation").get("value") == "self"
    entries = root.findall(f"{F}entry")
    got = [(e.find(f"{F}fullUrl").get("value"), e.find(f"{F}search/{F}mode").get("value"),
            [c.tag for c in e.find(f"{F}resource")]) for e in entries]
    assert got == [(f"http://hub.test/fhir/CarePlan/{cid}", "match", [f"{F}CarePlan"]),
                   (f"http://hub.test/fhir/Patient/{pid}", "include", [f"{F}Patient"])]
    assert root.find(f".//{F}CarePlan/{F}title").get("value") == "Plan <&> åäö"
    as_json = client.get(url).json()
    as_xml = _as_json(client.get(url + "&_format=xml"))
    for key in ("type", "total", "entry"):
        assert as_xml[key] == as_json[key], key


def test_an_empty_search_is_an_xml_bundle_without_entries(client):
    root = _xml(client.get("/fhir/CarePlan?status=revoked", headers=XML_OUT))
    assert root.find(f"{F}total").get("value") == "0"
    assert root.find(f"{F}entry") is None and root.find(f"{F}link") is not None


def test_history_in_xml_has_each_version_and_the_deletion(client):
    pid = create(client, patient())["id"]
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 200
    url = f"/fhir/Patient/{pid}/_history"
    root = _xml(client.get(url, headers=XML_OUT))
    assert root.find(f"{F}type").get("value") == "history"
    gone, first = root.findall(f"{F}entry")
    assert gone.find(f"{F}resource") is None
    assert gone.find(f"{F}request/{F}method").get("value") == "DELETE"
    assert first.find(f"{F}resource/{F}Patient/{F}id").get("value") == pid
    assert _as_json(client.get(url + "?_format=xml"))["entry"] == client.get(url).json()["entry"]


def test_a_negotiated_answer_names_accept_in_vary(client):
    """RFC 9110 12.5.5: the same URL answers JSON or XML by Accept; without ``Vary: Accept``
    a cache could hand a JSON client the XML another client asked for (and the answers carry
    Last-Modified, so a cache may keep them)."""
    pid = create(client, patient())["id"]
    for url in (f"/fhir/Patient/{pid}", "/fhir/Patient", f"/fhir/Patient/{pid}/_history",
                "/fhir/metadata", "/fhir/Patient/nope"):
        for headers in (XML_OUT, {}):
            vary = client.get(url, headers=headers).headers.get("vary", "")
            assert "accept" in [v.strip().lower() for v in vary.split(",")], (url, vary)


# -- errors ------------------------------------------------------------------------------------

def test_errors_are_xml_operation_outcomes_when_xml_was_asked_for(client):
    pid = create(client, patient())["id"]
    cases = [
        (client.get("/fhir/CarePlan?bogus%3C%26%3E%C3%A5=1", headers=XML_OUT), 400),
        (client.get("/fhir/CarePlan/nope", headers=XML_OUT), 404),
        (client.put(f"/fhir/Patient/{pid}", content=orjson.dumps({**patient(), "id": pid}),
                    headers={**JSON_HEADERS, **XML_OUT, "if-match": 'W/"9"'}), 412),
        (client.post("/fhir/CarePlan", content=b'{"resourceType": "CarePlan", "x<&>": 1}',
                     headers={**JSON_HEADERS, **XML_OUT}), 422),
    ]
    for r, status in cases:
        root = _xml(r, status)
        assert root.tag == f"{F}OperationOutcome"
        assert root.find(f"{F}issue/{F}severity").get("value") == "error"
        assert _as_json(r, status) == json.loads(
            client.request(r.request.method, str(r.request.url), content=r.request.content,
                           headers={k: v for k, v in r.request.headers.items()
                                    if k != "accept"}).content)
    assert "bogus<&>å" in _xml(cases[0][0], 400).find(f".//{F}diagnostics").get("value")
    expressions = [e.get("value") for e in _xml(cases[3][0], 422).iter(f"{F}expression")]
    assert expressions == ["CarePlan.subject", "CarePlan.x<&>"]


def test_repeating_expression_and_location_are_repeated_elements():
    oo = {"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "invalid", "diagnostics": "å <&> \"'",
         "location": ["/f:A/f:b", "/f:C"], "expression": ["A.b", "C.d"]}]}
    root = etree.fromstring(models.to_xml(oo))
    assert [e.get("value") for e in root.iter(f"{F}expression")] == ["A.b", "C.d"]
    assert [e.get("value") for e in root.iter(f"{F}location")] == ["/f:A/f:b", "/f:C"]
    assert models.from_xml(models.to_xml(oo)) == oo


# -- operations and messages -------------------------------------------------------------------

def _post_xml(client: Any, path: str, headers: dict[str, str], params: dict[str, Any]) -> Any:
    return client.post(f"/fhir/{path}", content=models.to_xml(params),
                       headers=headers | XML_IN)


def test_operations_take_and_answer_parameters_in_xml(client, as_org):
    h = {org: as_org(org) for org in (SOC, BUP, SCHOOL)}
    write_case(client, h[SOC], alva_case())
    r = _post_xml(client, f"CarePlan/{PLAN}/$transition", h[SOC],
                  parameters(code("to", "kartlaggning"), string("reason", "Åäö <&> \"x\"")))
    out = _as_json(r)
    assert values(out, "to") == ["kartlaggning"]
    assert values(out, "carePlan")[0]["id"] == PLAN
    out = _as_json(_post_xml(client, f"CarePlan/{PLAN}/$invite", h[SOC],
                             invitation(f.BUP, f.SCHOOL, start_days=1)))
    task = next(t for t in values(out, "task") if t["owner"]["reference"] == f.BUP)
    out = _as_json(_post_xml(client, f"Task/{task['id']}/$respond", h[BUP], parameters(
        code("answer", "accept"), ref("representative", f.BUP_REPRESENTATIVE))))
    assert values(out, "task")[0]["status"] == "accepted"
    r = client.post(f"/fhir/CarePlan/{PLAN}/$transition", headers=h[SOC] | XML_IN, content=(
        f'<Parameters {NS}><parameter><name value="to"/><valueCode value="x"/></parameter>'
        '<parameter><name value="to"/><valueCode value="y"/></parameter></Parameters>'))
    assert "'to' may be given once" in _as_json(r, 400)["issue"][0]["diagnostics"]


def test_a_message_in_xml_is_processed_and_answered_in_xml(world):
    msg = models.to_xml(status_change(world))
    r = world.client.post(URL, content=msg, headers=XML_IN | world.headers[BUP])
    answer = _as_json(r)
    assert answer["type"] == "message"
    header = answer["entry"][0]["resource"]
    assert header["response"]["code"] == "ok", r.text


# -- what FHIR XML has no place for --------------------------------------------------------

def test_a_div_with_an_id_or_extensions_is_refused_in_json(client):
    """xhtml takes no extensions (xhtml.extension 0..0) and XML has no place for a div's id but
    the XHTML's own attribute: a ``_div`` was stored and silently dropped in XML."""
    res = {**patient(), "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/'
                                 '1999/xhtml">x</div>', "_div": {"id": "d"}}}
    r = client.post("/fhir/Patient", **body(res))
    assert r.status_code == 422, r.text
    assert r.json()["issue"][0]["expression"] == ["Patient.text.div"]
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 0


@pytest.mark.parametrize("xml, where", [
    (f'<Patient {NS}><name><family value="F"/><given id="g"/></name></Patient>',
     "Patient.name.given"),
    (f'<Patient {NS}><birthDate id="b"/></Patient>', "Patient.birthDate"),
    (f'<Patient {NS}><name id="n"/></Patient>', "Patient.name"),
])
def test_an_element_with_only_an_id_is_refused_as_ele_1_where_the_client_wrote_it(client, xml,
                                                                                  where):
    r = client.post("/fhir/Patient", content=xml,
                    headers={**XML_IN, "accept": "application/fhir+json"})
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert "ele-1" in issue["diagnostics"] and issue["expression"] == [where], issue


# -- an independent reader: FHIR.js ------------------------------------------------------------

_FHIR_JS = """
const { Fhir } = require('fhir');
const fs = require('fs');
const fhir = new Fhir();
console.log(JSON.stringify(process.argv.slice(2).map(
  f => JSON.parse(fhir.xmlToJson(fs.readFileSync(f, 'utf8'))))));
"""


def _comparable(node: Any) -> Any:
    """Without meta, and with the narrative's whitespace between tags and its character
    references undone: FHIR.js drops XHTML's whitespace-only text and writes '"' for
    '&quot;' (both the same XHTML)."""
    if isinstance(node, dict):
        return {k: (" ".join(v.replace("&quot;", '"').split()).replace("> <", "><")
                    if k == "div" else _comparable(v)) for k, v in node.items() if k != "meta"}
    if isinstance(node, list):
        return [_comparable(v) for v in node]
    return node


def test_fhir_js_reads_the_xml_of_each_official_example_as_the_hubs_json(client,
                                                                        fhir_validator,
                                                                        tmp_path):
    script = tmp_path / "xml2json.js"
    script.write_text(_FHIR_JS, "utf-8")
    files, expected = [], []
    for path in EXAMPLES:
        original = json.loads(path.read_text())
        where = f"/fhir/{original['resourceType']}/{original['id']}"
        assert client.put(where, **body(original)).status_code == 201
        xml = client.get(where, headers=XML_OUT)
        assert xml.status_code == 200, xml.text
        files.append(tmp_path / f"{path.stem}.xml")
        files[-1].write_bytes(xml.content)
        expected.append(client.get(where).json())
    done = fhir_validator.run(script, *files)
    assert done.returncode == 0, done.stderr[-2000:]
    for path, want, got in zip(EXAMPLES, expected, json.loads(done.stdout)):
        assert _comparable(got) == _comparable(want), path.name
