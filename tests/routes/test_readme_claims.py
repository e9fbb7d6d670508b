"""Promises of the README that a client relies on, each once broken:

- a transaction writes each resource once, also when a conditional update's criteria match
  the resource another entry writes (or deletes) by id: the transaction fails (400, both
  entries named) rather than applying both, the last one winning;
- a method a path does not take is a 405 whose Allow names the methods it does, also where a
  keyword or an operation stands in a type's or an id's place (not "unknown type" or "not a
  valid id");
- a conditional reference in a transaction's PATCH becomes a reference to the one resource
  it matches, as in a resource;
- the token endpoint refuses a request with several Authorization headers (400), as the
  FHIR routes do: which one is meant would be a guess.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import orjson
import pytest

from fhirhttp import JSON_HEADERS, PNR, patient
from sip_hub import clients

TOLVAN = f"Patient?identifier={PNR}|191212121212"


def _tolvan(client) -> dict[str, Any]:
    p = patient()
    p["id"] = "tolvan"
    r = client.put("/fhir/Patient/tolvan", content=orjson.dumps(p), headers=JSON_HEADERS)
    assert r.status_code == 201, r.text
    return p


def _transaction(client, entries: list[dict[str, Any]], headers: dict[str, str] | None = None):
    return client.post("/fhir", content=orjson.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        headers=JSON_HEADERS | (headers or {}))


def _without_id(p: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k != "id"}


# -- a transaction writes each resource once, conditional updates' resources too ----------------

@pytest.mark.parametrize("by_id", ["PUT", "PATCH"])
@pytest.mark.parametrize("conditional_url", [TOLVAN, "Patient?_id=tolvan"])
def test_a_conditional_update_of_a_resource_another_entry_writes_fails_the_transaction(
        client, by_id, conditional_url):
    """FHIR (3.1.0.11.2): resource identities that overlap, 'including resolved identities
    from conditional update', fail the transaction. Both were applied (versions 2 and 3):
    the outcome was whichever came last."""
    p = _tolvan(client)
    first: dict[str, Any] = {"request": {"method": by_id, "url": "Patient/tolvan"}}
    if by_id == "PUT":
        first["resource"] = p | {"gender": "male"}
    elif by_id == "PATCH":
        first["resource"] = _binary_patch([{"op": "replace", "path": "/gender",
                                            "value": "male"}])
    r = _transaction(client, [
        first, {"resource": _without_id(p) | {"gender": "female"},
                "request": {"method": "PUT", "url": conditional_url}}])
    assert r.status_code == 400, r.text
    assert "Bundle.entry[1]: its criteria match Patient/tolvan, which Bundle.entry[0] " \
        "writes too" in r.text, r.text
    assert client.get("/fhir/Patient/tolvan").json()["meta"]["versionId"] == "1"


@pytest.mark.parametrize("conditional_url", [TOLVAN, "Patient?_id=tolvan"])
def test_a_conditional_update_matches_what_the_transactions_deletes_leave(client,
                                                                         conditional_url):
    """FHIR (3.1.0.11.2) processes a transaction's DELETEs first: a conditional update whose
    criteria matched only the resource another entry deletes matches nothing and creates."""
    p = _tolvan(client)
    r = _transaction(client, [
        {"request": {"method": "DELETE", "url": "Patient/tolvan"}},
        {"resource": _without_id(p) | {"gender": "female"},
         "request": {"method": "PUT", "url": conditional_url}}])
    assert r.status_code == 200, r.text
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["200 OK", "201 Created"]
    assert client.get("/fhir/Patient/tolvan").status_code == 410


def test_two_conditional_updates_matching_one_resource_fail_the_transaction(client):
    """Two criteria, written differently, that match one patient: the same resource twice."""
    p = _tolvan(client)
    r = _transaction(client, [
        {"resource": _without_id(p) | {"gender": "male"},
         "request": {"method": "PUT", "url": "Patient?_id=tolvan"}},
        {"fullUrl": "urn:uuid:6c1e6a34-0b8e-4c7e-9d55-000000000001",
         "resource": _without_id(p) | {"gender": "female"},
         "request": {"method": "PUT", "url": TOLVAN}}])
    assert r.status_code == 400, r.text
    assert "Bundle.entry[1]" in r.text and "Bundle.entry[0]" in r.text, r.text
    assert client.get("/fhir/Patient/tolvan").json()["meta"]["versionId"] == "1"


def test_the_refusal_of_a_resolved_overlap_is_audited_as_the_search_it_was(client):
    """The refusal told the caller which patient the personnummer names: a search of
    personal data, in the person's access log, though the transaction wrote nothing."""
    p = _tolvan(client)
    r = _transaction(client, [
        {"resource": p, "request": {"method": "PUT", "url": "Patient/tolvan"}},
        {"resource": _without_id(p), "request": {"method": "PUT", "url": TOLVAN}}],
        {"X-Request-ID": "resolved-overlap"})
    assert r.status_code == 400, r.text
    client.app.state.audit.flush()
    events = client.get("/fhir/AuditEvent?entity:identifier=resolved-overlap").json()
    [event] = [e["resource"] for e in events.get("entry", [])]
    assert event["outcome"] == "4" and event["subtype"][0]["code"] == "search-type", event
    assert "Patient/tolvan" in {e.get("what", {}).get("reference")
                                for e in event["entity"]}, event


def test_a_conditional_update_of_another_resource_is_written(client):
    """The check compares what the criteria match: another patient's update goes through."""
    p = _tolvan(client)
    other = patient("200001012384")
    r = _transaction(client, [
        {"resource": p | {"gender": "male"},
         "request": {"method": "PUT", "url": "Patient/tolvan"}},
        {"resource": other, "request": {"method": "PUT",
                                        "url": f"Patient?identifier={PNR}|200001012384"}}])
    assert r.status_code == 200, r.text
    assert [e["response"]["status"] for e in r.json()["entry"]] == ["200 OK", "201 Created"]


# -- a 405 names the methods the path takes -------------------------------------------------------

@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/fhir/$process-message", "POST"),
    ("POST", "/fhir/_history", "GET, HEAD"),
    ("PUT", "/fhir/_history?_id=x", "GET, HEAD"),
    ("GET", "/fhir/Patient/_search", "POST"),
    ("PUT", "/fhir/Patient/_search", "POST"),
    ("DELETE", "/fhir/Patient/_search", "POST"),
    ("PUT", "/fhir/Patient/_history", "GET, HEAD"),
    ("DELETE", "/fhir/Patient/_history", "GET, HEAD"),
    ("PUT", "/fhir/CarePlan/$citizen-view", "GET, HEAD, POST"),
    ("DELETE", "/fhir/CarePlan/$citizen-view", "GET, HEAD, POST"),
    ("PATCH", "/fhir/CarePlan/$citizen-view", "GET, HEAD, POST"),
])
def test_a_method_the_path_does_not_take_is_a_405_naming_those_it_does(client, method, path,
                                                                          allow):
    """The generic /fhir/{rtype} and /fhir/{rtype}/{rid} routes took these paths for a
    type or an id: the client was told of an unknown type or an invalid id instead."""
    r = client.request(method, path, content=orjson.dumps(patient()), headers=JSON_HEADERS)
    assert r.status_code == 405, r.text
    assert r.headers.get("allow") == allow, r.headers
    assert r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_an_operation_no_route_takes_is_no_405(client, method):
    """A 405 whose Allow named methods that are refused too would send the client round in
    circles: an id no route takes is still not a valid id."""
    r = client.request(method, "/fhir/Patient/$everything", content=b"[]",
                       headers=JSON_HEADERS)
    assert r.status_code == 400, r.text
    assert "not a valid" in r.text and "allow" not in r.headers


# -- a conditional reference in a transaction's PATCH --------------------------------------------

def _binary_patch(ops: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Binary", "contentType": "application/json-patch+json",
            "data": base64.b64encode(json.dumps(ops).encode()).decode()}


@pytest.mark.parametrize("op", [
    {"op": "replace", "path": "/subject", "value": {"reference": TOLVAN}},
    {"op": "replace", "path": "/subject/reference", "value": TOLVAN},
], ids=["in-a-value", "a-value"])
def test_a_conditional_reference_in_a_transactions_patch_is_resolved(client, op):
    """A PATCH entry writing one was refused with a 422 saying the reference 'is resolved
    in a transaction Bundle only', though it was in one."""
    _tolvan(client)
    plan = {"resourceType": "CarePlan", "id": "cp1", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/other"}}
    assert client.put("/fhir/CarePlan/cp1", content=orjson.dumps(plan),
                      headers=JSON_HEADERS).status_code == 201
    r = _transaction(client, [{"resource": _binary_patch([op]),
                               "request": {"method": "PATCH", "url": "CarePlan/cp1"}}])
    assert r.status_code == 200, r.text
    assert client.get("/fhir/CarePlan/cp1").json()["subject"] == {"reference": "Patient/tolvan"}


def test_a_conditional_reference_in_a_patch_matching_no_one_fails_the_transaction(client):
    plan = {"resourceType": "CarePlan", "id": "cp1", "status": "active", "intent": "plan",
            "subject": {"reference": "Patient/other"}}
    assert client.put("/fhir/CarePlan/cp1", content=orjson.dumps(plan),
                      headers=JSON_HEADERS).status_code == 201
    ops = [{"op": "replace", "path": "/subject", "value": {"reference": TOLVAN}}]
    r = _transaction(client, [{"resource": _binary_patch(ops),
                               "request": {"method": "PATCH", "url": "CarePlan/cp1"}}])
    assert r.status_code == 412, r.text
    assert "Bundle.entry[0]" in r.text
    assert client.get("/fhir/CarePlan/cp1").json()["meta"]["versionId"] == "1"


# -- several Authorization headers at the token endpoint ------------------------------------------

def test_the_token_endpoint_refuses_several_authorization_headers(anonymous, store):
    """It read the first Basic header alone and issued a token whatever the others said."""
    creds = clients.create_client(store, org="SE2120000142-SOC1", scope="system/*.cruds")
    good = base64.b64encode(f"{creds['client_id']}:{creds['client_secret']}".encode()).decode()
    other = base64.b64encode(b"someone-else:wrong").decode()
    r = anonymous.post("/auth/token", content="grant_type=client_credentials", headers=[
        ("content-type", "application/x-www-form-urlencoded"),
        ("authorization", f"Basic {good}"), ("authorization", f"Basic {other}")])
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request"
    assert "access_token" not in r.json()
