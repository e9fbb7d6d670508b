"""sip_hub end-to-end messaging benchmark: ``$process-message`` in, four organisations out.

This is a benchmark, not a test: it measures and reports, it does not assert.

Run from the repository root::

    .venv/bin/pip install -e '.[bench]'          # aiohttp for the client and the receiver
    .venv/bin/python bench/messaging.py           # full run, ~5 minutes on 2 cores
    .venv/bin/python bench/messaging.py --quick   # smoke run, ~1-2 minutes

What it measures, per backend: the embedded default (SQLite in a temporary directory, the
in-process bus, the hub's built-in messaging worker in each API process) and the production
shape (PostgreSQL in a fresh schema of the run, RabbitMQ with queues of the run's own names,
``sip-hub worker`` processes beside the API; skipped with a note when either is unreachable):

1. The receiver (``bench/receiver.py``, its own process): every receiving organisation's
   ``$process-message`` endpoint, configured for the hub in an endpoints file of the run. It
   records when each message arrived and answers an ``ok`` acknowledgement.
2. The hub as real processes: ``sip-hub serve --workers N`` (and ``sip-hub worker`` x M on
   PostgreSQL + RabbitMQ) on a free loopback port (``bench/run.py`` starts and stops them).
   By default N = 2 and M = 1, the shape of ``docker-compose.yml`` on one machine of 2 cores:
   a second worker there did no more messages a second and cost more CPU per message (its
   rounds and delivery batches split what one worker does; bench/HISTORY.md, "twelfth").
3. ``--sips`` SIPs set up over HTTP as their coordinator (the social services) would: an adult
   patient, the consent in force covering the coordinator and four organisations, goals, a
   draft plan; ``$transition`` to kartläggning, then ``$invite`` of the four, which makes the
   meeting and one invitation Task each. The set-up's own messages are delivered before the
   measurement starts.
4. Load from a separate process (``bench/msgload.py``): the coordinator's messages that a
   SIP meeting (the invitation's) moved (``meeting-rescheduled``: the Appointment with a new
   time), round robin over the SIPs, one at a time per SIP. It is the invitation-side event
   ``$process-message`` applies as a plain write: the Appointment is stored through the write
   pipeline (access, profiles, process rules, audit) and the message is routed by consent,
   one delivery to each of the four organisations, published by the relay and POSTed to the
   receiver. (An ``invitation`` message runs ``$invite`` itself: a new meeting and four
   invitation Tasks, each told to every participant, sixteen deliveries per message.) First
   a closed loop (``--concurrency`` connections, as fast as the hub answers), then an open
   loop at ``--rate-fraction`` (half) of the rate the closed loop sustained, then one at
   150/s, the rate the latency target names (p99 under 100 ms at half of 300/s). Reported:
   messages accepted, delivered in the window and sustained per second (the window's
   messages that reached all four, over the time until the last did), latency from POST
   (open loop: from when the message was due) to the last of the four receipts, the CPU
   shares of every party and the hub's CPU (with database and broker) per message.
5. The floor, per backend, in the same run, in a process of its own, on the idle hub before the
   load and again after it, the better of the two (rates: the fastest of five slices; CPU
   per message: the cheapest of five slices, as the machine's other load varies): per
   message, the Bundle checked by ``messaging.parser.parse`` (fhir.resources validation as
   published, in a process of its own where the hub leaves fhir_core as it is:
   ``sip_hub.fhir.published``; required bindings, the message rules; its rate with the
   hub's changes to fhir_core's validation, which the hub runs, is reported beside it),
   one INSERT (``store.outbox.insert_message``, its own
   transaction, in a database of its own) and one publish (``Bus.publish``: the memory bus, or
   RabbitMQ with publisher confirms). The cost ratio is the hub's CPU per delivered message
   (hub processes, database, broker) over the floor's (this process, database, broker).
6. A Markdown table on stdout, also written to ``bench/results/messaging.md``, everything as
   JSON in ``bench/results/messaging.json``, with the machine and the date.

Targets (issue 4): at least 300 messages/s on 2 cores, p99 under 100 ms at half that rate,
and no more than 2x the floor's cost per message.

Everything started is stopped (in ``finally``), every wait is bounded, all traffic stays on
127.0.0.1, and the run's RabbitMQ queues and PostgreSQL schemas are deleted at the end.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.exc import OperationalError

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import payloads  # noqa: E402
import run  # noqa: E402
import sysinfo  # noqa: E402
from run import Backend, BenchError, log  # noqa: E402

from sip_hub.bus import Bus, BusUnavailable, Envelope, Topology  # noqa: E402
from sip_hub.errors import SipHubError  # noqa: E402
from sip_hub.fhir.dates import now_utc, to_us  # noqa: E402
from sip_hub.fhir import published  # noqa: E402
from sip_hub.messaging import parser  # noqa: E402
from sip_hub.store import Store  # noqa: E402
from sip_hub.store import outbox as sql  # noqa: E402
from sip_hub.store.engine import make_engine  # noqa: E402
from sip_hub.store.migrate import upgrade  # noqa: E402

Json = dict[str, Any]

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
RATE_TARGET = 300.0          # messages/s, accepted and delivered to all four, on 2 cores
P99_TARGET_MS = 100.0        # at half the target rate:
P99_RATE = RATE_TARGET / 2   # messages/s of the open loop the latency target is checked at
COST_TARGET = 2.0            # the hub's CPU per message over the floor's
FLOOR_SLICES = 5             # the floor's CPU per message: the cheapest of these slices
SETTLE_SECONDS = 300.0       # bound on waiting for the set-up's messages to be delivered
READY_SECONDS = 30.0


@dataclass(frozen=True, slots=True)
class Plan:
    """What one run does; ``--quick`` shrinks durations."""
    quick: bool
    warmup: float
    duration: float
    floor_seconds: float
    sips: int
    concurrency: int
    workers: int              # API processes
    msg_workers: int          # `sip-hub worker` processes (RabbitMQ)
    rate_fraction: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        return cls(
            quick=quick,
            warmup=args.warmup if args.warmup is not None else (1.0 if quick else 5.0),
            duration=args.duration if args.duration is not None else (4.0 if quick else 30.0),
            floor_seconds=1.0 if quick else 5.0,
            sips=args.sips if args.sips is not None else (40 if quick else 100),
            concurrency=args.concurrency, workers=args.workers, msg_workers=args.msg_workers,
            rate_fraction=args.rate_fraction)


@dataclass(slots=True)
class Floor:
    validate_ops: float = 0.0
    hub_validate_ops: float = 0.0  # the parser with the hub's changes to fhir_core
    insert_ops: float = 0.0
    publish_ops: float = 0.0
    ops: float = 0.0            # all three per message
    cpu_ms_per_msg: float = 0.0  # this process + database + broker, per message
    message_bytes: int = 0

    def best(self, other: Floor) -> Floor:
        """The better of two measurements, part by part (before and after the load: the
        machine's other load changes in between)."""
        return Floor(max(self.validate_ops, other.validate_ops),
                     max(self.hub_validate_ops, other.hub_validate_ops),
                     max(self.insert_ops, other.insert_ops),
                     max(self.publish_ops, other.publish_ops), max(self.ops, other.ops),
                     min(self.cpu_ms_per_msg, other.cpu_ms_per_msg), self.message_bytes)


@dataclass(slots=True)
class BackendResult:
    name: str
    server_version: str = ""
    broker: str = ""
    processes: str = ""
    hub_commit: str | None = None
    floor: Floor = field(default_factory=Floor)
    setup_seconds: float = 0.0
    settle_seconds: float = 0.0
    phases: list[Json] = field(default_factory=list)
    deliveries: dict[str, int] = field(default_factory=dict)
    skipped: str | None = None
    server_log: list[str] = field(default_factory=list)
    server_errors: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- the broker

def broker_reachable(url: str) -> bool:
    """Whether the broker takes a queue declaration (one of a name of its own, deleted)."""
    name = f"bench-probe-{uuid.uuid4().hex[:8]}"
    topology = Topology(name, name)
    try:
        with Bus(url, topology, connect_timeout=3) as bus:
            bus.declare("probe")
            bus.delete(["probe"])
    except BusUnavailable as exc:
        log(f"the broker at {url.split('@')[-1]} is unreachable: {exc.diagnostics}")
        return False
    return True


def rabbitmq_version() -> str:
    """The installed RabbitMQ server's version, when the package manager knows it."""
    try:
        out = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "rabbitmq-server"],
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return "RabbitMQ"
    return f"RabbitMQ {out.stdout.strip()}"


# --------------------------------------------------------------------------- the floor

def measure_floor(store_url: str, bus_url: str, topology: Topology, message: bytes,
                  seconds: float, db_comm: str | None, broker_comm: str | None) -> Floor:
    """Validate, insert and publish one message in a tight loop (see the module docstring);
    run in the published process (``floor_as_published``)."""
    engine = make_engine(store_url, pool_size=1)
    upgrade(engine)
    store = Store(engine)
    bus = Bus(bus_url, topology)
    org = payloads.RECEIVERS[0][1]
    out = Floor(message_bytes=len(message))

    def validate() -> None:
        parser.parse(orjson.loads(message))

    def insert() -> None:
        with store.begin() as tx:
            sql.insert_message(tx, message_id=str(uuid.uuid4()), event="meeting-rescheduled",
                               kind=sql.NOTIFICATION, patient_id="floor", careplan_id="floor",
                               content=message, now=to_us(now_utc()))

    def publish() -> None:
        bus.publish(org, Envelope(message, str(uuid.uuid4())))

    def all_three() -> None:
        validate()
        insert()
        publish()

    try:
        validate()  # raises if the message is not one the hub accepts
        out.validate_ops = run.best_rate(seconds, validate)
        out.insert_ops = run.best_rate(seconds, insert)
        out.publish_ops = run.best_rate(seconds, publish)
        bus.delete([org])  # what the publishes left in the queue
        # The CPU of each of FLOOR_SLICES slices, the cheapest taken: like the best rate, it
        # is the closest to the work itself when other load on a shared machine slows the
        # caches and cores (on this machine, single loops varied by 2 x from run to run).
        best_cpu, best_ops = float("inf"), 0.0
        for _ in range(FLOOR_SLICES):
            before = (time.process_time(), _ticks(db_comm), _ticks(broker_comm))
            n, start = 0, time.perf_counter()
            while time.perf_counter() - start < seconds / FLOOR_SLICES * 2 or n == 0:
                all_three()
                n += 1
            wall = time.perf_counter() - start
            cpu = (time.process_time() - before[0]
                   + _delta(db_comm, before[1]) + _delta(broker_comm, before[2]))
            best_cpu, best_ops = min(best_cpu, cpu / n), max(best_ops, n / wall)
        out.cpu_ms_per_msg = round(1000 * best_cpu, 3)
        out.ops = best_ops
    finally:
        bus.delete([org])
        bus.close()
        engine.dispose()
    return out


def floor_as_published(store_url: str, bus_url: str, topology: Topology, message: bytes,
                       seconds: float, db_comm: str | None, broker_comm: str | None) -> Floor:
    """The floor measured in a process running fhir.resources as published, and beside it
    the parser's rate in this one, with the hub's changes to fhir_core's validation."""
    with published.process() as library:
        measured = Floor(**library.submit(_measure_floor_fields, store_url, bus_url, topology,
                                          message, seconds, db_comm, broker_comm).result())
    measured.hub_validate_ops = run.best_rate(
        seconds, lambda: parser.parse(orjson.loads(message)))
    return measured


def _measure_floor_fields(*args: Any) -> Json:
    return asdict(measure_floor(*args))


def _ticks(comm: str | None) -> dict[int, int] | None:
    return sysinfo.named_cpu_ticks(comm) if comm else None


def _delta(comm: str | None, before: dict[int, int] | None) -> float:
    if comm is None or before is None:
        return 0.0
    return sysinfo.named_cpu_delta(before, sysinfo.named_cpu_ticks(comm))


# --------------------------------------------------------------------------- processes

def _answers(url: str) -> bool:
    try:
        return run.http("GET", url, timeout=2)[0] == 200
    except (urllib.error.URLError, OSError):
        return False


@contextmanager
def receiver_process(log_path: Path) -> Iterator[tuple[str, int]]:
    """The receiver on a free port: (its base URL, its pid)."""
    port = run.free_port()
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, str(BENCH / "receiver.py"), str(port)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + READY_SECONDS
            while not _answers(f"{base}/_receipts?since=0"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchError("the receiver did not start:\n"
                                     + log_path.read_text(errors="replace")[-2000:])
                time.sleep(0.1)
            yield base, proc.pid
        finally:
            run.stop_process(proc)


@contextmanager
def worker_processes(n: int, env: dict[str, str], cwd: Path, tmp: Path,
                     profile: Path | None = None) -> Iterator[list[tuple[int, Path]]]:
    """``n`` ``sip-hub worker`` processes: [(pid, log path)]; with ``profile``, each under
    cProfile, writing ``worker-<i>.prof`` there when it stops."""
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for i in range(n):
            log_path = tmp / f"worker-{i}.log"
            cmd = [str(run.SIP_HUB_EXE), "worker"]
            if profile is not None:
                profile.mkdir(parents=True, exist_ok=True)
                cmd = [sys.executable, "-m", "cProfile", "-o",
                       str(profile / f"worker-{i}.prof"), *cmd]
            with open(log_path, "wb") as out:
                procs.append((subprocess.Popen(
                    cmd, env=env, stdout=out,
                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd,
                    start_new_session=True), log_path))
        yield [(p.pid, path) for p, path in procs]
    finally:
        for p, _ in procs:
            run.stop_process(p)


# --------------------------------------------------------------------------- set-up

class _Http:
    """Just enough of a test client for ``tests/sip_process.py``'s helpers, over the network."""

    @dataclass(frozen=True, slots=True)
    class Response:
        status_code: int
        content: bytes

        @property
        def text(self) -> str:
            return self.content.decode("utf-8", "replace")

        def json(self) -> Any:
            return orjson.loads(self.content)

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def post(self, path: str, *, content: bytes, headers: dict[str, str]) -> Response:
        status, body = run.http("POST", f"{self.base_url}{path}", body=content, headers=headers)
        return self.Response(status, body)


def setup_sips(base_url: str, token: str, n: int, endpoints: dict[str, str]) -> list[str]:
    """``n`` SIPs invited to their meetings over HTTP, as the coordinator would; returns one
    message template per SIP (its meeting rescheduled)."""
    fhir = f"{base_url}/fhir"
    auth = {"Authorization": f"Bearer {token}"}
    pids = [f"msg-p{k}" for k in range(n)]
    batches = [payloads.messaging_shared_resources()] + [
        [r for k in range(start, min(n, start + 10)) for r in payloads.messaging_sip(pids[k], k)]
        for start in range(0, n, 10)]
    run.post_transactions(fhir, token, batches)
    client = _Http(base_url)
    proc = payloads.proc
    templates = []
    for k, pid in enumerate(pids):
        plan = f"{pid}-sip"
        r = proc.transition(client, auth, plan, "kartlaggning")
        if r.status_code != 200:
            raise BenchError(f"$transition of {plan} failed ({r.status_code}): {r.text[:500]}")
        r = proc.post(client, f"CarePlan/{plan}/$invite", auth, payloads.invite_parameters())
        if r.status_code != 200:
            raise BenchError(f"$invite of {plan} failed ({r.status_code}): {r.text[:500]}")
        meeting = proc.one(r.json(), "appointment")
        templates.append(payloads.reschedule_message(meeting, endpoints).decode())
    return templates


def settle(store: Store, seconds: float = SETTLE_SECONDS) -> float:
    """Wait until no delivery is pending or published (the set-up's messages are out);
    BenchError when one is dead (the receiver refused it) or time runs out."""
    start = time.monotonic()
    while True:
        with store.begin(write=False) as tx:
            counts = sql.counts(tx)
            if counts.get(sql.DEAD):
                dead = sql.find(tx, states=[sql.DEAD], limit=1)
                raise BenchError(f"set-up messages were dead-lettered: {dead[0].last_error}")
        if not any(counts.get(s) for s in sql.OPEN):
            return time.monotonic() - start
        if time.monotonic() - start > seconds:
            raise BenchError(f"the set-up's messages were not delivered within {seconds:g} s: "
                             f"{counts}")
        time.sleep(0.2)


def delivery_counts(store: Store) -> dict[str, int]:
    with store.begin(write=False) as tx:
        return sql.counts(tx)


# --------------------------------------------------------------------------- one backend

@dataclass(frozen=True, slots=True)
class Shape:
    """How the hub runs on a backend."""
    broker_url: str
    broker: str               # what it is, for the report
    broker_comm: str | None   # process name of the broker, for CPU accounting
    msg_workers: int          # separate `sip-hub worker` processes (0: the built-in worker)


def bench_backend(backend: Backend, shape: Shape, plan: Plan, tmp: Path,
                  floor_url: str, profile: Path | None = None) -> BackendResult:
    """Measure one backend; a failure is reported in the result, not raised."""
    result = BackendResult(backend.name, backend.server_version, shape.broker)
    try:
        _bench_backend(backend, shape, plan, tmp, floor_url, result, profile)
    except (BenchError, SipHubError, OperationalError) as exc:
        log(f"{backend.name}: FAILED: {exc}")
        result.skipped = f"failed: {str(exc).splitlines()[0]}"
    return result


def _bench_backend(backend: Backend, shape: Shape, plan: Plan, tmp: Path, floor_url: str,
                   result: BackendResult, profile: Path | None) -> None:
    run_id = uuid.uuid4().hex[:10]
    topology = Topology(f"bench{run_id}.sip_hub", f"bench{run_id}.sip")
    orgs = [hsa for _, hsa in payloads.RECEIVERS]
    backend.data_dir.mkdir(parents=True, exist_ok=True)
    logs: list[Path] = []
    engine = make_engine(backend.url)
    try:
        with ExitStack() as stack:
            receiver_url, receiver_pid = stack.enter_context(
                receiver_process(tmp / f"receiver-{backend.name}.log"))
            endpoints = {hsa: f"{receiver_url}/{hsa}/$process-message" for hsa in orgs}
            upgrade(engine)
            store = Store(engine)
            client = run.register_client(store)
            endpoints_file = tmp / f"endpoints-{backend.name}.json"
            endpoints_file.write_bytes(orjson.dumps({"endpoints": [
                {"organization": org, "url": url} for org, url in endpoints.items()]}))
            env = {"SIP_HUB_BROKER_URL": shape.broker_url,
                   "SIP_HUB_MESSAGE_ENDPOINTS_FILE": str(endpoints_file),
                   "SIP_HUB_MESSAGE_EXCHANGE": topology.exchange,
                   "SIP_HUB_MESSAGE_QUEUE_PREFIX": topology.prefix}
            hub_log = tmp / f"hub-{backend.name}.log"
            logs.append(hub_log)
            result.hub_commit = sysinfo.git_commit(REPO)
            if backend.name == "postgres":
                stack.enter_context(run.autoanalyze(engine))
            stack.callback(_delete_queues, shape.broker_url, topology, orgs)
            server = stack.enter_context(run.hub_server(backend, plan.workers, hub_log,
                                                        extra_env=env))
            workers = stack.enter_context(worker_processes(
                shape.msg_workers, run.hub_env(backend, server.base_url, plan.workers, env),
                backend.data_dir, tmp, profile))
            logs += [path for _, path in workers]
            result.processes = (f"sip-hub serve --workers {plan.workers}" + (
                f" + sip-hub worker x {shape.msg_workers}" if shape.msg_workers else
                " (built-in messaging worker in each)"))

            log(f"{backend.name}: setting up {plan.sips} SIPs over HTTP")
            t0 = time.monotonic()
            token = run.fetch_token(server.base_url, client)
            templates = setup_sips(server.base_url, token, plan.sips, endpoints)
            result.setup_seconds = round(time.monotonic() - t0, 1)
            if backend.name == "postgres":
                run.analyze_postgres(engine)
            result.settle_seconds = round(settle(store), 1)
            log(f"{backend.name}: set up in {result.setup_seconds} s, its messages delivered "
                f"{result.settle_seconds} s later")

            # The floor of the message the load sends, while the hub is idle.
            slots = payloads.meeting_slots()
            log(f"{backend.name}: floor ({plan.floor_seconds:g} s per part)")

            def floor() -> Floor:
                measured = floor_as_published(
                    floor_url, shape.broker_url,
                    Topology(f"bench{run_id}.floor", f"bench{run_id}.floor"),
                    _filled(templates[0].encode(), slots[0]), plan.floor_seconds,
                    backend.db_comm, shape.broker_comm)
                log(f"{backend.name}: floor {measured.ops:,.0f} msg/s "
                    f"({measured.cpu_ms_per_msg:g} CPU ms each)")
                return measured
            result.floor = floor()

            phases = [
                {"label": f"closed loop, {plan.concurrency} connections", "mode": "closed",
                 "concurrency": plan.concurrency, "warmup": plan.warmup,
                 "duration": plan.duration},
                {"label": f"open loop at {plan.rate_fraction:g} x sustained", "mode": "open",
                 "rate_fraction": plan.rate_fraction, "warmup": plan.warmup,
                 "duration": plan.duration},
                # the rate the latency target names, whatever the closed loop sustained
                {"label": f"open loop at {P99_RATE:g}/s (the latency target's)", "mode": "open",
                 "rate": P99_RATE, "warmup": plan.warmup, "duration": plan.duration},
            ]
            config = {"base_url": server.base_url, "token": token,
                      "receiver_url": receiver_url, "receiver_pid": receiver_pid,
                      "templates": templates, "slots": slots, "orgs": len(orgs),
                      "hub_pids": [server.pid] + [pid for pid, _ in workers],
                      "db_comm": backend.db_comm, "broker_comm": shape.broker_comm,
                      "phases": phases}
            result.phases = run_load(config, tmp)
            result.deliveries = delivery_counts(store)
            settle(store)  # the floor again, on an idle hub: the better of the two counts
            result.floor = result.floor.best(floor())
    finally:
        engine.dispose()
        for path in logs:
            if path.exists():
                lines, counts = run.server_problems(path)
                result.server_log += lines
                for k, v in counts.items():
                    result.server_errors[k] = result.server_errors.get(k, 0) + v


def _filled(template: bytes, slot: tuple[str, str]) -> bytes:
    """One message from a template, as the load client makes them."""
    return (template.replace(payloads.TOKEN.encode(), f"bm{uuid.uuid4().hex}".encode())
            .replace(payloads.START.encode(), slot[0].encode())
            .replace(payloads.END.encode(), slot[1].encode())
            .replace(payloads.HEADER_ID.encode(), str(uuid.uuid4()).encode())
            .replace(payloads.BUNDLE_ID.encode(), str(uuid.uuid4()).encode()))


def _delete_queues(url: str, topology: Topology, orgs: list[str]) -> None:
    try:
        with Bus(url, topology) as bus:
            bus.delete(orgs)
    except BusUnavailable as exc:
        log(f"could not delete the run's queues: {exc}")


def run_load(config: Json, tmp: Path) -> list[Json]:
    return run.run_client("msgload.py", config, tmp, slack=600)


# --------------------------------------------------------------------------- report

_fmt = run._fmt


def _cost_ratio(r: BackendResult, phase: Json) -> float | None:
    cpu = phase.get("cpu_ms_per_msg")
    return round(cpu / r.floor.cpu_ms_per_msg, 2) if cpu and r.floor.cpu_ms_per_msg else None


def build_report(machine: Json, plan: Plan, results: list[BackendResult]) -> tuple[Json, str]:
    report: Json = {
        "machine": machine,
        "plan": {k: getattr(plan, k) for k in Plan.__slots__},
        "client": "1 process, aiohttp + uvloop",
        "receiver": "1 process, aiohttp + uvloop, answers ok acknowledgements",
        "targets": {"rate": RATE_TARGET, "p99_ms_at_half": P99_TARGET_MS,
                    "cost_ratio": COST_TARGET},
        "backends": [],
    }
    lines = [
        f"# sip_hub messaging benchmark{' (quick)' if plan.quick else ''}: {machine['date']}",
        "",
        (f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM, "
         f"Python {machine['python']}, {machine['os']}; load average at start "
         f"{' / '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}, at end "
         f"{' / '.join(f'{x:.2f}' for x in machine['loadavg_at_end'])}; hub commit "
         f"{machine['hub_commit'] or 'unknown'}."),
        (f"Meeting-rescheduled messages (the invitation's meeting with a new time; {plan.sips} "
         "SIPs round robin, one message at a time per SIP) POSTed to `$process-message` by "
         "the coordinator, each stored and routed to four organisations and delivered to a "
         "local receiver. Each phase: "
         f"{plan.warmup:g} s warm-up, then {plan.duration:g} s measured; then two open loops, "
         f"at {plan.rate_fraction:g} x the rate the closed loop sustained and at "
         f"{P99_RATE:g}/s, the rate of the latency target."),
        "",
        ("Floor (1 process of its own running fhir.resources as published, per message; rates "
         "the fastest and CPU the cheapest of 5 slices, the better of a measurement before the "
         "load and one after it):"),
        "",
        ("| backend | validate (parser) /s | the same as the hub validates /s | INSERT /s "
         "| publish /s | all three /s | CPU ms / msg |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.floor.ops:
            fl = r.floor
            lines.append(f"| {r.name} | {_fmt(fl.validate_ops, 0)} "
                         f"| {_fmt(fl.hub_validate_ops, 0)} | {_fmt(fl.insert_ops, 0)} "
                         f"| {_fmt(fl.publish_ops, 0)} | {_fmt(fl.ops, 0)} "
                         f"| {_fmt(fl.cpu_ms_per_msg, 2)} |")
    lines += [
        "",
        ("| backend | phase | offered /s | accepted /s | delivered /s | sustained /s "
         "| e2e p50 ms | e2e p99 ms | POST p99 ms | errors | CPU % client / hub / receiver / "
         "db / broker / other | hub CPU ms / msg | cost / floor |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|",
    ]
    notes: list[str] = []
    for r in results:
        entry: Json = {k: getattr(r, k) for k in BackendResult.__slots__}
        entry["floor"] = {k: getattr(r.floor, k) for k in Floor.__slots__}
        report["backends"].append(entry)
        if r.skipped:
            lines.append(f"| {r.name} | skipped: {r.skipped} | | | | | | | | | | | |")
            continue
        for p in r.phases:
            ratio = _cost_ratio(r, p)
            p["cost_ratio"] = ratio
            offered = f"{p['concurrency']} conn." if p["mode"] == "closed" else _fmt(p["rate"])
            errors = str(p["errors"]) + (f" ({p['undelivered']} undelivered)"
                                         if p["undelivered"] else "") + (
                f" ({p['resent']} resent after transient-error)" if p.get("resent") else "")
            cpu = " / ".join(_fmt(p[k], 0) for k in (
                "cpu_client_pct", "cpu_hub_pct", "cpu_receiver_pct", "cpu_db_pct",
                "cpu_broker_pct", "cpu_other_pct"))
            lines.append(
                f"| {r.name} | {p['label']} | {offered} | {_fmt(p['accepted_per_s'])} "
                f"| {_fmt(p['delivered_per_s'])} | {_fmt(p['sustained_per_s'])} "
                f"| {_fmt(p['e2e_p50_ms'], 1)} "
                f"| {_fmt(p['e2e_p99_ms'], 1)} | {_fmt(p['post_p99_ms'], 1)} | {errors} "
                f"| {cpu} | {_fmt(p['cpu_ms_per_msg'], 2)} | {_fmt(ratio, 2)} |")
        closed = next((p for p in r.phases if p["mode"] == "closed"), None)
        half = next((p for p in r.phases if p["mode"] == "open"
                     and p.get("rate_fraction") is not None), None)
        opened = next((p for p in r.phases if p["mode"] == "open" and p["rate"] == P99_RATE
                       and p is not half), half)
        if closed and opened:
            met = {"rate": closed["sustained_per_s"] >= RATE_TARGET,
                   "p99_at_half": (opened["e2e_p99_ms"] or 1e9) < P99_TARGET_MS
                   and opened["rate"] >= P99_RATE,
                   "cost_ratio": (closed["cost_ratio"] or 1e9) <= COST_TARGET}
            entry["targets_met"] = met
            word = {True: "met", False: "MISSED"}
            notes.append(
                f"- {r.name} ({r.server_version}{', ' + r.broker if r.broker else ''}; "
                f"{r.processes}; hub {r.hub_commit}): sustained "
                f"{closed['sustained_per_s']:,.0f} msg/s (target {RATE_TARGET:,.0f}: "
                f"{word[met['rate']]}); p99 {_fmt(opened['e2e_p99_ms'])} ms at "
                f"{opened['rate']:,.0f} msg/s (target < {P99_TARGET_MS:g} ms at "
                f"{P99_RATE:,.0f}/s: {word[met['p99_at_half']]})"
                + (f", {_fmt(half['e2e_p99_ms'])} ms at {half['rate']:,.0f} msg/s (half what it "
                   f"sustained)" if half is not None and half is not opened else "")
                + "; cost "
                f"{_fmt(closed['cost_ratio'], 2)} x floor (target <= {COST_TARGET:g}: "
                f"{word[met['cost_ratio']]}). Set-up of {plan.sips} SIPs "
                f"{r.setup_seconds:g} s. Deliveries at the end: "
                f"{', '.join(f'{k} {v}' for k, v in sorted(r.deliveries.items()))}.")
    for r in results:
        if r.server_errors:
            listed = "; ".join(f"`{k}` x{v}" for k, v in sorted(
                r.server_errors.items(), key=lambda kv: -kv[1])[:6])
            notes.append(f"- {r.name}: the hub logged errors: {listed}")
    contended = [f"{r.name} {p['label']} ({p['cpu_other_pct']:.0f} %)" for r in results
                 for p in r.phases if (p.get("cpu_other_pct") or 0) > run.CONTENDED_PCT]
    if contended:
        notes.append(f"- **Contended machine**: other processes used more than "
                     f"{run.CONTENDED_PCT} % of a core during: {'; '.join(contended)}. "
                     "Throughput there is a lower bound; compare runs on a quiet machine.")
    lines += ["", ("Accepted: POST answered 200 with response code ok. Delivered: messages "
                   "whose fourth receipt came inside the window. Sustained: the window's "
                   "messages that reached all four, over the time from the window's start "
                   "until the last of them did (a backlog worked off later counts). e2e: from "
                   "the POST (open "
                   "loop: from when the message was due) to the last of the four receipts. "
                   "CPU % is of one core; db is every `postgres` process, broker every "
                   "`beam.smp`; other is the rest of the machine's busy time. Hub CPU ms / msg: "
                   "the CPU of the hub's processes, database and broker from the window's start "
                   "until the backlog was worked off, per message completed meanwhile; cost / "
                   "floor divides it by the floor's CPU per message (validate, insert, "
                   "publish)."), "", *notes, ""]
    return report, "\n".join(lines)


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="short windows, few SIPs")
    p.add_argument("--pg-url", default=os.environ.get("SIP_HUB_TEST_DATABASE_URL")
                   or run.DEFAULT_PG_URL, help="PostgreSQL to create the run's schemas in")
    p.add_argument("--broker-url", default=os.environ.get("SIP_HUB_TEST_BROKER_URL")
                   or DEFAULT_BROKER_URL, help="RabbitMQ for the production shape")
    p.add_argument("--sips", type=int, default=None,
                   help="SIPs (default 100, --quick 40; at least --concurrency)")
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop connections")
    p.add_argument("--workers", type=int, default=2, help="hub API processes")
    p.add_argument("--msg-workers", type=int, default=1,
                   help="`sip-hub worker` processes on RabbitMQ (docker-compose.yml's one)")
    p.add_argument("--rate-fraction", type=float, default=0.5,
                   help="open-loop rate as a fraction of the closed loop's sustained rate")
    p.add_argument("--warmup", type=float, default=None, help="seconds per phase")
    p.add_argument("--duration", type=float, default=None, help="seconds per phase")
    p.add_argument("--backends", default="sqlite,postgres",
                   help="comma-separated subset of sqlite,postgres")
    p.add_argument("--out", type=Path, default=BENCH / "results",
                   help="directory for messaging.json and messaging.md")
    p.add_argument("--profile-workers", type=Path, default=None, metavar="DIR",
                   help="run the `sip-hub worker` processes under cProfile, writing "
                        "DIR/worker-<i>.prof (where their time goes)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.from_args(args)
    wanted = {b.strip() for b in args.backends.split(",") if b.strip()}
    machine = sysinfo.machine(REPO)
    results: list[BackendResult] = []
    with tempfile.TemporaryDirectory(prefix="sip-hub-msgbench-") as tmpdir:
        tmp = Path(tmpdir)
        if "sqlite" in wanted:
            with run.sqlite_backend(tmp) as backend:
                floor_url = f"sqlite:///{(tmp / 'floor' / 'floor.sqlite3').as_posix()}"
                results.append(bench_backend(
                    backend, Shape("memory://", "in-process bus", None, 0), plan, tmp,
                    floor_url))
        if "postgres" in wanted:
            if not broker_reachable(args.broker_url):
                results.append(BackendResult("postgres", skipped="RabbitMQ unreachable"))
            else:
                with run.postgres_backend(args.pg_url, tmp) as pg, \
                        run.postgres_backend(args.pg_url, tmp / "floor") as floor:
                    if pg is None or floor is None:
                        results.append(BackendResult("postgres", skipped="unreachable"))
                    else:
                        shape = Shape(args.broker_url, rabbitmq_version(), "beam.smp",
                                      plan.msg_workers)
                        results.append(bench_backend(pg, shape, plan, tmp, floor.url,
                                                     args.profile_workers))
    machine["loadavg_at_end"] = list(os.getloadavg())
    report, markdown = build_report(machine, plan, results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "messaging.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    (args.out / "messaging.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
