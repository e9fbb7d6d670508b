"""The citizen's view for the national portal: approved plans only, never NOPATIENT, never the
kartläggning."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import orjson
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


# -- invoked by POST with a Parameters resource ------------------------------------------------

VIEW = "/fhir/CarePlan/$citizen-view"
ALVA_PNR = f"http://electronichealth.se/identifier/personnummer|{f.DEMO_PNR}"


def _asked(*parameter: dict) -> dict:
    return {"resourceType": "Parameters", **({"parameter": list(parameter)} if parameter else {})}


def _post(client, headers, parameters, url=VIEW, **more):
    return client.post(url, content=orjson.dumps(parameters),
                       headers=headers | {"content-type": "application/fhir+json"} | more)


def test_the_view_by_post_with_parameters_answers_as_by_get(client, alva, portal):
    """The portal's integrator invokes the operation as client libraries do by default
    (fhir-kit-client's ``operation()``): POST with a Parameters resource, patient as
    valueString. FHIR (operations.html): servers SHALL support POST for all operations. The
    answer is the GET's: the same searchset, in each form Accept asks for, never cached."""
    by_get = client.get(URL, headers=portal)
    r = _post(client, portal, _asked({"name": "patient", "valueString": ALVA_PNR}))
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "searchset" and r.json()["total"] == 1
    assert r.json()["entry"] == by_get.json()["entry"]
    assert r.json()["link"] == by_get.json()["link"]
    assert r.headers["cache-control"] == "no-store"
    html = _post(client, portal, _asked({"name": "patient", "valueString": ALVA_PNR}),
                 accept="text/html")
    assert html.headers["content-type"].startswith("text/html") and "Huvudansvar" in html.text
    pdf = _post(client, portal, _asked({"name": "patient", "valueString": ALVA_PNR}),
                accept="application/pdf")
    assert pdf.headers["content-type"] == "application/pdf" and pdf.content[:5] == b"%PDF-"
    xml = _post(client, portal, _asked({"name": "patient", "valueString": ALVA_PNR}),
                url=f"{VIEW}?_format=xml")
    assert xml.headers["content-type"].startswith("application/fhir+xml"), xml.text
    # and its Parameters in XML
    r = client.post(VIEW, headers=portal | {"content-type": "application/fhir+xml"}, content=(
        '<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="patient"/>'
        f'<valueString value="{ALVA_PNR}"/></parameter></Parameters>').encode())
    assert r.status_code == 200 and r.json()["entry"] == by_get.json()["entry"], r.text


@pytest.mark.parametrize("parameters, url, says", [
    (_asked(), VIEW, "needs 'patient'"),
    (_asked({"name": "patient", "valueIdentifier": {"value": f.DEMO_PNR}}), VIEW,
     "'patient' takes valueString"),
    (_asked({"name": "patient", "valueString": ALVA_PNR},
            {"name": "patient", "valueString": ALVA_PNR}), VIEW,
     "'patient' may be given once"),
    (_asked({"name": "patient", "valueString": ALVA_PNR},
            {"name": "_count", "valueString": "1"}), VIEW, "no parameter '_count'"),
    (_asked({"name": "patient", "valueString": ALVA_PNR}), f"{VIEW}?patient={ALVA_PNR}",
     "patient goes in the Parameters resource"),
    (_asked({"name": "patient", "valueString": "191212121212"}), VIEW, "personnummer"),
    ({"resourceType": "Patient"}, VIEW, "takes a Parameters resource"),
])
def test_the_view_by_post_refuses_what_it_cannot_answer(client, alva, portal, parameters, url,
                                                         says):
    """A POST that does not ask one question the way the OperationDefinition declares it is
    a 400 that says what to send instead, never cached, as the GET's refusals are."""
    r = _post(client, portal, parameters, url=url)
    assert r.status_code == 400, r.text
    assert says in outcome_text(r)
    assert r.headers["cache-control"] == "no-store"


def test_the_view_by_post_is_the_portals_only_and_audited(client, alva, portal, as_org,
                                                          anonymous):
    """Who may not read the view by GET may not by POST (403, 401), and a reading by POST is
    in the person's access log as one by GET is."""
    asked = _asked({"name": "patient", "valueString": ALVA_PNR})
    assert _post(client, portal, asked).status_code == 200
    anonymous.app.state.audit.flush()
    log = client.get("/fhir/AuditEvent?patient=alva&subtype=search-type").json()
    portal_reads = [e for e in log.get("entry", [])
                    if any(a["who"].get("identifier", {}).get("value") == PORTAL
                           for a in e["resource"]["agent"])]
    assert len(portal_reads) == 1, log
    r = _post(client, as_org("SE2321000016-15CQ"), asked)
    assert r.status_code == 403 and "national portal" in outcome_text(r)
    anonymous.headers.pop("Authorization", None)
    assert _post(anonymous, {}, asked).status_code == 401
