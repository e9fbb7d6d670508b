"""FHIR's patch interaction with a JSON Patch (RFC 6902): applied to the current version and
written as an update of it; a patch that is malformed, cannot be applied or makes an invalid
resource is refused with an OperationOutcome and stores nothing."""

from __future__ import annotations

import base64
import copy
from typing import Any

import orjson
import pytest

from fhirhttp import JSON_HEADERS, create, outcome_text

PATCH = {"content-type": "application/json-patch+json", "accept": "application/fhir+json"}
Json = dict[str, Any]


def _org(client: Any) -> Json:
    return create(client, {"resourceType": "Organization", "name": "Socialtjänsten",
                           "active": True, "alias": ["Soc"]})


def _patch(client: Any, url: str, ops: Any, **headers: str) -> Any:
    raw = ops if isinstance(ops, bytes) else orjson.dumps(ops)
    return client.patch(f"/fhir/{url}", content=raw, headers={**PATCH, **headers})


def _versions(client: Any, url: str) -> int:
    r = client.get(f"/fhir/{url}/_history", headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    return r.json()["total"]


def test_a_patch_changes_the_current_version_into_a_new_one(client):
    org = _org(client)
    url = f"Organization/{org['id']}"
    r = _patch(client, url, [{"op": "replace", "path": "/name", "value": "Omsorgen"},
                             {"op": "add", "path": "/alias/-", "value": "Oms"},
                             {"op": "remove", "path": "/active"}])
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["name"] == "Omsorgen" and got["alias"] == ["Soc", "Oms"] and "active" not in got
    assert got["meta"]["versionId"] == "2" and r.headers["etag"] == 'W/"2"'
    assert r.headers["location"].endswith(f"/{url}/_history/2")
    assert client.get(f"/fhir/{url}", headers=JSON_HEADERS).json() == got
    assert client.get(f"/fhir/{url}/_history/1", headers=JSON_HEADERS).json()["name"] == \
        "Socialtjänsten"


def test_if_match_guards_a_patch(client):
    org = _org(client)
    url = f"Organization/{org['id']}"
    ops = [{"op": "replace", "path": "/name", "value": "Ny"}]
    assert _patch(client, url, ops, **{"If-Match": 'W/"1"'}).status_code == 200
    r = _patch(client, url, [{"op": "replace", "path": "/name", "value": "Äldre"}],
               **{"If-Match": 'W/"1"'})
    assert r.status_code == 412, r.text
    assert client.get(f"/fhir/{url}", headers=JSON_HEADERS).json()["name"] == "Ny"
    assert _versions(client, url) == 2


@pytest.mark.parametrize("prefer, status_body", [
    ("return=minimal", b""), ("return=OperationOutcome", b"OperationOutcome")])
def test_a_patch_answers_as_prefer_asks(client, prefer, status_body):
    org = _org(client)
    r = _patch(client, f"Organization/{org['id']}",
               [{"op": "replace", "path": "/name", "value": "X"}], Prefer=prefer)
    assert r.status_code == 200, r.text
    assert (status_body in r.content) if status_body else r.content == b""
    assert r.headers["etag"] == 'W/"2"'


def test_a_decimal_patched_in_is_kept_as_written(client):
    patient = create(client, {"resourceType": "Patient", "name": [{"family": "Ek"}]})
    goal = create(client, {"resourceType": "Goal", "lifecycleStatus": "active",
                           "description": {"text": "Gå"},
                           "subject": {"reference": f"Patient/{patient['id']}"}})
    raw = (b'[{"op":"add","path":"/target","value":[{"measure":{"text":"m"},'
           b'"detailQuantity":{"value":1.50}}]}]')
    r = _patch(client, f"Goal/{goal['id']}", raw)
    assert r.status_code == 200, r.text
    assert b'"detailQuantity":{"value":1.50}' in r.content
    assert b'"value":1.50' in client.get(f"/fhir/Goal/{goal['id']}", headers=JSON_HEADERS).content


@pytest.mark.parametrize("ops, status, says", [
    ({"op": "replace", "path": "/name", "value": "x"}, 400, "array"),
    ([], 400, "array"),
    ([{"op": "frobnicate", "path": "/name"}], 400, "frobnicate"),
    ([{"op": "replace", "value": "x"}], 400, "path"),
    ([{"op": "replace", "path": "name", "value": "x"}], 400, "JSON Pointer"),
    ([{"op": "replace", "path": "/name"}], 400, "value"),
    (b'[{"op":"replace","path":"/name","value":"a","value":"b"}]', 400, "twice"),
    (b'[{"op":', 400, "Malformed JSON"),
    ([{"op": "test", "path": "/name", "value": "Annan"}], 422, "test"),
    ([{"op": "remove", "path": "/telecom"}], 422, "telecom"),
    ([{"op": "add", "path": "/alias/7", "value": "x"}], 422, "cannot be applied"),
    ([{"op": "replace", "path": "", "value": [1]}], 422, "whole resource"),
    ([{"op": "replace", "path": "/active", "value": "kanske"}], 422, "Organization.active"),
    ([{"op": "add", "path": "/bogus", "value": 1}], 422, "bogus"),
    ([{"op": "replace", "path": "/resourceType", "value": "Patient"}], 400, "Patient"),
    ([{"op": "replace", "path": "/id", "value": "annan"}], 400, "annan"),
])
def test_a_patch_that_cannot_be_made_is_refused_and_stores_nothing(client, ops, status, says):
    org = _org(client)
    url = f"Organization/{org['id']}"
    r = _patch(client, url, ops)
    assert r.status_code == status, r.text
    assert says in outcome_text(r)
    assert client.get(f"/fhir/{url}", headers=JSON_HEADERS).json() == org
    assert _versions(client, url) == 1


@pytest.mark.parametrize("ctype", ["application/fhir+json", "application/json",
                                   "application/fhir+xml", ""])
def test_a_patch_in_another_form_is_a_415(client, ctype):
    org = _org(client)
    r = client.patch(f"/fhir/Organization/{org['id']}",
                     content=b'[{"op":"remove","path":"/alias"}]',
                     headers={"content-type": ctype} if ctype else {})
    assert r.status_code == 415, r.text
    assert "application/json-patch+json" in outcome_text(r)


def test_a_patch_of_what_is_not_there_or_was_deleted(client):
    ops = [{"op": "remove", "path": "/alias"}]
    r = _patch(client, "Organization/finns-inte", ops)
    assert r.status_code == 404, r.text
    org = _org(client)
    assert client.delete(f"/fhir/Organization/{org['id']}").status_code == 200
    r = _patch(client, f"Organization/{org['id']}", ops)
    assert r.status_code == 410, r.text
    assert _patch(client, "Organization", ops).status_code == 405
    assert _patch(client, "Bogus/x", ops).status_code in (400, 404)


def test_the_capability_statement_declares_json_patch(client):
    cs = client.get("/fhir/metadata", headers=JSON_HEADERS).json()
    assert cs["patchFormat"] == ["application/json-patch+json"]
    org = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Organization")
    assert "patch" in {i["code"] for i in org["interaction"]}
    audit = next(r for r in cs["rest"][0]["resource"] if r["type"] == "AuditEvent")
    assert "patch" not in {i["code"] for i in audit["interaction"]}
    assert client.patch("/fhir/AuditEvent/x", content=b'[{"op":"remove","path":"/a"}]',
                        headers=PATCH).status_code in (403, 405)


# -- PATCH in a Bundle: a Binary holding the JSON Patch ---------------------------------------

def _binary(ops: Any, content_type: str = "application/json-patch+json") -> Json:
    return {"resourceType": "Binary", "contentType": content_type,
            "data": base64.b64encode(orjson.dumps(ops)).decode()}


def _bundle(kind: str, *entries: Json) -> Json:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _patch_entry(url: str, ops: Any, **request: str) -> Json:
    return {"resource": _binary(ops), "request": {"method": "PATCH", "url": url, **request}}


def _post(client: Any, bundle: Json) -> Any:
    return client.post("/fhir", content=orjson.dumps(bundle), headers=JSON_HEADERS)


def test_a_transaction_patches_by_id_with_its_other_entries(client):
    org = _org(client)
    url = f"Organization/{org['id']}"
    r = _post(client, _bundle(
        "transaction",
        {"fullUrl": "urn:uuid:0b7a2f3e-0d59-4a57-9a4c-2b1bb8f6d001",
         "resource": {"resourceType": "Organization", "name": "Huvudmannen"},
         "request": {"method": "POST", "url": "Organization"}},
        _patch_entry(url, [{"op": "replace", "path": "/name", "value": "Omsorgen"},
                           {"op": "add", "path": "/partOf",
                            "value": {"reference":
                                      "urn:uuid:0b7a2f3e-0d59-4a57-9a4c-2b1bb8f6d001"}}],
                     ifMatch='W/"1"')))
    assert r.status_code == 200, r.text
    created, patched = r.json()["entry"]
    assert created["response"]["status"].startswith("201")
    assert patched["response"]["status"].startswith("200")
    assert patched["response"]["etag"] == 'W/"2"'
    got = client.get(f"/fhir/{url}", headers=JSON_HEADERS).json()
    parent = created["response"]["location"].split("/fhir/")[1].split("/_history")[0]
    assert got["name"] == "Omsorgen" and got["partOf"] == {"reference": parent}
    assert got["meta"]["versionId"] == "2" and got["alias"] == ["Soc"]


def test_a_transaction_whose_patch_fails_stores_nothing(client):
    org = _org(client)
    url = f"Organization/{org['id']}"
    before = client.get("/fhir/Organization", headers=JSON_HEADERS).json()["total"]
    r = _post(client, _bundle(
        "transaction",
        {"resource": {"resourceType": "Organization", "name": "Ny"},
         "request": {"method": "POST", "url": "Organization"}},
        _patch_entry(url, [{"op": "test", "path": "/name", "value": "Något annat"},
                           {"op": "replace", "path": "/name", "value": "Omsorgen"}])))
    assert r.status_code == 422, r.text
    assert "Bundle.entry[1]" in outcome_text(r) and "test failed" in outcome_text(r)
    assert client.get("/fhir/Organization", headers=JSON_HEADERS).json()["total"] == before
    assert _versions(client, url) == 1


def test_a_batch_patches_each_entry_on_its_own(client):
    org = _org(client)
    url = f"Organization/{org['id']}"
    r = _post(client, _bundle(
        "batch",
        _patch_entry(url, [{"op": "replace", "path": "/name", "value": "Omsorgen"}]),
        _patch_entry(url, [{"op": "remove", "path": "/telecom"}]),
        _patch_entry("Organization/finns-inte", [{"op": "remove", "path": "/name"}])))
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses[0].startswith("200") and statuses[1:] == ["422", "404"]
    assert client.get(f"/fhir/{url}", headers=JSON_HEADERS).json()["name"] == "Omsorgen"


@pytest.mark.parametrize(("entry", "status", "says"), [
    ({"resource": {"resourceType": "Parameters", "parameter": [{"name": "operation"}]},
      "request": {"method": "PATCH", "url": "Organization/x"}}, 400, "FHIRPath Patch"),
    ({"request": {"method": "PATCH", "url": "Organization/x"}}, 400,
     "Binary holding a JSON Patch"),
    ({"resource": _binary([{"op": "remove", "path": "/name"}], "application/json"),
      "request": {"method": "PATCH", "url": "Organization/x"}}, 400, "contentType must be"),
    ({"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                   "data": "inte base64!"},
      "request": {"method": "PATCH", "url": "Organization/x"}}, 422, "Base64 decoding error"),
    ({"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                   "data": base64.b64encode(b"[{").decode()},
      "request": {"method": "PATCH", "url": "Organization/x"}}, 400, "not base64 of a JSON"),
    ({"resource": _binary({"op": "remove"}),
      "request": {"method": "PATCH", "url": "Organization/x"}}, 400, "JSON array of operations"),
    ({"resource": _binary([{"op": "remove", "path": "/name"}]),
      "request": {"method": "PATCH", "url": "Organization?name=Soc"}}, 400, "conditional patch"),
])
def test_a_patch_entry_that_is_not_one_is_refused_naming_it(client, entry, status, says):
    org = _org(client)
    first = _patch_entry(f"Organization/{org['id']}",
                         [{"op": "replace", "path": "/name", "value": "Omsorgen"}])
    r = _post(client, _bundle("transaction", first, entry))
    assert r.status_code == status, r.text
    assert "Bundle.entry[1]" in outcome_text(r) and says in outcome_text(r)
    assert _versions(client, f"Organization/{org['id']}") == 1


def test_a_transaction_patches_and_puts_one_resource_once_only(client):
    org = _org(client)
    url = f"Organization/{org['id']}"
    r = _post(client, _bundle(
        "transaction",
        {"resource": {**org, "name": "Satt"}, "request": {"method": "PUT", "url": url}},
        _patch_entry(url, [{"op": "replace", "path": "/name", "value": "Lappad"}])))
    assert r.status_code == 400 and "writes each resource once" in outcome_text(r)
    assert _versions(client, url) == 1


def test_a_patch_reference_to_no_entry_is_refused(client):
    org = _org(client)
    r = _post(client, _bundle("transaction", _patch_entry(
        f"Organization/{org['id']}",
        [{"op": "add", "path": "/partOf/reference",
          "value": "urn:uuid:0b7a2f3e-0d59-4a57-9a4c-2b1bb8f6d0ff"}])))
    assert r.status_code == 400 and "no such fullUrl" in outcome_text(r)


# -- what a patch costs ------------------------------------------------------------------------

def _big_org(client: Any, size: int) -> Json:
    """An Organization with one extension of ``size`` characters."""
    return create(client, {"resourceType": "Organization", "name": "Enhet", "extension": [
        {"url": "http://example.org/e", "valueString": "a" * size}]})


def test_a_small_patch_cannot_make_a_resource_larger_than_a_body_may_be(client):
    """A `copy` stores what it copies without it being sent: a patch of six copies (under
    1 KB) made a 1 MB Organization one of 7 MB, stored and served to every reader, although
    a PUT of it is a 413 (SIP_HUB_MAX_BODY_BYTES). What a patch makes is bounded as a body
    is: a 413 that says so, nothing stored."""
    org = _big_org(client, 1024 * 1024)
    url = f"Organization/{org['id']}"
    ops = [{"op": "copy", "from": "/extension/0", "path": "/extension/-"}] * 6
    assert len(orjson.dumps(ops)) < 1024
    r = _patch(client, url, ops)
    put = client.put(f"/fhir/{url}", content=orjson.dumps(
        org | {"extension": org["extension"] * 7}), headers=JSON_HEADERS)
    assert put.status_code == 413  # the same resource, sent whole
    assert r.status_code == 413, (r.status_code, len(r.content))
    assert "SIP_HUB_MAX_BODY_BYTES" in outcome_text(r)
    assert client.get(f"/fhir/{url}", headers=JSON_HEADERS).json()["meta"]["versionId"] == "1"
    # copies that stay within the bound are made
    r = _patch(client, url, ops[:3])
    assert r.status_code == 200 and len(r.json()["extension"]) == 4


def test_a_patch_that_doubles_the_resource_is_stopped_as_it_grows(client):
    """Copying an element into itself doubles the resource each operation (17 operations
    made one of 15 MB and held a worker 34 s; 30 exhausted memory): what the copies copy
    counts against the bound as they run, the patch stops at the operation past it."""
    org = _big_org(client, 100 * 1024)
    url = f"Organization/{org['id']}"
    ops = [{"op": "copy", "from": "/extension", "path": "/extension/-"}] * 8  # (25 MB)
    r = _patch(client, url, ops)
    assert r.status_code == 413, (r.status_code, len(r.content))
    assert "Operation 5 of the patch" in outcome_text(r)
    assert _versions(client, url) == 1


def test_a_patch_entry_of_a_transaction_is_bounded_as_well(client):
    """A Bundle's PATCH entry is applied as a PATCH is: the transaction fails, storing
    nothing."""
    org = _big_org(client, 1024 * 1024)
    url = f"Organization/{org['id']}"
    r = _post(client, _bundle("transaction", {
        "resource": {"resourceType": "Organization", "name": "Ny"},
        "request": {"method": "POST", "url": "Organization"}}, _patch_entry(
            url, [{"op": "copy", "from": "/extension/0", "path": "/extension/-"}] * 6)))
    assert r.status_code == 413, r.text[:300]
    assert "Bundle.entry[1]" in outcome_text(r)
    assert _versions(client, url) == 1
    assert client.get("/fhir/Organization?name=Ny", headers=JSON_HEADERS).json()["total"] == 0


def test_a_patch_has_at_most_a_thousand_operations(client):
    """Each operation runs in the write transaction (the resource locked, on SQLite the
    hub's one write lock held): a patch of more is a 413 naming the limit (send the resource
    with PUT), one of as many is applied."""
    org = _org(client)
    url = f"Organization/{org['id']}"
    test = {"op": "test", "path": "/name", "value": "Socialtjänsten"}
    r = _patch(client, url, [test] * 1001)
    assert r.status_code == 413 and "at most 1000 operations" in outcome_text(r), r.text
    assert _patch(client, url, [test] * 999 + [
        {"op": "replace", "path": "/name", "value": "Omsorgen"}]).status_code == 200


def test_a_patch_whose_test_fails_costs_no_copy_of_the_resource_per_operation(client,
                                                                             monkeypatch):
    """A patch whose `test` fails is a 422 naming the operation. To find which, the patch
    was applied again one operation at a time, each on a fresh copy of the whole resource,
    in the write transaction (a 45 KB patch on an Organization of 20,000 extensions held a
    worker 111 s). The failing operation is noted as the patch is applied, once: counted
    here, the copies of the resource made while the PATCH runs."""
    org = create(client, {"resourceType": "Organization", "name": "Enhet"})
    copies = []
    deepcopy = copy.deepcopy

    def counting(x: Any, memo: Any = None, _nil: Any = []) -> Any:  # noqa: B006
        if memo is None and isinstance(x, dict) and x.get("resourceType") == "Organization":
            copies.append(1)
        return deepcopy(x, memo)

    monkeypatch.setattr(copy, "deepcopy", counting)
    ops = [{"op": "test", "path": "/name", "value": "Enhet"}] * 300 + [
        {"op": "test", "path": "/name", "value": "Annan"}]
    r = _patch(client, f"Organization/{org['id']}", ops)
    assert r.status_code == 422 and "operation 300" in outcome_text(r), r.text
    assert "Annan" not in r.text and "Enhet" not in r.text  # (the values compared are not told)
    assert len(copies) <= 5, len(copies)
