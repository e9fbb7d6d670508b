"""The citizen's view for the national portal: approved plans only, never NOPATIENT, never the
kartläggning."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

import sip_factory as f
from fhirhttp import body, outcome_text
from sip_hub.fhir import sip

PORTAL = "SE2321000016-1177"

URL = f"/fhir/CarePlan/$citizen-view?patient=http://electronichealth.se/identifier/personnummer|{f.DEMO_PNR}"


@pytest.fixture
def alva(client):
    entries = [{"resource": r, "request": {"method": "PUT",
                                           "url": f"{r['resourceType']}/{r['id']}"}}
               for r in f.demo_case()]
    assert client.post("/fhir", **body({"resourceType": "Bundle", "type": "transaction",
                                        "entry": entries})).status_code == 200


def kinds(bundle):
    return sorted(e["resource"]["resourceType"] for e in bundle.get("entry", []))


def test_portal_sees_the_established_plan_with_goals_team_and_organisations(client, alva, portal):
    r = client.get(URL, headers=portal)
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["total"] == 1
    k = kinds(b)
    assert k.count("CarePlan") == 1 and "Goal" in k and "CareTeam" in k and "Organization" in k
    assert "QuestionnaireResponse" not in k
    # A searchset names the search it answers (its self link: the person asked for).
    link = {ln["relation"]: ln["url"] for ln in b["link"]}
    assert parse_qs(urlsplit(link["self"]).query) == parse_qs(urlsplit(URL).query)
    assert urlsplit(link["self"]).path == "/fhir/CarePlan/$citizen-view"


def test_identifier_in_dash_form_is_accepted(client, alva, portal):
    r = client.get("/fhir/CarePlan/$citizen-view?patient=http://electronichealth.se/identifier/"
                   "personnummer|20110314-2384", headers=portal)
    assert r.json()["total"] == 1


def test_draft_plan_is_not_shown(client, alva, portal):
    plan = client.get("/fhir/CarePlan/alva-sip").json()
    plan["status"] = "draft"
    assert client.put("/fhir/CarePlan/alva-sip", **body(plan)).status_code == 200
    assert client.get(URL, headers=portal).json()["total"] == 0


def test_nopatient_plan_is_never_shown(client, alva, portal):
    plan = client.get("/fhir/CarePlan/alva-sip").json()
    plan["meta"]["security"] = [sip.NOPATIENT.coding()]
    assert client.put("/fhir/CarePlan/alva-sip", **body(plan)).status_code == 200
    b = client.get(URL, headers=portal).json()
    assert b["total"] == 0 and "entry" not in b


def test_html_view_in_swedish(client, alva, portal):
    r = client.get(URL, headers=portal | {"accept": "text/html"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    text = r.text
    assert "Huvudansvar" in text and "Kommunen har det övergripande ansvaret" in text
    assert "Samtalsbehandling (KBT)" in text
    assert "Somnar sent" not in text  # the kartläggning's answers never reach the citizen


def test_organisations_and_anonymous_cannot_use_the_citizen_view(client, alva, as_org, anonymous):
    h = as_org("SE2321000016-15CQ")
    r = client.get(URL, headers=h)
    assert r.status_code == 403 and "national portal" in outcome_text(r)
    anonymous.headers.pop("Authorization", None)
    assert anonymous.get(URL).status_code == 401


@pytest.mark.parametrize("patient,status", [
    ("191212121212", 400),
    ("http://electronichealth.se/identifier/personnummer|19121212-1213", 400),
])
def test_bad_patient_parameter_is_400(client, portal, patient, status):
    r = client.get(f"/fhir/CarePlan/$citizen-view?patient={patient}", headers=portal)
    assert r.status_code == status


def test_citizen_view_is_audited(client, alva, portal, anonymous):
    client.get(URL, headers=portal)
    anonymous.app.state.audit.flush()
    log = client.get("/fhir/AuditEvent?patient=alva&subtype=search-type").json()
    assert any(any(a["who"].get("identifier", {}).get("value") == PORTAL for a in e["resource"]["agent"])
               for e in log.get("entry", []))
