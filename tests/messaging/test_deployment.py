"""The production shape in real processes: two ``sip-hub serve`` API processes and two
``sip-hub worker`` processes against one PostgreSQL schema and one RabbitMQ, the organisations'
``$process-message`` endpoints on loopback (harness receivers, which apply a MessageHeader.id
once). Alva's SIP is written through both API processes; every write tells the other covered
organisations. Then faults: a worker killed mid-delivery, RabbitMQ stopped while a message is
on its way (its destination refuses it meanwhile, so it dies while the broker is down), a
destination answering 500 and then timing out for a while.

Afterwards each message reaches each covered organisation exactly once in effect, in the
order of the writes, or is dead-lettered with its reason (in the outbox, in the dead-letter
queue and in the workers' metric), and the counts add up. Needs PostgreSQL and RabbitMQ.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

import sip_factory as f
from conftest import PG_URL, need_service
from fhirhttp import JSON_HEADERS
from harness import BUP, OUTSIDER, SCHOOL, SOC, Receiver, receivers  # noqa: F401
from sip_hub import clients
from sip_hub.bus import REASON, Bus, Topology
from sip_hub.messaging.relay import DELIVERY
from sip_hub.store import Store
from sip_hub.store import outbox as sql
from sip_hub.store.engine import make_engine
from sip_hub.store.migrate import upgrade

pytestmark = [pytest.mark.postgres, pytest.mark.rabbitmq]

ROOT = Path(__file__).resolve().parents[2]
Json = dict[str, Any]
# The demo consent names the three organisations that take part; a write tells the other two.
COVERED = (SOC, BUP, SCHOOL)
INSATS = {SOC: f.SOCIAL_SERVICES, BUP: f.BUP, SCHOOL: f.SCHOOL}   # whose insats each writes
MAX_ATTEMPTS = 5
HUB_CONNECTIONS = "sip_hub_deploy_"   # the processes' application_name, and the run's id
METRICS_TOKEN = "deployment-scraper-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, ok: Callable[[], bool], seconds: float, dep: "Deployment | None" = None,
             every: float = 0.05) -> None:
    """Poll ``ok`` until it holds; fail after ``seconds`` (with the processes' logs)."""
    deadline = time.monotonic() + seconds
    while not ok():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds:g} s" + (dep.tails() if dep else ""))
        time.sleep(every)


def signing_keys() -> str:
    """One key ring for every API process: a token one issues, the others accept."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return json.dumps([{"kid": "deploy-test", "pem": pem}])


def peer_of(port: int, pids: list[int]) -> int | None:
    """The process among ``pids`` holding an open TCP connection to 127.0.0.1:``port``. The
    receivers close every connection after answering (HTTP/1.0), so an open one is a request
    in flight."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[3] == "01" and int(cols[2].split(":")[1], 16) == port:   # ESTABLISHED
            inodes.add(f"socket:[{cols[9]}]")
    for pid in pids:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    return pid
            except OSError:
                continue
    return None


# -- the deployment ----------------------------------------------------------------------------

@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    metrics_port: int | None = None

    def tail(self, chars: int = 3000) -> str:
        data = self.log.read_bytes()[-chars:].decode("utf-8", "replace")
        return f"\n--- {self.name} (pid {self.popen.pid}, exit {self.popen.poll()}) ---\n{data}"


@dataclass
class Deployment:
    tmp: Path
    env: dict[str, str]
    store: Store
    broker_url: str
    topology: Topology
    receivers: dict[str, Receiver]
    connections: str   # the application_name of the hub's processes' database connections
    apis: list[httpx.Client] = field(default_factory=list)
    workers: list[Proc] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)

    def _start(self, name: str, args: list[str], **env: str) -> Proc:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen([sys.executable, "-m", "sip_hub.cli", *args], cwd=ROOT,
                                     env={**self.env, **env}, stdout=out,
                                     stderr=subprocess.STDOUT)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def start_api(self) -> httpx.Client:
        port = free_port()
        proc = self._start(f"api-{len(self.apis) + 1}", ["serve", "--port", str(port)])
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

        def up() -> bool:
            assert proc.popen.poll() is None, "the API process exited" + self.tails()
            try:
                return api.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False
        wait_for(f"{proc.name} up", up, 60, self, every=0.2)
        self.apis.append(api)
        return api

    def start_worker(self) -> Proc:
        port = free_port()
        n = sum(p.name.startswith("worker") for p in self.procs) + 1
        proc = self._start(f"worker-{n}", ["worker"], SIP_HUB_MESSAGE_METRICS_PORT=str(port))
        proc.metrics_port = port
        wait_for(f"{proc.name} serving its metrics", lambda: self.scrape(proc) is not None,
                 60, self, every=0.2)
        # Only to the scraper that has the deployment's metrics token (SIP_HUB_METRICS_TOKEN)
        refused = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)
        assert refused.status_code == 401 and b"sip_hub_" not in refused.content
        self.workers.append(proc)
        return proc

    def kill(self, proc: Proc) -> None:
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(timeout=10)
        self.workers.remove(proc)

    def live_workers(self) -> list[Proc]:
        return [w for w in self.workers if w.popen.poll() is None]

    def scrape(self, proc: Proc) -> float | None:
        """The worker's dead-letter counter (None while it does not answer)."""
        assert proc.popen.poll() is None, f"{proc.name} exited" + self.tails()
        try:
            page = httpx.get(f"http://127.0.0.1:{proc.metrics_port}/metrics", timeout=2,
                             headers={"Authorization": f"Bearer {METRICS_TOKEN}"}).text
        except httpx.TransportError:
            return None
        return sum(s.value for fam in text_string_to_metric_families(page)
                   if fam.name == "sip_hub_message_dead_letters" for s in fam.samples
                   if s.name.endswith("_total"))

    def cut_connections(self) -> int:
        """Every database connection of the hub's processes ended by the server (what a
        PostgreSQL restart or fail-over does to them); how many there were."""
        with self.store.begin() as tx:
            return int(tx.conn.execute(text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name"), {"name": self.connections}).scalar_one())

    def deliveries(self) -> list[sql.Delivery]:
        with self.store.begin(write=False) as tx:
            return sql.find(tx, limit=100_000)

    def tails(self) -> str:
        return "".join(p.tail() for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.popen.poll() is None:
                p.popen.terminate()
        for p in self.procs:
            try:
                p.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait(timeout=10)
        for api in self.apis:
            api.close()


@pytest.fixture
def deployment(tmp_path: Path, broker_url: str,
               receivers: Callable[[], Receiver]) -> Iterator[Deployment]:  # noqa: F811
    """A fresh PostgreSQL schema and RabbitMQ names of its own, receivers for the three
    organisations and an outsider; the processes are started by the test."""
    need_service("PostgreSQL", PG_URL)
    run = uuid.uuid4().hex[:10]
    schema = f"deploy_{run}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    db_url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    engine = make_engine(db_url)
    upgrade(engine)   # what `sip-hub migrate` does once before the processes start
    got = {org: receivers() for org in (*COVERED, OUTSIDER)}
    endpoints = tmp_path / "endpoints.json"
    # SCHOOL's system answers within 1.5 s or not at all (the timeout fault below).
    endpoints.write_text(json.dumps({"endpoints": [
        {"organization": org, "url": r.url, **({"timeoutSeconds": 1.5} if org == SCHOOL else {})}
        for org, r in got.items()]}))
    topology = Topology(f"t{run}.sip_hub", f"t{run}.sip")
    # The hub's processes name their connections (the test's own do not), so that a test
    # can cut exactly theirs, as a PostgreSQL restart or fail-over would.
    connections = f"{HUB_CONNECTIONS}{run}"
    env = {**os.environ,
           "SIP_HUB_ENV": "test",
           "SIP_HUB_DATABASE_URL": f"{db_url}&application_name={connections}",
           "SIP_HUB_BROKER_URL": broker_url, "SIP_HUB_AUTO_MIGRATE": "false",
           "SIP_HUB_JWT_KEYS": signing_keys(), "SIP_HUB_DATA_DIR": str(tmp_path / "var"),
           "SIP_HUB_MAPPINGS_DIR": str(ROOT / "mappings"), "SIP_HUB_BASE_URL": "http://hub.test",
           "SIP_HUB_MESSAGE_EXCHANGE": topology.exchange,
           "SIP_HUB_MESSAGE_QUEUE_PREFIX": topology.prefix,
           "SIP_HUB_MESSAGE_ENDPOINTS_FILE": str(endpoints),
           "SIP_HUB_MESSAGE_MAX_ATTEMPTS": str(MAX_ATTEMPTS),
           "SIP_HUB_MESSAGE_RETRY_BASE_SECONDS": "0.2", "SIP_HUB_MESSAGE_RETRY_MAX_SECONDS": "1",
           "SIP_HUB_MESSAGE_TIMEOUT_SECONDS": "5", "SIP_HUB_MESSAGE_POLL_SECONDS": "0.1",
           "SIP_HUB_DB_POOL_SIZE": "4", "SIP_HUB_METRICS_TOKEN": METRICS_TOKEN}
    dep = Deployment(tmp_path, env, Store(engine), broker_url, topology, got, connections)
    try:
        yield dep
    finally:
        dep.stop()
        print(dep.tails())   # shown with a failure
        try:
            with Bus(broker_url, topology) as bus:
                bus.delete([*COVERED, OUTSIDER])
        finally:
            engine.dispose()
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


# -- the SIP, written through the API processes ------------------------------------------------

def message_key(message: Json) -> tuple[str, str]:
    """(event, version of the plan it carries): which write a message tells about."""
    header = message["entry"][0]["resource"]
    plan = next(e["resource"] for e in message["entry"]
                if e["resource"]["resourceType"] == "CarePlan")
    return header["eventCoding"]["code"], plan["meta"]["versionId"]


@dataclass
class Traffic:
    """Alva's SIP, written by its organisations through the API processes in turn; remembers
    what each covered organisation must be told, in order."""

    dep: Deployment
    tokens: dict[str, str] = field(default_factory=dict)
    expected: dict[str, list[tuple[str, str]]] = field(
        default_factory=lambda: {org: [] for org in COVERED})
    writes: int = 0

    def login(self) -> None:
        """A client per organisation; its token comes from the first API process and is
        used on all of them."""
        for org in COVERED:
            creds = clients.create_client(self.dep.store, org=org, scope="system/*.cruds")
            r = self.dep.apis[0].post("/auth/token", data={"grant_type": "client_credentials"},
                                      auth=(creds["client_id"], creds["client_secret"]))
            assert r.status_code == 200, r.text
            self.tokens[org] = r.json()["access_token"]

    def _headers(self, org: str) -> dict[str, str]:
        return JSON_HEADERS | {"Authorization": f"Bearer {self.tokens[org]}"}

    def _api(self) -> httpx.Client:
        api = self.dep.apis[self.writes % len(self.dep.apis)]
        self.writes += 1
        return api

    def _told(self, writer: str, event: str, version: str) -> None:
        for org in COVERED:
            if org != writer:
                self.expected[org].append((event, version))

    def create(self) -> None:
        """The coordinator writes the whole established SIP in one transaction."""
        entries = [{"resource": r, "request": {"method": "PUT",
                                               "url": f"{r['resourceType']}/{r['id']}"}}
                   for r in f.demo_case()]
        r = self._api().post("/fhir", content=orjson.dumps(
            {"resourceType": "Bundle", "type": "transaction", "entry": entries}),
            headers=self._headers(SOC))
        assert r.status_code == 200, r.text
        self._told(SOC, "plan-established", "1")

    def update(self, writer: str | None = None, *, unavailable: list[int] | None = None
               ) -> str:
        """An organisation moves its own insats between in progress and on hold (each is an
        insats-status-changed to the others); returns the plan's new version. With
        ``unavailable``, a request answered 503 (the database unavailable: nothing applied)
        is sent again, as a client would, and counted there."""
        writer = writer or COVERED[self.writes % len(COVERED)]
        api = self._api()
        r = self._send(unavailable, lambda: api.get("/fhir/CarePlan/alva-sip",
                                                     headers=self._headers(writer)))
        assert r.status_code == 200, r.text
        plan = r.json()
        (mine,) = [a["detail"] for a in plan["activity"]
                   if a["detail"]["performer"][0]["reference"] == INSATS[writer]]
        mine["status"] = "on-hold" if mine["status"] == "in-progress" else "in-progress"
        etag = r.headers["etag"]
        r = self._send(unavailable, lambda: api.put(
            "/fhir/CarePlan/alva-sip", content=orjson.dumps(plan),
            headers=self._headers(writer) | {"If-Match": etag}))
        assert r.status_code == 200, r.text
        version = str(r.json()["meta"]["versionId"])
        self._told(writer, "insats-status-changed", version)
        return version

    @staticmethod
    def _send(unavailable: list[int] | None, request: Callable[[], httpx.Response]
              ) -> httpx.Response:
        r = request()
        if unavailable is None:
            return r
        for _ in range(50):
            if r.status_code != 503:
                break
            outcome = r.json()
            assert outcome["resourceType"] == "OperationOutcome", r.text
            assert outcome["issue"][0]["code"] == "transient", r.text
            unavailable.append(r.status_code)
            time.sleep(0.1)
            r = request()
        return r

    def total(self) -> int:
        return sum(len(v) for v in self.expected.values())


@pytest.fixture
def traffic(deployment: Deployment) -> Traffic:
    """Two API processes and two workers, the SIP created and its clients logged in."""
    deployment.start_api()
    deployment.start_api()
    deployment.start_worker()
    deployment.start_worker()
    t = Traffic(deployment)
    t.login()
    t.create()
    return t


def settled(t: Traffic) -> Callable[[], bool]:
    def done() -> bool:
        rows = t.dep.deliveries()
        return len(rows) == t.total() and all(d.state not in sql.OPEN for d in rows)
    return done


class Fault:
    """What a receiver does with the next requests: None answers normally, else a step as in
    ``Receiver.script`` (a status, or status, response code and delay). While ``hold`` is
    clear, a request waits (at most a minute) before it is answered."""

    def __init__(self) -> None:
        self.step: Any = None
        self.hold = threading.Event()
        self.hold.set()

    def __call__(self, message: Json) -> Any:
        self.hold.wait(60)
        return self.step


# -- the checks --------------------------------------------------------------------------------

def check_exactly_once(t: Traffic) -> list[sql.Delivery]:
    """Every expected message is, for each covered organisation, delivered and applied once,
    in the order of the writes, or dead; nothing else arrived anywhere. Returns the dead."""
    rows = t.dep.deliveries()
    assert {d.state for d in rows} <= {sql.DELIVERED, sql.DEAD}
    dead: list[sql.Delivery] = []
    for org in COVERED:
        mine = [d for d in rows if d.dest_org == org]          # in stream order (seq)
        assert [message_key(orjson.loads(d.content)) for d in mine] == t.expected[org], org
        delivered = [d.message_id for d in mine if d.state == sql.DELIVERED]
        dead += [d for d in mine if d.state == sql.DEAD]
        r = t.dep.receivers[org]
        with r.lock:
            received, applied = list(r.received), list(r.applied)
        # Applied once each, in the writes' order; a dead message was never applied.
        assert applied == delivered, org
        assert len(applied) + sum(d.dest_org == org for d in dead) == len(t.expected[org])
        # Anything received again (a redelivery) carries the header id of a message that was
        # sent to this organisation, with the same content.
        sent = {d.message_id: orjson.loads(d.content) for d in mine}
        for m in received:
            assert m == sent[m["entry"][0]["resource"]["id"]], org
    assert t.dep.receivers[OUTSIDER].received == []           # consent covers it not
    assert len(rows) == t.total()
    return dead


def check_dead_letters(t: Traffic, dead: list[sql.Delivery]) -> None:
    """The dead-letter queue holds each dead delivery once with its reason, and the workers'
    metric counted each."""
    with Bus(t.dep.broker_url, t.dep.topology) as bus:
        taken = bus.take_dead()
    assert sorted(m.headers[DELIVERY] for m in taken) == sorted(d.id for d in dead)
    reasons = {d.id: d.last_error for d in dead}
    for m in taken:
        assert m.headers[REASON] == reasons[m.headers[DELIVERY]]
    counted = [t.dep.scrape(w) for w in t.dep.live_workers()]
    assert sum(c or 0 for c in counted) == len(dead), counted


# -- the tests ---------------------------------------------------------------------------------

def test_two_api_processes_and_two_workers_deliver_each_message_once_in_order(
        traffic: Traffic) -> None:
    for _ in range(24):
        traffic.update()
    wait_for("every delivery settled", settled(traffic), 60, traffic.dep)
    assert check_exactly_once(traffic) == []
    for org in COVERED:   # without faults nothing is even sent twice
        ids = traffic.dep.receivers[org].header_ids
        assert len(ids) == len(set(ids)) == len(traffic.expected[org])
    check_dead_letters(traffic, [])


def test_killed_worker_broker_restart_and_failing_destination_lose_and_double_nothing(
        traffic: Traffic) -> None:
    dep = traffic.dep
    faults = {org: Fault() for org in COVERED}
    for org, fault in faults.items():
        dep.receivers[org].fail_when = fault
    bup, school = dep.receivers[BUP], dep.receivers[SCHOOL]
    for _ in range(6):
        traffic.update()
    wait_for("the first writes settled", settled(traffic), 60, dep)

    # 1. A worker dies (SIGKILL) while BUP's system is slowly applying a message to it.
    faults[BUP].step = (200, "ok", 3.0)
    version = traffic.update(SOC)
    wait_for("BUP received the message", lambda: any(
        message_key(m)[1] == version for m in bup.received), 20, dep)
    in_flight = next(m["entry"][0]["resource"]["id"] for m in bup.received
                     if message_key(m)[1] == version)
    port = int(bup.url.split(":")[2].split("/")[0])
    busy = peer_of(port, [w.popen.pid for w in dep.workers])
    assert busy is not None, "no worker is delivering to BUP" + dep.tails()
    dep.kill(next(w for w in dep.workers if w.popen.pid == busy))
    faults[BUP].step = None
    dep.start_worker()
    for _ in range(4):
        traffic.update()
    wait_for("the message delivered again", lambda: bup.header_ids.count(in_flight) >= 2,
             30, dep)

    # 2. RabbitMQ stops while a message is on its way to BUP, whose system then refuses it:
    #    the worker records it dead but cannot reach the dead-letter queue. The API processes
    #    keep accepting writes meanwhile.
    wait_for("the writes so far settled", settled(traffic), 60, dep)
    faults[BUP].step = 400
    faults[BUP].hold.clear()
    version = traffic.update(SOC)
    traffic.update(BUP)
    wait_for("BUP holds the message", lambda: any(
        message_key(m)[1] == version for m in bup.received), 20, dep)
    refused = next(m["entry"][0]["resource"]["id"] for m in bup.received
                   if message_key(m)[1] == version)

    def worker_lost_the_dead_letter() -> bool:
        return any(f"(declare {dep.topology.dead_queue})" in text or "(dead-letter)" in text
                   for text in (w.log.read_text("utf-8", "replace") for w in dep.workers))
    try:
        subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True,
                       timeout=60)
        for _ in range(3):
            traffic.update()
        faults[BUP].hold.set()
        wait_for("the refused message dead in the outbox", lambda: any(
            d.message_id == refused and d.dest_org == BUP and d.state == sql.DEAD
            for d in dep.deliveries()), 20, dep)
        wait_for("the worker failing to dead-letter it", worker_lost_the_dead_letter, 20, dep)
    finally:
        faults[BUP].hold.set()
        # BUP answers normally again before the broker is back: the workers reconnect while
        # `rabbitmqctl start_app` is still returning, and a message published then (written
        # while the broker was down) reached BUP still refusing (1 run in 6 failed so).
        faults[BUP].step = None
        subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True,
                       timeout=120)

    def broker_up() -> bool:
        try:
            with Bus(dep.broker_url, dep.topology) as bus:
                bus.queue_size(SCHOOL)
            return True
        except Exception:  # noqa: BLE001 (any failure: not up yet)
            return False
    wait_for("RabbitMQ back", broker_up, 60, dep, every=0.5)
    for _ in range(3):
        traffic.update()

    # 3. SCHOOL answers 500 until a message to it is dead, then times out for a while.
    faults[SCHOOL].step = 500
    for _ in range(3):
        traffic.update()
    wait_for("a message to SCHOOL dead-lettered", lambda: any(
        d.dest_org == SCHOOL and d.state == sql.DEAD for d in dep.deliveries()), 60, dep)
    before = len(school.received)
    faults[SCHOOL].step = (503, "ok", 3.0)    # answers long after the hub's 1.5 s timeout
    traffic.update(BUP)
    wait_for("SCHOOL timed out twice", lambda: len(school.received) >= before + 2 and any(
        "No answer from" in (d.last_error or "") for d in dep.deliveries()
        if d.dest_org == SCHOOL), 60, dep)
    faults[SCHOOL].step = None
    for _ in range(3):
        traffic.update()

    wait_for("every delivery settled", settled(traffic), 90, dep)
    dead = check_exactly_once(traffic)
    assert bup.applied.count(in_flight) == 1 and bup.header_ids.count(in_flight) >= 2
    assert {d.dest_org for d in dead} == {BUP, SCHOOL}
    for d in dead:
        assert d.last_error, d
        if d.dest_org == BUP:
            assert (d.message_id, d.last_error) == (refused, f"HTTP 400 from {bup.url}: said 400")
        else:
            assert d.last_error.startswith(f"Gave up after {MAX_ATTEMPTS} attempts: ")
            assert "HTTP 500" in d.last_error or "No answer from" in d.last_error
    check_dead_letters(traffic, dead)


def test_database_connections_cut_mid_traffic_lose_and_double_nothing(traffic: Traffic) -> None:
    """Every connection the hub's processes hold is ended by PostgreSQL (as a restart or a
    fail-over ends them) while a message is being delivered to BUP and the API processes are
    idle: a request that meets a cut connection is answered 503 with a transient
    OperationOutcome and applies nothing, a retry goes through, the workers carry on, and
    afterwards every message has reached each covered organisation exactly once in effect, in
    order, with nothing dead."""
    dep = traffic.dep
    bup = dep.receivers[BUP]
    fault = Fault()
    bup.fail_when = fault
    for _ in range(4):
        traffic.update()
    wait_for("the first writes settled", settled(traffic), 60, dep)

    fault.hold.clear()  # BUP's system takes its time with the next message
    version = traffic.update(SOC)
    wait_for("BUP holds the message", lambda: any(
        message_key(m)[1] == version for m in bup.received), 20, dep)
    cut = dep.cut_connections()
    assert cut >= len(dep.apis) + len(dep.workers), cut  # (each process held one at least)
    fault.hold.set()

    unavailable: list[int] = []
    for _ in range(6):
        traffic.update(unavailable=unavailable)
    assert unavailable, "no request met a cut connection"  # (the pools held the cut ones)
    wait_for("every delivery settled", settled(traffic), 90, dep)
    assert check_exactly_once(traffic) == []
    assert len(dep.live_workers()) == 2, dep.tails()
    check_dead_letters(traffic, [])

    # Cut again with nothing under way: the next writes are told as before.
    assert dep.cut_connections() >= 1
    for _ in range(3):
        traffic.update(unavailable=unavailable)
    wait_for("the last writes settled", settled(traffic), 90, dep)
    assert check_exactly_once(traffic) == []
