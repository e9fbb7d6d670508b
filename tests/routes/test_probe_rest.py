"""Probes of the FHIR REST surface as a demanding client uses it: search modifiers and result
parameters, history, transaction and batch Bundles, XML and content negotiation. Each test
holds a defect found by probing (a wrong result, a wrong status, a leak, or a refused request
that still changed data) to its fix."""

from __future__ import annotations

import time

import orjson
import pytest

from fhirhttp import JSON_HEADERS, body, create, outcome_text, patient, plain_careplan
from test_access import OUTSIDER, SOC, world  # noqa: F401 (fixture)

XML_IN = {"content-type": "application/fhir+xml", "accept": "application/fhir+json"}


def _ids(bundle: dict) -> list[str]:
    return sorted(e["resource"]["id"] for e in bundle.get("entry", [])
                  if e.get("search", {}).get("mode") == "match")


def _post_bundle(client, btype: str, entries: list[dict], headers=None):
    return client.post("/fhir", content=orjson.dumps(
        {"resourceType": "Bundle", "type": btype, "entry": entries}),
        headers=JSON_HEADERS | (headers or {}))


@pytest.fixture
def plans(client):
    p = create(client, patient())
    return p, [create(client, plain_careplan(p["id"])) for _ in range(3)]


# -- search ---------------------------------------------------------------------------------

@pytest.mark.parametrize("query", ["_id:not={id}", "_id:missing=true", "_id:exact={id}",
                                   "_id:contains={id}", "_lastUpdated:not=2020",
                                   "_lastUpdated:missing=false", "_lastUpdated:exact=2020"])
def test_a_modifier_on_id_or_last_updated_is_refused_not_ignored(client, plans, query):
    """``_id:not=X`` answered X itself, and ``_lastUpdated:not=2020`` what ``=2020`` does:
    the modifier was dropped, which turned the search into its opposite."""
    _, cps = plans
    r = client.get("/fhir/CarePlan?" + query.format(id=cps[0]["id"]))
    assert r.status_code == 400, r.text
    assert "no modifier" in outcome_text(r)


@pytest.mark.parametrize("include", ["CarePlan:patient:iterate", "CarePlan:patient:Goal",
                                     "CarePlan:subject:Nonsense"])
def test_an_include_of_a_type_the_parameter_cannot_reach_is_refused(client, plans, include):
    """The third part of ``_include`` (the target type) was taken as it came: a typo, or
    ``:iterate`` in the wrong place, included nothing without a word."""
    r = client.get(f"/fhir/CarePlan?_include={include}")
    assert r.status_code == 400, r.text
    assert "_include" in outcome_text(r)


def test_a_chained_search_sees_only_targets_the_caller_may_read(client, world, as_org):
    """An organisation's own plan for a person it may not read made the chain an oracle on
    that person's personnummer, name and birth date."""
    h = world[OUTSIDER]
    own = plain_careplan("alva")
    r = client.post("/fhir/CarePlan", content=orjson.dumps(own), headers=JSON_HEADERS | h)
    assert r.status_code == 201, r.text
    assert client.get("/fhir/Patient/alva", headers=h).status_code == 403
    for chain in ("patient.identifier=201103142384", "patient.family=Andersson",
                  "subject:Patient.birthdate=2011-03-14", "patient._id=alva"):
        b = client.get(f"/fhir/CarePlan?{chain}", headers=h).json()
        assert b["total"] == 0 and "entry" not in b, chain
    # Nor does a conditional create that names it by a chain tell.
    r = client.post("/fhir/CarePlan", content=orjson.dumps(own), headers=JSON_HEADERS | h | {
        "If-None-Exist": "patient.identifier=201103142384"})
    assert r.status_code == 201, r.text
    # Its plans stay visible to it, and the chain works for those who may read the person
    # (not to the outsider's plans, which the consent keeps from them: access.withholds).
    assert client.get("/fhir/CarePlan?patient=Patient/alva", headers=h).json()["total"] == 2
    assert client.get("/fhir/CarePlan?patient.family=Andersson").json()["total"] == 3
    soc = client.get("/fhir/CarePlan?patient.identifier=201103142384", headers=world[SOC])
    assert _ids(soc.json()) == ["alva-sip"] and soc.json()["total"] == 1


@pytest.mark.parametrize("fmt, served", [
    ("application/fhir%2Bxml;fhirVersion=4.0", "application/fhir+xml"),
    ("application/fhir%2Bxml; fhirVersion=4.0", "application/fhir+xml"),
    ("application/fhir+xml;fhirVersion=4.0", "application/fhir+xml"),  # (+ read as a space)
    ("application/fhir%2Bjson;charset=utf-8", "application/fhir+json")])
def test_format_with_media_type_parameters_is_understood(client, plans, fmt, served):
    """``_format`` takes a media type as ``Accept`` does, parameters included (FHIR's
    fhirVersion); they made it a 406."""
    r = client.get(f"/fhir/CarePlan?_format={fmt}")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(served)


@pytest.mark.parametrize("ctype", ["Application/X-WWW-Form-Urlencoded",
                                   "application/x-www-form-urlencoded; charset=UTF-8"])
def test_post_search_reads_its_media_type_case_insensitively(client, plans, ctype):
    p, cps = plans
    r = client.post("/fhir/CarePlan/_search", content=f"patient={p['id']}",
                    headers={"content-type": ctype})
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 3


def test_post_search_of_another_media_type_is_415(client, plans):
    r = client.post("/fhir/CarePlan/_search", content=b'{"patient": "x"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 415, r.text
    assert outcome_text(r)


# -- history --------------------------------------------------------------------------------

def test_history_at_gives_the_versions_current_at_that_time_only(client):
    """``_at`` gave every version written up to the time: FHIR asks for those current at some
    point of it (the version then in force, and any written within a partial time)."""
    p = create(client, patient())
    pid = p["id"]
    for gender in ("male", "female"):
        time.sleep(0.002)
        r = client.put(f"/fhir/Patient/{pid}", **body({**p, "gender": gender}))
        assert r.status_code == 200, r.text
    v2 = client.get(f"/fhir/Patient/{pid}/_history/2").json()["meta"]["lastUpdated"]
    b = client.get(f"/fhir/Patient/{pid}/_history", params={"_at": v2}).json()
    assert [e["resource"]["meta"]["versionId"] for e in b["entry"]] == ["2"] and b["total"] == 1
    # A whole year: every version of it (all written now), and the type and system forms.
    year = v2[:4]
    b = client.get(f"/fhir/Patient/{pid}/_history", params={"_at": year}).json()
    assert b["total"] == 3
    assert client.get("/fhir/Patient/_history", params={"_at": v2}).json()["total"] == 1
    before = client.get("/fhir/Patient/_history", params={"_at": "2000-01-01"}).json()
    assert before["total"] == 0 and "entry" not in before


# -- transaction and batch Bundles ----------------------------------------------------------

@pytest.mark.parametrize("method", ["DELETE", "PUT"])
def test_a_write_to_a_version_url_in_a_transaction_is_refused(client, plans, method):
    """``DELETE CarePlan/x/_history/1`` deleted the whole plan, and a PUT to a version URL
    updated it, as if the version were not there."""
    _, cps = plans
    cp = cps[0]
    entry = {"request": {"method": method, "url": f"CarePlan/{cp['id']}/_history/1"}}
    if method == "PUT":
        entry["resource"] = {**cp, "status": "completed"}
    for btype in ("transaction", "batch"):
        r = _post_bundle(client, btype, [entry])
        outcome = r.json() if btype == "transaction" else \
            r.json()["entry"][0]["response"]["outcome"]
        assert r.status_code == (400 if btype == "transaction" else 200), r.text
        assert outcome["resourceType"] == "OperationOutcome"
        assert "_history" in outcome["issue"][0]["diagnostics"]
    stored = client.get(f"/fhir/CarePlan/{cp['id']}")
    assert stored.status_code == 200 and stored.json()["meta"]["versionId"] == "1"


def test_a_batch_names_each_faulty_entry_by_its_own_index(client, plans):
    """Every structural fault of a batch entry was reported as Bundle.entry[0]."""
    p, _ = plans
    r = _post_bundle(client, "batch", [
        {"request": {"method": "GET", "url": f"Patient/{p['id']}"}},
        {"foo": 1},
        {"request": {"method": "PATCH", "url": f"Patient/{p['id']}"}},
        {"request": {"method": "POST", "url": "Patient"}}])
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"].startswith("200")
    for i in (1, 2, 3):
        issue = entries[i]["response"]["outcome"]["issue"][0]
        assert entries[i]["response"]["status"] == "400"
        assert issue["diagnostics"].startswith(f"Bundle.entry[{i}]"), issue
        assert issue["expression"][0].startswith(f"Bundle.entry[{i}]"), issue


def test_a_transaction_with_one_full_url_for_two_entries_is_refused(client):
    """Two entries with one fullUrl (bdl-7): the references to it went to whichever came
    last, silently."""
    u = "urn:uuid:8a1c2b4e-6f3d-4e2a-9b1c-0d2e3f4a5b6c"
    r = _post_bundle(client, "transaction", [
        {"fullUrl": u, "resource": patient(), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": u, "resource": patient("200001012384", "Andersson", "Alva"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": plain_careplan("x") | {"subject": {"reference": u}},
         "request": {"method": "POST", "url": "CarePlan"}}])
    assert r.status_code == 400, r.text
    assert "Bundle.entry[1]" in outcome_text(r) and "Bundle.entry[0]" in outcome_text(r)
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 0


def test_a_placeholder_no_entry_resolves_is_refused(client, plans):
    """A ``urn:uuid:`` reference that no entry's fullUrl resolves (a typo, or the fullUrl of
    a DELETE) was stored as it came: a plan about nobody, outside every compartment."""
    p, _ = plans
    deleted = "urn:uuid:2d6c1f7a-3b4e-4c5d-8e9f-0a1b2c3d4e5f"
    for entries in (
            [{"resource": plain_careplan("x") | {
                "subject": {"reference": "urn:uuid:9b4d1c2a-5b1e-4f7a-8d3c-1a2b3c4d5e6f"}},
              "request": {"method": "POST", "url": "CarePlan"}}],
            [{"fullUrl": deleted, "request": {"method": "DELETE", "url": f"Patient/{p['id']}"}},
             {"resource": plain_careplan("x") | {"subject": {"reference": deleted}},
              "request": {"method": "POST", "url": "CarePlan"}}]):
        r = _post_bundle(client, "transaction", entries)
        assert r.status_code == 400, r.text
        text = outcome_text(r)
        assert f"Bundle.entry[{len(entries) - 1}]" in text and "urn:uuid:" in text
    assert client.get(f"/fhir/Patient/{p['id']}").status_code == 200
    assert client.get("/fhir/CarePlan?_summary=count").json()["total"] == 3


def test_a_conditional_reference_in_a_transaction_is_resolved(client, plans):
    """``Patient?identifier=...`` was stored as the reference itself: a plan outside its
    person's compartment, found by no search for the person."""
    p, _ = plans
    pnr = "http://electronichealth.se/identifier/personnummer|19121212-1212"
    r = _post_bundle(client, "transaction", [
        {"resource": plain_careplan("x") | {"subject": {"reference": f"Patient?identifier={pnr}"}},
         "request": {"method": "POST", "url": "CarePlan"}}])
    assert r.status_code == 200, r.text
    rid = r.json()["entry"][0]["fullUrl"].rsplit("/", 1)[1]
    stored = client.get(f"/fhir/CarePlan/{rid}").json()
    assert stored["subject"] == {"reference": f"Patient/{p['id']}"}
    assert client.get(f"/fhir/CarePlan?patient={p['id']}").json()["total"] == 4


@pytest.mark.parametrize("how", ["POST", "batch"])
def test_a_conditional_reference_outside_a_transaction_is_refused(client, plans, how):
    """FHIR resolves conditional references in transactions only; elsewhere one was stored
    as it came: a plan about nobody, outside every compartment."""
    plan = plain_careplan("x") | {"subject": {
        "reference": "Patient?identifier=http://electronichealth.se/identifier/personnummer"
                     "|191212121212"}}
    if how == "POST":
        r = client.post("/fhir/CarePlan", **body(plan))
        assert r.status_code == 422, r.text
        outcome = r.json()
    else:
        r = _post_bundle(client, "batch", [{"resource": plan,
                                            "request": {"method": "POST", "url": "CarePlan"}}])
        assert r.status_code == 200, r.text
        answer = r.json()["entry"][0]["response"]
        assert answer["status"].startswith("422")
        outcome = answer["outcome"]
    issues = outcome["issue"]
    assert any("conditional reference" in i["diagnostics"] and
               i["expression"] == ["CarePlan.subject.reference"] for i in issues), issues
    assert client.get("/fhir/CarePlan?_summary=count").json()["total"] == 3


@pytest.mark.parametrize("criteria, status", [("identifier=200001012384", 412),
                                              ("birthdate=1912-12-12&gender:missing=true", 412),
                                              ("nonsense=1", 400)])
def test_a_conditional_reference_matching_none_or_several_fails_the_transaction(
        client, plans, criteria, status):
    create(client, patient())  # a second Tolvan: two match the birth date
    r = _post_bundle(client, "transaction", [
        {"resource": patient("200001012384", "Andersson", "Alva"),
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": plain_careplan("x") | {"subject": {"reference": f"Patient?{criteria}"}},
         "request": {"method": "POST", "url": "CarePlan"}}])
    assert r.status_code == status, r.text
    assert "Bundle.entry[1]" in outcome_text(r)
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 2
    assert client.get("/fhir/CarePlan?_summary=count").json()["total"] == 3


def test_a_conditional_reference_finds_only_what_the_caller_may_read(client, world):
    """Resolved among what the caller may see: else it would link to, and tell of, a person
    it may not read."""
    own = plain_careplan("x") | {"subject": {
        "reference": "Patient?identifier=201103142384"}}
    r = _post_bundle(client, "transaction", [
        {"resource": own, "request": {"method": "POST", "url": "CarePlan"}}],
        headers=world[OUTSIDER])
    assert r.status_code == 412, r.text
    assert "alva" not in outcome_text(r).lower()


# -- XML ------------------------------------------------------------------------------------

_PNR_XML = ('<identifier><system value="http://electronichealth.se/identifier/personnummer"/>'
            '<value value="191212121212"/></identifier>')


@pytest.mark.parametrize("inner, fragment, where", [
    ('<gender>male</gender>', "holds text", "Patient.gender"),
    ('<gender/>', "neither a value nor children", "Patient.gender"),
    ('<name><family value="A"/>Andersson</name>', "holds text", "Patient.name"),
    ('<gender xmlns="urn:example:other" value="male"/>', "FHIR namespace", "Patient.gender"),
    ('<text><status value="generated"/><div><p>Hej</p></div></text>', "XHTML namespace",
     "Patient.text.div"),
])
def test_xml_the_parser_would_read_past_is_refused_and_nothing_is_stored(client, inner,
                                                                       fragment, where):
    """Each was stored without a word: the value written as text, or an element with no
    value, was dropped; an element of another namespace was read as FHIR's; a narrative div
    outside XHTML's was reported as a missing 'Patient.url'."""
    doc = f'<Patient xmlns="http://hl7.org/fhir">{_PNR_XML}{inner}</Patient>'
    r = client.post("/fhir/Patient", content=doc.encode(), headers=XML_IN)
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert fragment in issue["diagnostics"] and issue["expression"] == [where], issue
    assert client.get("/fhir/Patient?_summary=count").json()["total"] == 0


def test_xml_with_comments_narrative_extensions_and_contained_still_round_trips(client):
    """The regression guard of the checks above: what FHIR XML allows is read as before."""
    doc = ('<?xml version="1.0"?><!-- c --><Patient xmlns="http://hl7.org/fhir"><!-- c -->'
           '<?pi x?><contained><Organization><id value="o1"/><name value="X"/></Organization>'
           '</contained>'
           '<text><status value="generated"/><div xmlns="http://www.w3.org/1999/xhtml">'
           '<p>Hej <b>Tolvan</b></p></div></text>' + _PNR_XML +
           '<gender><extension url="http://example.org/x"><valueBoolean value="true"/>'
           '</extension></gender><managingOrganization><reference value="#o1"/>'
           '</managingOrganization></Patient>')
    r = client.post("/fhir/Patient", content=doc.encode(), headers=XML_IN)
    assert r.status_code == 201, r.text
    stored = r.json()
    assert stored["_gender"]["extension"][0]["valueBoolean"] is True
    assert "<b>Tolvan</b>" in stored["text"]["div"]
    back = client.get(f"/fhir/Patient/{stored['id']}", headers={"accept": "application/fhir+xml"})
    again = client.post("/fhir/Patient", content=back.content, headers=XML_IN)
    assert again.status_code == 201, again.text
    assert {k: v for k, v in again.json().items() if k not in ("id", "meta")} == \
        {k: v for k, v in stored.items() if k not in ("id", "meta")}


def test_xml_with_prefixed_namespaces_reads_as_the_default_namespace(client):
    """XML lets a document bind FHIR's (and XHTML's) namespace to a prefix; the same
    resource in either form is the same resource. A prefixed one was a 400 naming '<None>',
    a prefixed narrative div a 422 for a missing 'Patient.url'. A narrative's non-ASCII text
    reads as it does from JSON ('då', not 'd&#229;')."""
    plain = ('<Patient xmlns="http://hl7.org/fhir"><text><status value="generated"/>'
             '<div xmlns="http://www.w3.org/1999/xhtml"><p>Hej <b>då</b> &amp; 1&#160;2</p>'
             '</div></text>' + _PNR_XML + '<name><family value="Tolvansson"/>'
             '<given value="Tolvan"/><given value="Sven"/></name><gender value="male"/>'
             '</Patient>')
    prefixed = ('<f:Patient xmlns:f="http://hl7.org/fhir" xmlns:h="http://www.w3.org/1999/xhtml">'
                '<f:text><f:status value="generated"/><h:div><h:p>Hej <h:b>då</h:b> &amp; '
                '1&#160;2</h:p></h:div></f:text>' + _PNR_XML.replace("<", "<f:")
                .replace("<f:/", "</f:") + '<f:name><f:family value="Tolvansson"/>'
                '<f:given value="Tolvan"/><f:given value="Sven"/></f:name>'
                '<f:gender value="male"/></f:Patient>')
    stored = []
    for doc in (plain, prefixed):
        r = client.post("/fhir/Patient", content=doc.encode(), headers=XML_IN)
        assert r.status_code == 201, r.text
        stored.append({k: v for k, v in r.json().items() if k not in ("id", "meta")})
    assert stored[0] == stored[1]
    assert stored[0]["name"][0]["given"] == ["Tolvan", "Sven"]
    assert stored[0]["text"]["div"] == ('<div xmlns="http://www.w3.org/1999/xhtml"><p>Hej '
                                        '<b>då</b> &amp; 1\u00a02</p></div>')
    wrong = prefixed.replace('xmlns:f="http://hl7.org/fhir"', 'xmlns:f="urn:example:other"')
    r = client.post("/fhir/Patient", content=wrong.encode(), headers=XML_IN)
    assert r.status_code == 400 and "FHIR namespace" in outcome_text(r)
