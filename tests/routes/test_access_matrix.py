"""Every endpoint against every role: allowed or denied, and nothing leaks when denied.

Roles: a participating organisation (BUP), a non-participating one, an organisation after the
person withdrew consent from it (the school), the national portal, an admin client without
personal-data access, and an anonymous caller.
"""

from __future__ import annotations

import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body

SOC, BUP, SCHOOL = "SE2120000142-SOC1", "SE2321000016-15CQ", "SE2120000142-SKO7"
OUTSIDER, PORTAL, ADMIN = "SE2321000016-OUT1", "SE2321000016-1177", "SE2321000016-ADM9"
PNR = f"http://electronichealth.se/identifier/personnummer|{f.DEMO_PNR}"

ROLES = ["participant", "outsider", "withdrawn", "portal", "admin", "anonymous"]

# (name, method, url, body builder or None) -> expected status per role
OK, DENY, ANON = 200, 403, 401
ENDPOINTS = [
    ("read", "GET", "/fhir/CarePlan/alva-sip", None,
     {"participant": OK, "outsider": DENY, "withdrawn": DENY, "portal": DENY, "admin": DENY}),
    ("vread", "GET", "/fhir/CarePlan/alva-sip/_history/1", None,
     {"participant": OK, "outsider": DENY, "withdrawn": DENY, "portal": DENY, "admin": DENY}),
    ("instance history", "GET", "/fhir/CarePlan/alva-sip/_history", None,
     {"participant": OK, "outsider": DENY, "withdrawn": DENY, "portal": DENY, "admin": DENY}),
    ("type history", "GET", "/fhir/CarePlan/_history", None,
     {"participant": DENY, "outsider": DENY, "withdrawn": DENY, "portal": DENY, "admin": DENY}),
    ("system history", "GET", "/fhir/_history", None,
     {"participant": DENY, "outsider": DENY, "withdrawn": DENY, "portal": DENY, "admin": DENY}),
    ("search", "GET", "/fhir/CarePlan?patient=alva&_include=CarePlan:care-team", None,
     {"participant": OK, "outsider": OK, "withdrawn": OK, "portal": DENY, "admin": DENY}),
    ("patient search", "GET", f"/fhir/Patient?identifier={PNR}&_revinclude=Consent:patient",
     None, {"participant": OK, "outsider": OK, "withdrawn": OK, "portal": DENY, "admin": DENY}),
    ("kartläggning", "GET", "/fhir/QuestionnaireResponse/alva-kartlaggning", None,
     {"participant": OK, "outsider": DENY, "withdrawn": DENY, "portal": DENY, "admin": DENY}),
    ("update plan", "PUT", "/fhir/CarePlan/alva-sip",
     lambda: f.sip_careplan() | {"title": "Ändrad plan"},
     {"participant": DENY, "outsider": DENY, "withdrawn": DENY, "portal": DENY, "admin": DENY}),
    ("delete plan", "DELETE", "/fhir/CarePlan/alva-sip", None,
     {"participant": DENY, "outsider": DENY, "withdrawn": DENY, "portal": DENY, "admin": DENY}),
    ("directory read", "GET", "/fhir/Organization/bup", None,
     {"participant": OK, "outsider": OK, "withdrawn": OK, "portal": DENY, "admin": OK}),
    ("access log", "GET", "/fhir/AuditEvent?patient=alva", None,
     {"participant": DENY, "outsider": DENY, "withdrawn": DENY, "portal": DENY, "admin": DENY}),
    ("citizen view", "GET", f"/fhir/CarePlan/$citizen-view?patient={PNR}", None,
     {"participant": DENY, "outsider": DENY, "withdrawn": DENY, "portal": OK, "admin": DENY}),
    ("citizen view by POST", "POST", "/fhir/CarePlan/$citizen-view", lambda: {
        "resourceType": "Parameters", "parameter": [{"name": "patient", "valueString": PNR}]},
     {"participant": DENY, "outsider": DENY, "withdrawn": DENY, "portal": OK, "admin": DENY}),
    ("transaction read", "POST", "/fhir", lambda: {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{"request": {"method": "GET", "url": "CarePlan/alva-sip"}}]},
     {"participant": OK, "outsider": DENY, "withdrawn": DENY, "portal": DENY, "admin": DENY}),
    ("metadata", "GET", "/fhir/metadata", None,
     {r: OK for r in ROLES}),
]


@pytest.fixture
def headers(client, as_org):
    h = {"participant": as_org(BUP), "outsider": as_org(OUTSIDER), "withdrawn": as_org(SCHOOL),
         "portal": as_org(PORTAL, scope="system/*.rs", role="portal"),
         "admin": as_org(ADMIN, role="admin"), "anonymous": {}}
    soc = as_org(SOC)
    entries = [{"resource": r, "request": {"method": "PUT",
                                           "url": f"{r['resourceType']}/{r['id']}"}}
               for r in f.demo_case()]
    r = client.post("/fhir", content=body({"resourceType": "Bundle", "type": "transaction",
                                           "entry": entries})["content"],
                    headers=JSON_HEADERS | soc)
    assert r.status_code == 200, r.text
    # The person withdraws the school from the consent.
    consent = f.sip_consent(actor_refs=[f.SOCIAL_SERVICES, f.BUP, f.MOTHER])
    r = client.put("/fhir/Consent/alva-sip-samtycke", content=body(consent)["content"],
                   headers=JSON_HEADERS | soc)
    assert r.status_code == 200, r.text
    client.headers.pop("Authorization", None)  # every call below states who it is
    return h


def _call(client, method, url, make_body, headers):
    if make_body is None:
        return client.request(method, url, headers=headers)
    return client.request(method, url, content=body(make_body())["content"],
                          headers=JSON_HEADERS | headers)


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name,method,url,make_body,expected", ENDPOINTS,
                         ids=[e[0] for e in ENDPOINTS])
def test_endpoint_role_matrix(client, headers, role, name, method, url, make_body, expected):
    want = expected.get(role, ANON)
    r = _call(client, method, url, make_body, headers[role])
    assert r.status_code == want, f"{name} as {role}: {r.status_code} {r.text[:300]}"
    text = r.text
    if want != OK:
        assert r.json()["resourceType"] == "OperationOutcome"
        assert "Alva" not in text and "Södra grundskolan" not in text
    elif name in ("search", "patient search") and role in ("outsider", "withdrawn"):
        b = r.json()
        assert b["total"] == 0 and "entry" not in b, f"{name} leaks to {role}"
