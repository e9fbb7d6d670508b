"""HTTP itself, on every route: HEAD wherever GET (RFC 9110 9.3.2) and a 405 that says what
is allowed; URLs the hub emits that never follow the request's Host; and operation parameters
that may be given once only."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi.testclient import TestClient

import sip_factory as f
from conftest import ADMIN_ORG, issue_token
from fhirhttp import body, outcome_text, patient
from messaging.harness import (BUP, URL as PROCESS_MESSAGE, Hub, broker,  # noqa: F401
                               current_plan, hub, status_change, world)
from sip_hub.app import create_app
from sip_hub.settings import Settings
from test_citizen_view import PORTAL, URL as CITIZEN_VIEW, alva  # noqa: F401

# What a GET answers that does not describe its content.
_PER_ANSWER = {"x-request-id", "date"}


def _same_answer_without_body(head: Any, get: Any) -> None:
    """A HEAD answered as its GET: the same status and headers (Content-Length: the length of
    what GET sent), and no content."""
    assert head.status_code == get.status_code, head.headers
    assert head.content == b""
    assert int(head.headers["content-length"]) == len(get.content) > 0
    assert {k: v for k, v in head.headers.items() if k not in _PER_ANSWER} == \
        {k: v for k, v in get.headers.items() if k not in _PER_ANSWER}


# -- HEAD ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/fhir/metadata", "/fhir/metadata?_format=xml", "/healthz", "/auth/jwks",
    "/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration",
    "/fhir/CarePlan/alva-sip", "/fhir/CarePlan/alva-sip/_history/1",
    "/fhir/CarePlan/alva-sip/_history", "/fhir/CarePlan?_id=alva-sip&_include=CarePlan:subject",
    "/fhir/CarePlan/nobody", "/fhir/NoSuchType",
])
def test_head_answers_as_get_without_the_body(client, alva, path):
    _same_answer_without_body(client.head(path), client.get(path))


def test_the_hub_itself_sends_no_body_to_a_head(client, alva):
    """The test client (as a server would) drops what a HEAD is sent after the headers: here
    are the hub's own ASGI messages, on the routes taken before FastAPI's and after."""
    for path in ("/fhir/CarePlan/alva-sip", "/fhir/metadata"):
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "HEAD", "scheme": "http", "path": path, "raw_path": path.encode(),
                 "root_path": "", "query_string": b"", "client": ("127.0.0.1", 50000),
                 "server": ("hub.test", 80), "headers": [
                     (b"host", b"hub.test"), (b"authorization",
                                              client.headers["authorization"].encode())]}
        client.portal.call(client.app, scope, receive, send)
        start, *content = sent
        assert start["status"] == 200
        assert int(dict(start["headers"])[b"content-length"]) > 0
        assert content and all(m["body"] == b"" for m in content)


def test_head_of_a_read_carries_etag_and_last_modified(client, alva):
    r = client.head("/fhir/CarePlan/alva-sip")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["etag"] == 'W/"1"' and r.headers["last-modified"].endswith(" GMT")
    assert r.headers["content-type"] == "application/fhir+json; charset=utf-8"


@pytest.mark.parametrize("accept", ["application/fhir+json", "text/html"])
def test_head_of_the_citizen_view_answers_as_get(client, alva, portal, accept):
    h = portal | {"accept": accept}
    _same_answer_without_body(client.head(CITIZEN_VIEW, headers=h),
                              client.get(CITIZEN_VIEW, headers=h))


def test_head_without_a_token_is_refused_as_get_is(anonymous, alva):
    anonymous.headers.pop("Authorization", None)  # (alva's client put the admin's there)
    head, get = anonymous.head("/fhir/CarePlan/alva-sip"), anonymous.get("/fhir/CarePlan/alva-sip")
    assert head.status_code == get.status_code == 401
    _same_answer_without_body(head, get)


def _audited(client: TestClient, query: str, agent: str) -> int:
    client.app.state.audit.flush()
    log = client.get(f"/fhir/AuditEvent?patient=alva&{query}&_count=1000").json()
    return sum(any(a["who"].get("identifier", {}).get("value") == agent
                   for a in e["resource"]["agent"]) for e in log.get("entry", []))


def test_head_of_personal_data_is_audited_as_the_get(client, alva, portal):
    """A HEAD tells whether a plan exists, its version and its size: an access to personal
    data, recorded as the GET is."""
    assert _audited(client, "subtype=search-type", PORTAL) == 0
    assert client.head(CITIZEN_VIEW, headers=portal).status_code == 200
    assert _audited(client, "subtype=search-type", PORTAL) == 1
    client.get(CITIZEN_VIEW, headers=portal)
    assert _audited(client, "subtype=search-type", PORTAL) == 2

    reads = _audited(client, "subtype=read", ADMIN_ORG)
    assert client.head("/fhir/CarePlan/alva-sip").status_code == 200
    assert _audited(client, "subtype=read", ADMIN_ORG) == reads + 1


def test_head_of_the_citizen_view_as_an_organisation_is_refused_as_get(client, alva, as_org):
    h = as_org("SE2321000016-15CQ")
    _same_answer_without_body(client.head(CITIZEN_VIEW, headers=h),
                              client.get(CITIZEN_VIEW, headers=h))
    assert client.head(CITIZEN_VIEW, headers=h).status_code == 403


# -- 405 and Allow ------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, allow", [
    ("POST", "/healthz", "GET, HEAD"),
    ("DELETE", "/.well-known/smart-configuration", "GET, HEAD"),
    ("POST", "/fhir/CarePlan/alva-sip", "DELETE, GET, HEAD, PATCH, PUT"),
    ("PATCH", "/fhir/CarePlan/alva-sip/_history", "GET, HEAD"),
    ("GET", "/auth/token", "POST"),
    ("PUT", "/fhir/CarePlan", "GET, HEAD, POST"),  # (a conditional update needs criteria)
])
def test_405_lists_what_is_allowed_head_with_get(client, method, path, allow):
    r = client.request(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    assert r.json()["resourceType"] == "OperationOutcome"


def test_head_where_get_is_not_allowed_is_a_405_without_body(client):
    r = client.head("/auth/token")
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.content == b""


# -- the URLs the hub emits never follow the request's Host ---------------------------------------

def _hub(store, tmp_path, **settings: Any) -> TestClient:
    return TestClient(create_app(Settings(env="test", data_dir=tmp_path, auto_migrate=False,
                                          **settings), store=store),
                      raise_server_exceptions=False)


EVIL = {"host": "evil.example"}


def test_without_a_base_url_the_hub_names_its_listen_address_not_the_host(store, tmp_path):
    with _hub(store, tmp_path, host="127.0.0.1", port=8765) as c:
        smart = c.get("/.well-known/smart-configuration", headers=EVIL).json()
        assert smart["token_endpoint"] == "http://127.0.0.1:8765/auth/token"
        assert smart["jwks_uri"] == "http://127.0.0.1:8765/auth/jwks"
        cap = c.get("/fhir/metadata", headers=EVIL).json()
        assert cap["implementation"]["url"] == "http://127.0.0.1:8765/fhir"
        assert "evil" not in str(cap)

        h = {"Authorization": "Bearer " + issue_token(c, store, ADMIN_ORG, role="admin",
                                                      personal_data=True)} | EVIL
        for person in (patient(), patient(f.DEMO_PNR, "Andersson", "Alva")):
            kw = body(person)
            r = c.post("/fhir/Patient", content=kw["content"], headers=kw["headers"] | h)
            assert r.status_code == 201, r.text
            assert r.headers["location"].startswith("http://127.0.0.1:8765/fhir/Patient/")
        page = c.get("/fhir/Patient?_count=1", headers=h).json()
        assert page["entry"][0]["fullUrl"].startswith("http://127.0.0.1:8765/fhir/Patient/")
        assert {link["relation"]: link["url"].startswith("http://127.0.0.1:8765/fhir/Patient?")
                for link in page["link"]} == {"self": True, "next": True}


@pytest.mark.parametrize("path", ["/fhir/metadata/", "/fhir/Patient/", "/auth/token/",
                                  "/admin/", "/admin/clients/"])
def test_a_trailing_slash_is_never_redirected_to_the_requests_host(client, path):
    """No redirect built from the request's Host (Starlette's redirect_slashes answered a
    307 to http://evil.example/..., which keeps a POST's method and body: a client's
    credentials to /auth/token/ went on there): such a path is not the hub's."""
    for method in ("GET", "POST"):
        r = client.request(method, path, headers=EVIL, follow_redirects=False)
        assert r.status_code in (404, 405), (method, r.status_code, r.headers)
        assert "evil" not in str(r.headers) and "location" not in r.headers


@pytest.mark.parametrize("host, base", [("0.0.0.0", "http://127.0.0.1:9000"),
                                        ("::", "http://[::1]:9000")])
def test_a_wildcard_listen_address_is_named_by_loopback_with_a_warning(store, tmp_path, caplog,
                                                                       host, base):
    with caplog.at_level(logging.WARNING, logger="sip_hub"):
        c = _hub(store, tmp_path, host=host, port=9000)
    assert any("SIP_HUB_BASE_URL is not set" in r.getMessage() and base in r.getMessage()
               for r in caplog.records), caplog.text
    with c:
        smart = c.get("/.well-known/smart-configuration", headers=EVIL).json()
    assert smart["token_endpoint"] == f"{base}/auth/token"


def test_a_set_base_url_is_used_and_no_warning_given(store, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="sip_hub"):
        c = _hub(store, tmp_path, host="0.0.0.0", base_url="https://sip.region.se/")
    assert "SIP_HUB_BASE_URL" not in caplog.text
    with c:
        smart = c.get("/fhir/.well-known/smart-configuration", headers=EVIL).json()
    assert smart["token_endpoint"] == "https://sip.region.se/auth/token"


# -- $process-message's parameters, once each ---------------------------------------------------

@pytest.mark.parametrize("query, name", [
    ("async=true&async=false", "async"),
    ("async=false&async=true", "async"),
    ("async=true&async=true", "async"),
    ("async=true&response-url=https://a.test/pm&response-url=https://b.test/pm",
     "response-url"),
])
def test_a_process_message_parameter_given_twice_is_a_400(world: Hub, query, name):
    """Which one is meant would be a guess: the last one was taken, silently."""
    before = len(world.deliveries())
    r = world.post(BUP, f"{PROCESS_MESSAGE}?{query}", status_change(world))
    assert r.status_code == 400, r.text
    assert outcome_text(r) == f"{name} may be given once only @ {name}"
    assert current_plan(world)["meta"]["versionId"] == "1"
    assert len(world.deliveries()) == before
