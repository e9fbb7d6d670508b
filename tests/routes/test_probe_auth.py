"""Odd input at the token endpoint, on bearer tokens and at the citizen view: each a 4xx
OperationOutcome (OAuth2 error at /auth/token), never a 500, and never another person's data."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

import sip_factory as f
from fhirhttp import body, outcome_text
from sip_hub import clients
from test_citizen_view import URL, alva  # noqa: F401 (fixtures)

ORG = "SE2321000016-15CQ"
FORM = {"content-type": "application/x-www-form-urlencoded"}
PNR = "http://electronichealth.se/identifier/personnummer"


@pytest.fixture
def creds(store):
    return clients.create_client(store, org=ORG, scope="system/*.cruds")


def _basic(cid: str, secret: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{cid}:{secret}".encode()).decode()}


def _post(c, creds, extra: str = "", headers: dict[str, str] | None = None):
    form = (f"grant_type=client_credentials&client_id={creds['client_id']}"
            f"&client_secret={creds['client_secret']}{extra}")
    return c.post("/auth/token", content=form, headers=FORM | (headers or {}))


# -- /auth/token --------------------------------------------------------------------------------

@pytest.mark.parametrize("scope", ["system/CarePlan%00.rs", "system/%00.rs", "system/%EF%BF%BF.rs",
                                   "system/%C3%A5.rs", "system/.rs", "system/%3Cb%3E.rs",
                                   "system/CarePlan.rs%09system/Goal.rs"])
def test_scopes_no_client_can_have_are_invalid_scope(anonymous, creds, scope):
    r = _post(anonymous, creds, f"&scope={scope}")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope", r.text


def test_a_token_is_never_issued_with_a_scope_xml_cannot_carry(anonymous, creds):
    """Such a token's 403 (which names its scopes) was a 500 in XML."""
    r = _post(anonymous, creds, "&scope=system/CarePlan%00.rs")
    if r.status_code == 200:
        h = {"authorization": f"Bearer {r.json()['access_token']}",
             "accept": "application/fhir+xml"}
        assert anonymous.get("/fhir/Organization", headers=h).status_code == 403
    assert r.status_code == 400


def test_media_type_of_the_form_is_case_insensitive(anonymous, creds):
    r = _post(anonymous, creds, headers={"content-type": "Application/X-WWW-Form-Urlencoded"})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("extra", ["&grant_type=password", "&client_id=other", "&scope=a&scope=b"])
def test_a_parameter_sent_twice_is_invalid_request(anonymous, creds, extra):
    r = _post(anonymous, creds, extra)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text


def test_missing_grant_type_is_invalid_request(anonymous, creds):
    r = anonymous.post("/auth/token", content=f"client_id={creds['client_id']}", headers=FORM)
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"


def test_basic_and_form_secret_at_once_is_invalid_request(anonymous, store, creds):
    other = clients.create_client(store, org=ORG, scope="system/CarePlan.rs")
    r = _post(anonymous, creds, headers=_basic(other["client_id"], other["client_secret"]))
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text


def test_basic_with_the_same_client_id_in_the_form_is_fine(anonymous, creds):
    r = anonymous.post("/auth/token", headers=_basic(creds["client_id"], creds["client_secret"]),
                       data={"grant_type": "client_credentials", "client_id": creds["client_id"]})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("header", [
    "Basic !!!", "Basic " + base64.b64encode(b"\xff:\xfe").decode(),
    "Basic " + base64.b64encode(b"no-colon").decode()])
def test_an_unreadable_basic_header_is_invalid_client_not_ignored(anonymous, creds, header):
    """A broken Basic header made the hub fall back to the form's credentials (a 200)."""
    r = _post(anonymous, creds, headers={"authorization": header})
    assert r.status_code == 401 and r.json()["error"] == "invalid_client", r.text
    assert r.headers["www-authenticate"].startswith("Basic")


# -- bearer tokens ------------------------------------------------------------------------------

def _b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def good_token(anonymous, creds) -> str:
    r = _post(anonymous, creds)
    assert r.status_code == 200
    return r.json()["access_token"]


@pytest.mark.parametrize("crit", ["\u0000", "\uffff", "\ud800", "x" * 5000])
@pytest.mark.parametrize("accept", ["application/fhir+json", "application/fhir+xml"])
def test_token_header_values_echoed_in_the_401_cannot_break_it(anonymous, good_token, crit,
                                                                accept):
    kid = jwt.get_unverified_header(good_token)["kid"]
    head = json.dumps({"alg": "ES256", "kid": kid, "crit": [crit]}).encode()
    forged = f"{_b64u(head)}.{good_token.split('.')[1]}.{_b64u(b'x' * 64)}"
    r = anonymous.get("/fhir/CarePlan", headers={"authorization": f"Bearer {forged}",
                                                  "accept": accept})
    assert r.status_code == 401, r.text
    assert len(outcome_text(r)) < 400 if accept.endswith("json") else True


@pytest.mark.parametrize("claims", [{"scope": 5}, {"scope": None}, {"scope": ["system/*.cruds"]},
                                    {"org": ["x"]}, {"org": 5}, {"pd": "false"}, {"role": ["x"]}])
def test_signed_tokens_with_claims_of_the_wrong_type_are_401(anonymous, settings, good_token,
                                                             claims):
    """(A token of another issuer sharing a key: a 500 deep in the request, or, for pd,
    personal-data access from the string "false".)"""
    key = json.loads((settings.data_dir / "jwt-keys.json").read_text())[0]
    pem = serialization.load_pem_private_key(key["pem"].encode(), None)
    payload = jwt.decode(good_token, options={"verify_signature": False}) | claims
    payload["exp"] = int(time.time()) + 60
    token = jwt.encode(payload, pem, algorithm="ES256", headers={"kid": key["kid"]})
    r = anonymous.get("/fhir/CarePlan", headers={"authorization": f"Bearer {token}"})
    assert r.status_code == 401, r.text


# -- the citizen view ---------------------------------------------------------------------------

@pytest.mark.parametrize("patient", [
    f"x,{PNR}|{f.DEMO_PNR}",                        # a comma in an unknown system
    f"urn:x|1,{PNR}|{f.DEMO_PNR}",                  # a comma in an unknown system's value
    f"urn:oid:1.2.3|{f.DEMO_PNR}",
    f"|{f.DEMO_PNR}",
])
def test_citizen_view_takes_only_a_personnummer_or_samordningsnummer(client, alva, portal,
                                                                     patient):
    r = client.get("/fhir/CarePlan/$citizen-view", params={"patient": patient}, headers=portal)
    assert r.status_code == 400, r.text
    assert "samordningsnummer" in outcome_text(r)


def test_citizen_view_samordningsnummer_is_accepted(client, portal):
    r = client.get("/fhir/CarePlan/$citizen-view", headers=portal, params={
        "patient": f"http://electronichealth.se/identifier/samordningsnummer|"
                   f"{f.DEMO_SAMORDNINGSNUMMER}"})
    assert r.status_code == 200 and r.json()["total"] == 0


def test_citizen_view_patient_given_twice_is_400(client, alva, portal):
    r = client.get("/fhir/CarePlan/$citizen-view", headers=portal,
                   params=[("patient", f"{PNR}|{f.TOLVAN_PNR}"),
                           ("patient", f"{PNR}|{f.DEMO_PNR}")])
    assert r.status_code == 400 and "once" in outcome_text(r)


def test_citizen_view_never_shows_a_goal_now_of_another_person(client, alva, portal):
    assert client.put("/fhir/Patient/tolvan",
                      **body(f.patient(f.TOLVAN_PNR, id="tolvan"))).status_code == 201
    goal = client.get("/fhir/Goal/alva-mal-somn").json()
    goal["subject"] = goal["expressedBy"] = {"reference": "Patient/tolvan"}
    goal["description"]["text"] = "Tolvans eget mål"
    assert client.put("/fhir/Goal/alva-mal-somn", **body(goal)).status_code == 200
    b = client.get(URL, headers=portal).json()
    ids = {e["resource"]["id"] for e in b["entry"]}
    assert "alva-mal-somn" not in ids and "alva-mal-skola" in ids and "alva-sip" in ids
    html = client.get(URL, headers=portal | {"accept": "text/html"}).text
    assert "Tolvans eget mål" not in html


@pytest.mark.parametrize("accept,html", [
    ("text/html", True), ("TEXT/HTML", True),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", True),
    ("application/json, text/html;q=0", False), ("text/html;q=0, application/json", False),
    ("text/html;q=0.5, application/fhir+json", False), ("text/html;q=abc", False),
    ("text/html;q=nan", False),
])
def test_citizen_view_html_follows_accept_q_values(client, alva, portal, accept, html):
    r = client.get(URL, headers=portal | {"accept": accept})
    assert r.headers["content-type"].startswith("text/html") is html, accept
    # (an unreadable q is q=0, as for the FHIR formats: nothing acceptable is left, a 406)
    assert r.status_code == (406 if "q=abc" in accept or "q=nan" in accept else 200)


def test_an_oversized_form_is_an_oauth2_error(anonymous, creds):
    # (past the forms' bound, routes.forms: a 413, as any body past its limit)
    r = _post(anonymous, creds, "&scope=" + "system/CarePlan.rs+" * 60000)
    assert r.status_code == 413 and r.json()["error"] == "invalid_request", r.text


# -- what every error answer carries ------------------------------------------------------------

def test_several_authorization_headers_are_refused(anonymous, creds):
    """Only the first one counted: a request with a good token and another one passed."""
    token = anonymous.post("/auth/token", content=(
        f"grant_type=client_credentials&client_id={creds['client_id']}"
        f"&client_secret={creds['client_secret']}"), headers=FORM).json()["access_token"]
    good = ("authorization", f"Bearer {token}")
    assert anonymous.get("/fhir/Organization", headers=[good]).status_code == 200
    r = anonymous.get("/fhir/Organization", headers=[good, ("authorization", "Bearer other")])
    assert r.status_code == 400 and "one Authorization header" in outcome_text(r)


@pytest.mark.parametrize("url", ["/fhir/CarePlan?patient:%EF%BF%BF=x",
                                 "/fhir/CarePlan/%EF%BF%BF", "/fhir/CarePlan?_sort=%EF%BF%BF"])
@pytest.mark.parametrize("accept", ["application/fhir+xml", "application/fhir+json"])
def test_an_error_quoting_characters_xml_cannot_carry_is_still_answered(client, as_org, url,
                                                                       accept):
    """The OperationOutcome quoted the input as it was: a U+FFFF in a search modifier (in
    the issue's expression) made the 400 itself a 500 in XML."""
    r = client.get(url, headers=as_org("SE2120000142-SOC1") | {"accept": accept})
    assert r.status_code == 400, r.text
    text = r.text if "xml" in accept else outcome_text(r)
    assert "\ufffd" in text and "\uffff" not in text
