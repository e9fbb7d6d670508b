"""A 405's Allow comes from the path's own routes, uniformly: those that match it with the
fewest path parameters. A path that names an operation or the CapabilityStatement is not a
resource type or id that the generic /fhir/{rtype}[/{rid}] routes would take."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("method, path, allow", [
    # the CapabilityStatement (it was the one special case; its answer is unchanged)
    ("POST", "/fhir/metadata", "GET, HEAD"),
    ("PUT", "/fhir/metadata", "GET, HEAD"),
    ("DELETE", "/fhir/metadata", "GET, HEAD"),
    ("PATCH", "/fhir/metadata", "GET, HEAD"),
    # operations and keywords in a type's or an instance's place
    ("PATCH", "/fhir/$process-message", "POST"),
    ("PATCH", "/fhir/CarePlan/$citizen-view", "GET, HEAD, POST"),
    ("PATCH", "/fhir/CarePlan/_search", "POST"),
    ("PATCH", "/fhir/CarePlan/_history", "GET, HEAD"),
    ("PATCH", "/fhir/_history", "GET, HEAD"),
    # the generic routes where they are the path's own
    ("POST", "/fhir/CarePlan/alva-sip", "DELETE, GET, HEAD, PATCH, PUT"),
    ("PATCH", "/fhir/CarePlan", "GET, HEAD, POST, PUT"),
    ("PUT", "/fhir/CarePlan", "GET, HEAD, POST"),
    ("DELETE", "/healthz", "GET, HEAD"),
])
def test_allow_names_the_paths_own_methods(client, method, path, allow):
    r = client.request(method, path, content=b"{}",
                       headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    assert r.json()["resourceType"] == "OperationOutcome"
