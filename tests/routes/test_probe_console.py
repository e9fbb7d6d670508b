"""Probing the web console (``/admin``) with odd input, as properties, signed in with a good
session and form token: odd query strings, form fields and path segments on every page and
form are answered with a console page (an error page with its 4xx status, or a redirect; a
path that is no page's, an OperationOutcome), never a 5xx, on SQLite and PostgreSQL; and what
is refused changes nothing (no client is registered, disabled or enabled, no delivery sent
again). PROBE_EXAMPLES=400 PROBE_RANDOM=1 probe harder."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from messaging import harness
from messaging.harness import Hub
from sip_hub import clients
from test_admin_console import FORM, admin, sign_in

broker, hub = harness.broker, harness.hub

FUZZ = hsettings(max_examples=int(os.environ.get("PROBE_EXAMPLES", "40")), deadline=None,
                 derandomize=not os.environ.get("PROBE_RANDOM"),
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])

ODD = ["", " ", "\x00", "a\x00b", "\x7f", "\u202e", "\ud800".encode("utf-8", "surrogatepass")
       .decode("utf-8", "replace"), "%00", "%", "%zz", "../..", "/", "//", "\\", "x" * 70,
       "x" * 300, "9" * 30, "-1", "0", "1e999", "dead", "published", "pending", "delivered",
       "withdrawn", "all", "SE2321000016-BUP1", "SE2321000016-ZZZ9", "urn:oid:1.2.752.29.4.19|x",
       "system/*.cruds", "system/*.rs", "admin", "portal", "organization", "on", "å" * 64,
       "<script>", "' OR 1=1 --", "\r\nSet-Cookie: x=1", "?next=/", "#"]
TEXT = st.one_of(st.sampled_from(ODD), st.text(max_size=80))
FIELDS = ["org", "state", "before", "name", "scope", "role", "personal_data", "client_id",
          "client_secret", "next", "notice", "n", "client", "csrf"]


def _problem_free(r: Any) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:400])
    if r.status_code >= 400:  # (a console page; an OperationOutcome where no page is)
        kind = r.headers["content-type"]
        assert kind.startswith("text/html") or (
            kind.startswith("application/fhir+json")
            and r.json()["resourceType"] == "OperationOutcome"), (kind, r.text[:200])
    elif r.status_code in (302, 303):
        assert r.headers["location"].startswith("/admin"), r.headers["location"]


def _state(hub: Hub) -> tuple[Any, ...]:
    return (sorted((c["client_id"], c["disabled"]) for c in clients.listing(hub.store)),
            sorted((d.id, d.state, d.attempts) for d in hub.deliveries()))


@pytest.fixture
def signed_in(hub: Hub) -> dict[str, str]:
    """The session's form token (renewed by a probe that signs out and in again)."""
    hub.client.follow_redirects = False
    return {"csrf": sign_in(hub)}


@FUZZ
@given(page=st.sampled_from(["/admin", "/admin/messages", "/admin/clients", "/admin/endpoints",
                             "/admin/login"]),
       query=st.lists(st.tuples(st.sampled_from(FIELDS), TEXT), max_size=4))
def test_odd_query_strings_on_every_page_are_answered_cleanly(hub: Hub, signed_in: dict,
                                                              page: str, query: list) -> None:
    r = hub.client.get(page + "?" + urlencode(query))
    _problem_free(r)


@FUZZ
@given(segment=TEXT, verb=st.sampled_from(["disable", "enable", "replay", "x"]),
       how=st.sampled_from(["read", "replay", "client"]))
def test_odd_path_segments_are_answered_cleanly(hub: Hub, signed_in: dict, segment: str,
                                                verb: str, how: str) -> None:
    before = _state(hub)
    seg = quote(segment, safe="")
    if how == "read":
        r = hub.client.get(f"/admin/messages/{seg}")
    elif how == "replay":
        r = hub.client.post(f"/admin/messages/{seg}/replay", data=signed_in,
                            headers=FORM)
    else:
        r = hub.client.post(f"/admin/clients/{seg}/{verb}", data=signed_in,
                            headers=FORM)
    _problem_free(r)
    if r.status_code >= 400:
        assert _state(hub) == before


@FUZZ
@given(target=st.sampled_from(["/admin/clients", "/admin/messages/replay", "/admin/logout",
                               "/admin/login"]),
       fields=st.dictionaries(st.sampled_from(FIELDS), TEXT, max_size=6),
       keep_csrf=st.booleans())
def test_odd_form_fields_are_answered_cleanly(hub: Hub, signed_in: dict, target: str,
                                              fields: dict[str, str], keep_csrf: bool) -> None:
    if keep_csrf:
        fields = {**fields, **signed_in}
    before = _state(hub)
    r = hub.client.post(target, data=fields, headers=FORM)
    _problem_free(r)
    if r.status_code >= 400:
        assert _state(hub) == before
    if target == "/admin/logout" and r.status_code == 303:  # (signed out: in again)
        assert hub.client.get("/admin").status_code == 303  # (the session is over)
        hub.client.cookies.clear()
        signed_in["csrf"] = sign_in(hub)


@FUZZ
@given(client_id=TEXT, secret=TEXT)
def test_odd_credentials_do_not_sign_in_and_are_answered_cleanly(hub: Hub, client_id: str,
                                                                 secret: str) -> None:
    hub.client.follow_redirects = False
    hub.client.cookies.clear()
    r = hub.client.post("/admin/login", data={"client_id": client_id, "client_secret": secret},
                        headers=FORM)
    assert r.status_code in (400, 401), (r.status_code, r.text[:400])
    assert r.headers["content-type"].startswith("text/html")
    assert "set-cookie" not in r.headers


def test_a_good_admin_still_signs_in_after_the_odd_ones(hub: Hub) -> None:
    hub.client.follow_redirects = False
    creds = admin(hub)
    for odd in ("\x00", "x" * 300, "\ud7ff"):
        r = hub.client.post("/admin/login", data={"client_id": creds["client_id"] + odd,
                                                  "client_secret": creds["client_secret"]},
                            headers=FORM)
        assert r.status_code in (400, 401)
    assert sign_in(hub, creds)
