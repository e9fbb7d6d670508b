"""The REST interactions a connected system relies on, on SQLite and PostgreSQL."""

from __future__ import annotations

import orjson
import pytest

from fhirhttp import JSON_HEADERS, body, create, outcome_text, patient, plain_careplan


def test_create_assigns_id_version_and_answers_location_etag(client):
    r = client.post("/fhir/Patient", **body(patient()))
    assert r.status_code == 201
    res = r.json()
    assert res["meta"]["versionId"] == "1"
    assert r.headers["etag"] == 'W/"1"'
    assert r.headers["location"] == f"http://hub.test/fhir/Patient/{res['id']}/_history/1"
    assert "last-modified" in r.headers
    assert r.headers["content-type"].startswith("application/fhir+json")


def test_create_ignores_client_id_and_meta_version(client):
    p = patient() | {"id": "chosen", "meta": {"versionId": "99"}}
    res = create(client, p)
    assert res["id"] != "chosen"
    assert res["meta"]["versionId"] == "1"


def test_read_serves_exactly_the_stored_bytes(client):
    res = create(client, patient())
    r = client.get(f"/fhir/Patient/{res['id']}")
    assert r.status_code == 200
    assert r.json() == res
    assert r.headers["etag"] == 'W/"1"'


def test_identifier_is_normalised_on_write(client):
    p = patient()
    p["identifier"][0]["value"] = "19121212-1212"
    res = create(client, p)
    assert res["identifier"][0]["value"] == "191212121212"


def test_invalid_personnummer_is_rejected_with_its_location(client):
    p = patient()
    p["identifier"][0]["value"] = "19121212-1213"
    r = client.post("/fhir/Patient", **body(p))
    assert r.status_code == 422
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["Patient.identifier[0].value"]
    assert "check digit" in issue["diagnostics"]
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_update_makes_a_new_version_and_keeps_history(client):
    res = create(client, patient())
    res["name"][0]["family"] = "Tolvansdotter"
    r = client.put(f"/fhir/Patient/{res['id']}", **body(res))
    assert r.status_code == 200
    assert r.json()["meta"]["versionId"] == "2"
    v1 = client.get(f"/fhir/Patient/{res['id']}/_history/1")
    assert v1.status_code == 200 and v1.json()["name"][0]["family"] == "Tolvansson"
    hist = client.get(f"/fhir/Patient/{res['id']}/_history").json()
    assert hist["type"] == "history" and hist["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["2", "1"]


def test_update_with_stale_if_match_is_412_and_changes_nothing(client):
    res = create(client, patient())
    r = client.put(f"/fhir/Patient/{res['id']}",
                   content=orjson.dumps(res | {"gender": "male"}),
                   headers=JSON_HEADERS | {"if-match": 'W/"1"'})
    assert r.status_code == 200
    stale = client.put(f"/fhir/Patient/{res['id']}",
                       content=orjson.dumps(res | {"gender": "female"}),
                       headers=JSON_HEADERS | {"if-match": 'W/"1"'})
    assert stale.status_code == 412
    assert "version 2" in outcome_text(stale)
    assert client.get(f"/fhir/Patient/{res['id']}").json()["gender"] == "male"


def test_update_with_mismatched_id_is_400(client):
    res = create(client, patient())
    r = client.put(f"/fhir/Patient/{res['id']}", **body(res | {"id": "other"}))
    assert r.status_code == 400


def test_update_whose_body_has_no_id_is_a_400_that_says_so(client):
    """FHIR http.html#update: the body SHALL carry the URL's id. A client that left it out
    (a resource built anew and PUT to its URL) is told that, not that its id 'None' does not
    match; nothing is written."""
    res = create(client, patient())
    r = client.put(f"/fhir/Patient/{res['id']}", **body(
        {k: v for k, v in res.items() if k not in ("id", "meta")} | {"gender": "male"}))
    assert r.status_code == 400, r.text
    text = outcome_text(r)
    assert "The resource has no id" in text and f"'{res['id']}'" in text, text
    assert "None" not in text and "@ Patient.id" in text, text
    assert client.get(f"/fhir/Patient/{res['id']}").json() == res


def test_update_as_create_with_client_id(client):
    p = patient() | {"id": "tolvan"}
    r = client.put("/fhir/Patient/tolvan", **body(p))
    assert r.status_code == 201
    assert client.get("/fhir/Patient/tolvan").json()["id"] == "tolvan"


def test_delete_is_a_versioned_tombstone(client):
    res = create(client, patient())
    r = client.delete(f"/fhir/Patient/{res['id']}")
    assert r.status_code == 200
    gone = client.get(f"/fhir/Patient/{res['id']}")
    assert gone.status_code == 410
    assert gone.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Patient/{res['id']}/_history/1").status_code == 200
    hist = client.get(f"/fhir/Patient/{res['id']}/_history").json()
    assert hist["total"] == 2
    assert hist["entry"][0]["request"]["method"] == "DELETE"
    assert "resource" not in hist["entry"][0]
    assert client.get("/fhir/Patient?identifier=191212121212").json()["total"] == 0
    # Writing again creates it anew, as a new version: 201 as for a create (FHIR update).
    again = client.put(f"/fhir/Patient/{res['id']}", **body(res))
    assert again.status_code == 201 and again.json()["meta"]["versionId"] == "3"


def test_delete_unknown_is_404(client):
    assert client.delete("/fhir/Patient/nobody").status_code == 404


def test_delete_with_stale_if_match_is_412_and_deletes_nothing(client):
    res = create(client, patient())
    url = f"/fhir/Patient/{res['id']}"
    stale = client.delete(url, headers={"if-match": 'W/"7"'})
    assert stale.status_code == 412, stale.text
    assert "version 1" in outcome_text(stale)
    assert client.get(url).json()["meta"]["versionId"] == "1"
    assert client.get(f"{url}/_history").json()["total"] == 1
    assert client.delete(url, headers={"if-match": "seven"}).status_code == 400
    done = client.delete(url, headers={"if-match": 'W/"1"'})
    assert done.status_code == 200 and done.headers["etag"] == 'W/"2"'
    assert client.get(url).status_code == 410
    # Deleted since the client read it: the version it names is not the current one.
    assert client.delete(url, headers={"if-match": 'W/"1"'}).status_code == 412
    again = client.delete(url)
    assert again.status_code == 200 and "already deleted" in outcome_text(again)
    assert client.get(f"{url}/_history").json()["total"] == 2


def test_conditional_create_returns_existing_match(client):
    first = client.post("/fhir/Patient", content=orjson.dumps(patient()),
                        headers=JSON_HEADERS | {
                            "if-none-exist": "identifier=http://electronichealth.se/identifier/"
                                             "personnummer|191212121212"})
    assert first.status_code == 201
    second = client.post("/fhir/Patient", content=orjson.dumps(patient()),
                         headers=JSON_HEADERS | {
                             "if-none-exist": "identifier=http://electronichealth.se/identifier/"
                                              "personnummer|191212121212"})
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert client.get("/fhir/Patient").json()["total"] == 1


def test_conditional_create_with_several_matches_is_412(client):
    create(client, patient())
    create(client, patient())
    r = client.post("/fhir/Patient", content=orjson.dumps(patient()),
                    headers=JSON_HEADERS | {"if-none-exist": "identifier=191212121212"})
    assert r.status_code == 412


def test_conditional_update_creates_then_updates(client):
    url = "/fhir/Patient?identifier=http://electronichealth.se/identifier/personnummer|191212121212"
    r1 = client.put(url, **body(patient()))
    assert r1.status_code == 201
    r2 = client.put(url, **body(patient(family="Nyttnamn")))
    assert r2.status_code == 200
    assert r2.json()["id"] == r1.json()["id"]
    assert r2.json()["meta"]["versionId"] == "2"


def test_type_and_system_history(client):
    a = create(client, patient())
    create(client, {"resourceType": "Organization", "name": "Region Värmland"})
    client.put(f"/fhir/Patient/{a['id']}", **body(a | {"gender": "male"}))
    assert client.get("/fhir/Patient/_history").json()["total"] == 2
    system = client.get("/fhir/_history?_count=2").json()
    assert system["total"] >= 3
    assert len(system["entry"]) == 2
    assert any(link["relation"] == "next" for link in system["link"])


def test_history_since_filters_by_time(client):
    a = create(client, patient())
    later = client.get("/fhir/Patient/_history?_since=2999-01-01").json()
    assert later["total"] == 0
    assert client.get(f"/fhir/Patient/{a['id']}/_history?_since=2000-01-01").json()["total"] == 1


@pytest.mark.parametrize("prefer,expect_body", [("return=minimal", False),
                                                ("return=representation", True)])
def test_prefer_return(client, prefer, expect_body):
    r = client.post("/fhir/Patient", content=orjson.dumps(patient()),
                    headers=JSON_HEADERS | {"prefer": prefer})
    assert r.status_code == 201
    assert bool(r.content) is expect_body
    assert r.headers["location"]


def test_prefer_operation_outcome(client):
    r = client.post("/fhir/Patient", content=orjson.dumps(patient()),
                    headers=JSON_HEADERS | {"prefer": "return=OperationOutcome"})
    assert r.status_code == 201
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "Created Patient/" in outcome_text_info(r)


def outcome_text_info(r):
    return r.json()["issue"][0]["diagnostics"]


def test_xml_in_and_out(client):
    xml = (b'<Patient xmlns="http://hl7.org/fhir"><identifier><system value="'
           b'http://electronichealth.se/identifier/personnummer"/><value value="19121212-1212"/>'
           b'</identifier><name><family value="Tolvansson"/></name></Patient>')
    r = client.post("/fhir/Patient", content=xml,
                    headers={"content-type": "application/fhir+xml",
                             "accept": "application/fhir+xml"})
    assert r.status_code == 201, r.text
    assert r.headers["content-type"].startswith("application/fhir+xml")
    assert b"<value value=\"191212121212\"/>" in r.content
    rid = r.headers["location"].split("/")[-3]
    as_json = client.get(f"/fhir/Patient/{rid}?_format=json").json()
    assert as_json["name"][0]["family"] == "Tolvansson"
    as_xml = client.get(f"/fhir/Patient/{rid}?_format=xml")
    assert as_xml.content.startswith(b"<?xml")


def test_xml_with_doctype_is_refused_and_nothing_stored(client):
    evil = (b'<?xml version="1.0"?><!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
            b'<Patient xmlns="http://hl7.org/fhir"><name><family value="&x;"/></name></Patient>')
    r = client.post("/fhir/Patient", content=evil,
                    headers={"content-type": "application/fhir+xml"})
    assert r.status_code == 400
    assert "DOCTYPE" in outcome_text(r)
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_billion_laughs_is_refused(client):
    bomb = b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">' + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10 if i else b"&lol;" * 10)
        for i in range(1, 8)) + b']><Patient xmlns="http://hl7.org/fhir"/>'
    r = client.post("/fhir/Patient", content=bomb,
                    headers={"content-type": "application/fhir+xml"})
    assert r.status_code == 400


@pytest.mark.parametrize("before", [b"<!--" + b"x" * 5000 + b"-->", b" " * 5000])
def test_a_doctype_after_a_long_prolog_is_refused_as_any(client, before):
    """A DOCTYPE was looked for in the first 4,096 bytes only: one after a longer comment
    reached libxml2, which expanded its entities up to its own limit and answered with its
    internals. Wherever it is in the prolog, the hub refuses it before any is expanded."""
    lol = b'<!DOCTYPE lolz [<!ENTITY lol "lol">' + b"".join(
        b'<!ENTITY lol%d "%s">' % (i, b"&lol%d;" % (i - 1) * 10 if i > 1 else b"&lol;" * 10)
        for i in range(1, 10)) + b"]>"
    bomb = (b'<?xml version="1.0"?>' + before + lol +
            b'<Patient xmlns="http://hl7.org/fhir"><name><family value="&lol9;"/></name>'
            b"</Patient>")
    r = client.post("/fhir/Patient", content=bomb,
                    headers={"content-type": "application/fhir+xml"})
    assert r.status_code == 400
    assert outcome_text(r).startswith("XML with a DOCTYPE is not accepted"), outcome_text(r)
    assert client.get("/fhir/Patient").json()["total"] == 0


@pytest.mark.parametrize("method, path", [
    ("PUT", "CarePlan/{}"), ("POST", "CarePlan/{}/$transition"), ("POST", "CarePlan/{}/$invite"),
    ("POST", "Task/{}/$respond"), ("POST", "CarePlan/{}/$propose-revision"),
    ("POST", "CarePlan/{}/$approve-revision")])
@pytest.mark.parametrize("bad", ["a%00b", "x" * 65])
def test_an_id_that_is_no_fhir_id_is_a_400_before_anything_reads_by_it(client, method, path,
                                                                      bad):
    """An update read the resource it replaces by the URL's id before checking it, and the
    operations passed theirs on: PostgreSQL refused the NUL, a 5xx."""
    pid = create(client, patient())["id"]
    payload = plain_careplan(pid, id=bad) if method == "PUT" else {
        "resourceType": "Parameters", "parameter": [{"name": "to", "valueCode": "mote"},
                                                    {"name": "answer", "valueCode": "accept"}]}
    r = client.request(method, "/fhir/" + path.format(bad), **body(payload))
    assert r.status_code == 400 and "is not a valid FHIR id" in outcome_text(r), r.text


def test_dates_at_the_ends_of_the_calendar_are_stored_and_searched(client):
    """Year 9999 is a common "no end"; with a zone, either end of the calendar lies past what
    a datetime holds: validation (per-1) and the date index overflowed, a 5xx."""
    pid = create(client, patient())["id"]
    period = {"start": "0001-01-01T00:00:00+14:00", "end": "9999-12-31T23:59:59-14:00"}
    plan = create(client, plain_careplan(pid, period=period))
    assert plan["period"] == period
    for query in ("date=ge9999-12-30", "date=le0001-01-02", "date=ap2026-12-05",
                  "date=ap9999-12-31T23:59:59-14:00", "date=ap0001-01-01T00:00:00%2B14:00"):
        r = client.get(f"/fhir/CarePlan?{query}")
        assert r.status_code == 200, r.text
        assert [e["resource"]["id"] for e in r.json().get("entry", [])] == [plan["id"]], (
            query, r.json())
    backwards = plain_careplan(pid, period={"start": "9999-12-31", "end": "0001-01-01"})
    r = client.post("/fhir/CarePlan", **body(backwards))
    assert r.status_code == 422 and "per-1" in outcome_text(r)


@pytest.mark.parametrize("payload,ctype,status,fragment", [
    (b"{not json", "application/fhir+json", 400, "Malformed JSON"),
    (b"[1, 2]", "application/fhir+json", 400, "JSON object"),
    (b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"}}',
     "application/fhir+json", 400, "does not match"),
    (b'{"resourceType": "Patient", "birthDate": 12}', "application/fhir+json", 422,
     "Patient.birthDate"),
    (b'{"resourceType": "Patient", "gender": "bogus"}', "application/fhir+json", 422,
     "administrative-gender"),
    (b'{"resourceType": "Patient", "name": []}', "application/fhir+json", 422, "ele-1"),
    # A string holding a number where a primitive's extension object belongs: fhir_core
    # parses it as JSON and its own validator then raised AttributeError (a 5xx before)
    (b'{"resourceType": "Patient", "gender": "male", "_gender": "1.5"}', "application/fhir+json",
     422, "not valid FHIR R4"),
    (b'{"resourceType": "Patient", "identifier": [{"system": "urn:x", "_system": "7"}]}',
     "application/fhir+json", 422, "not valid FHIR R4"),
    # Control characters: PostgreSQL refused the NUL (a 5xx), XML cannot carry any of them
    (b'{"resourceType": "Patient", "name": [{"family": "a\\u0000b"}]}',
     "application/fhir+json", 422, "Patient.name[0].family holds a control character"),
    (b'{"resourceType": "Patient", "name": [{"given": ["Tolvan", "x\\u001bq"]}]}',
     "application/fhir+json", 422, "Patient.name[0].given[1] holds a control character"),
    (b'{"resourceType": "Patient"}', "text/plain", 415, "Content-Type"),
    (b"<Patient", "application/fhir+xml", 400, "Malformed XML"),
    (b'<Patient xmlns="http://hl7.org/fhir"><name><nickname value="T"/></name></Patient>',
     "application/fhir+xml", 400, "<nickname> is not an element FHIR R4 defines where it"),
    (b'{"resourceType": 5, "gender": "male"}', "application/fhir+json", 400,
     "resourceType must be a string naming a resource type"),
    (b'{"resourceType": "Patient", "contained": [{"resourceType": "Insats", "id": "i"}]}',
     "application/fhir+json", 422, "Unknown resourceType 'Insats'"),
    (b"", "application/fhir+json", 400, "no body"),
])
def test_bad_input_is_a_clear_4xx_and_nothing_is_stored(client, payload, ctype, status, fragment):
    r = client.post("/fhir/Patient", content=payload, headers={"content-type": ctype})
    assert r.status_code == status, r.text
    assert fragment in outcome_text(r)
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_oversized_body_is_413(client, settings):
    big = {"resourceType": "Patient", "name": [{"text": "x" * (settings.max_body_bytes + 10)}]}
    r = client.post("/fhir/Patient", **body(big))
    assert r.status_code == 413
    assert r.json()["resourceType"] == "OperationOutcome"


def test_unknown_and_unsupported_types_are_404(client):
    assert client.get("/fhir/Foo/1").status_code == 404
    r = client.get("/fhir/Observation")
    assert r.status_code == 404 and "not supported" in outcome_text(r)


def test_unknown_id_is_404_and_bad_id_is_400(client):
    assert client.get("/fhir/Patient/nobody").status_code == 404
    assert client.get("/fhir/Patient/" + "x" * 65).status_code == 400


def test_method_not_allowed_is_405_operation_outcome(client):
    r = client.post("/fhir/Patient/1", content=b"{}")
    assert r.status_code == 405
    assert r.json()["resourceType"] == "OperationOutcome"


def test_published_definitions_are_read_only(client):
    sd = client.get("/fhir/StructureDefinition/sip-careplan")
    assert sd.status_code == 200
    r = client.put("/fhir/StructureDefinition/sip-careplan", **body(sd.json()))
    assert r.status_code == 405


def test_unacceptable_accept_is_406(client):
    r = client.get("/fhir/metadata", headers={"accept": "text/csv"})
    assert r.status_code == 406
    assert r.json()["resourceType"] == "OperationOutcome"


def _history_total(client) -> int:
    return client.get("/fhir/_history", params={"_count": "1"}).json()["total"]


@pytest.mark.parametrize("version", ["3.0", "5.0", "3.0.2"])
def test_a_body_declared_another_fhir_version_is_415_and_not_stored(client, version):
    """A body whose Content-Type declares another FHIR version (STU3, R5) is refused, as an
    Accept asking for one is (406): read as R4 it was stored misread (FHIR
    http.html#version-parameter)."""
    r = client.post("/fhir/Patient", content=orjson.dumps(patient()), headers=JSON_HEADERS | {
        "content-type": f"application/fhir+json; fhirVersion={version}"})
    assert r.status_code == 415, r.text
    assert "FHIR R4" in outcome_text(r)
    assert client.get("/fhir/Patient?identifier=191212121212").json()["total"] == 0


@pytest.mark.parametrize("how", ["update", "transaction", "patch", "search", "xml",
                                 "process-message", "transition"])
def test_every_body_reader_refuses_another_fhir_version(client, how):
    """Every request body the hub reads (a resource in JSON or XML, a transaction Bundle, a
    JSON Patch, the parameters of POST _search, a message, an operation's Parameters) is
    refused with a 415 when its Content-Type declares another FHIR version; nothing is
    written."""
    pat = create(client, patient())
    before = _history_total(client)
    data, ctype, method, url = orjson.dumps(pat), JSON_HEADERS["content-type"], "PUT", \
        f"/fhir/Patient/{pat['id']}"
    if how == "transaction":
        method, url = "POST", "/fhir"
        data = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient(pnr="201001012386"),
             "request": {"method": "POST", "url": "Patient"}}]})
    elif how == "patch":
        method, ctype = "PATCH", "application/json-patch+json"
        data = b'[{"op": "replace", "path": "/name/0/family", "value": "Ny"}]'
    elif how == "search":
        method, url, ctype = "POST", "/fhir/Patient/_search", "application/x-www-form-urlencoded"
        data = b"family=Tolvansson"
    elif how == "xml":
        ctype = "application/fhir+xml"
        data = client.get(f"/fhir/Patient/{pat['id']}?_format=xml").content
    elif how == "process-message":
        method, url = "POST", "/fhir/$process-message"
        data = b'{"resourceType": "Bundle", "type": "message"}'
    elif how == "transition":
        method, url = "POST", "/fhir/CarePlan/x/$transition"
        data = b'{"resourceType": "Parameters"}'
    r = client.request(method, url, content=data, headers={
        "accept": "application/fhir+json", "content-type": f"{ctype}; fhirVersion=3.0"})
    assert r.status_code == 415, r.text
    assert "FHIR R4" in outcome_text(r)
    assert _history_total(client) == before


@pytest.mark.parametrize("version", ["4.0", "4.0.1", '"4.0"'])
def test_a_body_declared_fhir_r4_is_taken(client, version):
    """R4's own fhirVersion (4.0, or the full 4.0.1) on a body's Content-Type is the version
    the hub speaks: taken as without it."""
    r = client.post("/fhir/Patient", content=orjson.dumps(patient()), headers=JSON_HEADERS | {
        "content-type": f"application/fhir+json;fhirVersion={version}"})
    assert r.status_code == 201, r.text


def test_accept_quality_picks_xml(client):
    r = client.get("/fhir/metadata",
                   headers={"accept": "application/fhir+json;q=0.5, application/fhir+xml"})
    assert r.headers["content-type"].startswith("application/fhir+xml")


def test_plain_careplan_accepted_without_sip_rules(client):
    pat = create(client, patient())
    res = create(client, plain_careplan(pat["id"]))
    assert res["status"] == "active"
    assert "meta" in res and "profile" not in res["meta"]


def test_cpl3_reference_and_detail_together_is_422(client):
    pat = create(client, patient())
    cp = plain_careplan(pat["id"], activity=[{"reference": {"reference": "Task/1"},
                                              "detail": {"status": "scheduled"}}])
    r = client.post("/fhir/CarePlan", **body(cp))
    assert r.status_code == 422
    assert "cpl-3" in outcome_text(r)


@pytest.mark.parametrize("vid", ["99999999999999999999", "9223372036854775808", "\u00b2", "0"])
def test_vread_of_a_version_no_store_can_hold_is_404(client, vid):
    pid = create(client, patient())["id"]
    r = client.get(f"/fhir/Patient/{pid}/_history/{vid}")
    assert r.status_code == 404, r.text
    assert "has no version" in outcome_text(r)
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200


@pytest.mark.parametrize("etag", ['W/"99999999999999999999"', 'W/"-1"'])
def test_if_match_beyond_any_version_changes_nothing(client, etag):
    created = create(client, patient())
    changed = {**created, "gender": "female"}
    r = client.put(f"/fhir/Patient/{created['id']}", content=orjson.dumps(changed),
                   headers={**JSON_HEADERS, "if-match": etag})
    assert r.status_code in (400, 412), r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Patient/{created['id']}").json()["meta"]["versionId"] == "1"


@pytest.mark.parametrize("param", ["_count", "_offset"])
@pytest.mark.parametrize("value", ["99999999999999999999", "\u00b2", "-1"])
def test_paging_numbers_out_of_range_are_400(client, param, value):
    create(client, patient())
    for path in ("/fhir/Patient", "/fhir/Patient/_history"):
        r = client.get(path, params={param: value})
        assert r.status_code == 400, (path, r.text)
        assert param in outcome_text(r)


def test_a_fault_of_the_hub_is_500_with_an_outcome_not_a_retry(client, monkeypatch, caplog):
    """The safety net for bugs: an OperationOutcome with 500 (code exception), logged; not a
    503, which tells a client to send the same request again."""
    from sip_hub import interactions

    def broken(*_args, **_kwargs):
        raise RuntimeError("a bug")
    monkeypatch.setattr(interactions, "search", broken)
    r = client.get("/fhir/Patient")
    assert r.status_code == 500
    issue = r.json()["issue"][0]
    assert r.json()["resourceType"] == "OperationOutcome" and issue["code"] == "exception"
    assert "Unhandled error on GET /fhir/Patient" in caplog.text


@pytest.mark.parametrize("params", [{"name": "a\u0000b"}, {"identifier": "urn:x|a\u0000"},
                                    {"_id": "a\u0000"}, {"name\u0000": "x"}])
def test_a_search_value_with_a_control_character_is_400(client, params):
    create(client, patient())
    r = client.get("/fhir/Patient", params=params)
    assert r.status_code == 400, r.text
    assert "control character" in outcome_text(r)


def test_tab_cr_and_lf_stay_allowed_in_strings(client):
    pid = create(client, {**patient(), "name": [{"text": "Tolvan\tTolvansson\r\nrad 2"}]})["id"]
    assert client.get(f"/fhir/Patient/{pid}").json()["name"][0]["text"] == \
        "Tolvan\tTolvansson\r\nrad 2"


def test_if_match_star_updates_only_what_exists(client):
    """HTTP's ``If-Match: *``: write only over a current version (no create by update)."""
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    r = client.put(url, content=orjson.dumps(created | {"gender": "female"}),
                   headers=JSON_HEADERS | {"if-match": "*"})
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "2"
    absent = patient() | {"id": "not-there-yet"}
    r = client.put("/fhir/Patient/not-there-yet", content=orjson.dumps(absent),
                   headers=JSON_HEADERS | {"if-match": "*"})
    assert r.status_code == 412, r.text
    assert "no current version" in outcome_text(r)
    assert client.get("/fhir/Patient/not-there-yet").status_code == 404
    assert client.delete(url, headers={"if-match": "*"}).status_code == 200
    again = client.delete(url, headers={"if-match": "*"})
    assert again.status_code == 412, again.text
    r = client.put(url, content=orjson.dumps(created), headers=JSON_HEADERS | {"if-match": "*"})
    assert r.status_code == 412 and client.get(url).status_code == 410


def test_if_match_with_several_etags_matches_any_of_them(client):
    created = create(client, patient())
    url = f"/fhir/Patient/{created['id']}"
    r = client.put(url, content=orjson.dumps(created | {"gender": "female"}),
                   headers=JSON_HEADERS | {"if-match": 'W/"3", W/"1"'})
    assert r.status_code == 200, r.text
    stale = client.put(url, content=orjson.dumps(created | {"gender": "male"}),
                       headers=JSON_HEADERS | {"if-match": 'W/"1", W/"3"'})
    assert stale.status_code == 412
    assert "version 2" in outcome_text(stale)
    assert client.get(url).json()["gender"] == "female"
    assert client.put(url, content=orjson.dumps(created),
                      headers=JSON_HEADERS | {"if-match": 'W/"1", seven'}).status_code == 400
    assert client.delete(url, headers={"if-match": 'W/"1",W/"2"'}).status_code == 200
