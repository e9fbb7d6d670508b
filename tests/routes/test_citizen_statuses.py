"""What the citizen reads of statuses on 1177 (the citizen view as a Bundle, HTML and PDF, and
GetCarePlans 2.0, whose content is that HTML and PDF): an established plan is shown whatever
its established status, paused or closed saying so; a goal, care team or insats entered in
error is left out (it should never have existed); a goal or insats paused, cancelled, stopped
or over says so in Swedish."""

from __future__ import annotations

import base64
import io

from pypdf import PdfReader

import sip_factory as f
import test_getcareplans
from fhirhttp import JSON_HEADERS, body
from sip_hub import identifiers
from sip_process import BUP, SOC, write_case
from test_getcareplans import CORE, call, plans, result

# (the official schemas, and the hub's HSA-id set before the app starts)
schemas, _hub_hsa_id = test_getcareplans.schemas, test_getcareplans._hub_hsa_id

VIEW = "/fhir/CarePlan/$citizen-view"
ALVA = f"{VIEW}?patient={identifiers.PERSONNUMMER}|{f.DEMO_PNR}"
SLEEP = "Alva somnar före klockan 23 på vardagar och orkar gå upp på morgonen."
KBT = "Samtalsbehandling (KBT)"
SCHOOL_SUPPORT = "Anpassad studiegång med stöd av specialpedagog"


def _bundle(client, portal) -> dict:
    r = client.get(ALVA, headers=portal)
    assert r.status_code == 200, r.text
    return r.json()


def _html(client, portal) -> str:
    r = client.get(ALVA, headers={**portal, "Accept": "text/html"})
    assert r.status_code == 200, r.text
    return r.text


def _pdf_text(client, portal) -> str:
    r = client.get(ALVA, headers={**portal, "Accept": "application/pdf"})
    assert r.status_code == 200, r.text
    return " ".join(" ".join((p.extract_text() or "").split())
                    for p in PdfReader(io.BytesIO(r.content)).pages)


def _getcareplans_html(client, portal, schemas) -> list[str]:
    """The HTML content of each carePlan GetCarePlans answers."""
    out = call(client, portal, schemas)
    assert result(out)[0] == "OK"
    return [base64.b64decode(c.findtext(f"{{{CORE}}}value")).decode()
            for cp in plans(out) for c in cp.iter(f"{{{CORE}}}content")
            if c.findtext(f"{{{CORE}}}mediaType") == "text/html"]


def _put(client, headers, path: str, resource: dict) -> None:
    r = client.put(path, content=body(resource)["content"], headers=JSON_HEADERS | headers)
    assert r.status_code == 200, r.text


def test_an_established_plan_on_hold_is_shown_as_paused(client, as_org, portal, schemas):
    """A plan the person approved that is paused (on-hold, e.g. during a hospital stay) is
    still their plan, as the hub counts it established everywhere (sip.ESTABLISHED_STATUSES):
    1177 shows it, saying that it is paused, in the Bundle, HTML, PDF and GetCarePlans."""
    case = [f.sip_careplan(status="on-hold") if r["resourceType"] == "CarePlan" else r
            for r in f.demo_case()]
    write_case(client, as_org(SOC), case)  # (with the person's approval Provenance)
    b = _bundle(client, portal)
    assert b["total"] == 1, b
    assert b["entry"][0]["resource"]["status"] == "on-hold"
    html = _html(client, portal)
    assert "SIP för Alva Andersson" in html and "Planen är pausad." in html
    assert "Planen är pausad." in _pdf_text(client, portal)
    [content] = _getcareplans_html(client, portal, schemas)
    assert "Planen är pausad." in content


def test_an_active_plan_says_nothing_of_its_status(client, portal):
    """An active plan (and its goals and insatser under way) carries no status text: only
    what is paused or over says so."""
    write_case(client, {}, f.demo_case())
    html = _html(client, portal)
    assert "Planen är pausad" not in html and "Planen är avslutad" not in html
    assert "<th>Status</th>" not in html and "målet är" not in html


def test_a_goal_entered_in_error_is_not_shown(client, as_org, portal, schemas):
    """A goal of the established plan that the coordinator marks entered-in-error (allowed
    without a revision) should never have existed: the citizen does not read it as one of
    their goals, in any form, nor is it included in the Bundle."""
    soc = as_org(SOC)
    write_case(client, soc, f.demo_case())
    goal = client.get("/fhir/Goal/alva-mal-somn", headers=soc).json()
    goal["lifecycleStatus"] = "entered-in-error"
    _put(client, soc, "/fhir/Goal/alva-mal-somn", goal)
    included = {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in _bundle(client, portal)["entry"]}
    assert f.GOAL_SLEEP not in included and f.GOAL_SCHOOL in included
    html = _html(client, portal)
    assert SLEEP not in html and "Alva går i skolan varje dag" in html
    assert "Alva somnar" not in _pdf_text(client, portal)
    [content] = _getcareplans_html(client, portal, schemas)
    assert SLEEP not in content


def test_a_cancelled_goal_is_shown_as_cancelled(client, as_org, portal):
    """A goal cancelled (given up) was part of the plan the person approved: it is still
    shown, saying that it is cancelled, lest the person take it for one being worked on."""
    soc = as_org(SOC)
    write_case(client, soc, f.demo_case())
    goal = client.get("/fhir/Goal/alva-mal-somn", headers=soc).json()
    goal["lifecycleStatus"] = "cancelled"
    _put(client, soc, "/fhir/Goal/alva-mal-somn", goal)
    assert f"{SLEEP} (Sömn) – målet är avbrutet" in _html(client, portal)
    assert "(Sömn) – målet är avbrutet" in _pdf_text(client, portal)


def test_a_care_team_entered_in_error_is_not_included(client, as_org, portal):
    """A care team marked entered-in-error is not included in the citizen's Bundle."""
    soc = as_org(SOC)
    write_case(client, soc, f.demo_case())
    team = client.get("/fhir/CareTeam/alva-sip", headers=soc).json()
    team["status"] = "entered-in-error"
    _put(client, soc, "/fhir/CareTeam/alva-sip", team)
    b = _bundle(client, portal)
    assert b["total"] == 1
    assert not [e for e in b["entry"] if e["resource"]["resourceType"] == "CareTeam"]


def test_an_insats_entered_in_error_is_not_shown(client, as_org, portal, schemas):
    """BUP marks its own insats entered-in-error (a participant may change the status of its
    own insatser): the citizen does not read it as an insats of their plan that BUP is
    responsible for (rule 4), in any form; the plan in the Bundle leaves it out too."""
    write_case(client, as_org(SOC), f.demo_case())
    bup = as_org(BUP)
    plan = client.get("/fhir/CarePlan/alva-sip", headers=bup).json()
    plan["activity"][0]["detail"]["status"] = "entered-in-error"
    _put(client, bup, "/fhir/CarePlan/alva-sip", plan)
    [shown] = [e["resource"] for e in _bundle(client, portal)["entry"]
               if e["search"]["mode"] == "match"]
    assert [a["detail"]["description"][:20] for a in shown["activity"]] == \
        [a["detail"]["description"][:20] for a in plan["activity"][1:]]
    html = _html(client, portal)
    assert KBT not in html and SCHOOL_SUPPORT in html
    assert KBT not in _pdf_text(client, portal)
    [content] = _getcareplans_html(client, portal, schemas)
    assert KBT not in content


def test_an_insats_cancelled_stopped_or_completed_says_so(client, portal):
    """An insats cancelled before it started, stopped, or completed is still shown in the
    insatser's table, with its status in Swedish (a column of its own, HTML and PDF)."""
    acts = f.demo_activities()
    for act, status in zip(acts, ("cancelled", "stopped", "completed")):
        act["detail"]["status"] = status
    write_case(client, {}, [f.sip_careplan(activities=acts)
                            if r["resourceType"] == "CarePlan" else r for r in f.demo_case()])
    html = _html(client, portal)
    assert "<th>Huvudman</th><th>Status</th>" in html
    for state in ("Inställd", "Avbruten", "Avslutad"):
        assert f"<td>{state}</td>" in html
    text = _pdf_text(client, portal)
    assert "Insats Ansvarig Huvudman Status" in text
    for state in ("Inställd", "Avbruten", "Avslutad"):
        assert state in text
