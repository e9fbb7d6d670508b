"""A conformance probe with the independent validators (2026-12-07): a batch or transaction
answering one version of a resource twice repeated its fullUrl (bdl-7); a 405 on a read-only
type's path offered methods that are refused there too; an update in a Bundle had no
``response.location`` (a plain PUT's Location names the version it made)."""

from __future__ import annotations

import pytest

from fhirhttp import JSON_HEADERS, body


def _bundle(client, kind: str, *entries: dict) -> list[dict]:
    r = client.post("/fhir", **body({"resourceType": "Bundle", "type": kind,
                                     "entry": list(entries)}))
    assert r.status_code == 200, r.text
    return r.json()["entry"]


@pytest.mark.parametrize("kind", ["batch", "transaction"])
def test_one_version_answered_twice_names_its_full_url_once(client, kind):
    org = {"resourceType": "Organization", "id": "twice", "name": "Två gånger"}
    _bundle(client, "batch", {"resource": org, "request": {"method": "PUT",
                                                           "url": "Organization/twice"}})
    first, second = _bundle(client, kind,
                            {"request": {"method": "GET", "url": "Organization/twice"}},
                            {"request": {"method": "GET", "url": "Organization/twice"}})
    assert first["fullUrl"].endswith("/Organization/twice") and "fullUrl" not in second
    assert first["resource"] == second["resource"]
    assert first["response"]["etag"] == second["response"]["etag"] == 'W/"1"'
    # Two versions of one resource are two fullUrls' worth: each keeps its own.
    org["name"] = "Ny"
    put, read = _bundle(client, "batch",
                        {"resource": org, "request": {"method": "PUT",
                                                      "url": "Organization/twice"}},
                        {"request": {"method": "GET", "url": "Organization/twice/_history/1"}})
    assert put["fullUrl"] == read["fullUrl"]
    assert put["response"]["etag"] != read["response"]["etag"]


def test_an_update_in_a_bundle_names_the_version_it_made(client):
    org = {"resourceType": "Organization", "id": "where", "name": "Var"}
    [created] = _bundle(client, "transaction", {"resource": org, "request": {
        "method": "PUT", "url": "Organization/where"}})
    assert created["response"]["location"].endswith("/Organization/where/_history/1")
    org["name"] = "Här"
    updated, read = _bundle(client, "batch",
                            {"resource": org, "request": {"method": "PUT",
                                                          "url": "Organization/where"}},
                            {"request": {"method": "GET", "url": "Organization/where"}})
    assert updated["response"]["status"] == "200 OK"
    assert updated["response"]["location"].endswith("/Organization/where/_history/2")
    r = client.put("/fhir/Organization/where", **body({**org, "name": "Där"}))
    assert r.headers["location"].endswith("/Organization/where/_history/3")
    assert "location" not in read["response"]  # (a read makes no version)


@pytest.mark.parametrize("method,path", [
    ("PUT", "/fhir/StructureDefinition/sip-careplan"),
    ("DELETE", "/fhir/CodeSystem/sip-phase"),
    ("PATCH", "/fhir/CodeSystem/sip-phase"),
    ("POST", "/fhir/StructureDefinition"),
    ("DELETE", "/fhir/StructureDefinition"),
])
def test_a_read_only_type_offers_only_reads_in_its_405(client, method, path):
    r = client.request(method, path, headers=JSON_HEADERS)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == "GET, HEAD"
    assert r.json()["resourceType"] == "OperationOutcome"
    # What Allow offers is taken.
    assert client.get(path, headers=JSON_HEADERS).status_code == 200


def test_a_writable_type_still_offers_its_writes(client):
    r = client.request("POST", "/fhir/Organization/any", headers=JSON_HEADERS)
    assert r.status_code == 405
    assert r.headers["allow"] == "DELETE, GET, HEAD, PATCH, PUT"
