"""sip_hub throughput and latency benchmark, over HTTP, on SQLite and PostgreSQL in one run.

This is a benchmark, not a test: it measures and reports, it does not assert.

Run from the repository root::

    .venv/bin/pip install -e '.[bench]'        # aiohttp for the load client
    .venv/bin/python bench/run.py               # full run, ~10 minutes on 2 cores
    .venv/bin/python bench/run.py --quick       # smoke run, ~2 minutes
    .venv/bin/python bench/run.py --pg-url postgresql://postgres@127.0.0.1:5432/test \\
        --stored 100000

What it measures, per backend (the embedded default, SQLite in a temporary directory; and
PostgreSQL in a fresh schema created for the run through ``options=-csearch_path%3D<schema>``
and dropped at the end; skipped with a note when the database is unreachable):

1. The hub as a real server: ``sip-hub serve --workers 2`` on a free loopback port, with
   ``SIP_HUB_DATABASE_URL`` / ``SIP_HUB_DATA_DIR`` / ``SIP_HUB_BASE_URL`` pointing at the run's
   database; ready when ``/healthz`` answers and every worker has started.
2. Load from a separate process (``bench/load.py``: aiohttp on uvloop, ``--concurrency``
   keep-alive connections, closed loop, an OAuth2 bearer token of the coordinating
   organisation's API client), each operation a warm-up and then a fixed-duration
   measurement window: create (POST an active SIP CarePlan with five interventions; its
   Patient, Consent, CareTeam and Goals were created beforehand over HTTP in transaction
   Bundles), read by id, search by patient, update (PUT with If-Match: a progress note and an
   intervention's status). Throughput, p50/p99 latency, non-2xx answers as errors, the CPU
   shares of load client, hub, PostgreSQL and everything else over each window, and how long
   the hub stays busy afterwards with deferred work (drain).
3. The floor, in the same run: the same CarePlan JSON parsed with orjson and validated by
   fhir.resources as published (``sip_hub.fhir.models.validate`` in a process of its own
   where the hub leaves fhir_core as it is: ``sip_hub.fhir.published``) in a tight
   single-process loop (best of five slices, so that other load on the machine does not
   lower it). Create throughput is reported as a ratio to it (target >= 0.60); reads target
   >= 2000/s. Beside it, the same loop with the hub's changes to fhir_core's validation
   (what the hub runs), and the hub's whole validation pipeline (``service.prepare``).
4. Search by patient with ``--stored`` CarePlans in the store (default 100000; 5000 with
   ``--quick``): seeded in-process through ``Store.begin()`` / ``tx.create`` in transactions
   of 1000, from a template that passed the full validation pipeline once, varied by id and
   patient (about five plans per patient, at most 20000 patients), owned by the coordinating
   organisation, which holds a grant for each patient. PostgreSQL is ANALYZEd after the
   set-up and after seeding, and every 30 s when the server's autovacuum is off (then also
   VACUUMed where autovacuum would), as autovacuum would. The store size is reported (SQLite
   files; PostgreSQL ``pg_total_relation_size`` over the schema's tables).
5. A Markdown table on stdout, also written to ``bench/results/latest.md``, and everything as
   JSON in ``bench/results/latest.json``, with the machine and the date.

Everything started is stopped (servers in ``finally``), every loop is bounded in time or count,
and all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import payloads  # noqa: E402
import sysinfo  # noqa: E402

from sip_hub import clients  # noqa: E402
from sip_hub import interactions as ix  # noqa: E402
from sip_hub.errors import SipHubError  # noqa: E402
from sip_hub.fhir import published  # noqa: E402
from sip_hub.fhir.models import validate  # noqa: E402
from sip_hub.service import prepare  # noqa: E402
from sip_hub.store import Store  # noqa: E402
from sip_hub.store.engine import make_engine  # noqa: E402
from sip_hub.store.migrate import upgrade  # noqa: E402
from sip_hub.store.schema import resource  # noqa: E402
from sip_hub.store.search import Grant  # noqa: E402

Json = dict[str, Any]

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
CREATE_TARGET = 0.60          # create req/s as a fraction of the floor
READ_TARGET = 2000.0          # read req/s on 2 cores
SEARCH_P99_TARGET = 50.0      # ms, search by patient with 100,000 CarePlans stored
LATENCY_CLIENTS = os.cpu_count() or 2
CONTENDED_PCT = 25           # other processes' CPU (% of one core) that makes a window suspect
AUTOANALYZE_SECONDS = 30.0   # when the server's autovacuum is off
SEED_BATCH = 1000
SEED_PLANS_PER_PATIENT = 5
SEED_MAX_PATIENTS = 20000
SEED_PNR_OFFSET = 100_000     # seeded patients' personnummer never clash with the others'


@dataclass(frozen=True, slots=True)
class Plan:
    """What one run does; ``--quick`` shrinks durations and data."""
    quick: bool
    warmup: float
    duration: float
    floor_seconds: float
    stored: int
    patients: int             # measurement patients (each with CareTeam and Goals)
    concurrency: int
    workers: int

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        return cls(
            quick=quick,
            warmup=args.warmup if args.warmup is not None else (1.0 if quick else 3.0),
            duration=args.duration if args.duration is not None else (5.0 if quick else 20.0),
            floor_seconds=2.0 if quick else 5.0,
            stored=args.stored if args.stored is not None else (5000 if quick else 100_000),
            patients=100 if quick else 500,
            concurrency=args.concurrency,
            workers=args.workers,
        )


@dataclass(slots=True)
class Backend:
    name: str
    url: str
    data_dir: Path
    size_bytes: Callable[[Engine], int]
    db_comm: str | None       # process name of the database server, for CPU accounting
    server_version: str = ""


@dataclass(slots=True)
class BackendResult:
    name: str
    server_version: str = ""
    hub_commit: str | None = None  # when its server started (the code may change meanwhile)
    phases: list[Json] = field(default_factory=list)
    setup_seconds: float = 0.0
    inprocess_create_ops: float = 0.0
    created_per_patient: float = 0.0
    seed_plans: int = 0
    seed_patients: int = 0
    seed_seconds: float = 0.0
    careplans_stored: int = 0
    resources: dict[str, int] = field(default_factory=dict)
    store_bytes: int = 0
    skipped: str | None = None
    server_log: list[str] = field(default_factory=list)  # the hub's warnings and errors
    server_errors: dict[str, int] = field(default_factory=dict)  # exception line -> count


class BenchError(RuntimeError):
    """A backend could not be measured (the hub did not start, the client failed ...)."""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the floor

def timed_loop(seconds: float, body: Callable[[], object]) -> float:
    """Calls of ``body`` per second over ``seconds`` (checked every call: bounded)."""
    n, start = 0, time.perf_counter()
    end = start + seconds
    while (now := time.perf_counter()) < end or n == 0:
        body()
        n += 1
    return n / (now - start)


def best_rate(seconds: float, body: Callable[[], object], slices: int = 5) -> float:
    """The best of ``slices`` equal timed loops (as ``timeit`` advises): on a shared machine
    the fastest slice is the closest to what one core can do."""
    return max(timed_loop(seconds / slices, body) for _ in range(slices))


def validation_rate(raw: bytes, seconds: float) -> float:
    """ops/s of orjson + ``models.validate`` of ``raw`` (in the published process: the floor)."""
    validate(orjson.loads(raw))
    return best_rate(seconds, lambda: validate(orjson.loads(raw)))


def measure_floor(seconds: float) -> tuple[float, float, float]:
    """ops/s of orjson + fhir.resources validation as published (the floor), of the same with
    the hub's changes to fhir_core's validation, and of the full ``prepare`` with an
    in-memory resolver."""
    pid = "floor-p0"
    raw = orjson.dumps(payloads.careplan(pid))
    resolve = payloads.f.resolver(payloads.patient_resources(pid, 0))
    prepare(orjson.loads(raw), resolve)  # raises if the payload is not a valid SIP
    with published.process() as library:
        floor = library.submit(validation_rate, raw, seconds).result()
    hub_validate = validation_rate(raw, seconds)
    pipeline = best_rate(seconds, lambda: prepare(orjson.loads(raw), resolve))
    return floor, hub_validate, pipeline


# --------------------------------------------------------------------------- backends

def _sqlite_size(engine: Engine) -> int:
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    db = Path(engine.url.database or "")
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists())


def _pg_size(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')")).scalar_one())


@contextmanager
def sqlite_backend(tmp: Path) -> Iterator[Backend]:
    data = tmp / "sqlite"
    import sqlite3
    yield Backend("sqlite", f"sqlite:///{(data / 'sip_hub.sqlite3').as_posix()}", data,
                  _sqlite_size, None, f"SQLite {sqlite3.sqlite_version}")


@contextmanager
def postgres_backend(base_url: str, tmp: Path) -> Iterator[Backend | None]:
    """A fresh schema for the run, dropped at the end; None when PostgreSQL is unreachable."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = make_engine(base_url, pool_size=1)
    try:
        with admin.begin() as conn:
            version = conn.execute(text("SHOW server_version")).scalar_one()
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except (OperationalError, SipHubError) as exc:
        admin.dispose()
        log(f"PostgreSQL at {admin.url.render_as_string(hide_password=True)} is unreachable, "
            f"skipped: {str(exc).splitlines()[0]}")
        yield None
        return
    sep = "&" if "?" in base_url else "?"
    # The application name marks this run's sessions, so that cleanup can end exactly them.
    url = f"{base_url}{sep}options=-csearch_path%3D{schema}&application_name={schema}"
    try:
        yield Backend("postgres", url, tmp / "postgres", _pg_size, "postgres",
                      f"PostgreSQL {version}")
    finally:
        with admin.begin() as conn:
            # A killed hub can leave its sessions' queries running (and holding locks).
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE application_name = :name AND pid <> pg_backend_pid()"),
                         {"name": schema})
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
        log(f"dropped schema {schema}")


# --------------------------------------------------------------------------- data

def register_client(store: Store) -> tuple[str, str]:
    """An API client of the coordinating organisation, allowed everything on every type."""
    created = clients.create_client(store, org=payloads.COORDINATOR_HSA, scope="system/*.cruds",
                                    name="sip_hub bench", role="organization")
    return created["client_id"], created["client_secret"]


def http(method: str, url: str, *, token: str | None = None, body: bytes | None = None,
         headers: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, bytes]:
    """One synchronous request (set-up only; the measurements use ``load.py``)."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def fetch_token(base_url: str, client: tuple[str, str]) -> str:
    """OAuth2 client credentials, as a real client gets its token."""
    basic = base64.b64encode(f"{urllib.parse.quote(client[0])}:"
                             f"{urllib.parse.quote(client[1])}".encode()).decode()
    status, body = http("POST", f"{base_url}/auth/token",
                        body=b"grant_type=client_credentials",
                        headers={"Authorization": f"Basic {basic}",
                                 "Content-Type": "application/x-www-form-urlencoded"})
    if status != 200:
        raise BenchError(f"no token from /auth/token ({status}): {body[:300]!r}")
    token: str = orjson.loads(body)["access_token"]
    return token


def setup_patients(base_url: str, token: str, n: int) -> list[str]:
    """Shared organisations and practitioners, then ``n`` patients with a SIP Consent, CareTeam
    and Goals each: over HTTP, as transaction Bundles of ten patients, through every rule of
    the hub (validation, access, grants, audit)."""
    fhir = f"{base_url}/fhir"
    pids = [f"bench-p{i}" for i in range(n)]
    batches = [payloads.shared_resources()] + [
        [r for i in range(start, min(n, start + 10))
         for r in payloads.patient_resources(pids[i], i)]
        for start in range(0, n, 10)]
    post_transactions(fhir, token, batches)
    return pids


def post_transactions(fhir: str, token: str, batches: list[list[Json]]) -> None:
    """Each batch of resources as one transaction Bundle, as a client sets up its data."""
    for resources in batches:
        status, body = http("POST", fhir, token=token,
                            body=orjson.dumps(payloads.transaction(resources, fhir)),
                            headers={"Content-Type": "application/fhir+json",
                                     "Prefer": "return=minimal"})
        if status != 200:
            raise BenchError(f"set-up transaction failed ({status}): {body[:500]!r}")


def inprocess_create(store: Store, pids: list[str], seconds: float) -> float:
    """The hub's create path without HTTP, token or audit (the hub itself as the caller):
    ``interactions.create``, one transaction each."""
    bodies = [orjson.dumps(payloads.careplan(pid)) for pid in pids]
    ctx = ix.Context("http://127.0.0.1/fhir")
    turn = itertools.count()

    def once() -> None:
        with store.begin() as tx:
            ix.create(tx, ctx, "CarePlan", orjson.loads(bodies[next(turn) % len(bodies)]))
    return timed_loop(seconds, once)


def _seed_resources(pids: list[str], plans: int, meta: Json) -> Iterator[tuple[str, Json]]:
    for j, pid in enumerate(pids):
        yield pid, payloads.patient(pid, SEED_PNR_OFFSET + j)
    for i in range(plans):
        yield f"seed-{i}", {**payloads.careplan(pids[i % len(pids)]), "meta": dict(meta)}


# What access.refresh_grants derives for a patient whose SIP the bench organisation
# coordinates and whose consent names it.
_SEED_GRANTS = [Grant(payloads.COORDINATOR_HSA, "coordinator", True, None)]


def seed(store: Store, plans: int, patients: int) -> list[str]:
    """``plans`` CarePlans over ``patients`` Patients, straight through the store.

    One template of each passes the full pipeline (``prepare``); the rest are the same
    resources varied by id and patient (and so by CareTeam and Goal references), written in
    transactions of ``SEED_BATCH``, owned by the coordinating organisation, which holds a
    reading grant for every seeded patient (so searches go through the visibility rules
    with a realistic grant table).
    """
    pids = [f"seed-p{j}" for j in range(patients)]
    first = payloads.patient_resources(pids[0], SEED_PNR_OFFSET)
    prepare(first[0], lambda _t, _i: None)
    template = prepare(payloads.careplan(pids[0]), payloads.f.resolver(first))
    todo = _seed_resources(pids, plans, template["meta"])
    total, done = patients + plans, 0
    started = last = time.perf_counter()
    while batch := list(itertools.islice(todo, SEED_BATCH)):
        with store.begin() as tx:
            for rid, res in batch:
                tx.create(res, rid, owner=payloads.COORDINATOR_HSA)
                if res["resourceType"] == "Patient":
                    tx.replace_grants(rid, _SEED_GRANTS)
        done += len(batch)
        if time.perf_counter() - last > 10:
            last = time.perf_counter()
            log(f"  seeded {done}/{total} ({done / (last - started):.0f} resources/s)")
    return pids


def analyze_postgres(engine: Engine) -> None:
    """Planner statistics, as autovacuum gathers them within a minute or so of bulk writes.

    Measured without them (a fresh schema), search by patient runs a generic plan that scans
    every CarePlan: the steady state is what the benchmark reports.
    """
    with engine.begin() as conn:
        tables: list[str] = list(conn.execute(text(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")).scalars())
        for table in tables:
            conn.execute(text(f'ANALYZE "{table}"'))


# What autovacuum does, by its defaults (PostgreSQL 15): a table is vacuumed once more than
# 50 + 20% of its rows are dead (or 1,000 + 20% were inserted since its last vacuum), analyzed
# once 50 + 10% changed since its statistics, each at autovacuum's pace (a 2 ms pause every
# 200 units of cost: it spreads its work rather than taking the CPUs in a burst).
_AUTOVACUUM_DUE = text(
    "SELECT s.relname, "
    "s.n_dead_tup > 50 + 0.2 * greatest(c.reltuples, 0) "
    "OR s.n_ins_since_vacuum > 1000 + 0.2 * greatest(c.reltuples, 0), "
    "s.n_mod_since_analyze > 50 + 0.1 * greatest(c.reltuples, 0) "
    "FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid "
    "WHERE s.schemaname = current_schema() ORDER BY s.relname")


def autovacuum_round(engine: Engine) -> list[str]:
    """VACUUM and ANALYZE the tables of the run's schema that autovacuum would, as it would
    (see ``_AUTOVACUUM_DUE``); what it did. The hub's delivery rows are updated twice each
    (published, then delivered): without VACUUM their indexes fill with entries of dead
    versions that every claim steps over."""
    done = []
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SET statement_timeout = 0"))  # (autovacuum has none; the hub's 30 s)
        conn.execute(text("SET vacuum_cost_delay = '2ms'"))
        conn.execute(text("SET vacuum_cost_limit = 200"))
        for table, vacuum, analyze in conn.execute(_AUTOVACUUM_DUE).all():
            if vacuum or analyze:
                what = "VACUUM (ANALYZE)" if vacuum and analyze else \
                    "VACUUM" if vacuum else "ANALYZE"
                conn.execute(text(f'{what} "{table}"'))
                done.append(f"{what} {table}")
    return done


@contextmanager
def autoanalyze(engine: Engine, every: float = AUTOANALYZE_SECONDS) -> Iterator[None]:
    """Stand in for autovacuum while the block runs, when the server has it off (test
    servers often do; production ones do not): every ``every`` seconds, VACUUM and ANALYZE
    what autovacuum would, at its pace (``autovacuum_round``)."""
    with engine.connect() as conn:
        if conn.execute(text("SHOW autovacuum")).scalar_one() == "on":
            yield
            return
    log(f"autovacuum is off on this server: VACUUM and ANALYZE where and as autovacuum "
        f"would, every {every:g} s instead")
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                autovacuum_round(engine)
            except SQLAlchemyError as exc:
                log(f"VACUUM or ANALYZE failed: {str(exc).splitlines()[0]}")

    thread = threading.Thread(target=loop, name="autoanalyze", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=120)


def count_resources(engine: Engine) -> dict[str, int]:
    """Current (not deleted) resources in the store, by type."""
    with engine.connect() as conn:
        n = func.count().label("n")
        rows = conn.execute(select(resource.c.res_type, n).where(
            resource.c.deleted.is_(False)).group_by(resource.c.res_type)).all()
        counts = {str(r.res_type): int(r.n) for r in rows}
        return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def count_careplans(engine: Engine) -> int:
    return count_resources(engine).get("CarePlan", 0)


# --------------------------------------------------------------------------- the server

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Server:
    base_url: str
    pid: int
    log_path: Path


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)  # shutdown flushes the queued audit events
        except subprocess.TimeoutExpired:
            log(f"process {proc.pid} did not stop on SIGTERM; killing its process group")
    # The workers share the master's process group (start_new_session): make sure none is left.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait(timeout=10)


def hub_env(backend: Backend, base_url: str, workers: int,
            extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the hub's processes: this run's database and nothing of the
    caller's ``SIP_HUB_*`` settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIP_HUB_")}
    # Tokens live for the longest time the hub allows, so that one outlasts a load run.
    env.update(SIP_HUB_DATABASE_URL=backend.url, SIP_HUB_DATA_DIR=str(backend.data_dir),
               SIP_HUB_BASE_URL=base_url, SIP_HUB_WORKERS=str(workers),
               SIP_HUB_TOKEN_LIFETIME_SECONDS="3600", **(extra or {}))
    return env


SIP_HUB_EXE = Path(sys.executable).with_name("sip-hub")


@contextmanager
def hub_server(backend: Backend, workers: int, log_path: Path,
               timeout: float = 120.0, extra_env: dict[str, str] | None = None
               ) -> Iterator[Server]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = hub_env(backend, base, workers, extra_env)
    cmd = [str(SIP_HUB_EXE), "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers)]
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=backend.data_dir,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + timeout
            while True:
                started = log_path.read_bytes().count(b"Application startup complete")
                if started >= workers and _healthy(base):
                    break
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log_path.read_text(errors="replace")[-3000:]
                    raise BenchError(f"the hub did not become ready (exit {proc.poll()}):\n"
                                     f"{tail}")
                time.sleep(0.2)
            log(f"hub up at {base} (pid {proc.pid}, {workers} workers, code "
                f"{sysinfo.git_commit(REPO)})")
            yield Server(base, proc.pid, log_path)
        finally:
            stop_process(proc)
            log("hub stopped")


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Violation|Conflict)\b.*")


def server_problems(log_path: Path, excerpt: int = 40) -> tuple[list[str], dict[str, int]]:
    """The hub log's first ``excerpt`` lines other than INFO (access log, start-up), and how
    often each exception (its last traceback line) and each WARNING/ERROR line occurred."""
    lines: list[str] = []
    counts: dict[str, int] = {}
    with open(log_path, errors="replace") as f:
        for raw in f:
            if raw.startswith("INFO:"):
                continue
            line = raw.rstrip()
            if len(lines) < excerpt:
                lines.append(line)
            if _EXCEPTION_LINE.match(line) or line.startswith(("ERROR:", "WARNING:")):
                key = line[:200]
                counts[key] = counts.get(key, 0) + 1
    return lines, counts


def run_load(server: Server, backend: Backend, plan: Plan, phases: list[Json],
             create_patients: list[str], token: str, tmp: Path,
             concurrency: int | None = None) -> list[Json]:
    config = {"base_url": server.base_url, "concurrency": concurrency or plan.concurrency,
              "server_pid": server.pid, "db_comm": backend.db_comm, "token": token,
              "create_patients": create_patients, "phases": phases}
    return run_client("load.py", config, tmp, slack=180)


def run_client(script: str, config: Json, tmp: Path, *, slack: float) -> list[Json]:
    """Run a load client (``bench/<script>``) in its own process on ``config``; its results."""
    name = Path(script).stem
    cfg, out = tmp / f"{name}-config.json", tmp / f"{name}-result.json"
    cfg.write_bytes(orjson.dumps(config))
    out.unlink(missing_ok=True)
    budget = sum(p["warmup"] + p["duration"] for p in config["phases"]) + slack
    try:
        subprocess.run([sys.executable, str(BENCH / script), str(cfg), str(out)],
                       check=True, timeout=budget, stdin=subprocess.DEVNULL)
    except subprocess.SubprocessError as exc:
        raise BenchError(f"the load client failed: {exc}") from exc
    results: list[Json] = orjson.loads(out.read_bytes())
    return results


# --------------------------------------------------------------------------- one backend

def bench_backend(backend: Backend, plan: Plan, tmp: Path) -> BackendResult:
    """Measure one backend; a failure is reported in the result, not raised."""
    try:
        return _bench_backend(backend, plan, tmp)
    except (BenchError, SipHubError, OperationalError) as exc:
        log(f"{backend.name}: FAILED: {exc}")
        return BackendResult(backend.name, backend.server_version,
                             skipped=f"failed: {str(exc).splitlines()[0]}")


def _bench_backend(backend: Backend, plan: Plan, tmp: Path) -> BackendResult:
    result = BackendResult(backend.name, backend.server_version)
    backend.data_dir.mkdir(parents=True, exist_ok=True)
    hub_log = tmp / f"hub-{backend.name}.log"
    engine = make_engine(backend.url)
    try:
        upgrade(engine)
        store = Store(engine)
        client = register_client(store)

        def phase(label: str, op: str, **extra: Any) -> Json:
            return {"label": label, "op": op, "warmup": plan.warmup,
                    "duration": plan.duration, **extra}

        maintenance = autoanalyze(engine) if backend.name == "postgres" else nullcontext()
        result.hub_commit = sysinfo.git_commit(REPO)
        with maintenance, hub_server(backend, plan.workers, hub_log) as server:
            log(f"{backend.name}: setting up {plan.patients} patients over HTTP (Consent, "
                "CareTeam, 3 Goals each)")
            t0 = time.perf_counter()
            pids = setup_patients(server.base_url, fetch_token(server.base_url, client),
                                  plan.patients)
            result.setup_seconds = round(time.perf_counter() - t0, 1)
            if backend.name == "postgres":
                analyze_postgres(engine)
            result.inprocess_create_ops = round(
                inprocess_create(store, pids, plan.floor_seconds), 1)
            log(f"{backend.name}: in-process create pipeline "
                f"{result.inprocess_create_ops} ops/s")

            before = count_careplans(engine)
            result.phases += run_load(server, backend, plan, [
                phase("create CarePlan (POST)", "create"),
                phase("read CarePlan by id", "read"),
                phase("search CarePlan?patient=", "search", patients=pids),
                phase("update CarePlan (PUT, If-Match)", "update"),
            ], pids, fetch_token(server.base_url, client), tmp)
            result.created_per_patient = round(
                (count_careplans(engine) - before) / len(pids), 1)

            n_patients = max(1, min(SEED_MAX_PATIENTS, plan.stored // SEED_PLANS_PER_PATIENT))
            log(f"{backend.name}: seeding {plan.stored} CarePlans over {n_patients} patients "
                "through the store")
            t0 = time.perf_counter()
            seeded = seed(store, plan.stored, n_patients)
            result.seed_seconds = round(time.perf_counter() - t0, 1)
            result.seed_plans, result.seed_patients = plan.stored, n_patients
            if backend.name == "postgres":
                analyze_postgres(engine)
            result.resources = count_resources(engine)
            result.careplans_stored = result.resources.get("CarePlan", 0)
            result.store_bytes = backend.size_bytes(engine)
            log(f"{backend.name}: {result.careplans_stored} CarePlans stored, "
                f"{result.store_bytes / 2**20:.0f} MiB")
            result.phases += run_load(server, backend, plan, [
                phase(f"search CarePlan?patient= @{result.careplans_stored:,} stored", "search",
                      patients=seeded),
            ], pids, fetch_token(server.base_url, client), tmp)
            # The latency target, with as many clients as the machine has cores: the hub's
            # own time per search, not the queue that 32 clients build on 2 cores.
            result.phases += run_load(server, backend, plan, [
                phase(f"search CarePlan?patient= @{result.careplans_stored:,} stored, "
                      f"{LATENCY_CLIENTS} clients", "search", patients=seeded),
            ], pids, fetch_token(server.base_url, client), tmp, concurrency=LATENCY_CLIENTS)
            result.resources = count_resources(engine)
    finally:
        engine.dispose()
        if hub_log.exists():
            result.server_log, result.server_errors = server_problems(hub_log)
    return result


# --------------------------------------------------------------------------- report

def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def build_report(machine: Json, plan: Plan, floor: float, hub_validate: float, pipeline: float,
                 results: list[BackendResult]) -> tuple[Json, str]:
    report: Json = {
        "machine": machine,
        "plan": {k: getattr(plan, k) for k in Plan.__slots__},
        "client": f"1 process, aiohttp + uvloop, {plan.concurrency} keep-alive connections",
        "hub": f"sip-hub serve --workers {plan.workers}",
        "floor_ops": round(floor, 1),
        "hub_validate_ops": round(hub_validate, 1),
        "prepare_inmemory_ops": round(pipeline, 1),
        "targets": {"create_ratio": CREATE_TARGET, "read_rps": READ_TARGET},
        "backends": [],
    }
    lines = [
        f"# sip_hub benchmark{' (quick)' if plan.quick else ''}: {machine['date']}",
        "",
        (f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gib']} GiB RAM, "
         f"Python {machine['python']}, {machine['os']}; load average at start "
         f"{' / '.join(f'{x:.2f}' for x in machine['loadavg_at_start'])}, at end "
         f"{' / '.join(f'{x:.2f}' for x in machine['loadavg_at_end'])}; hub commit "
         f"{machine['hub_commit'] or 'unknown'}."),
        (f"Hub: `{report['hub']}`. Client: {report['client']}, in its own process. "
         f"Each operation: {plan.warmup:g} s warm-up, then {plan.duration:g} s measured."),
        "",
        (f"Floor (orjson.loads + fhir.resources validation as published of the same "
         f"CarePlan, 1 process of its own, best of 5 slices): **{floor:,.0f} ops/s**. The same "
         f"with the hub's changes to fhir_core's validation (what the hub runs): "
         f"{hub_validate:,.0f} ops/s. Full validation pipeline "
         f"`service.prepare` (in-memory references, no database, 1 process): "
         f"{pipeline:,.0f} ops/s."),
        "",
        ("| backend | operation | req/s | p50 ms | p99 ms | ratio to floor | errors "
         "| CPU % client / hub / db / other | drain s |"),
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    notes: list[str] = []
    for r in results:
        entry: Json = {k: getattr(r, k) for k in BackendResult.__slots__}
        report["backends"].append(entry)
        if r.skipped:
            lines.append(f"| {r.name} | skipped: {r.skipped} | | | | | | | |")
            continue
        for p in r.phases:
            ratio = p["rps"] / floor if p["op"] == "create" else None
            if ratio is not None:
                p["ratio_to_floor"] = round(ratio, 3)
            by_status = ", ".join(f"{k}: {v}" for k, v in p["errors_by_status"].items())
            errors = f"{p['errors']} ({by_status})" if p["errors"] else "0"
            cpu = " / ".join(_fmt(p[k], 0) for k in ("cpu_client_pct", "cpu_hub_pct",
                                                       "cpu_db_pct", "cpu_other_pct"))
            lines.append(f"| {r.name} | {p['label']} | {_fmt(p['rps'])} | {_fmt(p['p50_ms'], 2)} "
                         f"| {_fmt(p['p99_ms'], 2)} | {_fmt(ratio, 2) if ratio else ''} "
                         f"| {errors} | {cpu} | {_fmt(p.get('drain_s'))} |")
        create = next((p for p in r.phases if p["op"] == "create"), None)
        read = next((p for p in r.phases if p["op"] == "read"), None)
        latency = next((p for p in reversed(r.phases) if p["op"] == "search"), None)
        if create and read and latency:
            ok = [create["rps"] / floor >= CREATE_TARGET, read["rps"] >= READ_TARGET,
                  latency["p99_ms"] is not None and latency["p99_ms"] < SEARCH_P99_TARGET]
            entry["targets_met"] = {"create_ratio": ok[0], "read_rps": ok[1],
                                    "search_p99_ms": ok[2]}
            notes.append(
                f"- {r.name} ({r.server_version}, hub {r.hub_commit}): create "
                f"{create['rps'] / floor:.2f} x floor (target {CREATE_TARGET:.2f}: "
                f"{'met' if ok[0] else 'MISSED'}), reads "
                f"{read['rps']:,.0f}/s (target {READ_TARGET:,.0f}: "
                f"{'met' if ok[1] else 'MISSED'}), search p99 {_fmt(latency['p99_ms'])} ms with "
                f"{LATENCY_CLIENTS} clients (target {SEARCH_P99_TARGET:g} ms: "
                f"{'met' if ok[2] else 'MISSED'}); the in-process create path "
                f"(`interactions.create`, one transaction each, 1 thread, no HTTP) does "
                f"{r.inprocess_create_ops:,.0f} ops/s. Search ran with "
                f"{r.created_per_patient:g} plans per patient (small store), then with "
                f"{r.careplans_stored:,} CarePlans stored ({r.seed_plans:,} seeded over "
                f"{r.seed_patients:,} patients in {r.seed_seconds:g} s, "
                f"{(r.seed_plans + r.seed_patients) / max(r.seed_seconds, 1e-9):,.0f} "
                f"resources/s); store size {r.store_bytes / 2**20:,.1f} MiB.")
    for r in results:
        if r.server_errors:
            listed = "; ".join(f"`{k}` x{v}" for k, v in sorted(
                r.server_errors.items(), key=lambda kv: -kv[1])[:6])
            notes.append(f"- {r.name}: the hub logged errors: {listed}")
    contended = [f"{r.name} {p['label']} ({p['cpu_other_pct']:.0f} %)" for r in results
                 for p in r.phases if (p.get("cpu_other_pct") or 0) > CONTENDED_PCT]
    if contended:
        notes.append(f"- **Contended machine**: other processes used more than {CONTENDED_PCT} % "
                     f"of a core during: {'; '.join(contended)}. Throughput there is a lower "
                     "bound; compare runs on a quiet machine.")
    lines += ["", (f"CPU % is of one core (the machine has {machine['cores']}); db is every "
                   "`postgres` process on the machine; other is the rest of the machine's busy "
                   "time (other users' work, the kernel) in the same window. Drain: how long "
                   "the hub stayed busy after the window (work it deferred, e.g. the audit "
                   "events of reads and searches, written in the background)."),
              "", *notes, ""]
    return report, "\n".join(lines)


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="short windows and a small store")
    p.add_argument("--pg-url", default=os.environ.get("SIP_HUB_TEST_DATABASE_URL")
                   or DEFAULT_PG_URL, help="PostgreSQL to create the run's schema in")
    p.add_argument("--stored", type=int, default=None,
                   help="CarePlans in the store for the large search (default 100000, "
                        "--quick 5000)")
    p.add_argument("--concurrency", type=int, default=32, help="client connections")
    p.add_argument("--workers", type=int, default=2, help="hub worker processes")
    p.add_argument("--warmup", type=float, default=None, help="seconds per operation")
    p.add_argument("--duration", type=float, default=None, help="seconds per operation")
    p.add_argument("--backends", default="sqlite,postgres",
                   help="comma-separated subset of sqlite,postgres")
    p.add_argument("--out", type=Path, default=BENCH / "results",
                   help="directory for latest.json and latest.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = Plan.from_args(args)
    wanted = {b.strip() for b in args.backends.split(",") if b.strip()}
    machine = sysinfo.machine(REPO)
    log(f"floor: {plan.floor_seconds:g} s of validate as published, with the hub's checks, "
        "then of prepare")
    floor, hub_validate, pipeline = measure_floor(plan.floor_seconds)
    log(f"floor {floor:.0f} ops/s; with the hub's checks {hub_validate:.0f} ops/s; "
        f"prepare (in-memory) {pipeline:.0f} ops/s")
    results: list[BackendResult] = []
    with tempfile.TemporaryDirectory(prefix="sip-hub-bench-") as tmpdir:
        tmp = Path(tmpdir)
        if "sqlite" in wanted:
            with sqlite_backend(tmp) as backend:
                results.append(bench_backend(backend, plan, tmp))
        if "postgres" in wanted:
            with postgres_backend(args.pg_url, tmp) as pg:
                if pg is None:
                    results.append(BackendResult("postgres", skipped="unreachable"))
                else:
                    results.append(bench_backend(pg, plan, tmp))
    machine["loadavg_at_end"] = list(os.getloadavg())
    report, markdown = build_report(machine, plan, floor, hub_validate, pipeline, results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    (args.out / "latest.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
