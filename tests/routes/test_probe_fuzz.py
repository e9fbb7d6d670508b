"""Probing the hub's edges with odd input, as properties: the process operations' Parameters,
search query strings, request headers, the token form, odd paths and $process-message. Each is
answered with a 4xx OperationOutcome (or OAuth2 error), never a 5xx, and a refusal stores
nothing. A random walk through the process (valid and slightly-off calls in turn) holds the same.

The regressions at the end are what these probes found: a URL urlsplit cannot parse (a Bundle
entry's, a response-url), a _sort of thousands of keys, made-up HTTP methods as metrics
labels."""

from __future__ import annotations

import base64
import json
import os
import random
from typing import Any
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import sip_factory as f
from fhirhttp import JSON_HEADERS
from sip_hub.messaging import builder
from sip_hub.messaging.config import MessagingSettings
from sip_hub.messaging.runtime import Messaging
from sip_process import (BUP, SOC, alva_case, code, invitation, parameters, post, transition,
                         values, write_case)

Json = dict[str, Any]
PLAN = "alva-sip"

# PROBE_EXAMPLES=400 PROBE_RANDOM=1 probe harder (a run of every property takes ~1 minute).
FUZZ = settings(max_examples=int(os.environ.get("PROBE_EXAMPLES", "60")), deadline=None,
                derandomize=not os.environ.get("PROBE_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

ODD_TIMES = ["2016-12-31T23:59:60Z", "0000-01-01T00:00:00Z", "9999-12-31T23:59:59+14:00",
             "9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+01:00", "2024-02-29T12:00:00Z",
             "2023-02-29T12:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T13:00:00+25:00",
             "2026-01-01T13:00:00+01:60", "2026-01-01T13:00Z", "2026-01-01T13:00:00.999999999Z",
             "2026", "2026-01", "2026-01-01", "2026-01-01T13:00:00", "+2026-01-01T13:00:00Z",
             "２０２６-01-01T13:00:00Z", "2026-01-01T13:00:00z", "2026-01-01t13:00:00Z",
             "2026-01-01T13:00:00+00:00\n", "99999-01-01T00:00:00Z"]
ODD = [None, "", " ", 0, -1, 1.5, 10**30, True, [], {}, [None], "x" * 5000, "\u0000", "\ud7ff",
       "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "a\u0000b", "Patient/", "Patient/../x", "#x", "urn:uuid:", "Organization/x/y",
       "http://other.example/fhir/Organization/x", {"reference": 5}, {"reference": None},
       {"reference": "Organization/" + "x" * 5000}, {"reference": "Practitioner/a\u0000"},
       {"identifier": {"system": "urn:oid:1.2.752.29.4.19", "value": "SE2321000016-15CQ"}},
       {"display": "only"}, {"value": "x"}, {"value": 10**30, "unit": "min"},
       {"coding": [{"code": None}]}, {"code": 5}, {"resourceType": "CarePlan"},
       {"resourceType": "Nope"}, *ODD_TIMES]
VALUE_KEYS = ["valueCode", "valueString", "valueReference", "valueDateTime", "valueDuration",
              "valueCoding", "valueCodeableConcept", "valueInteger", "valueBoolean", "resource",
              "valueInstant", "valueDate"]
NAMES = ["to", "reason", "approvedBy", "approvedAt", "requestedBy", "appointment", "start",
         "end", "place", "description", "answerBy", "meetingWishes", "invitedOrganization",
         "invitedPerson", "answer", "representative", "comment", "revision", "organization",
         "profession", "support", "type", "language", "maxDuration", "", "x" * 300]


def param_strategy(depth: int = 0) -> st.SearchStrategy[Json]:
    plain = st.builds(lambda n, k, v: {"name": n, k: v}, st.sampled_from(NAMES),
                      st.sampled_from(VALUE_KEYS), st.sampled_from(ODD))
    if depth >= 1:
        return plain
    nested = st.builds(lambda n, ps: {"name": n, "part": ps}, st.sampled_from(NAMES),
                       st.lists(param_strategy(depth + 1), max_size=3))
    return st.one_of(plain, nested)


def _dumps(data: Any) -> bytes:
    """JSON of ``data`` (the stdlib writes integers beyond 64 bits, unlike orjson)."""
    return json.dumps(data).encode()


def _post(client: Any, path: str, headers: dict[str, str], data: Any) -> Any:
    return client.post(f"/fhir/{path}", content=_dumps(data), headers=JSON_HEADERS | headers)


def _history_total(client: Any) -> int:
    return client.get("/fhir/_history", params={"_count": "1"}).json()["total"]


def _clean(r: Any) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:2000])
    if r.status_code >= 400 and r.headers.get("content-type", "").startswith(
            "application/fhir+json"):
        assert r.json()["resourceType"] == "OperationOutcome", r.text


@pytest.fixture
def invited_case(client, as_org):
    """Alva's SIP in kallelse with BUP and the school invited; the task ids by owner."""
    h = {org: as_org(org) for org in (SOC, BUP)}
    write_case(client, h[SOC], alva_case())
    assert transition(client, h[SOC], PLAN, "kartlaggning").status_code == 200
    r = post(client, f"CarePlan/{PLAN}/$invite", h[SOC], invitation(f.BUP, f.SCHOOL))
    assert r.status_code == 200, r.text
    task = next(t["id"] for t in values(r.json(), "task")
                if t["owner"]["reference"] == f.BUP)
    return h, task


OPS = ["$transition", "$invite", "$propose-revision", "$approve-revision", "$respond"]


def _no_trace(client, r, before: int) -> None:
    """No 5xx; a refusal (a 4xx with its OperationOutcome) stored nothing."""
    _clean(r)
    if r.status_code >= 400:
        assert _history_total(client) == before


def _operation_refused_cleanly(client, h, task: str, op: str, params: list) -> None:
    """``op`` with ``params`` answers no 5xx, and a refusal stores nothing."""
    path = f"Task/{task}/{op}" if op == "$respond" else f"CarePlan/{PLAN}/{op}"
    who = h[BUP] if op == "$respond" else h[SOC]
    before = _history_total(client)
    r = _post(client, path, who, {"resourceType": "Parameters", "parameter": params})
    _no_trace(client, r, before)


@FUZZ
@given(op=st.sampled_from(OPS), params=st.lists(param_strategy(), max_size=5),
       extra=st.sampled_from([None, "to", "answer"]))
def test_odd_operation_parameters_are_refused_cleanly(client, invited_case, op, params,
                                                      extra):
    h, task = invited_case
    if extra == "to":
        params = [code("to", "mote"), *params]
    elif extra == "answer":
        params = [code("answer", "accept"), *params]
    _operation_refused_cleanly(client, h, task, op, params)


@FUZZ
@given(body=st.sampled_from([
    None, [], "x", 5, {"resourceType": "Parameters", "parameter": None},
    {"resourceType": "Parameters", "parameter": {}},
    {"resourceType": "Parameters", "parameter": [None]},
    {"resourceType": "Parameters", "parameter": [{}]},
    {"resourceType": "Parameters", "parameter": [{"name": 5, "valueCode": "x"}]},
    {"resourceType": "Parameters", "parameter": [{"name": "to"}]},
    {"resourceType": "Parameters", "parameter": [{"name": "to", "valueCode": "x",
                                                  "valueString": "y"}]},
    {"resourceType": "Parameters", "parameter": [{"name": "to", "part": None}]},
    {"resourceType": "Parameters", "parameter": [{"name": "to", "part": [None]}]},
    {"resourceType": "Parameters", "id": "a\u0000", "parameter": []},
    {"resourceType": "Parameters", "meta": {"versionId": 5}}]),
    op=st.sampled_from(OPS))
def test_odd_operation_bodies_are_refused_cleanly(client, invited_case, body, op):
    h, task = invited_case
    path = f"Task/{task}/{op}" if op == "$respond" else f"CarePlan/{PLAN}/{op}"
    who = h[BUP] if op == "$respond" else h[SOC]
    before = _history_total(client)
    r = _post(client, path, who, body)
    _clean(r)
    assert r.status_code >= 400
    assert _history_total(client) == before


SEARCH_NAMES = ["patient", "subject", "status", "date", "_lastUpdated", "_count", "_offset",
                "_sort", "_include", "_revinclude", "_elements", "_summary", "_id", "identifier",
                "subject:Patient", "subject.identifier", "patient.name", "_has:Task:focus:status",
                "status:missing", "status:text", "date:exact", "identifier:of-type", "_total",
                "_format", "_pretty", "_include:iterate", "_revinclude:iterate", "category:in",
                "subject:identifier", "_tag", "_profile", "_security", "_text", "_content",
                "_list", "_query", "_type", "_since", "_at", "x" * 200, "", "%00", "_sort:x"]
SEARCH_VALUES = ["", "x", "ge2020", "sa2016-12-31T23:59:60Z", "eq0000-01-01", "lt9999-12-31",
                 "ap2024-02-29", "ne2026-01-01T13:00:00+14:00", "eb", "2026-01-01T24:00:00Z",
                 "99999999999999999999", "-1", "0", "1e3", "CarePlan:subject",
                 "CarePlan:subject:Patient", "*", "Task:focus", "CarePlan:nope", "Nope:x",
                 "-_lastUpdated", "_id,-date", ",", "id,status", "meta", "true", "count", "data",
                 "text", "Patient/alva", "Patient/a\u0000", "%", "%zz", "a|b|c", "|", "\\|",
                 "a,b\\,c", "\u0000", "ä" * 300, "x" * 5000, "urn:oid:1.2|", "http://x|",
                 "true,false", "json", "xml", "Task:focus:CarePlan"]


@FUZZ
@given(items=st.lists(st.tuples(st.sampled_from(SEARCH_NAMES),
                                st.sampled_from(SEARCH_VALUES)), min_size=1, max_size=4),
       rtype=st.sampled_from(["CarePlan", "Task", "Patient", "Consent", "Appointment",
                              "Provenance", "AuditEvent", "Organization", "CareTeam"]),
       how=st.sampled_from(["GET", "POST", "history"]))
def test_odd_search_query_strings_are_refused_cleanly(client, invited_case, items, rtype, how):
    if how == "GET":
        r = client.get(f"/fhir/{rtype}", params=items)
    elif how == "POST":
        r = client.post(f"/fhir/{rtype}/_search", data=dict(items))
    else:
        r = client.get(f"/fhir/{rtype}/_history", params=items)
    _clean(r)


RAW_QUERIES = ["a=%00", "_count=%FF", "%FF=1", "_count=1&_count=2", "=x", "&&&", "_sort=%",
               "_include=CarePlan%3Asubject", "status=active;x=1", "_id=" + "%ff%fe" * 50,
               "date=ge%2B2026", "_summary=count&_elements=id", "_elements=%00",
               "_include=*:*", "_revinclude=*", "subject=Patient%2Falva%00"]


@FUZZ
@given(q=st.sampled_from(RAW_QUERIES), rtype=st.sampled_from(["CarePlan", "Task", "Patient"]))
def test_raw_odd_query_strings_are_refused_cleanly(client, q, rtype):
    _clean(client.get(f"/fhir/{rtype}?{q}"))
    _clean(client.get(f"/fhir/{rtype}/alva-sip?{q}"))


HEADER_NAMES = ["If-Match", "If-None-Match", "If-None-Exist", "If-Modified-Since", "Prefer",
                "Accept", "Content-Type", "X-Request-ID", "Authorization", "Accept-Charset",
                "Accept-Encoding", "Content-Encoding", "Content-Length"]
HEADER_VALUES = ["", " ", "*", 'W/"1"', 'W/"x"', 'W/"99999999999999999999"', '"1"', "W/",
                 'W/"1", W/"2"', 'W/"-1"', "identifier=x|1", "identifier=", "_id=alva-sip",
                 "x=1&y=2", "status=draft&subject=Patient/alva", "Tue, 31 Dec 9999 23:59:60 GMT",
                 "Sat, 01 Jan 0000 00:00:00 GMT", "garbage", "return=representation",
                 "return=OperationOutcome", "handling=strict", "respond-async", "return=",
                 "application/fhir+json; charset=latin-1", "application/fhir+json; fhirVersion=9",
                 "application/fhir+json;;;", "application/json; charset=\"", "text/html",
                 "application/fhir+xml", "*/*; q=x", "application/*;q=0", "multipart/form-data",
                 "Bearer", "Bearer ", "Bearer x.y.z", "Bearer a.b", "Basic abc",
                 "Bearer " + "A" * 5000, "bearer  x", "x" * 8000, "ä", "gzip", "br", "deflate",
                 "-1", "99999999999999999999"]


@FUZZ
@given(headers=st.dictionaries(st.sampled_from(HEADER_NAMES), st.sampled_from(HEADER_VALUES),
                               min_size=1, max_size=3),
       how=st.sampled_from(["read", "search", "create", "update", "transition", "delete",
                            "vread", "bundle"]))
def test_odd_headers_are_refused_cleanly(client, invited_case, headers, how):
    h, _ = invited_case
    hdrs = JSON_HEADERS | h[SOC] | headers
    hdrs = {k: v.encode("utf-8") for k, v in hdrs.items()}
    before = _history_total(client)
    pat = _dumps(f.patient(pnr="201001012386"))
    if how == "read":
        r = client.get(f"/fhir/CarePlan/{PLAN}", headers=hdrs)
    elif how == "vread":
        r = client.get(f"/fhir/CarePlan/{PLAN}/_history/1", headers=hdrs)
    elif how == "search":
        r = client.get("/fhir/CarePlan", headers=hdrs)
    elif how == "create":
        r = client.post("/fhir/Patient", content=pat, headers=hdrs)
    elif how == "update":
        plan = client.get(f"/fhir/CarePlan/{PLAN}").json()
        r = client.put(f"/fhir/CarePlan/{PLAN}", content=_dumps(plan), headers=hdrs)
    elif how == "delete":
        r = client.delete("/fhir/Goal/nope", headers=hdrs)
    elif how == "bundle":
        r = client.post("/fhir", content=_dumps({
            "resourceType": "Bundle", "type": "transaction", "entry": [{
                "resource": f.patient(pnr="201001012386"),
                "request": {"method": "POST", "url": "Patient"}}]}), headers=hdrs)
    else:
        r = client.post(f"/fhir/CarePlan/{PLAN}/$transition", headers=hdrs,
                        content=_dumps(parameters(code("to", "nope"))))
    _no_trace(client, r, before)


TOKEN_FIELDS = ["grant_type", "client_id", "client_secret", "scope", "x", "grant_type[]"]
TOKEN_VALUES = ["", "client_credentials", "CLIENT_CREDENTIALS", "password", "\u0000", "ä",
                "x" * 5000, "system/*.cruds", "system/CarePlan.rs system/x.y", "system/*.*",
                "patient/*.read", "system/ Patient.r", "  ", "system/*.cruds\u0000",
                "system/CarePlan.rs?x=1", "system/*.rs system/*.rs"]
AUTHS = [None, "Basic", "Basic ", "Basic ====", "Basic " + base64.b64encode(b"a").decode(),
         "Basic " + base64.b64encode(b":").decode(), "Basic " + base64.b64encode(b"\xff:\xfe")
         .decode(), "Basic " + base64.b64encode(b"a:b:c").decode(), "Bearer x", "basic YTpi",
         "Basic " + base64.b64encode(b"\x00:\x00").decode(), "Basic " + "A" * 9000,
         "Basic " + base64.b64encode(("x" * 5000 + ":y").encode()).decode()]
CTYPES = ["application/x-www-form-urlencoded", "application/x-www-form-urlencoded; charset=x",
          "APPLICATION/X-WWW-FORM-URLENCODED;charset=utf-8", "multipart/form-data",
          "application/json", "application/x-www-form-urlencoded; boundary=\""]


@FUZZ
@given(fields=st.lists(st.tuples(st.sampled_from(TOKEN_FIELDS), st.sampled_from(TOKEN_VALUES)),
                       max_size=4),
       auth=st.sampled_from(AUTHS), ctype=st.sampled_from(CTYPES),
       raw=st.sampled_from([None, b"grant_type=client_credentials&%FF=%FE",
                            b"grant_type=client%00credentials", b"\xff\xfe", b"a=%",
                            b"grant_type", b"=&=&", b"grant_type=client_credentials&" * 2000]))
def test_odd_token_requests_get_oauth_errors(anonymous, fields, auth, ctype, raw):
    headers = {"content-type": ctype}
    if auth is not None:
        headers["authorization"] = auth
    if raw is not None:
        r = anonymous.post("/auth/token", content=raw, headers=headers)
    else:
        r = anonymous.post("/auth/token", content=urlencode(fields).encode(), headers=headers)
    assert r.status_code < 500, r.text
    assert r.status_code in (200, 400, 401, 413, 415), r.text


PATHS = ["/fhir/CarePlan/", "/fhir//CarePlan", "/fhir/CarePlan//alva-sip",
         "/fhir/CarePlan/alva-sip/", "/fhir/CarePlan/alva-sip/_history/x",
         "/fhir/CarePlan/alva-sip/_history/", "/fhir/CarePlan/alva-sip/_history/-1",
         "/fhir/CarePlan/alva-sip/_history/0",
         "/fhir/CarePlan/alva-sip/_history/99999999999999999999999",
         "/fhir/CarePlan/alva-sip/_history/1.0", "/fhir/CarePlan/alva-sip/_history/%00",
         "/fhir/CarePlan/" + "a" * 64, "/fhir/CarePlan/" + "a" * 65,
         "/fhir/CarePlan/" + "a" * 5000, "/fhir/CarePlan/%00", "/fhir/CarePlan/a%00b",
         "/fhir/CarePlan/%C3%A4", "/fhir/carePlan/x", "/fhir/Nope/x", "/fhir/%00/x",
         "/fhir/CarePlan/..", "/fhir/CarePlan/.", "/fhir/$meta", "/fhir/CarePlan/alva-sip/$nope",
         "/fhir/CarePlan/$nope", "/fhir/CarePlan/alva-sip/x/y", "/fhir/_history/1",
         "/fhir/metadata/x", "/fhir/Resource/x", "/fhir/DomainResource", "/fhir/Bundle/x",
         "/fhir/Parameters/x", "/fhir/OperationOutcome", "/fhir/CarePlan/_search",
         "/fhir/CarePlan/$citizen-view", "/fhir/CarePlan/%2e%2e", "/fhir/CarePlan/a%2Fb",
         "/fhir/Task/x/$respond", "/fhir/CarePlan/%FF/$transition", "/admin/x", "/admin/",
         "/admin/messages/%00/$replay", "/admin/messages/" + "x" * 5000 + "/$replay",
         "/admin/messages/x/$replay", "/healthz/", "/metrics/",
         "/fhir/CarePlan/alva-sip/_history/1/x", "/fhir/CarePlan/%20", "/fhir/CarePlan/a b",
         "/fhir/CarePlan/alva-sip%3Fx=1"]


@FUZZ
@given(path=st.sampled_from(PATHS),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
       content=st.sampled_from([b"", b"{}", b"null", b'{"resourceType":"CarePlan"}',
                                b'{"resourceType":"Parameters"}']))
def test_odd_paths_are_refused_cleanly(client, invited_case, path, method, content):
    before = _history_total(client)
    r = client.request(method, path, content=content if method in ("POST", "PUT", "PATCH")
                       else None, headers=JSON_HEADERS)
    assert r.status_code < 500, (r.status_code, r.text[:2000])
    if r.status_code >= 400:
        assert _history_total(client) == before


def _message(header: Json, *resources: Json) -> Json:
    entries = [{"fullUrl": "urn:uuid:0a3c1b2e-0000-4000-8000-000000000001", "resource": header}]
    for i, res in enumerate(resources):
        entries.append({"fullUrl": f"urn:uuid:0a3c1b2e-0000-4000-8000-00000000010{i}",
                        "resource": res})
    return {"resourceType": "Bundle", "type": "message", "id": "m1",
            "timestamp": "2026-01-01T12:00:00+01:00", "entry": entries}


HEADER_FIELDS = ["eventCoding", "eventUri", "source", "destination", "sender", "focus",
                 "response", "reason", "author", "responsible", "enterer", "definition", "id",
                 "meta", "extension"]


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(HEADER_FIELDS), st.sampled_from(ODD + [
    {"system": "https://sip-hub.se/fhir/CodeSystem/sip-message-event", "code": "x"},
    {"endpoint": None}, {"endpoint": "urn:x"}, [{"endpoint": 5}], [{"reference": "#x"}],
    [{"reference": "urn:uuid:0a3c1b2e-0000-4000-8000-000000000100"}],
    {"identifier": "x", "code": "ok"}, {"identifier": None, "code": "bogus"}]),
    min_size=1, max_size=3),
    flags=st.sampled_from(["", "?async=true", "?async=yes", "?response-url=%00",
                           "?async=true&async=false", "?response-url=http://x"]))
def test_odd_message_headers_are_refused_cleanly(client, changes, flags):
    header = {"resourceType": "MessageHeader", "id": "h1",
              "eventCoding": {"system": "https://sip-hub.se/fhir/CodeSystem/sip-message-event",
                              "code": "sip-plan-update"},
              "source": {"endpoint": "urn:oid:1.2.752.29.4.19"},
              "focus": [{"reference": "urn:uuid:0a3c1b2e-0000-4000-8000-000000000100"}]}
    header.update(changes)
    before = _history_total(client)
    r = client.post(f"/fhir/$process-message{flags}",
                    content=_dumps(_message(header, f.patient())), headers=JSON_HEADERS)
    _no_trace(client, r, before)


ODD_REFS = [{"reference": r} for r in [
    "Patient/alva", "Organization/x", "Practitioner/x", "RelatedPerson/x", "Patient/", "/x",
    "Patient/alva/_history/1", "Patient/alva/_history/x", "Patient/a\u0000", "#alva",
    "urn:uuid:0a3c1b2e-0000-4000-8000-000000000001", "http://hub.test/fhir/Patient/alva",
    "http://hub.test/fhir/Organization/" + "x" * 70, "Organization/" + "x" * 70, "Patient",
    "CarePlan/alva-sip", "Task/x", "Organization/../Patient/alva", "Organization?name=x",
    "Patient/alva?x", "Patient/ALVA", "Nope/x", "Organization/%00", "𝔘/𝔘"]] + [
    {"identifier": {"system": "urn:oid:1.2.752.29.4.19", "value": v}}
    for v in ["SE2321000016-15CQ", "", "\u0000", "x" * 5000, "*"]] + [
    {"identifier": {"system": None, "value": "x"}}, {"identifier": "x"}, {"type": "Patient"},
    {"reference": "Organization/x", "type": "Patient"}, {"display": "x"}]
ODD_STRINGS = ["", " ", "\u0000", "x" * 100_000, "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "a\u202eb", "\r\n", "<script>",
               "accept", "kartlaggning"]
ODD_CODES = ["accept", "decline", "propose-time", "kartlaggning", "kallelse", "mote",
             "upprattad", "uppfoljning", "avslutad", "behov-uppmarksammat", "", "ACCEPT",
             " accept", "accept\u0000", "x" * 5000]


def _value(key: str) -> st.SearchStrategy[Any]:
    return {"valueReference": st.sampled_from(ODD_REFS),
            "valueDateTime": st.sampled_from(ODD_TIMES), "valueString": st.sampled_from(
                ODD_STRINGS), "valueCode": st.sampled_from(ODD_CODES),
            "valueDuration": st.sampled_from([
                {"value": 60, "unit": "min"}, {"value": 1e308, "code": "h"},
                {"value": 0.0000001, "code": "s"}, {"value": 60, "code": "a"},
                {"value": 60, "system": "x", "code": "min"}, {"value": 60, "code": "min",
                                                              "comparator": "<"}]),
            "valueCoding": st.sampled_from([{"code": "interpreter"}, {"code": None},
                                            {"system": "x"}, {"code": "ar", "system": "x"}]),
            "valueCodeableConcept": st.sampled_from([{"text": "x"}, {"coding": []}, {}])}[key]


_SHAPES: dict[str, dict[str, str]] = {
    "$transition": {"to": "valueCode", "reason": "valueString", "approvedBy": "valueReference",
                    "approvedAt": "valueDateTime", "requestedBy": "valueReference"},
    "$invite": {"appointment": "valueReference", "start": "valueDateTime",
                "end": "valueDateTime", "place": "valueString", "description": "valueString",
                "answerBy": "valueDateTime", "invitedPerson": "valueReference"},
    "$respond": {"answer": "valueCode", "representative": "valueReference",
                 "start": "valueDateTime", "end": "valueDateTime", "reason": "valueString",
                 "comment": "valueString"},
    "$approve-revision": {"revision": "valueReference", "approvedBy": "valueReference",
                          "approvedAt": "valueDateTime", "reason": "valueString"},
}


@st.composite
def shaped(draw: st.DrawFn, op: str) -> list[Json]:
    """Parameters of the right names and value types, with odd values."""
    shapes = _SHAPES[op]
    names = draw(st.lists(st.sampled_from(sorted(shapes)), min_size=1, max_size=6))
    out = [{"name": n, shapes[n]: draw(_value(shapes[n]))} for n in names]
    if op == "$invite":
        for _ in range(draw(st.integers(0, 2))):
            out.append({"name": "invitedOrganization", "part": [
                {"name": "organization", "valueReference": draw(st.sampled_from(ODD_REFS))},
                *draw(st.lists(st.builds(lambda k, v: {"name": "profession", k: v},
                                         st.just("valueString"), st.sampled_from(ODD_STRINGS)),
                               max_size=1))]})
        if draw(st.booleans()):
            out.append({"name": "meetingWishes", "part": draw(st.lists(st.one_of(
                st.builds(lambda v: {"name": "maxDuration", "valueDuration": v},
                          _value("valueDuration")),
                st.builds(lambda v: {"name": "place", "valueString": v},
                          st.sampled_from(ODD_STRINGS)),
                st.builds(lambda t, lang: {"name": "support", "part": [
                    {"name": "type", "valueCode": t}, {"name": "language", "valueCode": lang}]},
                    st.sampled_from(["interpreter", "other", "x", ""]),
                    st.sampled_from(["ar", "", "x" * 300, "\u0000"]))), max_size=3)) or [
                {"name": "place", "valueString": "x"}]})
    return out


@FUZZ
@given(data=st.data(), op=st.sampled_from(sorted(_SHAPES)))
def test_well_shaped_parameters_with_odd_values_are_refused_cleanly(client, invited_case, data,
                                                                    op):
    h, task = invited_case
    params = data.draw(shaped(op))
    _operation_refused_cleanly(client, h, task, op, params)


TEXT = st.text(st.characters(codec="utf-8"), max_size=40)


@FUZZ
@given(name=st.sampled_from(SEARCH_NAMES + ["patient", "_format", "_pretty"]), value=TEXT,
       rtype=st.sampled_from(["CarePlan", "Task", "Patient", "Appointment", "AuditEvent"]),
       prefix=st.sampled_from(["", "eq", "ge", "sa", "ap", "ne", "Patient/",
                               "urn:oid:1.2.752.29.4.19|", "|", "CarePlan:"]))
def test_random_search_values_are_refused_cleanly(client, invited_case, name, value, rtype,
                                                  prefix):
    _clean(client.get(f"/fhir/{rtype}", params=[(name, prefix + value)]))


@FUZZ
@given(patient=TEXT, extra=st.sampled_from([[], [("_format", "x")], [("_format", "html")],
                                            [("_pretty", "x")], [("patient", "x")],
                                            [("_format", "application/fhir+xml")],
                                            [("_summary", "count")]]),
       accept=st.sampled_from(["", "text/html", "text/*", "text/html;q=x", "*/*;q=0",
                               "application/fhir+xml", "text/html;q=0.5, application/json",
                               "text/html;q=1e999", "text/html;q=-1", "text/html;q=nan"]),
       prefer=st.sampled_from(["", "handling=lenient", "handling=strict, handling=lenient"]))
def test_odd_citizen_view_requests_are_refused_cleanly(client, invited_case, patient, extra,
                                                       accept, prefer):
    for p in (patient, f"http://electronichealth.se/identifier/personnummer|{patient}",
              "http://electronichealth.se/identifier/personnummer|201001012386"):
        r = client.get("/fhir/CarePlan/$citizen-view", params=[("patient", p), *extra],
                       headers={"accept": accept, "prefer": prefer})
        assert r.status_code < 500, (r.status_code, r.text[:2000])


@FUZZ
@given(name=st.sampled_from(HEADER_NAMES), value=TEXT,
       how=st.sampled_from(["read", "search", "create", "update", "transition", "respond"]))
def test_random_header_values_are_refused_cleanly(client, invited_case, name, value, how):
    h, task = invited_case
    hdrs = {k: v.encode("utf-8") for k, v in (JSON_HEADERS | h[SOC] | {name: value}).items()}
    if b"\n" in hdrs[name] or b"\r" in hdrs[name] or b"\x00" in hdrs[name]:
        return
    before = _history_total(client)
    if how == "read":
        r = client.get(f"/fhir/CarePlan/{PLAN}", headers=hdrs)
    elif how == "search":
        r = client.get("/fhir/CarePlan", headers=hdrs)
    elif how == "create":
        r = client.post("/fhir/Patient", content=_dumps(f.patient(pnr="201001012386")),
                        headers=hdrs)
    elif how == "update":
        plan = client.get(f"/fhir/CarePlan/{PLAN}").json()
        r = client.put(f"/fhir/CarePlan/{PLAN}", content=_dumps(plan), headers=hdrs)
    elif how == "respond":
        hdrs = {**hdrs, "Authorization": h[BUP]["Authorization"].encode()} \
            if name != "Authorization" else hdrs
        r = client.post(f"/fhir/Task/{task}/$respond", headers=hdrs,
                        content=_dumps(parameters(code("answer", "nope"))))
    else:
        r = client.post(f"/fhir/CarePlan/{PLAN}/$transition", headers=hdrs,
                        content=_dumps(parameters(code("to", "nope"))))
    _no_trace(client, r, before)


# -- regressions -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["transaction", "batch"])
@pytest.mark.parametrize("url", ["//[/Patient", "http://[::1/Patient"])
def test_a_bundle_entry_url_with_an_unclosed_ipv6_bracket_is_a_400(client, kind, url):
    """urlsplit raises ValueError on "//[": it was a 500 (an entry's 500 in a batch)."""
    before = _history_total(client)
    r = client.post("/fhir", content=_dumps({"resourceType": "Bundle", "type": kind, "entry": [
        {"resource": f.patient(pnr="201001012386"),
         "request": {"method": "POST", "url": url}}]}), headers=JSON_HEADERS)
    if kind == "transaction":
        assert r.status_code == 400, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
    else:
        assert r.status_code == 200, r.text
        assert r.json()["entry"][0]["response"]["status"].startswith("400"), r.text
    assert _history_total(client) == before


URL_BITS = ["", "/", "//", "[", "]", "?", "#", "%", "%00", "%ZZ", "Patient", "CarePlan",
            "alva-sip", "_history", "1", "x", "..", ":", "@", "http:", "urn:uuid:", "$invite",
            "_search", "=", "&", "|", "\u0000", "ä", "http://hub.test/fhir/", " "]


@FUZZ
@given(kind=st.sampled_from(["transaction", "batch"]),
       method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "get", "PATCH", "HEAD", ""]),
       url=st.lists(st.sampled_from(URL_BITS), min_size=1, max_size=6).map("".join),
       extra=st.dictionaries(st.sampled_from(["ifMatch", "ifNoneExist", "ifNoneMatch",
                                              "ifModifiedSince"]),
                             st.sampled_from(HEADER_VALUES[:30]), max_size=2),
       full_url=st.sampled_from([None, "urn:uuid:[", "http://[", "urn:uuid:x", "Patient/x",
                                 "http://hub.test/fhir/Patient/x", "#x", ""]))
def test_odd_bundle_entry_requests_are_refused_cleanly(client, invited_case, kind, method, url,
                                                       extra, full_url):
    entry: Json = {"resource": f.patient(pnr="201001012386"),
                   "request": {"method": method, "url": url, **extra}}
    if full_url is not None:
        entry["fullUrl"] = full_url
    before = _history_total(client)
    r = client.post("/fhir", content=_dumps({"resourceType": "Bundle", "type": kind,
                                             "entry": [entry]}), headers=JSON_HEADERS)
    _clean(r)
    if r.status_code == 200 and kind == "batch":
        status = r.json()["entry"][0]["response"]["status"]
        assert not status.startswith("5"), r.text
    if r.status_code >= 400:
        assert _history_total(client) == before


# -- a random walk through the process ------------------------------------------------------

PHASES = ["behov-uppmarksammat", "kartlaggning", "kallelse", "mote", "upprattad",
          "uppfoljning", "mote", "upprattad", "uppfoljning", "kallelse", "avslutad", "nope"]
APPROVERS = [f.PATIENT, f.MOTHER, f.COORDINATOR, "Patient/nope", "RelatedPerson/x"]


def _mutate(node: Any, rnd: Any) -> Any:
    """``node`` with one random change somewhere in it (``rnd`` a hypothesis Random)."""
    if isinstance(node, dict) and node:
        key = rnd.choice(sorted(node))
        out = dict(node)
        how = rnd.choice(["drop", "replace", "nest", "nest"])
        if how == "drop":
            del out[key]
        elif how == "replace":
            out[key] = rnd.choice(ODD)
        else:
            out[key] = _mutate(node[key], rnd)
        return out
    if isinstance(node, list) and node:
        out = list(node)
        i = rnd.randrange(len(node))
        out[i] = _mutate(node[i], rnd) if rnd.random() < 0.6 else rnd.choice(ODD)
        return out
    return rnd.choice(ODD)


def _step(client: Any, h: dict[str, dict[str, str]], rnd: Any, seen: dict[str, list[str]]
          ) -> tuple[str, Any]:
    """One random call of the process (valid or slightly off); (description, response)."""
    kind = rnd.choice(["transition"] * 3 + ["invite", "respond", "respond", "propose",
                                            "approve", "approve", "put"]
                      + ["delete"] * (rnd.random() < 0.2))
    who = h[SOC]
    if kind == "transition":
        extra = []
        to = rnd.choice(PHASES[:-2] if rnd.random() < 0.9 else PHASES)
        if to == "upprattad" and rnd.random() < 0.8:
            extra = [{"name": "approvedBy", "valueReference": {"reference": f.PATIENT}},
                     {"name": "approvedBy", "valueReference": {"reference": f.MOTHER}},
                     {"name": "approvedAt", "valueDateTime": "2026-12-01T10:00:00+01:00"}]
        elif rnd.random() < 0.3:
            extra.append({"name": "approvedBy", "valueReference": {
                "reference": rnd.choice(APPROVERS)}})
            extra.append({"name": "approvedAt", "valueDateTime": rnd.choice(
                ODD_TIMES[:8] + ["2026-12-01T10:00:00+01:00"])})
        if rnd.random() < 0.5:
            extra.append({"name": "reason", "valueString": rnd.choice(ODD_STRINGS[1:])})
        return kind, transition(client, who, PLAN, to, *extra)
    if kind == "invite":
        body = invitation(*rnd.sample([f.BUP, f.SCHOOL, f.HABILITATION, "Organization/x"],
                                      rnd.randint(0, 2)),
                          start_days=rnd.choice([-1, 0.01, 1, 10, 400]))
        return kind, _post(client, f"CarePlan/{PLAN}/$invite", who, body)
    if kind == "respond":
        task = rnd.choice(seen["task"] or ["nope"])
        extra = [{"name": "representative", "valueReference": {"reference": rnd.choice(
            [f.BUP_REPRESENTATIVE, f.SCHOOL_REPRESENTATIVE, f.COORDINATOR, "Practitioner/x"])}}]
        if rnd.random() < 0.3:
            extra = [{"name": "start", "valueDateTime": rnd.choice(ODD_TIMES)},
                     {"name": "end", "valueDateTime": rnd.choice(ODD_TIMES)}]
        return kind, _post(client, f"Task/{task}/$respond", rnd.choice([h[BUP], h[SOC]]),
                           parameters(code("answer", rnd.choice(ODD_CODES[:3] + ["x"])),
                                      *extra))
    plan = client.get(f"/fhir/CarePlan/{PLAN}", headers=who).json()
    if kind == "propose":
        revision = dict(plan, description=f"rev {rnd.random()}")
        if rnd.random() < 0.3:
            revision = _mutate(revision, rnd)
        return kind, _post(client, f"CarePlan/{PLAN}/$propose-revision", who, parameters(
            {"name": "revision", "resource": revision}))
    if kind == "approve":
        rev = rnd.choice(seen["revision"] or ["nope"])
        return kind, _post(client, f"CarePlan/{PLAN}/$approve-revision", who, parameters(
            {"name": "revision", "valueReference": {"reference": f"CarePlan/{rev}"}},
            *({"name": "approvedBy", "valueReference": {"reference": a}}
              for a in rnd.sample(APPROVERS, rnd.randint(1, 2))),
            {"name": "approvedAt", "valueDateTime": rnd.choice(
                ["2026-12-01T10:00:00+01:00", *ODD_TIMES[:4]])}))
    if kind == "put":
        return kind, client.put(f"/fhir/CarePlan/{PLAN}", content=_dumps(_mutate(plan, rnd)),
                                headers=JSON_HEADERS | who)
    target = rnd.choice([f"Task/{t}" for t in seen["task"]] + ["CareTeam/alva-sip",
                                                                "Consent/alva-samtycke"])
    return kind, client.delete(f"/fhir/{target}", headers=who)


def _remember(r: Any, seen: dict[str, list[str]]) -> None:
    if r.status_code != 200 or not r.headers.get("content-type", "").startswith(
            "application/fhir+json"):
        return
    data = r.json()
    if data.get("resourceType") != "Parameters":
        return
    for p in data.get("parameter", []):
        res = p.get("resource")
        if p["name"] in ("task", "revision") and isinstance(res, dict):
            seen[p["name"]].append(res["id"])


@FUZZ
@given(seed=st.integers(0, 2**32), steps=st.integers(1, 8))
def test_a_random_walk_through_the_process_never_fails_with_a_5xx(client, invited_case, seed,
                                                                  steps):
    """(The walk's choices depend on the state earlier examples left: a seeded Random, not
    hypothesis's draws, makes them.)"""
    h, task = invited_case
    rnd = random.Random(seed)
    seen: dict[str, list[str]] = {"task": [task], "revision": []}
    for _ in range(steps):
        before = _history_total(client)
        kind, r = _step(client, h, rnd, seen)
        _clean(r)
        if r.status_code >= 400:
            assert _history_total(client) == before, (kind, r.text)
        _remember(r, seen)


# -- process operations by message ----------------------------------------------------------

_EVENT_OP = {"invitation": "$invite", "invitation-response": "$respond",
             "plan-established": "$transition", "sip-closed": "$transition",
             "revision-approved": "$approve-revision", "follow-up-done": "$transition"}
TASK_STATUSES = ["accepted", "in-progress", "rejected", "requested", "x", None]


def _answered(task_id: str, status: Any, rnd: random.Random) -> Json:
    """An invitation Task as an answering system sends it, with odd outputs and notes."""
    task: Json = {"resourceType": "Task", "id": task_id, "status": status or "accepted",
                  "intent": "order"}
    outputs = []
    for _ in range(rnd.randint(0, 2)):
        out: Json = {"type": rnd.choice([
            {"coding": [{"system": "https://sip-hub.se/fhir/CodeSystem/sip-task-parameter",
                         "code": rnd.choice(["representative", "proposed-time", "x"])}]},
            {"text": "x"}])}
        kind = rnd.choice(["valueReference", "valuePeriod", "valueString"])
        out[kind] = (rnd.choice(ODD_REFS + [{"reference": f.BUP_REPRESENTATIVE}] * 8)
                     if kind == "valueReference" else
                     {"start": rnd.choice(ODD_TIMES + ["2030-01-01T13:00:00+01:00"] * 5),
                      "end": rnd.choice(ODD_TIMES + ["2030-01-01T14:00:00+01:00"] * 5)}
                     if kind == "valuePeriod" else "x")
        outputs.append(out)
    if outputs:
        task["output"] = outputs
    if rnd.random() < 0.5:
        task["note"] = [{"text": rnd.choice(ODD_STRINGS[1:]) or "x",
                         "authorReference": rnd.choice(ODD_REFS)}]
    if rnd.random() < 0.5:
        task["statusReason"] = rnd.choice([{"text": "x"}, {"coding": [{"code": "y"}]}, {}])
    return task


@FUZZ
@given(data=st.data(), event=st.sampled_from(sorted(_EVENT_OP)), seed=st.integers(0, 2**32),
       carry=st.booleans())
def test_operations_by_message_with_odd_input_are_refused_cleanly(client, invited_case, data,
                                                                  event, seed, carry):
    h, task = invited_case
    rnd = random.Random(seed)
    sender = BUP if event == "invitation-response" else SOC
    dest = SOC if sender == BUP else BUP
    resources: list[Json] = []
    focus = [f"CarePlan/{PLAN}"]
    reason = None
    if event == "invitation-response":
        focus = [f"Task/{task}", f"CarePlan/{PLAN}"]
        status = rnd.choice(TASK_STATUSES)
        resources.append(_answered(task, status, rnd))
        reason = {"accepted": "accept", "rejected": "decline", "in-progress":
                  "new-time-proposed"}.get(status or "accepted") if rnd.random() < 0.8 else \
            rnd.choice([None, "accept", "decline", "new-time-proposed"])
    if carry:
        op = _EVENT_OP[event]
        params = data.draw(shaped(op)) if op in _SHAPES else []
        resources.insert(0, {"resourceType": "Parameters", "id": "in", "parameter": params})
    msg = builder.message(event, fhir_base=f"https://{sender.lower()}.test/fhir", sender=sender,
                          reason=reason if event == "invitation-response" else None,
                          focus=focus, resources=resources,
                          destinations=[builder.Party(dest, f"https://{dest.lower()}.test/pm")])
    before = _history_total(client)
    r = client.post("/fhir/$process-message", content=_dumps(msg),
                    headers=JSON_HEADERS | h[sender])
    _clean(r)
    code_ = (r.json()["entry"][0]["resource"].get("response", {}).get("code")
             if r.status_code == 200 else None)
    if r.status_code >= 400 or code_ not in (None, "ok"):
        assert _history_total(client) == before, r.text


@pytest.mark.parametrize("keys", [["date"], ["date", "-_lastUpdated", "_id", "status"]])
def test_a_sort_of_thousands_of_keys_is_a_400_not_a_database_outage(client, keys):
    """~2000 _sort keys made SQLite refuse the ORDER BY ("too many terms"), answered as a 503
    (database unavailable); 1000 took most of a second."""
    r = client.get("/fhir/CarePlan", params={"_sort": ",".join((keys * 2000)[:2000])})
    assert r.status_code == 400, r.text
    assert "_sort" in r.json()["issue"][0]["diagnostics"]
    # a sort by each key a type has is still a sort
    r = client.get("/fhir/CarePlan", params={"_sort": ",".join(keys * 2)})
    assert r.status_code == 200, r.text


AUDIT_NAMES = ["date", "agent", "entity", "patient", "action", "outcome", "subtype", "type",
               "agent:identifier", "entity:identifier", "patient:identifier", "agent:Practitioner",
               "entity:Patient", "entity:missing", "date:missing", "agent.identifier",
               "entity.identifier", "patient.identifier", "outcome:not", "action:text",
               "_id", "_lastUpdated", "_lastUpdated:missing", "type:not", "subtype:in",
               "source", "site", "policy", "address", "altid", "agent-name", "agent-role"]
AUDIT_VALUES = ["", "x", "|", "x|", "|x", "a|b", "Patient/alva", "Patient/", "CarePlan/x",
                "http://hub.test/fhir/Patient/alva", "true", "false", "ge2026", "2026-13",
                "0", "4", "8", "C", "R", "read", "search-type", "urn:oid:1.2.752.29.4.19|x",
                "Patient/alva,Patient/x", "lt0001-01-01T00:00:00+14:00", "sa9999"]


@FUZZ
@given(items=st.lists(st.tuples(st.sampled_from(AUDIT_NAMES), st.sampled_from(AUDIT_VALUES)),
                      min_size=1, max_size=3),
       sort=st.sampled_from([None, "date", "-_lastUpdated,_id", "agent", "-date,date"]))
def test_odd_audit_event_searches_are_refused_cleanly(client, invited_case, items, sort):
    params = items + ([("_sort", sort)] if sort else [])
    _clean(client.get("/fhir/AuditEvent", params=params))
    _clean(client.get("/fhir/AuditEvent", params=[*params, ("_summary", "count")]))


def _other_405s(client: Any) -> float:
    line = 'sip_hub_http_requests_total{method="other",route="/fhir/{rtype}",status="405"} '
    found = [ln for ln in client.get("/metrics").text.splitlines() if ln.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


def test_made_up_methods_do_not_each_add_a_metrics_series(client):
    """Every method a client made up was a label of its own: unbounded series in memory and in
    /metrics. They are counted together as "other"."""
    before = _other_405s(client)
    for i in range(3):
        r = client.request(f"PROBE{i}", "/fhir/CarePlan")
        assert r.status_code == 405, r.text
    assert "PROBE" not in client.get("/metrics").text
    assert _other_405s(client) == before + 3


@pytest.mark.parametrize("url", ["http://[", "https://[::1/pm"])
def test_a_response_url_urlsplit_cannot_read_is_a_400(client, as_org, settings, tmp_path, url):
    """With the sender's endpoint configured, a response-url with an unclosed IPv6 bracket
    made urlsplit raise ValueError: a 500."""
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps({"endpoints": [{"organization": SOC,
                                               "url": "https://soc.test/pm"}]}))
    client.app.state.messaging = Messaging.from_config(
        MessagingSettings.for_hub(settings, endpoints_file=path))
    msg = builder.message("sip-closed", fhir_base="https://soc.test/fhir", sender=SOC,
                          focus=[f"CarePlan/{PLAN}"], resources=[],
                          destinations=[builder.Party(BUP, "https://bup.test/pm")])
    before = _history_total(client)
    r = client.post("/fhir/$process-message", params={"async": "true", "response-url": url},
                    content=_dumps(msg), headers=JSON_HEADERS | as_org(SOC))
    assert r.status_code == 400, r.text
    assert r.json()["issue"][0]["expression"] == ["response-url"]
    assert _history_total(client) == before
