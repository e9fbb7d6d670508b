"""Settings and input the hub cannot honour are refused where they come in, by name, rather
than met later as failures or quiet surprises. An operator relies on a start that succeeds
meaning the hub will run: a broker or base URL whose port is no port, a default page larger
than the maximum, a retention or backoff too long to compute with are each refused at start
with one line naming the setting. What the console shows and the access log writes carries
no password and no personnummer. A JSON Bundle with an element FHIR R4 does not define is
refused as the same Bundle in XML is, and as any other resource is."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

import conftest
from fhirhttp import JSON_HEADERS, body, outcome_text, patient
from hubprocess import free_port, get, healthy, start, stop, wait
from messaging import harness
from messaging.harness import ADMIN, BUP, URL, Hub
from sip_hub import cli, clients
from sip_hub.app import create_app
from sip_hub.bus import shown_url
from sip_hub.messaging.config import MessagingSettings
from sip_hub.messaging.runtime import Messaging
from sip_hub.messaging.worker import Worker
from sip_hub.settings import Settings
from sip_hub.store import Store
from test_probe_ops import env  # noqa: F401 (the fixture: the command line's settings)

broker, hub, world = harness.broker, harness.hub, harness.world


def refused_at_start(capsys: pytest.CaptureFixture[str], name: str) -> None:
    """``sip-hub migrate`` stopped with exit 2 and one line naming ``name``."""
    assert cli.main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sip-hub: invalid settings: ") and f"{name}" in err, err
    assert len(err.strip().splitlines()) == 1


# -- URLs whose port is no port ----------------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    # (the worker then failed every round, `messages replay` ended in a traceback and the
    # console's front page failed; a bad base URL went into every link the hub emits)
    ("SIP_HUB_BROKER_URL", "amqp://sip:pw@mq.region.se:abc//"),
    ("SIP_HUB_BROKER_URL", "amqp://sip:pw@mq.region.se:99999//"),
    ("SIP_HUB_BROKER_URL", "amqp://sip:pw@mq.region.se:0//"),
    ("SIP_HUB_BROKER_URL", "amqp://sip:pw@mq1.region.se//;amqp://sip:pw@mq2.region.se:abc//"),
    ("SIP_HUB_BROKER_URL", "amqp://sip:pw@mq1.region.se//;ftp://mq2.region.se//"),
    ("SIP_HUB_BASE_URL", "https://sip.region.se:abc"),
    ("SIP_HUB_BASE_URL", "https://sip.region.se:99999"),
    ("SIP_HUB_BASE_URL", "https://sip.region.se:0"),
])
def test_a_url_setting_whose_port_is_no_port_is_refused_by_name(
        env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    refused_at_start(capsys, f"{name}: ")


@pytest.mark.parametrize("url", [
    "amqp://sip:pw@mq.region.se:5672//",
    "amqps://sip:pw@mq.region.se//",
    "amqp://sip:pw@mq1.region.se:5672//;amqp://sip:pw@mq2.region.se:5672//",
    "memory://",
])
def test_a_broker_url_with_a_port_or_none_is_taken(url: str) -> None:
    assert Settings(broker_url=url).broker_url == url


# -- the page size -----------------------------------------------------------------------------

def test_a_page_without_count_is_no_larger_than_the_max_page_size(
        store: Store, tmp_path: Path) -> None:
    """SIP_HUB_MAX_PAGE_SIZE bounds every page, not only those that ask for a size: a search
    or history without ``_count`` got SIP_HUB_DEFAULT_PAGE_SIZE entries whatever the bound
    (settings made in code; the command line refuses such a pair, below)."""
    settings = Settings(env="test", data_dir=tmp_path, base_url="http://hub.test",
                        auto_migrate=False, default_page_size=5, max_page_size=5)
    settings.default_page_size = 50  # (assignment is not validated: as a caller in code may)
    with TestClient(create_app(settings, store=store), raise_server_exceptions=False) as c:
        token = conftest.issue_token(c, store, conftest.ADMIN_ORG, role="admin",
                                     personal_data=True)
        c.headers["Authorization"] = f"Bearer {token}"
        for i in range(8):
            r = c.post("/fhir/Organization", json={"resourceType": "Organization",
                                                   "name": f"Org {i}"})
            assert r.status_code == 201, r.text
        assert len(c.get("/fhir/Organization?_count=100").json()["entry"]) == 5
        page = c.get("/fhir/Organization").json()
        assert len(page["entry"]) == 5
        assert any(link["relation"] == "next" for link in page["link"])
        history = c.get("/fhir/Organization/_history").json()
        assert len(history["entry"]) == 5


def test_a_default_page_size_above_the_maximum_is_refused_at_start(
        env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIP_HUB_MAX_PAGE_SIZE", "5")
    refused_at_start(capsys, "SIP_HUB_DEFAULT_PAGE_SIZE (50)")


# -- the console shows no broker password ------------------------------------------------------

def _sign_in(h: Hub) -> None:
    creds = clients.create_client(h.store, org=ADMIN, scope="system/*.rs", role="admin")
    h.client.follow_redirects = False
    r = h.client.post("/admin/login", data={"client_id": creds["client_id"],
                                            "client_secret": creds["client_secret"]})
    assert r.status_code == 303, r.text


def test_the_front_page_shows_a_failover_broker_url_without_its_passwords(hub: Hub) -> None:
    """kombu takes a list of brokers to fail over to (``url1;url2``); its sanitizer masked the
    first one's password only and showed the others'."""
    hub.configure({}, broker_url="amqp://sip:forsta-losen@mq1.region.se:5672//;"
                                 "amqp://sip:andra-losen@mq2.region.se:5672//")
    _sign_in(hub)
    r = hub.client.get("/admin")
    assert r.status_code == 200, r.text
    assert "Message bus" in " ".join(re.sub(r"<[^>]+>", " ", r.text).split())
    assert "forsta-losen" not in r.text and "andra-losen" not in r.text
    assert "mq1.region.se" in r.text and "mq2.region.se" in r.text


def test_a_shown_failover_url_names_each_broker_without_its_password() -> None:
    assert shown_url("amqp://sip:a@mq1:5672//;amqps://sip:b@mq2:5671/vh") == \
        "amqp://sip:**@mq1:5672//;amqps://sip:**@mq2:5671/vh"
    assert shown_url("memory://") == "memory:///"


# -- messaging periods too long to compute with ------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("SIP_HUB_MESSAGE_RETENTION_DAYS", "999999999"),
    ("SIP_HUB_MESSAGE_CACHE_MINUTES", "99999999999999"),
    ("SIP_HUB_MESSAGE_REPUBLISH_AFTER_SECONDS", "99999999999999"),
    ("SIP_HUB_MESSAGE_RETRY_MAX_SECONDS", "inf"),
    ("SIP_HUB_MESSAGE_RETRY_BASE_SECONDS", "1e300"),
    ("SIP_HUB_MESSAGE_POLL_SECONDS", "1e12"),
    ("SIP_HUB_SIP_INACTIVE_DAYS", "1000000000000"),
    ("SIP_HUB_SIP_DEADLINE_SCAN_MINUTES", "99999999999999"),
])
def test_a_messaging_period_beyond_its_bound_is_refused_at_start(
        env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        name: str, value: str) -> None:
    """(A retention meant as "for ever" passed, and every worker round failed from then on:
    bigint out of range on PostgreSQL, an OverflowError on SQLite.)"""
    monkeypatch.setenv(name, value)
    refused_at_start(capsys, f"{name}: ")


def test_the_backoff_of_a_delivery_tried_many_times_is_the_maximum() -> None:
    """(Doubling the base for each of thousands of attempts overflowed a float, and the
    delivery's failure could not be recorded.)"""
    config = MessagingSettings(max_attempts=10_000, retry_base_seconds=10,
                               retry_max_seconds=86_400)
    assert config.retry_delay(3) == 40.0
    assert config.retry_delay(5_000) == 86_400.0


def test_the_longest_retention_is_kept_by_the_upkeep(store: Store, tmp_path: Path) -> None:
    config = MessagingSettings(broker_url="memory://", retention_days=36_500,
                               cache_minutes=525_600, endpoints_file=tmp_path / "e.json")
    worker = Worker(store, Messaging.from_config(config))
    try:
        worker.upkeep()  # forgets nothing (nothing is that old), and does not fail
    finally:
        worker.close()


def test_a_failing_upkeep_does_not_fail_every_round(
        store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Upkeep runs inside the worker's round: one that fails is logged and tried again at
    the next upkeep's time, not in every round (each of which then failed, and the worker's
    health check with them)."""
    from sip_hub.messaging import worker as worker_module

    calls = []

    def broken(*args: Any) -> int:
        calls.append(args)
        raise RuntimeError("upkeep broke")

    monkeypatch.setattr(worker_module.inbox, "purge_expired", broken)
    config = MessagingSettings(broker_url="memory://", endpoints_file=tmp_path / "e.json")
    worker = Worker(store, Messaging.from_config(config))
    try:
        assert worker.run_once() == 0
        assert worker.run_once() == 0
    finally:
        worker.close()
    assert len(calls) == 1


# -- unknown elements of a JSON Bundle ---------------------------------------------------------

XML_HEADERS = {"content-type": "application/fhir+xml", "accept": "application/fhir+json"}


def _bundle(btype: str, extra: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": btype, **extra, "entry": [
        {"resource": patient(), "request": {"method": "POST", "url": "Patient"}}]}


@pytest.mark.parametrize("btype", ["batch", "transaction"])
@pytest.mark.parametrize("extra, where", [
    ({"bogus": 1}, "Bundle.bogus"),
    # (Bundle.issues is R4B's; R4 has no such element)
    ({"issues": {"resourceType": "OperationOutcome",
                 "issue": [{"severity": "error", "code": "invalid"}]}}, "Bundle.issues"),
])
def test_a_json_bundle_with_an_unknown_element_is_refused(
        client: TestClient, btype: str, extra: dict[str, Any], where: str) -> None:
    r = client.post("/fhir", **body(_bundle(btype, extra)))
    assert r.status_code == 422, r.text
    assert where in outcome_text(r)
    assert client.get("/fhir/Patient").json()["total"] == 0  # nothing applied


@pytest.mark.parametrize("entry, where", [
    ({"bogus": 1}, "Bundle.entry[0].bogus"),
    ({"request": {"method": "POST", "url": "Patient", "bogus": 1}},
     "Bundle.entry[0].request.bogus"),
])
def test_a_json_bundle_entry_with_an_unknown_element_is_refused(
        client: TestClient, entry: dict[str, Any], where: str) -> None:
    """A batch answers that entry alone (400); a transaction fails as a whole."""
    bundle = _bundle("batch", {})
    bundle["entry"][0].update(entry)
    bundle["entry"].append({"resource": patient("200001012384", "Andersson", "Alva"),
                            "request": {"method": "POST", "url": "Patient"}})
    r = client.post("/fhir", **body(bundle))
    assert r.status_code == 200, r.text
    first, second = (e["response"] for e in r.json()["entry"])
    assert first["status"] == "400" and where in str(first["outcome"]), first
    assert second["status"].startswith("201")
    bundle["type"] = "transaction"
    r = client.post("/fhir", **body(bundle))
    assert r.status_code == 400 and where in outcome_text(r), r.text
    assert client.get("/fhir/Patient").json()["total"] == 1  # the batch's second entry only


@pytest.mark.parametrize("btype", ["batch", "transaction"])
def test_an_xml_bundle_with_an_unknown_element_is_refused(client: TestClient,
                                                          btype: str) -> None:
    xml = (f'<Bundle xmlns="http://hl7.org/fhir"><type value="{btype}"/>'
           '<bogus value="1"/></Bundle>')
    r = client.post("/fhir", content=xml.encode(), headers=XML_HEADERS)
    assert r.status_code == 400, r.text
    assert "<bogus>" in outcome_text(r)


def test_a_json_bundle_the_hub_knows_every_element_of_is_taken(client: TestClient) -> None:
    """The check of the Bundle's own elements leaves its entries' resources as they came."""
    bundle = _bundle("transaction", {"id": "b1", "meta": {"lastUpdated": "2026-01-01T00:00:00Z"},
                                     "_type": {"extension": [{"url": "http://x.se/e",
                                                              "valueString": "x"}]}})
    entry = bundle["entry"][0]
    entry["fullUrl"] = "urn:uuid:0b3b7b0e-2f4b-4a8e-9c4f-1e1b1a1d1c10"
    entry["resource"]["gender"] = "female"
    r = client.post("/fhir", **body(bundle))
    assert r.status_code == 200, r.text
    stored = client.get(r.json()["entry"][0]["response"]["location"]
                        .replace("http://hub.test", "")).json()
    assert stored["gender"] == "female" and stored["name"] == entry["resource"]["name"]


def test_a_message_bundle_with_an_unknown_element_is_refused(world: Hub) -> None:
    """(``$process-message`` answers a message it cannot take with a response message.)"""
    msg = harness.status_change(world)
    msg["bogus"] = 1
    r = world.post(BUP, URL, msg)
    assert r.status_code == 200, r.text
    header, outcome = (e["resource"] for e in r.json()["entry"])
    assert header["response"]["code"] == "fatal-error"
    assert outcome["issue"][0]["expression"] == ["Bundle.bogus"]
    assert harness.current_plan(world)["meta"]["versionId"] == "1"  # not applied


# -- the access log ----------------------------------------------------------------------------

def test_the_access_log_carries_no_query(tmp_path: Path) -> None:
    """SIP_HUB_ACCESS_LOG: the line names the method, path and status; a query may name a
    person (``identifier=...|191212121212``, ``$citizen-view?patient=...``) and logs carry
    no resource's content, so the query is left out."""
    port = free_port()
    proc, log = start(tmp_path, ["serve", "--port", str(port)], SIP_HUB_ACCESS_LOG="true")
    try:
        # one worker binds its socket after "Application startup complete": wait for answers
        wait(lambda: healthy(port), "the API did not start", proc, log)
        target = "/fhir/Patient?identifier=http://electronichealth.se/identifier/" \
                 "personnummer|191212121212"
        assert get(port, target, JSON_HEADERS).status == 401
        wait(lambda: b"GET /fhir/Patient" in log.read_bytes(), "no access line", proc, log)
    finally:
        stop(proc)
    text = log.read_text()
    assert '"GET /fhir/Patient HTTP/1.1" 401' in text, text
    assert "191212121212" not in text and "identifier" not in text, text
