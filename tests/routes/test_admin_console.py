"""The web console for IT staff (``/admin``) through the real app, on both stores: signing in
with an admin client, the session cookie and its form token, the deliveries (dead ones with
their reasons, sent again), a message's content for personal-data access only (audited), the
API clients (registered, disabled, enabled) and the configured endpoints."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from sqlalchemy import text as sql

import sip_factory as f
from messaging import harness
from messaging.harness import ADMIN, BUP, SCHOOL, SOC, Hub, responses_to, settled
from sip_hub import clients
from sip_hub.fhir.dates import from_us
from sip_hub.routes.admin import COOKIE, SECURITY_HEADERS
from sip_hub.settings import Settings

broker, hub, world, receivers = harness.broker, harness.hub, harness.world, harness.receivers

FORM = {"Content-Type": "application/x-www-form-urlencoded"}
NOBODY = "SE2321000016-ZZZ9"  # an organisation with no endpoint: its deliveries go dead


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # (a disabled client's session ends within this: 5 s by default)
    return Settings(env="test", data_dir=tmp_path, base_url="http://hub.test",
                    auto_migrate=False, client_state_seconds=0.05)


@pytest.fixture(autouse=True)
def _redirects_seen(hub: Hub) -> None:
    hub.client.follow_redirects = False  # (the tests look at where the console sends them)


def admin(hub: Hub, *, personal_data: bool = False, org: str = ADMIN) -> dict[str, str]:
    return clients.create_client(hub.store, org=org, scope="system/*.rs", role="admin",
                                 personal_data=personal_data)


def sign_in(hub: Hub, creds: dict[str, str] | None = None, **kw: Any) -> str:
    """Sign in (an admin client of its own unless ``creds``); the session's form token."""
    creds = creds or admin(hub, **kw)
    r = hub.client.post("/admin/login", data={"client_id": creds["client_id"],
                                              "client_secret": creds["client_secret"]})
    assert r.status_code == 303 and r.headers["location"] == "/admin", r.text
    return csrf_of(hub.client.get("/admin"))


def csrf_of(r: Any) -> str:
    assert r.status_code == 200, r.text
    return re.search(r'name="csrf" value="([^"]+)"', r.text)[1]


def page_text(r: Any) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", r.text).split())


def dead_to(hub: Hub, org: str, n: int) -> list[str]:
    """``n`` messages to ``org`` (which has no endpoint), relayed: dead, with the reason."""
    responses_to(hub, org, n)
    hub.rounds(lambda: not hub.deliveries(states=["pending", "published"]))
    return [d.id for d in hub.deliveries(states=["dead"]) if d.dest_org == org]


# -- signing in ------------------------------------------------------------------------------

def test_a_page_without_a_session_signs_in_first_and_comes_back(hub: Hub) -> None:
    r = hub.client.get("/admin/messages?state=dead")
    assert r.status_code == 303
    where = urlsplit(r.headers["location"])
    assert where.path == "/admin/login"
    assert parse_qs(where.query) == {"next": ["/admin/messages?state=dead"]}
    login = hub.client.get(r.headers["location"])
    assert login.status_code == 200 and 'name="client_secret"' in login.text
    creds = admin(hub)
    r = hub.client.post("/admin/login", data={
        "client_id": creds["client_id"], "client_secret": creds["client_secret"],
        "next": "/admin/messages?state=dead"})
    assert r.status_code == 303 and r.headers["location"] == "/admin/messages?state=dead"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    for part in ("HttpOnly", "Path=/admin", "SameSite=strict", "Max-Age=1800"):
        assert part.lower() in cookie.lower(), cookie
    assert "secure" not in cookie.lower()  # (plain http in a test environment)
    page = hub.client.get("/admin/messages?state=dead")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, value in SECURITY_HEADERS.items():
        assert page.headers[name] == value
    assert creds["client_id"] in page.text
    # Signed in already: the sign-in page goes on to where it would have gone
    again = hub.client.get("/admin/login?next=/admin/clients")
    assert again.status_code == 303 and again.headers["location"] == "/admin/clients"


@pytest.mark.parametrize("target", ["https://evil.example/admin", "//evil.example/admin",
                                    "/adminx", "/admin/../fhir", "/admin/%2e%2e/fhir",
                                    "/admin\\@evil.example", "/fhir/Patient",
                                    "javascript:alert(1)"])
def test_signing_in_never_leads_off_the_console(hub: Hub, target: str) -> None:
    creds = admin(hub)
    r = hub.client.post("/admin/login", data={
        "client_id": creds["client_id"], "client_secret": creds["client_secret"],
        "next": target})
    assert r.status_code == 303 and r.headers["location"] == "/admin"


def test_wrong_secrets_unknown_and_non_admin_clients_do_not_sign_in(hub: Hub) -> None:
    creds = admin(hub)
    org = clients.create_client(hub.store, org=SOC, scope="system/*.cruds")
    portal = clients.create_client(hub.store, org="SE2321000016-1177", scope="system/CarePlan.rs",
                                   role="portal")
    for client_id, secret, status, says in (
            (creds["client_id"], "wrong", 401, "Unknown client or wrong secret"),
            ("sip-nobody", creds["client_secret"], 401, "Unknown client or wrong secret"),
            (org["client_id"], org["client_secret"], 403, "admin clients"),
            (portal["client_id"], portal["client_secret"], 403, "admin clients"),
            (creds["client_id"], "", 400, "id and secret")):
        r = hub.client.post("/admin/login", data={"client_id": client_id,
                                                  "client_secret": secret})
        assert r.status_code == status and says in r.text, (client_id, r.text)
        assert "set-cookie" not in r.headers
        assert hub.client.get("/admin").status_code == 303  # still not signed in
    clients.set_disabled(hub.store, creds["client_id"], True)
    r = hub.client.post("/admin/login", data={"client_id": creds["client_id"],
                                              "client_secret": creds["client_secret"]})
    assert r.status_code == 401


def test_a_session_ends_when_its_client_is_disabled_and_at_sign_out(hub: Hub) -> None:
    creds = admin(hub)
    csrf = sign_in(hub, creds)
    assert hub.client.get("/admin/clients").status_code == 200
    clients.set_disabled(hub.store, creds["client_id"], True)
    time.sleep(0.1)  # (client_state_seconds)
    assert hub.client.get("/admin/clients").status_code == 303
    clients.set_disabled(hub.store, creds["client_id"], False)
    time.sleep(1.0)  # (a session from the second of the disable is taken as from before it)
    # Enabled again, the client signs in anew: the session cut off stays ended (it came back
    # to life, and so would a copy of its cookie taken by whoever had it disabled).
    assert hub.client.get("/admin/clients").status_code == 303
    csrf = sign_in(hub, creds)
    kept = hub.client.cookies[COOKIE]
    r = hub.client.post("/admin/logout", data={"csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/admin/login?notice=signed-out"
    assert f'{COOKIE}=""' in r.headers["set-cookie"] or "Max-Age=0" in r.headers["set-cookie"]
    assert hub.client.get("/admin").status_code == 303
    assert "You are signed out." in hub.client.get("/admin/login?notice=signed-out").text
    # The cookie's value kept (a copy, another browser tab): signed out all the same
    hub.client.cookies.set(COOKIE, kept, path="/admin")
    assert hub.client.get("/admin").status_code == 303
    assert hub.client.post("/admin/logout", data={"csrf": csrf}).status_code == 401
    # Signing in again is a new session
    sign_in(hub, creds)
    assert hub.client.get("/admin").status_code == 200


def test_the_session_is_no_api_token_and_an_api_token_no_session(hub: Hub) -> None:
    sign_in(hub)
    session = hub.client.cookies[COOKIE]
    r = hub.client.get("/fhir/CarePlan", headers={"Authorization": f"Bearer {session}"})
    assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
    token = hub.headers["admin"]["Authorization"].split()[1]
    hub.client.cookies.clear()
    hub.client.cookies.set(COOKIE, token, path="/admin")
    assert hub.client.get("/admin").status_code == 303
    hub.client.cookies.set(COOKIE, session[:-4] + "AAAA", path="/admin")
    assert hub.client.get("/admin").status_code == 303


# -- forms -----------------------------------------------------------------------------------

def test_forms_need_the_sessions_token_and_this_hubs_pages(hub: Hub) -> None:
    (dead,) = dead_to(hub, NOBODY, 1)
    csrf = sign_in(hub)
    url = f"/admin/messages/{dead}/replay"
    for data, headers, status in (
            ({"org": ""}, {}, 403),
            ({"csrf": "x" + csrf}, {}, 403),
            ({"csrf": csrf}, {"Origin": "https://evil.example"}, 403),
            ({"csrf": csrf}, {"Origin": "null"}, 403)):
        r = hub.client.post(url, data=data, headers=headers)
        assert r.status_code == status, r.text
        assert r.headers["content-type"].startswith("text/html")
    r = hub.client.post(url, content=b'{"csrf": "%s"}' % csrf.encode(),
                        headers={"Content-Type": "application/json"})
    assert r.status_code == 415
    r = hub.client.post(url, content=f"csrf={csrf}&csrf={csrf}".encode(), headers=FORM)
    assert r.status_code == 400 and "more than once" in r.text
    assert [d.state for d in hub.deliveries(ids=[dead])] == ["dead"]  # nothing was done
    hub.client.cookies.clear()
    r = hub.client.post(url, data={"csrf": csrf})
    assert r.status_code == 401 and "sign in again" in r.text
    assert [d.state for d in hub.deliveries(ids=[dead])] == ["dead"]
    # From this hub's own origin, with the token: done; and from its public base (behind a
    # proxy that ends TLS, the request itself says http)
    sign_in(hub)
    csrf = csrf_of(hub.client.get("/admin"))
    r = hub.client.post(url, data={"csrf": csrf}, headers={"Origin": "http://testserver"})
    assert r.status_code == 303
    assert [d.state for d in hub.deliveries(ids=[dead])] == ["pending"]
    r = hub.client.post(url, data={"csrf": csrf}, headers={"Origin": "http://hub.test"})
    assert r.status_code == 303 and r.headers["location"].endswith("notice=replayed-none")


def test_over_https_the_session_cookie_is_for_https_only(hub: Hub) -> None:
    creds = admin(hub)
    hub.client.base_url = "https://testserver"
    r = hub.client.post("/admin/login", data={"client_id": creds["client_id"],
                                              "client_secret": creds["client_secret"]})
    assert r.status_code == 303 and "secure" in r.headers["set-cookie"].lower()
    assert hub.client.get("/admin").status_code == 200


# -- messages --------------------------------------------------------------------------------

def test_a_dead_delivery_is_shown_with_its_reason_and_sent_again(world: Hub,
                                                                  receivers: Any) -> None:
    bup, school = receivers(), receivers()
    world.configure({BUP: bup.url, SCHOOL: school.url})
    school.script = [422]
    world.rounds(lambda: settled(world))
    (d,) = [d for d in world.deliveries() if d.dest_org == SCHOOL]
    assert d.state == "dead"
    csrf = sign_in(world)
    front = page_text(world.client.get("/admin"))
    assert f"{SCHOOL} {school.url} 0 1" in front and f"{BUP} {bup.url} 0 0" in front
    assert "dead 1" in front and "delivered" in front
    listing = world.client.get(f"/admin/messages?state=dead&org={SCHOOL}")
    text = page_text(listing)
    assert d.id in text and "HTTP 422" in text and "plan-established" in text
    assert f"/admin/messages/{d.id}/replay" in listing.text
    assert d.id not in page_text(world.client.get(f"/admin/messages?state=dead&org={BUP}"))
    assert d.id in page_text(world.client.get(  # (an HSA-id as typed: normalised)
        f"/admin/messages?state=dead&org={SCHOOL.lower()}"))
    detail = world.client.get(f"/admin/messages/{d.id}")
    assert detail.status_code == 200 and d.message_id in detail.text
    assert d.last_error in page_text(detail)
    # A URL with credentials, stored before such URLs were refused, is shown without them.
    with world.store.begin() as tx:
        tx.conn.execute(sql("UPDATE outbox_delivery SET endpoint_url = :u WHERE id = :i"),
                        {"u": "https://sip:hemligt@skolan.example/pm", "i": d.id})
    shown = page_text(world.client.get(f"/admin/messages/{d.id}"))
    assert "hemligt" not in shown and "https://***@skolan.example/pm" in shown
    with world.store.begin() as tx:
        tx.conn.execute(sql("UPDATE outbox_delivery SET endpoint_url = :u WHERE id = :i"),
                        {"u": school.url, "i": d.id})
    r = world.client.post(f"/admin/messages/{d.id}/replay", data={"csrf": csrf})
    assert r.status_code == 303
    assert r.headers["location"] == f"/admin/messages/{d.id}?notice=replayed&n=1"
    assert "1 dead deliveries sent again." in world.client.get(r.headers["location"]).text
    world.rounds(lambda: settled(world))
    assert [x.state for x in world.deliveries(ids=[d.id])] == ["delivered"]
    assert school.applied == [d.message_id]
    # Again: nothing dead to send
    r = world.client.post(f"/admin/messages/{d.id}/replay", data={"csrf": csrf})
    assert r.headers["location"].endswith("notice=replayed-none")
    # The replay is audited as the operator's
    log = world.client.get("/fhir/AuditEvent?patient=Patient/alva&_count=500",
                           headers=world.headers["admin"]).json()
    (event,) = [e["resource"] for e in log.get("entry", [])
                if e["resource"].get("outcomeDesc", "").startswith("$replay")]
    assert d.id in event["outcomeDesc"]


def test_the_content_is_for_personal_data_access_and_its_reading_is_audited(
        world: Hub, receivers: Any) -> None:
    school = receivers()
    world.configure({SCHOOL: school.url})
    world.rounds(lambda: settled(world))
    (d,) = [d for d in world.deliveries() if d.dest_org == SCHOOL]
    assert f.DEMO_PNR in d.content.decode()
    sign_in(world)
    page = world.client.get(f"/admin/messages/{d.id}")
    assert page.status_code == 200 and d.message_id in page.text
    assert f.DEMO_PNR not in page.text and "personal-data access" in page.text

    def reads() -> list[dict]:
        log = world.client.get("/fhir/AuditEvent?patient=Patient/alva&_count=500",
                               headers=world.headers["admin"]).json()
        return [e["resource"] for e in log.get("entry", [])
                if "console: content of message" in e["resource"].get("outcomeDesc", "")]
    assert reads() == []
    world.client.cookies.clear()
    creds = admin(world, personal_data=True, org="SE2321000016-ADM2")
    sign_in(world, creds)
    page = world.client.get(f"/admin/messages/{d.id}")
    assert page.status_code == 200 and f.DEMO_PNR in page.text
    (event,) = reads()
    assert d.message_id in event["outcomeDesc"]
    assert "SE2321000016-ADM2" in [a["who"].get("identifier", {}).get("value")
                                   for a in event["agent"]]
    assert {"reference": "CarePlan/alva-sip"} in [e.get("what") for e in event["entity"]]


def _refused_naming_the_person(world: Hub, receivers: Any) -> Any:
    """The school's system refuses the plan's message with a 422 whose diagnostics name Alva
    by her personnummer: the delivery is dead."""
    school = receivers()
    world.configure({SCHOOL: school.url})
    refusal = orjson.dumps({"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "not-found",
        "diagnostics": f"Okänd patient {f.DEMO_PNR}: ingen elev med detta personnummer"}]})
    school.answer = lambda message: (422, refusal, 0.0)  # type: ignore[method-assign]
    world.rounds(lambda: settled(world))
    (d,) = [d for d in world.deliveries() if d.dest_org == SCHOOL]
    assert d.state == "dead"
    return d


def test_a_receivers_error_naming_the_person_is_not_shown_to_an_admin_without_personal_data(
        world: Hub, receivers: Any) -> None:
    """A care system refusing a message commonly says whom it is about ("Okänd patient
    201103142384"). Its diagnostics become the delivery's last error, which the console shows
    every admin client, unaudited: the personal identity numbers in it are masked, as the
    console gives personal data to admin clients with personal-data access only."""
    d = _refused_naming_the_person(world, receivers)
    assert "Okänd patient [personnummer]: ingen elev" in d.last_error
    assert f.DEMO_PNR not in d.last_error
    sign_in(world)
    listing = world.client.get(f"/admin/messages?state=dead&org={SCHOOL}")
    page = world.client.get(f"/admin/messages/{d.id}")
    assert listing.status_code == 200 and page.status_code == 200
    assert d.id in listing.text and "HTTP 422" in page.text and "Okänd patient" in page.text
    assert f.DEMO_PNR not in listing.text and f.DEMO_PNR not in page.text
    # An error stored before they were masked is shown masked all the same.
    with world.store.begin() as tx:
        tx.conn.execute(sql("UPDATE outbox_delivery SET last_error = :e WHERE id = :i"),
                        {"e": f"HTTP 422: Okänd patient {f.DEMO_PNR}", "i": d.id})
    for shown in (world.client.get(f"/admin/messages?state=dead&org={SCHOOL}"),
                  world.client.get(f"/admin/messages/{d.id}")):
        assert "Okänd patient [personnummer]" in shown.text and f.DEMO_PNR not in shown.text


def test_deliveries_page_by_page_and_an_organisations_dead_sent_again_at_once(
        hub: Hub) -> None:
    made = set(dead_to(hub, NOBODY, 57))
    assert len(made) == 57
    csrf = sign_in(hub)
    seen: list[str] = []
    url = f"/admin/messages?state=dead&org={NOBODY}"
    pages = 0
    while url:
        r = hub.client.get(url)
        assert r.status_code == 200
        seen += re.findall(r'<a href="/admin/messages/([0-9a-f-]{36})">', r.text)
        more = re.search(r'<a href="([^"]+)">Older</a>', r.text)
        url = more[1].replace("&amp;", "&") if more else ""
        pages += 1
    assert pages == 2 and len(seen) == 57 and set(seen) == made  # each once
    r = hub.client.post("/admin/messages/replay", data={"csrf": csrf, "org": NOBODY})
    assert r.status_code == 303 and "n=57" in r.headers["location"]
    assert {d.state for d in hub.deliveries(ids=sorted(made))} == {"pending"}


@pytest.mark.parametrize(("url", "status", "says"), [
    ("/admin/messages?state=lost", 400, "state must be one of"),
    ("/admin/messages?before=yesterday", 400, "before is not a page"),
    ("/admin/messages?before=1.", 400, "before is not a page"),
    ("/admin/messages?before=99999999999999999999.x", 400, "before is not a page"),
    ("/admin/messages?before=9999999999999999999.x", 400, "before is not a page"),
    ("/admin/messages?before=1.%00", 400, "before is not a page"),
    ("/admin/messages?org=%00", 400, "HSA-id"),
    ("/admin/messages?org=SE123", 400, "org must be an organisation&#39;s HSA-id"),
    ("/admin/messages/not%20an%20id", 400, "not a valid FHIR id"),
    ("/admin/messages/0c2f9a51-0000-4000-8000-000000000000", 404, "No delivery"),
])
def test_what_the_console_cannot_show_it_says_why(hub: Hub, url: str, status: int,
                                                   says: str) -> None:
    sign_in(hub)
    r = hub.client.get(url)
    assert r.status_code == status and says in r.text
    assert r.headers["content-type"].startswith("text/html")


# -- clients ---------------------------------------------------------------------------------

def test_clients_are_registered_disabled_and_enabled_from_the_console(hub: Hub) -> None:
    me = admin(hub, personal_data=True)  # (an organisation's client: test_console_grants)
    csrf = sign_in(hub, me)
    r = hub.client.post("/admin/clients", data={
        "csrf": csrf, "org": "se2120000142-soc1", "scope": "system/CarePlan.rs",
        "name": "<script>alert(1)</script> Verksamhetssystem", "role": "organization"})
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    client_id = re.search(r"Client <strong>(sip-[0-9a-f]+)</strong>", r.text)[1]
    secret = re.search(r"<code>([^<]+)</code>", r.text.split("shown this once")[1])[1]
    assert "<script>alert(1)</script>" not in r.text and "&lt;script&gt;" in r.text
    assert "SE2120000142-SOC1" in r.text

    def token() -> int:
        return hub.client.post("/auth/token", data={"grant_type": "client_credentials"},
                               auth=(client_id, secret)).status_code
    assert token() == 200
    r = hub.client.post(f"/admin/clients/{client_id}/disable", data={"csrf": csrf})
    assert r.status_code == 303
    assert f"Client {client_id} disabled" in hub.client.get(r.headers["location"]).text
    # A notice says only what the console would: a link cannot make it say anything else
    forged = hub.client.get("/admin/clients?notice=disabled&client=Ring+support+on+555")
    assert forged.status_code == 200 and "Ring support" not in forged.text
    forged = hub.client.get("/admin/clients?notice=replayed&n=all+your+data")
    assert "all your data" not in forged.text and 'role="status"' not in forged.text
    assert token() == 401
    r = hub.client.post(f"/admin/clients/{client_id}/enable", data={"csrf": csrf})
    assert r.status_code == 303 and token() == 200
    # Not the client one is signed in with
    r = hub.client.post(f"/admin/clients/{me['client_id']}/disable", data={"csrf": csrf})
    assert r.status_code == 400 and "signed in with this client" in r.text
    for nobody in ("sip-nobody", "sip%00x", "x" * 65, "%C3%A5"):
        r = hub.client.post(f"/admin/clients/{nobody}/disable", data={"csrf": csrf})
        assert r.status_code == 404, nobody
    r = hub.client.post(f"/admin/clients/{client_id}/delete", data={"csrf": csrf})
    assert r.status_code == 404


@pytest.mark.parametrize(("fields", "says"), [
    ({"org": "not an hsa-id", "scope": "system/CarePlan.rs"}, "HSA-id"),
    ({"org": SOC, "scope": "patient/CarePlan.read"}, "not a SMART system scope"),
    ({"org": SOC, "scope": ""}, "At least one scope"),
    ({"org": SOC, "scope": "system/*.rs", "role": "root"}, "--role must be one of"),
    ({"org": SOC, "scope": "system/*.rs", "personal_data": "on"}, "only for admin clients"),
    ({"org": SOC, "scope": " ".join(["system/CarePlan.rs"] * 120)}, "at most 2000"),
])
def test_a_client_the_form_cannot_make_is_refused_with_the_form_kept(
        hub: Hub, fields: dict[str, str], says: str) -> None:
    csrf = sign_in(hub, personal_data=True)  # (who may make what: test_console_grants)
    before = len(clients.listing(hub.store))
    r = hub.client.post("/admin/clients", data={"csrf": csrf, "name": "Kvar i formuläret",
                                                **fields})
    assert r.status_code == 400 and says in r.text
    assert 'value="Kvar i formuläret"' in r.text
    assert len(clients.listing(hub.store)) == before


@pytest.mark.parametrize("name", ["x" * 256, "NUL\x00i namnet", "rad\nbrytning"])
def test_a_name_the_store_cannot_keep_is_refused(hub: Hub, name: str) -> None:
    csrf = sign_in(hub, personal_data=True)
    before = len(clients.listing(hub.store))
    r = hub.client.post("/admin/clients", data={"csrf": csrf, "org": SOC,
                                                "scope": "system/*.rs", "name": name})
    assert r.status_code == 400 and "at most 255 printable characters" in r.text
    assert len(clients.listing(hub.store)) == before


# -- endpoints -------------------------------------------------------------------------------

def test_the_endpoints_are_shown_without_their_secrets(
        hub: Hub, receivers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIP_HUB_ENDPOINT_AUTH_BUP", "Bearer hemlig-nyckel-123")
    bup = receivers()
    hub.configure({BUP: bup.url}, entries={BUP: {"authorizationEnv": "SIP_HUB_ENDPOINT_AUTH_BUP",
                                 "maxConcurrent": 2, "timeoutSeconds": 3}})
    sign_in(hub)
    r = hub.client.get("/admin/endpoints")
    text = page_text(r)
    assert r.status_code == 200
    assert f"{BUP} {bup.url} 3.0 2 SIP_HUB_ENDPOINT_AUTH_BUP: set 0 0" in text
    assert "hemlig-nyckel-123" not in r.text
    assert str(hub.messaging.config.endpoints_file) in text


def test_the_front_page_names_the_database_and_bus_without_passwords(hub: Hub) -> None:
    # (a broker URL with a password, as production's; read at start, not connected to here)
    hub.configure({}, broker_url="amqp://sip:hemligt-losen@mq.region.se:5672/sip")
    sign_in(hub)
    r = hub.client.get("/admin")
    text = page_text(r)
    assert "Database " + hub.store.engine.url.render_as_string(hide_password=True) + \
        ": reachable" in text
    assert "Message bus amqp://sip:**@mq.region.se:5672/sip" in text
    assert "hemligt-losen" not in r.text


def test_the_stylesheet_is_public_and_the_pages_allow_no_script(hub: Hub) -> None:
    css = hub.client.get("/admin/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert "font-family" in css.text
    sign_in(hub)
    for path in ("/admin", "/admin/messages", "/admin/clients", "/admin/endpoints"):
        r = hub.client.get(path)
        assert r.status_code == 200, path
        assert "<script" not in r.text
        assert "default-src 'none'" in r.headers["content-security-policy"]
        assert r.headers["x-frame-options"] == "DENY"


def test_times_are_shown_in_utc_to_the_second(hub: Hub) -> None:
    (dead,) = dead_to(hub, NOBODY, 1)
    sign_in(hub)
    (d,) = hub.deliveries(ids=[dead])
    text = page_text(hub.client.get(f"/admin/messages/{dead}"))
    assert f"Changed {from_us(d.updated).strftime('%Y-%m-%d %H:%M:%S')} UTC" in text
    assert "Published to the bus " in text
