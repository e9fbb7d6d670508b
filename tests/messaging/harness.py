"""The messaging harness: a hub with the messaging router and the write hook wired the way the
app will wire them, an in-memory or RabbitMQ bus of its own, and receivers on loopback.

Fixtures live here rather than in a conftest.py (a second conftest module would shadow the
root one for ``from conftest import ...``); test modules import them by name.

The demo SIP (Alva, 15) is written by its coordinator, the social services (SOC); BUP and the
school take part; the consent covers all three. OUTSIDER takes no part. HAB (habilitation) is
a fourth organisation with a token, for cases that invite more parties than the demo SIP has.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

import sip_factory as f
from conftest import issue_token
from fhirhttp import JSON_HEADERS, body
from sip_hub.app import create_app
from sip_hub.bus import Bus
from sip_hub.messaging import builder, outbox
from sip_hub.messaging.config import MessagingSettings
from sip_hub.messaging.delivery import Deliverer
from sip_hub.messaging.http import HttpClient
from sip_hub.messaging.relay import Relay
from sip_hub.messaging.runtime import Messaging
from sip_hub.settings import Settings
from sip_hub.store import Store
from sip_hub.store import inbox
from sip_hub.store import outbox as sql

SOC, BUP, SCHOOL = "SE2120000142-SOC1", "SE2321000016-15CQ", "SE2120000142-SKO7"
OUTSIDER = "SE2321000016-OUT1"
HAB = f.HABILITATION_HSA
ORGS = (SOC, BUP, SCHOOL, OUTSIDER, HAB)
ADMIN = "SE2321000016-ADM1"
Json = dict[str, Any]


# -- receivers: tiny FHIR $process-message endpoints on loopback --------------------------------

@dataclass
class Receiver:
    """Records what it is sent. ``script`` answers the next requests (status, or status and
    response code / delay); afterwards it answers 200 with an ok response message. Like any
    reliable receiver it applies a MessageHeader.id once (``applied``)."""

    url: str = ""
    received: list[Json] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    script: list[Any] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Per message: a step (as in script) to answer with instead of it (None: use the script).
    fail_when: Callable[[Json], Any] = lambda m: None
    # Called with each message before it is recorded, outside the receiver's lock (so that
    # concurrent requests can meet there); a step it returns answers instead (as fail_when).
    on_arrival: Callable[[Json], Any] = lambda m: None

    @property
    def header_ids(self) -> list[str]:
        return [m["entry"][0]["resource"]["id"] for m in self.received]

    def answer(self, message: Json) -> tuple[int, bytes, float]:
        arrived = self.on_arrival(message)
        with self.lock:
            self.received.append(message)
            forced = arrived if arrived is not None else self.fail_when(message)
            step = forced if forced is not None else (
                self.script.pop(0) if self.script else 200)
        status, code, delay = 200, "ok", 0.0
        if isinstance(step, int):
            status = step
        elif isinstance(step, tuple):
            status, code = step[0], step[1]
            delay = step[2] if len(step) > 2 else 0.0
        header = message["entry"][0]["resource"]
        if status >= 400:
            oo = {"resourceType": "OperationOutcome", "issue": [
                {"severity": "error", "code": "processing", "diagnostics": f"said {status}"}]}
            return status, orjson.dumps(oo), delay
        with self.lock:
            if code == "ok" and header["id"] not in self.applied:
                self.applied.append(header["id"])
        reply = builder.response(header["id"], code, fhir_base=self.url.rsplit("/", 1)[0],
                                 destination=builder.Party(SOC, "urn:test"))
        return status, orjson.dumps(reply), delay


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            length = int(self.headers.get("content-length", "0"))
            data = json.loads(self.rfile.read(length))
            receiver.headers.append(dict(self.headers))
            status, payload, delay = receiver.answer(data)
            if delay:
                time.sleep(delay)
            self.send_response(status)
            self.send_header("content-type", "application/fhir+json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass
    return Handler


class Servers(list):
    """Local HTTP endpoints a test starts (each on a free port, in a thread of its own), shut
    down after it."""

    def start(self, handler: type[BaseHTTPRequestHandler]) -> str:
        """Serve ``handler``; the URL of its ``$process-message``."""
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        self.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/fhir/$process-message"

    def close(self) -> None:
        for server in self:
            server.shutdown()
            server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[[], Receiver]]:
    servers = Servers()

    def start() -> Receiver:
        r = Receiver()
        r.url = servers.start(_handler(r))
        return r

    yield start
    servers.close()


# -- the hub ----------------------------------------------------------------------------------

@dataclass
class Hub:
    client: TestClient
    store: Store
    messaging: Messaging
    bus: Bus
    headers: dict[str, dict[str, str]]
    tmp: Path

    def configure(self, endpoints: dict[str, str | None], *,
                  entries: dict[str, dict[str, Any]] | None = None, **overrides: Any) -> None:
        """(Re)load the endpoints (``entries``: more of an organisation's entry; a None URL:
        it takes its messages from its queue) and settings, as a restart with new
        configuration would."""
        path = self.tmp / "endpoints.json"
        path.write_text(json.dumps({"endpoints": [
            {"organization": org, **({"url": url} if url else {"queue": True}),
             **(entries or {}).get(org, {})}
            for org, url in endpoints.items()]}))
        config = self.messaging.config.model_copy(update={"endpoints_file": path, **overrides})
        self.messaging = Messaging.from_config(config)
        self.client.app.state.messaging = self.messaging

    def deliverer(self, http: Any = None) -> Deliverer:
        return Deliverer(self.store, self.messaging.endpoints, self.messaging.config,
                         http or HttpClient(), self.bus)

    def relay(self) -> int:
        return Relay(self.store, self.bus, republish_after_seconds=3600,
                     endpoints=self.messaging.endpoints).run_once()

    def deliver(self, orgs: list[str] | None = None, timeout: float = 0.2) -> int:
        with self.store.begin(write=False) as tx:
            wanted = orgs or sorted(sql.open_orgs(tx) | set(ORGS))
        d = self.deliverer()
        try:
            self.bus.consume_batches(wanted, d.handle_batch)
            return self.bus.drain(timeout=timeout)
        finally:
            d.http.close()

    def rounds(self, until: Callable[[], bool], seconds: float = 10.0) -> None:
        """Relay and deliver until ``until()`` holds."""
        deadline = time.monotonic() + seconds
        while not until():
            assert time.monotonic() < deadline, "messaging did not settle in time"
            self.relay()
            self.deliver(timeout=0.05)

    def deliveries(self, **filters: Any) -> list[sql.Delivery]:
        with self.store.begin(write=False) as tx:
            return sql.find(tx, **filters)

    def post(self, org: str, url: str, resource: Any, **kw: Any) -> Any:
        return self.client.post(url, content=orjson.dumps(resource),
                                headers=JSON_HEADERS | self.headers[org], **kw)

    def put(self, org: str, resource: Json) -> Any:
        return self.client.put(f"/fhir/{resource['resourceType']}/{resource['id']}",
                               content=orjson.dumps(resource),
                               headers=JSON_HEADERS | self.headers[org])


def responses_to(hub: Hub, org: str, n: int) -> None:
    """``n`` messages to ``org``, one each of ``n`` SIPs, written to the outbox (responses:
    no consent to check, as these patients have none)."""
    with hub.store.begin() as tx:
        for i in range(n):
            note = builder.message("follow-up-scheduled", fhir_base="http://hub.test/fhir",
                                   sender=SOC, destinations=[builder.Party(org, "x")],
                                   focus=[f"CarePlan/plan-{i}", f"Patient/p{i}"],
                                   resources=[])
            outbox.enqueue(tx, note, [org], kind=outbox.RESPONSE,
                           sip=outbox.SipKey(f"p{i}", f"plan-{i}"))


def settled(hub: Hub) -> bool:
    """Every delivery in the outbox has its outcome."""
    return all(d.state not in sql.OPEN for d in hub.deliveries())


def worker_rounds(worker: Any, until: Callable[[], bool], seconds: float = 20.0) -> None:
    """Rounds of a messaging worker (``sip_hub.messaging.worker.Worker``) until ``until()``
    holds."""
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "messaging did not settle in time"
        worker.run_once()


# -- messages organisations send -------------------------------------------------------------

URL = "/fhir/$process-message"


def current_plan(hub: Hub) -> Json:
    with hub.store.begin(write=False) as tx:
        cur = tx.current("CarePlan", "alva-sip")
        assert cur is not None
        return cur.json()


def status_change(hub: Hub, sender: str = BUP, status: str = "completed",
                  destinations: tuple[str, ...] = (SOC,), event: str = "insats-status-changed",
                  insats: int = 0) -> Json:
    """A participant's message: its own insats in the plan changed status (``insats``: 0 is
    BUP's, 1 the school's)."""
    plan = current_plan(hub)
    plan.pop("meta")
    plan["activity"][insats]["detail"]["status"] = status
    return builder.message(event, fhir_base="https://bup.test/fhir", sender=sender,
                           destinations=[builder.Party(d, f"https://{d}.test/pm")
                                         for d in destinations],
                           focus=["CarePlan/alva-sip"], resources=[plan])


def sip_message(event: str, sender: str, *resources: Json, focus: list[str],
                destinations: tuple[str, ...] | None = None, reason: str | None = None,
                because: str | None = None) -> Json:
    """``sender``'s message of ``event`` (to ``destinations``; by default to another
    participant: the coordinator, or BUP from it); ``because`` is the MessageHeader.reason
    text."""
    dests = destinations or ((SOC,) if sender != SOC else (BUP,))
    msg = builder.message(event, fhir_base=f"https://{sender.lower()}.test/fhir", sender=sender,
                          reason=reason, focus=focus, resources=list(resources),
                          destinations=[builder.Party(d, f"https://{d.lower()}.test/pm")
                                        for d in dests])
    if because is not None:
        msg["entry"][0]["resource"].setdefault("reason", {})["text"] = because
    return msg


def with_parameters(event: str, sender: str, params: Json, *extra: Json, focus: list[str],
                    **kw: Any) -> Json:
    """A message carrying an operation's Parameters (id "in") first."""
    return sip_message(event, sender, {"resourceType": "Parameters", "id": "in", **params},
                       *extra, focus=focus, **kw)


def outcome_of(resp: Any) -> tuple[str, str]:
    """(response.code, the diagnostics of its OperationOutcomes) of a response message."""
    assert resp.status_code == 200, resp.text
    entries = resp.json()["entry"]
    oo = [e["resource"] for e in entries if e["resource"]["resourceType"] == "OperationOutcome"]
    return (entries[0]["resource"]["response"]["code"],
            " | ".join(i.get("diagnostics", "") for o in oo for i in o["issue"]))


def cache_entry(k: int, sender: str, expires: int) -> Json:
    """A row of the reliable-messaging cache (a handled message), straight to the table."""
    return {"sender_org": sender, "header_id": f"h-{k}", "bundle_id": f"b-{k}", "event": "ev",
            "state": inbox.DONE, "received": k, "expires": expires, "response_code": "ok",
            "response": b"{}", "request": None, "caller": None, "response_url": None}


def acks(r: Receiver) -> list[Json]:
    return [m for m in r.received
            if m["entry"][0]["resource"]["eventCoding"]["code"] == "acknowledgement"]


def bus_url(request: pytest.FixtureRequest) -> str:
    kind = getattr(request, "param", "memory")
    return "memory://" if kind == "memory" else request.getfixturevalue("broker_url")


@pytest.fixture
def broker(request: pytest.FixtureRequest) -> str:
    """The in-memory bus; tests that also run on RabbitMQ parametrize this fixture."""
    return bus_url(request)


@pytest.fixture
def hub(store: Store, settings: Settings, tmp_path: Path, broker: str) -> Iterator[Hub]:
    run = uuid.uuid4().hex[:10]
    config = MessagingSettings(base_url="http://hub.test", broker_url=broker,
                               exchange=f"t{run}.sip_hub", queue_prefix=f"t{run}.sip",
                               endpoints_file=tmp_path / "endpoints.json", max_attempts=3,
                               retry_base_seconds=0.01, retry_max_seconds=0.05,
                               timeout_seconds=2, sip_inactive_days=settings.sip_inactive_days)
    messaging = Messaging.from_config(config)
    app = create_app(settings, store=store)
    app.state.messaging = messaging

    bus = Bus(broker, messaging.topology, requeue_delay=0)
    with TestClient(app, raise_server_exceptions=False) as client:
        headers = {org: {"Authorization": f"Bearer {issue_token(client, store, org)}"}
                   for org in ORGS}
        headers["admin"] = {"Authorization": "Bearer " + issue_token(
            client, store, ADMIN, role="admin", personal_data=True)}
        yield Hub(client, store, messaging, bus, headers, tmp_path)
    bus.close()
    with Bus(broker, messaging.topology) as cleaner:
        cleaner.delete(ORGS)


@pytest.fixture
def world(hub: Hub) -> Hub:
    """The demo SIP written by its coordinator, in one transaction."""
    entries = [{"resource": r, "request": {"method": "PUT",
                                           "url": f"{r['resourceType']}/{r['id']}"}}
               for r in f.demo_case()]
    r = hub.client.post("/fhir", content=body({"resourceType": "Bundle", "type": "transaction",
                                                "entry": entries})["content"],
                        headers=JSON_HEADERS | hub.headers[SOC])
    assert r.status_code == 200, r.text
    return hub

