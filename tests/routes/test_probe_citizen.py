"""Probes of the national portal's citizen view (``CarePlan/$citizen-view``): what 1177, a
privacy officer and the person rely on (domain rules 3, 8, 9, 10)."""

from __future__ import annotations

import copy

import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body, outcome_text
from sip_hub import identifiers
from sip_hub.fhir import sip
from sip_process import (BUP, SCHOOL, SOC, alva_case, approval, code, invitation, one, parameters,
                         post, read, ref, resource, respond, string, transition, values,
                         write_case)

PORTAL = "SE2321000016-1177"
PNR_SYSTEM = identifiers.PERSONNUMMER
VIEW = "/fhir/CarePlan/$citizen-view"
ALVA = f"{VIEW}?patient={PNR_SYSTEM}|{f.DEMO_PNR}"
PLAN = "alva-sip"


def ok(resp, status=200):
    assert resp.status_code == status, resp.text
    return resp.json()


@pytest.fixture
def h(client, as_org):
    """Every organisation's headers, Alva's draft SIP written by its coordinator (SOC)."""
    headers = {org: as_org(org) for org in (SOC, BUP, SCHOOL)}
    write_case(client, headers[SOC], alva_case())
    return headers


def establish(client, h):
    ok(transition(client, h[SOC], PLAN, "kartlaggning"))
    out = ok(post(client, f"CarePlan/{PLAN}/$invite", h[SOC],
                  invitation(f.BUP, f.SCHOOL, start_days=1)))
    for org, org_ref, rep in ((BUP, f.BUP, f.BUP_REPRESENTATIVE),
                              (SCHOOL, f.SCHOOL, f.SCHOOL_REPRESENTATIVE)):
        task = next(t for t in values(out, "task") if t["owner"]["reference"] == org_ref)
        ok(respond(client, h[org], task["id"], "accept", ref("representative", rep)))
    ok(transition(client, h[SOC], PLAN, "mote"))
    return ok(transition(client, h[SOC], PLAN, "upprattad",
                         *approval("Patient/alva", f.MOTHER)))


def view(client, portal, url=ALVA, **headers):
    return client.get(url, headers=portal | headers)


def matches(bundle):
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def included(bundle):
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "include"]


# -- rule 3: the citizen sees what the person approved, never a proposal --------------------

def test_pending_revision_shows_the_approved_content_then_the_approved_revision(
        client, h, portal):
    establish(client, h)
    plan = read(client, f"CarePlan/{PLAN}", h[SOC])
    old_text = plan["activity"][2]["detail"]["description"]
    revision = copy.deepcopy(plan)
    new_text = "Familjebehandling i hemmet varannan vecka; morgonrutinerna fungerar nu."
    revision["activity"][2]["detail"]["description"] = new_text
    proposal = one(ok(post(client, f"CarePlan/{PLAN}/$propose-revision", h[SOC],
                           parameters(resource("revision", revision)))), "revision")
    b = ok(view(client, portal))
    assert [p["id"] for p in matches(b)] == [PLAN] and b["total"] == 1
    assert matches(b)[0]["activity"][2]["detail"]["description"] == old_text
    html = view(client, portal, accept="text/html").text
    assert old_text.split(";")[0] in html and new_text not in html
    ok(post(client, f"CarePlan/{PLAN}/$approve-revision", h[SOC], parameters(
        ref("revision", f"CarePlan/{proposal['id']}"), *approval("Patient/alva", f.MOTHER))))
    b = ok(view(client, portal))
    # The completed proposal is no plan of the person's: still one plan, now revised.
    assert [p["id"] for p in matches(b)] == [PLAN]
    assert matches(b)[0]["activity"][2]["detail"]["description"] == new_text
    assert new_text in view(client, portal, accept="text/html").text


def test_a_sip_before_establishment_is_not_shown_in_any_phase(client, h, portal):
    assert ok(view(client, portal))["total"] == 0
    ok(transition(client, h[SOC], PLAN, "kartlaggning"))
    b = ok(view(client, portal))
    assert b["total"] == 0 and "entry" not in b
    html = view(client, portal, accept="text/html").text
    assert "Det finns ingen godkänd" in html and "Somnar sent" not in html


def test_a_closed_established_sip_is_shown_as_closed(client, h, portal):
    establish(client, h)
    ok(transition(client, h[SOC], PLAN, "avslutad", string("reason", "Behovet är tillgodosett")))
    b = ok(view(client, portal))
    assert [p["status"] for p in matches(b)] == ["completed"]
    assert "Planen är avslutad" in view(client, portal, accept="text/html").text


def test_a_sip_closed_before_it_was_established_is_not_shown(client, h, portal):
    ok(transition(client, h[SOC], PLAN, "kartlaggning"))
    ok(transition(client, h[SOC], PLAN, "avslutad", string("reason", "Flyttat")))
    assert ok(view(client, portal))["total"] == 0


def test_an_organisation_cannot_create_a_plan_the_citizen_sees_as_approved(
        client, as_org, portal):
    """Rule 3/9: a plan reaches the citizen only once the person approved it
    ($transition to=upprattad). A coordinator writing its plan directly as established
    (status active, no approval, no Provenance) must not put it on 1177 as approved."""
    soc = as_org(SOC)
    case = [r if r["resourceType"] != "CarePlan" else f.sip_careplan(status="active")
            for r in alva_case() if r["resourceType"] != "Provenance"]
    entries = [{"resource": copy.deepcopy(r),
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
               for r in case]
    r = client.post("/fhir", content=body({"resourceType": "Bundle", "type": "transaction",
                                           "entry": entries})["content"],
                    headers=JSON_HEADERS | soc)
    assert ok(view(client, portal))["total"] == 0
    assert r.status_code in (409, 422), r.text


# -- the person, and only the person -----------------------------------------------------------

def _tolvan_case():
    """Tolvan's established plan (written by an operator): another person, another plan."""
    tolvan = "Patient/tolvan"
    goals = [f.sip_goal(tolvan, id="tolvan-mal", text="Tolvan bor kvar hemma.")]
    team = f.sip_careteam(tolvan, id="tolvan-sip", representatives=(), relatives=()) | {
        "name": "SIP Tolvan Tolvansson"}
    plan = f.sip_careplan(tolvan, id="tolvan-sip", careteam_ref="CareTeam/tolvan-sip",
                          goal_refs=["Goal/tolvan-mal"], activities=[
                              f.activity(f.BUP, "Tolvans insats hos BUP.", "region")])
    plan["title"] = "SIP för Tolvan Tolvansson"
    return [f.patient(f.TOLVAN_PNR), f.sip_consent(tolvan, id="tolvan-samtycke",
                                                   actor_refs=(f.SOCIAL_SERVICES, f.BUP),
                                                   given_by=(tolvan,)),
            *goals, team, plan]


@pytest.fixture
def both(client):
    write_case(client, {}, [r for r in f.demo_case()] + _tolvan_case())


def test_each_person_sees_their_own_plan_only(client, both, portal):
    b = ok(view(client, portal))
    assert [p["id"] for p in matches(b)] == [PLAN]
    subjects = {e["resource"]["subject"]["reference"] for e in b["entry"]
                if "subject" in e["resource"]}
    assert subjects == {"Patient/alva"}
    b = ok(view(client, portal, f"{VIEW}?patient={PNR_SYSTEM}|{f.TOLVAN_PNR}"))
    assert [p["id"] for p in matches(b)] == ["tolvan-sip"]
    assert not [e["fullUrl"] for e in b["entry"] if "alva" in e["fullUrl"]]
    assert "Patient/alva" not in str(b)


def test_samordningsnummer_and_personnummer_are_different_persons(client, both, portal):
    """Alva's samordningsnummer (day + 60) is another identity than her personnummer: a
    lookup by one never finds a person registered under the other."""
    sam = f"{VIEW}?patient={identifiers.SAMORDNINGSNUMMER}|{f.DEMO_SAMORDNINGSNUMMER}"
    b = ok(view(client, portal, sam))
    assert b["total"] == 0 and "entry" not in b
    other = f"{VIEW}?patient={identifiers.SAMORDNINGSNUMMER}|{f.DEMO_PNR}"
    r = view(client, portal, other)
    assert r.status_code == 400 and "patient" in outcome_text(r)


def test_a_person_with_a_samordningsnummer_sees_their_plan(client, portal):
    case = []
    for r in f.demo_case():
        if r["resourceType"] == "Patient":
            r = f.patient(f.DEMO_SAMORDNINGSNUMMER, id="alva")
        case.append(r)
    write_case(client, {}, case)
    sam = f"{VIEW}?patient={identifiers.SAMORDNINGSNUMMER}|{f.DEMO_SAMORDNINGSNUMMER}"
    assert [p["id"] for p in matches(ok(view(client, portal, sam)))] == [PLAN]
    dashed = (f"{VIEW}?patient={identifiers.SAMORDNINGSNUMMER}|"
              f"{f.DEMO_SAMORDNINGSNUMMER[:8]}-{f.DEMO_SAMORDNINGSNUMMER[8:]}")
    assert ok(view(client, portal, dashed))["total"] == 1
    assert ok(view(client, portal))["total"] == 0  # not under the personnummer


@pytest.mark.parametrize("query", [
    "",                                                        # missing
    "patient=",                                                # empty
    f"patient={f.DEMO_PNR}",                                   # no system
    f"patient=|{f.DEMO_PNR}",                                  # empty system
    f"patient={PNR_SYSTEM}|",                                  # no value
    f"patient={PNR_SYSTEM}",                                   # no separator
    f"patient=urn:oid:1.2.752.129.2.1.3.1|{f.DEMO_PNR}",       # the OID form: not ours
    f"patient=http://example.org/mrn|{f.DEMO_PNR}",            # another system
    f"patient={PNR_SYSTEM}|{f.DEMO_PNR},{PNR_SYSTEM}|{f.TOLVAN_PNR}",  # two persons
    f"patient={PNR_SYSTEM}|{f.DEMO_PNR}|x",                    # a second bar
    f"patient={PNR_SYSTEM}|20110314238",                       # 11 digits
    f"patient={PNR_SYSTEM}|201103142385",                      # wrong check digit
    f"patient={PNR_SYSTEM}|201113142384",                      # month 13
    f"patient={PNR_SYSTEM}|{'9' * 5000}",                      # long
    f"patient={PNR_SYSTEM}|2011031%002384",                    # NUL
    f"patient={PNR_SYSTEM}|%F0%9F%98%80",                      # emoji
    f"patient={PNR_SYSTEM}|{f.DEMO_PNR}&patient={PNR_SYSTEM}|{f.DEMO_PNR}",  # twice
    f"patient={PNR_SYSTEM}|{f.DEMO_PNR}&patient=",             # twice, one empty
])
def test_bad_patient_parameters_are_a_precise_400(client, both, portal, query):
    r = client.get(f"{VIEW}?{query}", headers=portal)
    assert r.status_code == 400, r.text
    out = r.json()
    assert out["resourceType"] == "OperationOutcome"
    assert out["issue"][0]["severity"] == "error"
    assert any("patient" in i.get("expression", []) for i in out["issue"]), out
    assert "Alva" not in r.text and "CarePlan/" not in r.text


def test_bad_parameters_are_400_in_the_html_form_too(client, both, portal):
    r = client.get(f"{VIEW}?patient=x", headers=portal | {"accept": "text/html"})
    assert r.status_code == 400
    assert r.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("extra", [
    "&_summary=count", "&_count=0", "&foo=bar", "&_elements=id", "&patient:exact=x",
    "&_include=CarePlan:subject",
])
def test_unknown_parameters_are_refused_as_in_searches(client, both, portal, extra):
    """The hub's searches are strict (an unknown parameter is a 400): the citizen view does
    not silently answer another question than the one asked (``_summary=count`` answered
    with the whole plan), unless the caller asks for lenient handling."""
    r = view(client, portal, ALVA + extra)
    assert r.status_code == 400, r.text
    name = extra[1:].split("=")[0]
    assert name in outcome_text(r) and "Andersson" not in r.text
    r = view(client, portal, ALVA + extra, prefer="handling=lenient")
    assert [p["id"] for p in matches(ok(r))] == [PLAN]


def test_ten_digit_forms_of_the_personnummer(client, both, portal):
    """YYMMDD-NNNN (the form on ID cards) names the person too, or is a precise 400;
    never another person, never a 500."""
    r = view(client, portal, f"{VIEW}?patient={PNR_SYSTEM}|110314-2384")
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert [p["id"] for p in matches(r.json())] == [PLAN]
    else:
        assert r.json()["resourceType"] == "OperationOutcome"


def test_identifier_with_spaces_around_or_plus_encoded(client, both, portal):
    r = view(client, portal, f"{VIEW}?patient={PNR_SYSTEM}|20110314%2B2384")
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert [p["id"] for p in matches(r.json())] in ([PLAN], [])


def test_linked_goal_and_care_team_of_another_person_do_not_leak(client, both, portal):
    """An operator's repair moves Alva's goal and care team to Tolvan (still linked from
    Alva's plan): the portal shows neither, in JSON or HTML."""
    goal = read(client, "Goal/alva-mal-somn")
    goal["subject"] = {"reference": "Patient/tolvan"}
    goal["description"]["text"] = "HEMLIGT tolvans mål"
    ok(client.put("/fhir/Goal/alva-mal-somn", **body(goal)))
    team = read(client, "CareTeam/alva-sip")
    team["subject"] = {"reference": "Patient/tolvan"}
    team["participant"][0]["member"] = {"reference": "Patient/tolvan"}
    team["name"] = "HEMLIGT tolvans team"
    ok(client.put("/fhir/CareTeam/alva-sip", **body(team)))
    r = view(client, portal)
    assert "HEMLIGT" not in r.text and "Patient/tolvan" not in r.text
    html = view(client, portal, accept="text/html").text
    assert "HEMLIGT" not in html


def test_nopatient_goal_is_not_shown(client, both, portal):
    goal = read(client, "Goal/alva-mal-somn")
    goal.setdefault("meta", {})["security"] = [sip.NOPATIENT.coding()]
    goal["description"]["text"] = "INTE FÖR PATIENTEN"
    ok(client.put("/fhir/Goal/alva-mal-somn", **body(goal)))
    assert "INTE FÖR PATIENTEN" not in view(client, portal).text
    assert "INTE FÖR PATIENTEN" not in view(client, portal, accept="text/html").text


def test_contained_kartlaggning_never_reaches_the_citizen(client, h, portal, fhir_validator,
                                                          tmp_path):
    """Rule 8: the kartläggning is never shown on 1177, also not when the coordinator put it
    in the draft plan as a contained resource before the plan was established."""
    plan = read(client, f"CarePlan/{PLAN}", h[SOC])
    plan["contained"] = [f.kartlaggning(id="k")]
    plan["supportingInfo"] = [{"reference": "#k", "display": "Kartläggning"}]
    ok(client.put(f"/fhir/CarePlan/{PLAN}", content=body(plan)["content"],
                  headers=JSON_HEADERS | h[SOC]))
    establish(client, h)
    r = view(client, portal)
    assert r.json()["total"] == 1
    assert "Somnar sent" not in r.text and "QuestionnaireResponse" not in r.text
    assert "Somnar sent" not in view(client, portal, accept="text/html").text
    shown = matches(r.json())[0]
    assert "contained" not in shown and "supportingInfo" not in shown
    fhir_validator.validate_resources(tmp_path, [r.json()])


def test_contained_organisation_is_kept_and_another_persons_goal_dropped(client, alva, portal):
    plan = read(client, f"CarePlan/{PLAN}")
    plan["contained"] = [
        {"resourceType": "Organization", "id": "o", "name": "Elevhälsan"},
        f.sip_goal("Patient/tolvan", id="g", text="HEMLIGT tolvans mål") | {"id": "g"},
    ]
    plan["activity"][0]["detail"]["performer"].append({"reference": "#o"})
    plan["goal"].append({"reference": "#g"})
    r = client.put(f"/fhir/CarePlan/{PLAN}", **body(plan))
    if r.status_code != 200:
        pytest.skip(f"not writable here: {r.text[:200]}")
    b = ok(view(client, portal))
    shown = matches(b)[0]
    assert "HEMLIGT" not in str(b) and "#g" not in str(shown)
    assert [c["id"] for c in shown["contained"]] == ["o"]
    assert {"reference": "#o"} in shown["activity"][0]["detail"]["performer"]
    html = view(client, portal, accept="text/html").text
    assert "Elevhälsan" in html and "#o" not in html and "HEMLIGT" not in html


def test_references_to_other_servers_are_not_fetched_or_shown_as_included(client, both, portal):
    plan = read(client, f"CarePlan/{PLAN}")
    plan["goal"].append({"reference": "https://evil.example/fhir/Goal/x"})
    r = client.put(f"/fhir/CarePlan/{PLAN}", **body(plan))
    if r.status_code not in (200, 201):
        pytest.skip("external references are refused on write")
    b = ok(view(client, portal))
    assert all(not e["fullUrl"].startswith("https://evil") for e in b["entry"])


# -- the HTML form -----------------------------------------------------------------------------

@pytest.fixture
def alva(client):
    write_case(client, {}, f.demo_case())


@pytest.mark.parametrize(("accept", "html"), [
    ("text/html", True),
    ("text/html;q=0.9, application/fhir+json;q=0.8", True),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
    ("application/fhir+json, text/html;q=0.5", False),
    ("text/html;q=0, application/json", False),
    ("text/html;q=0.1, application/fhir+json", False),
    ("application/fhir+json", False),
    ("*/*", False),
    ("text/*", True),
    ("text/*;q=0.5, application/fhir+json", False),
    ("text/*, text/html;q=0, application/fhir+json;q=0.1", False),
    ("", False),
])
def test_accept_q_values_choose_the_form(client, alva, portal, accept, html):
    r = view(client, portal, accept=accept)
    assert r.status_code == 200, r.text
    ctype = r.headers["content-type"]
    if html:
        assert ctype == "text/html; charset=utf-8" and r.text.lstrip().startswith("<!DOCTYPE")
    else:
        assert ctype.startswith("application/fhir+json") and "charset=utf-8" in ctype
        assert r.json()["resourceType"] == "Bundle"


def test_the_representation_varies_by_accept_and_is_not_stored_by_caches(client, alva, portal):
    """Personal data: no shared or private cache keeps it (the portal's page is the person's
    own), and the answer depends on Accept (Vary), whichever form was sent."""
    for accept in ("text/html", "application/fhir+json"):
        r = view(client, portal, accept=accept)
        assert "no-store" in r.headers.get("cache-control", ""), r.headers
        assert "accept" in r.headers.get("vary", "").lower(), r.headers


def test_format_overrides_accept(client, alva, portal):
    r = view(client, portal, f"{ALVA}&_format=json", accept="text/html")
    assert r.headers["content-type"].startswith("application/fhir+json")
    r = view(client, portal, f"{ALVA}&_format=xml", accept="text/html")
    assert r.status_code == 200 and "<Bundle" in r.text


def test_markup_in_the_plan_is_escaped_and_swedish_is_kept(client, portal):
    evil = '<script>alert("x")</script>'
    attr = '"><img src=x onerror=alert(1)>'
    case = []
    for r in f.demo_case():
        r = copy.deepcopy(r)
        if r["resourceType"] == "CarePlan":
            r["title"] = f"Åsa {evil}"
            for e in r["extension"]:
                if e["url"] == sip.EXT_NEEDS:
                    e["valueMarkdown"] = f"Behöver {attr} stöd & hjälp"
            r["activity"][0]["detail"]["description"] = f"Insats {evil}"
        elif r["resourceType"] == "Organization" and r["id"] == "socialtjansten":
            r["name"] = f"Socialtjänsten {evil}"
        elif r["resourceType"] == "Goal" and r["id"] == "alva-mal-somn":
            r["description"]["text"] = f"Sömn {attr}"
        case.append(r)
    write_case(client, {}, case)
    r = view(client, portal, accept="text/html")
    assert r.status_code == 200
    raw = r.content.decode("utf-8")
    assert "<script" not in raw and "<img" not in raw and "onerror=alert" in raw
    assert "&lt;script&gt;" in raw and "&#34;&gt;&lt;img" in raw
    assert "Åsa" in raw and "Sömn" in raw and "stöd &amp; hjälp" in raw


# -- access and audit (rule 10) ------------------------------------------------------------------

@pytest.mark.parametrize(("scope", "role", "personal"), [
    ("system/*.cruds", "organization", False),
    ("system/*.rs", "admin", False),
    ("system/Patient.rs", "portal", False),
    ("system/Goal.rs", "portal", False),
])
def test_only_the_portal_role_with_careplan_scope(client, alva, as_org, scope, role, personal):
    r = client.get(ALVA, headers=as_org("SE2321000016-ZZZ9", scope=scope, role=role,
                                        personal_data=personal))
    assert r.status_code == 403, r.text
    assert r.json()["resourceType"] == "OperationOutcome" and "Alva" not in r.text


@pytest.mark.parametrize(("method", "path"), [
    ("GET", f"/fhir/CarePlan/{PLAN}"),
    ("GET", "/fhir/CarePlan?patient=Patient/alva"),
    ("GET", f"/fhir/Patient?identifier={PNR_SYSTEM}|{f.DEMO_PNR}"),
    ("GET", "/fhir/QuestionnaireResponse/alva-kartlaggning"),
    ("GET", "/fhir/Goal/alva-mal-somn"),
    ("GET", "/fhir/AuditEvent?patient=alva"),
    ("GET", f"/fhir/CarePlan/{PLAN}/_history"),
    ("POST", f"/fhir/CarePlan/{PLAN}/$transition"),
])
def test_the_portal_reads_nothing_else(client, alva, portal, method, path):
    r = client.request(method, path, headers=portal | JSON_HEADERS,
                       content=body(parameters(code("to", "avslutad"),
                                               string("reason", "x")))["content"]
                       if method == "POST" else None)
    assert r.status_code == 403, r.text
    assert "Andersson" not in r.text and "Somnar" not in r.text


def test_the_portal_cannot_read_through_a_batch(client, alva, as_org):
    portal = as_org(PORTAL, scope="system/*.rs", role="portal")
    batch = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "QuestionnaireResponse/alva-kartlaggning"}},
        {"request": {"method": "GET", "url": f"Patient?identifier={PNR_SYSTEM}|{f.DEMO_PNR}"}},
    ]}
    r = client.post("/fhir", content=body(batch)["content"], headers=JSON_HEADERS | portal)
    assert "Somnar" not in r.text and "Andersson" not in r.text


def _log(client, anonymous, query="patient=alva"):
    anonymous.app.state.audit.flush()
    return [e["resource"] for e in read(client, f"AuditEvent?{query}&_count=100")
            .get("entry", [])]


def _by_portal(events):
    return [e for e in events if any(a.get("who", {}).get("identifier", {}).get("value")
                                     == PORTAL for a in e["agent"])]


def test_every_call_is_in_the_persons_access_log(client, alva, portal, anonymous):
    ok(view(client, portal))
    view(client, portal, accept="text/html")
    events = _by_portal(_log(client, anonymous))
    assert len(events) == 2
    for e in events:
        assert e["outcome"] == "0"
        assert any(en.get("what", {}).get("reference") == f"CarePlan/{PLAN}"
                   for en in e["entity"])


def test_a_call_finding_no_plan_is_still_in_the_persons_access_log(client, h, portal,
                                                                      anonymous):
    """The portal looked the person up (and learned they have no approved plan): the person's
    access log (8 kap. 5 § PDL) shows it, as any search touching them."""
    b = ok(view(client, portal))
    assert b["total"] == 0
    events = _by_portal(_log(client, anonymous))
    assert len(events) == 1


def test_a_refused_call_is_audited_as_refused(client, alva, as_org, anonymous):
    org = as_org("SE2321000016-15CQ")
    assert client.get(ALVA, headers=org).status_code == 403
    anonymous.app.state.audit.flush()
    refused = read(client, "AuditEvent?outcome=4&_count=100").get("entry", [])
    assert any(any(a.get("who", {}).get("identifier", {}).get("value") == "SE2321000016-15CQ"
                   for a in e["resource"]["agent"]) for e in refused)


# -- the Bundle ---------------------------------------------------------------------------------

def test_the_bundle_is_valid_fhir(client, h, portal, fhir_validator, tmp_path):
    establish(client, h)
    b = ok(view(client, portal))
    assert b["type"] == "searchset" and b["total"] == 1
    assert len({e["fullUrl"] for e in b["entry"]}) == len(b["entry"])
    fhir_validator.validate_resources(tmp_path, [b])


def test_many_other_care_plans_do_not_hide_the_sip(client, alva, portal):
    """The person's approved SIP is shown however many other CarePlans (revision proposals,
    other systems' plans) the person has: none is silently left out."""
    extra = [{"resourceType": "CarePlan", "id": f"annan-{i}", "status": "active",
              "intent": "plan", "subject": {"reference": "Patient/alva"},
              "title": f"Annan plan {i}"} for i in range(101)]
    write_case(client, {}, extra)
    b = ok(view(client, portal))
    assert [p["id"] for p in matches(b)] == [PLAN]


def test_html_shows_goals_and_names_behind_version_specific_references(client, alva, portal):
    """The JSON form includes what a versioned reference points at; the page shows it too
    (the goal's text, the organisation's name), never the bare reference."""
    plan = read(client, f"CarePlan/{PLAN}")
    plan["goal"] = [{"reference": f"{g['reference']}/_history/1"} for g in plan["goal"]]
    plan["author"] = {"reference": f"{plan['author']['reference']}/_history/1"}
    ok(client.put(f"/fhir/CarePlan/{PLAN}", **body(plan)))
    assert read(client, f"CarePlan/{PLAN}")["goal"][0]["reference"].endswith("/_history/1")
    kinds = [e["resource"]["resourceType"] for e in ok(view(client, portal))["entry"]]
    assert kinds.count("Goal") == 3
    html = view(client, portal, accept="text/html").text
    assert "Alva somnar före klockan 23" in html
    assert "_history" not in html and "Organization/" not in html


def test_withdrawn_consent_does_not_hide_the_persons_own_plan(client, h, portal):
    """Consent governs what the organisations share with each other (rule 1); the person's
    own approved plan stays readable to them on 1177."""
    establish(client, h)
    consent = read(client, "Consent/alva-sip-samtycke", h[SOC]) | {"status": "inactive"}
    ok(client.put("/fhir/Consent/alva-sip-samtycke", content=body(consent)["content"],
                  headers=JSON_HEADERS | h[SOC]))
    assert [p["id"] for p in matches(ok(view(client, portal)))] == [PLAN]
