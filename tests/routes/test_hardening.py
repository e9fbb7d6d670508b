"""What an operator relies on at the hub's edges, on both stores: the unauthenticated forms
(/auth/token, /admin/login) read no more than a small bound; a token carries no scope longer
than a registered one, nor one of a type the hub does not serve, and a bearer token longer
than any the hub issues is refused before it is verified; no page on the hub's origin (the
console's) runs script from elsewhere; the citizen view's HTML and PDF are sent with a policy
allowing no script; and no password (the database's, an endpoint's) is shown or taken in a
URL."""

from __future__ import annotations

from itertools import permutations

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

import sip_factory as f
from messaging import harness
from messaging.harness import BUP, URL, Hub, status_change
from sip_hub import clients, identifiers
from sip_hub.messaging.http import url_problem
from sip_hub.routes.forms import FORM_MAX_BYTES
from sip_hub.store.engine import shown_database_url
from sip_process import write_case
from test_admin_console import page_text, sign_in

broker, hub, world = harness.broker, harness.hub, harness.world

ORG = "SE2321000016-15CQ"
ADMIN_ORG = "SE2321000016-ADM1"
FORM = {"content-type": "application/x-www-form-urlencoded"}
PADDING = "&pad=" + "x" * FORM_MAX_BYTES  # (one field past the forms' bound)


def _token(anonymous: TestClient, creds: dict, **form: str):
    return anonymous.post("/auth/token", data={"grant_type": "client_credentials", **form},
                          auth=(creds["client_id"], creds["client_secret"]))


# -- the forms' size ---------------------------------------------------------------------------

def test_the_token_endpoint_refuses_a_body_over_the_limit(anonymous: TestClient,
                                                          store) -> None:
    """A valid token request padded past the bound gets no token: the form is not read."""
    creds = clients.create_client(store, org=ORG, scope="system/*.rs")
    form = (f"grant_type=client_credentials&client_id={creds['client_id']}"
            f"&client_secret={creds['client_secret']}" + PADDING)
    r = anonymous.post("/auth/token", content=form, headers=FORM)
    assert r.status_code == 413, (r.status_code, r.text[:200])
    assert r.json()["error"] == "invalid_request"
    assert r.headers["cache-control"] == "no-store"


def test_the_token_endpoint_refuses_a_streamed_body_over_the_limit(anonymous: TestClient,
                                                                   store) -> None:
    """Without a Content-Length the body is refused as it passes the bound."""
    creds = clients.create_client(store, org=ORG, scope="system/*.rs")
    head = (f"grant_type=client_credentials&client_id={creds['client_id']}"
            f"&client_secret={creds['client_secret']}").encode()
    r = anonymous.post("/auth/token", content=iter([head, PADDING.encode()]), headers=FORM)
    assert r.status_code == 413 and r.json()["error"] == "invalid_request", r.text[:200]


def test_the_token_endpoint_refuses_a_form_of_too_many_fields(anonymous: TestClient,
                                                              store) -> None:
    creds = clients.create_client(store, org=ORG, scope="system/*.rs")
    form = "grant_type=client_credentials" + "&a=" * 5000
    r = anonymous.post("/auth/token", content=form, headers=FORM,
                       auth=(creds["client_id"], creds["client_secret"]))
    assert r.status_code == 400 and r.json()["error"] == "invalid_request", r.text


def test_the_token_endpoint_still_refuses_a_parameter_sent_twice(anonymous: TestClient,
                                                                 store) -> None:
    creds = clients.create_client(store, org=ORG, scope="system/*.rs")
    r = anonymous.post("/auth/token", content="grant_type=client_credentials&scope=a&scope=b",
                       headers=FORM, auth=(creds["client_id"], creds["client_secret"]))
    assert r.status_code == 400 and "scope" in r.json()["error_description"], r.text


def test_the_console_sign_in_refuses_a_body_over_the_limit(anonymous: TestClient,
                                                            store) -> None:
    creds = clients.create_client(store, org=ADMIN_ORG, scope="system/*.rs", role="admin")
    form = (f"client_id={creds['client_id']}&client_secret={creds['client_secret']}"
            "&next=/admin" + PADDING)
    r = anonymous.post("/admin/login", content=form, headers=FORM, follow_redirects=False)
    assert r.status_code == 413, (r.status_code, r.headers.get("location"))
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in r.headers["content-security-policy"]


# -- the scopes a token carries ----------------------------------------------------------------

def test_a_scope_asked_for_many_times_is_granted_once(anonymous: TestClient, store) -> None:
    creds = clients.create_client(store, org=ORG, scope="system/*.cruds")
    r = _token(anonymous, creds, scope=" ".join(["system/CarePlan.rs"] * 2000))
    assert r.status_code == 200, r.text
    assert r.json()["scope"] == "system/CarePlan.rs"


def test_a_requested_scope_is_no_longer_than_a_registered_one(anonymous: TestClient,
                                                              store) -> None:
    """Tokens are cached by their text: a token of any length was memory for the taking."""
    creds = clients.create_client(store, org=ORG, scope="system/*.cruds")
    wanted = [f"system/CarePlan.{''.join(p)}" for k in range(1, 6)
              for p in permutations("cruds", k)]
    assert len(" ".join(wanted)) > clients.SCOPE_MAX
    r = _token(anonymous, creds, scope=" ".join(wanted))
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope", r.text
    assert str(clients.SCOPE_MAX) in r.json()["error_description"]


@pytest.mark.parametrize("scope, rtype", [("system/Foo.rs", "Foo"),
                                          ("system/Careplan.rs", "Careplan"),
                                          ("system/Medication.rs", "Medication")])
def test_a_requested_scope_of_a_type_the_hub_does_not_serve_is_invalid_scope(
        anonymous: TestClient, store, scope: str, rtype: str) -> None:
    """As ``sip-hub client create`` refuses it: it grants nothing and hides a typo."""
    creds = clients.create_client(store, org=ORG, scope="system/*.cruds")
    r = _token(anonymous, creds, scope=f"system/CarePlan.rs {scope}")
    assert r.status_code == 400 and r.json()["error"] == "invalid_scope", r.text
    assert rtype in r.json()["error_description"]


def test_a_bearer_token_longer_than_any_issued_is_refused(anonymous: TestClient) -> None:
    r = anonymous.get("/fhir/CarePlan", headers={"Authorization": "Bearer " + "a" * 10_000})
    assert r.status_code == 401, r.text
    assert 'error="invalid_token"' in r.headers["www-authenticate"]
    assert r.json()["resourceType"] == "OperationOutcome"


# -- pages on the hub's origin -----------------------------------------------------------------

@pytest.mark.parametrize("path", ["/docs", "/docs/oauth2-redirect", "/openapi.json",
                                  "/redoc"])
def test_no_page_on_the_consoles_origin_runs_a_third_partys_script(
        anonymous: TestClient, path: str) -> None:
    """FastAPI's Swagger UI loaded script from a CDN on the console's origin, where script
    reads the console's pages and posts its forms: the hub serves no API browser."""
    r = anonymous.get(path)
    assert r.status_code == 404, r.text[:300]
    assert r.json()["resourceType"] == "OperationOutcome"


ALVA = f"/fhir/CarePlan/$citizen-view?patient={identifiers.PERSONNUMMER}|{f.DEMO_PNR}"


def test_the_citizen_html_is_sent_with_a_policy_allowing_no_script(client, portal) -> None:
    """The person's plan as HTML: a plan text the escaping missed would not run, nor the page
    be framed by another site."""
    write_case(client, {}, f.demo_case())
    r = client.get(ALVA, headers=portal | {"Accept": "text/html"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), r.text
    csp = [d.strip() for d in r.headers["content-security-policy"].split(";")]
    assert {"default-src 'none'", "frame-ancestors 'none'", "base-uri 'none'",
            "form-action 'none'"} <= set(csp), csp
    assert not any(d.startswith("script-src") for d in csp), csp
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    pdf = client.get(ALVA, headers=portal | {"Accept": "application/pdf"})
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.headers["x-content-type-options"] == "nosniff"


# -- passwords in URLs -------------------------------------------------------------------------

def test_a_database_password_given_as_a_url_parameter_is_masked() -> None:
    url = make_url("postgresql://sip:hemligt@db/sip?password=losen&sslpassword=nyckel"
                   "&sslkey=/k.pem&application_name=hub")
    shown = shown_database_url(url)
    assert not [s for s in ("hemligt", "losen", "nyckel", "k.pem") if s in shown], shown
    assert shown == ("postgresql://sip:***@db/sip?application_name=hub&password=***"
                     "&sslkey=***&sslpassword=***")


def test_the_front_page_shows_no_database_password_given_as_a_url_parameter(
        hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """libpq takes the password as a URL parameter too (postgresql://sip@db/sip?password=...):
    an admin client without personal-data access read the database's password."""
    engine = hub.store.engine
    monkeypatch.setattr(engine, "url", engine.url.update_query_dict(
        {"password": "hemligt-losen", "sslpassword": "nyckel-losen"}))
    hub.client.follow_redirects = False
    sign_in(hub)
    r = hub.client.get("/admin")
    assert r.status_code == 200, r.text
    assert "hemligt-losen" not in r.text and "nyckel-losen" not in r.text, page_text(r)


@pytest.mark.parametrize("url", ["https://sip:hemligt-losen@bup.example.se/fhir/pm",
                                 "https://hemligt-losen@bup.example.se/fhir/pm",
                                 "https://:hemligt-losen@bup.example.se/fhir/pm"])
def test_a_url_with_credentials_is_no_address_to_send_to(url: str) -> None:
    problem = url_problem(url)
    assert problem is not None and "authorizationEnv" in problem, problem
    assert "hemligt-losen" not in problem


def test_an_endpoints_file_with_a_password_in_a_url_is_refused_without_showing_it(
        hub: Hub) -> None:
    """Credentials go in the variable authorizationEnv names, which is never shown: one in
    the URL was shown on the console's overview and endpoints page."""
    with pytest.raises(ValueError) as refused:
        hub.configure({"SE2321000016-BUP1":
                       "https://sip:hemligt-losen@bup.example.se/fhir/$process-message"})
    said = str(refused.value)
    assert "\n" not in said and "authorizationEnv" in said, said
    assert "hemligt-losen" not in said, said


def test_a_response_url_with_a_password_is_a_400(world: Hub) -> None:
    world.configure({BUP: "https://bup.example.se/fhir/$process-message"})
    r = world.client.post(URL, params={"async": "true", "response-url":
                                       "https://sip:hemligt-losen@bup.example.se/fhir/pm"},
                          content=orjson.dumps(status_change(world)),
                          headers={"content-type": "application/fhir+json"}
                          | world.headers[BUP])
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["response-url"] and "hemligt-losen" not in r.text
    assert not [d for d in world.deliveries() if d.kind == "response"]
