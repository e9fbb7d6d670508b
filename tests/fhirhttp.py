"""Small helpers for talking FHIR to the test client."""

from __future__ import annotations

from typing import Any

import orjson

JSON_HEADERS = {"content-type": "application/fhir+json", "accept": "application/fhir+json"}
PNR = "http://electronichealth.se/identifier/personnummer"
HSA = "urn:oid:1.2.752.29.4.19"


def body(resource: Any) -> dict[str, Any]:
    return {"content": orjson.dumps(resource), "headers": JSON_HEADERS}


def patient(pnr: str = "191212121212", family: str = "Tolvansson",
            given: str = "Tolvan") -> dict[str, Any]:
    return {"resourceType": "Patient",
            "identifier": [{"system": PNR, "value": pnr}],
            "name": [{"family": family, "given": [given]}],
            "birthDate": f"{pnr[:4]}-{pnr[4:6]}-{pnr[6:8]}"}


def plain_careplan(patient_id: str, **extra: Any) -> dict[str, Any]:
    """A CarePlan without SIP markers: only base FHIR rules apply."""
    return {"resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": {"reference": f"Patient/{patient_id}"}, **extra}


def outcome_text(resp: Any) -> str:
    data = resp.json()
    assert data["resourceType"] == "OperationOutcome", data
    return " | ".join(f"{i.get('diagnostics', '')} @ {','.join(i.get('expression', []))}"
                      for i in data["issue"])


def create(client: Any, resource: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/fhir/{resource['resourceType']}", **body(resource))
    assert r.status_code == 201, r.text
    return r.json()


def store_all(client: Any, resources: list[dict[str, Any]]) -> None:
    """``resources`` written by id in one transaction (each referring only backwards)."""
    entries = [{"resource": r, "request": {"method": "PUT",
                                           "url": f"{r['resourceType']}/{r['id']}"}}
               for r in resources]
    r = client.post("/fhir", **body({"resourceType": "Bundle", "type": "transaction",
                                     "entry": entries}))
    assert r.status_code == 200, r.text


def refused_400(client: Any, url: str, *needles: str) -> None:
    """GET ``url`` is a 400 whose OperationOutcome says each of ``needles``."""
    r = client.get(url, headers=JSON_HEADERS)
    assert r.status_code == 400, r.text
    text = outcome_text(r)
    for needle in needles:
        assert needle in text, text


def request_events(client: Any, request_id: str) -> list[dict[str, Any]]:
    """The AuditEvents of one request (its X-Request-ID), as an unrestricted admin reads
    them (``client``'s own token), once the background writer has written them."""
    client.app.state.audit.flush()
    r = client.get(f"/fhir/AuditEvent?entity:identifier={request_id}&_count=100")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def entities(event: dict[str, Any]) -> set[str]:
    """The references an AuditEvent's entities name (the resources and persons)."""
    return {e["what"]["reference"] for e in event.get("entity", [])
            if "reference" in e.get("what", {})}


def with_request_id(headers: dict[str, str], request_id: str) -> dict[str, str]:
    return headers | {"X-Request-ID": request_id}
