"""Everything the hub emits over HTTP passes validators written by others (Medplum, FHIR.js)."""

from __future__ import annotations


import pytest

import sip_factory as f
from fhirhttp import body, patient


@pytest.mark.node
def test_every_kind_of_response_validates_independently(client, fhir_validator, tmp_path):
    emitted = []

    def keep(resp):
        emitted.append(resp.json())
        return resp

    entries = [{"resource": r, "request": {"method": "PUT",
                                           "url": f"{r['resourceType']}/{r['id']}"}}
               for r in f.demo_case()]
    keep(client.post("/fhir", **body({"resourceType": "Bundle", "type": "transaction",
                                      "entry": entries})))
    keep(client.post("/fhir", **body({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/nobody"}},
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}}]})))
    keep(client.post("/fhir", **body({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/alva"}},       # one version twice:
        {"request": {"method": "GET", "url": "Patient/alva"}}]})))   # (bdl-7)
    keep(client.get("/fhir/metadata"))
    keep(client.get("/fhir/CarePlan?patient=alva&_include=CarePlan:care-team"
                    "&_include=CarePlan:goal&_include=CarePlan:patient&_count=1"))
    keep(client.get("/fhir/Patient?_revinclude=Consent:patient"))
    keep(client.get("/fhir/CarePlan/_history"))
    keep(client.get("/fhir/_history?_count=5"))
    keep(client.get("/fhir/StructureDefinition?_count=50"))
    keep(client.get("/fhir/CarePlan?bogus=1"))                       # 400
    keep(client.get("/fhir/CarePlan/nobody"))                        # 404
    keep(client.post("/fhir/Patient", **body({"resourceType": "Patient", "gender": "x"})))  # 422
    keep(client.delete("/fhir/Goal/alva-mal-somn"))
    keep(client.get("/fhir/Goal/alva-mal-somn"))                     # 410
    keep(client.get("/fhir/Goal?_summary=count"))
    client.app.state.audit.flush()
    log = keep(client.get("/fhir/AuditEvent?_count=30")).json()  # the accesses above
    assert any(e.get("what", {}).get("identifier") for entry in log["entry"]
               for e in entry["resource"].get("entity", []))  # with their request ids

    kinds = {(r["resourceType"], r.get("type")) for r in emitted}
    assert ("CapabilityStatement", None) in kinds and ("OperationOutcome", None) in kinds
    assert {t for k, t in kinds if k == "Bundle"} >= {
        "transaction-response", "batch-response", "searchset", "history"}
    fhir_validator.validate_resources(tmp_path, emitted)
