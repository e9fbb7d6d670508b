"""A message's write transaction on the store, on one connection: how many a second, and
the CPU of the database and of this process per transaction, against a floor in the same run.

This is a benchmark, not a test: it measures and reports, it does not assert.

    .venv/bin/python bench/writes.py            # ~2 minutes
    .venv/bin/python bench/writes.py --quick    # ~1 minute

The transaction is what a routed message writes through the store (``Store.begin``): in a
savepoint, a Patient created or updated (its version, history and search index rows), an
AuditEvent, the patient's grants read, and a message enqueued to four organisations (its
outbox row, the four streams' sequence numbers, four deliveries, the workers' wake-up). No
HTTP, validation or rules: the store's statements and their round trips only. Each backend
is measured back to back on one thread as fast as it goes (closed loop), then at a fixed
100 a second (CPU per transaction where the database is not saturated), each the best of
three windows (the fastest; the least CPU).

The floor, in the same run and database: one INSERT of the same message's bytes committed on
its own (autocommit) on the driver directly (psycopg's cursor or sqlite3's), the least a
durable write of a message costs. Ratios: floor rate / store rate and store CPU / floor CPU.
PostgreSQL's CPU is every ``postgres`` process's (autovacuum and the WAL writer included);
SQLite's is inside this process. Results: ``bench/results/writes.json`` and ``writes.md``.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402  (the REST benchmark's backends)
import sysinfo  # noqa: E402

from sip_hub.messaging import builder, outbox  # noqa: E402
from sip_hub.store import Store  # noqa: E402
from sip_hub.store.engine import make_engine  # noqa: E402
from sip_hub.store.migrate import upgrade  # noqa: E402

ORGS = [f"SE2321000016-D{k:03d}" for k in range(4)]
PATIENTS = 50
FIXED_RATE = 100.0
SLICES = 3


def _message(i: int) -> dict[str, Any]:
    return builder.message(
        "meeting-rescheduled", fhir_base="http://hub.test/fhir", sender="SE2321000016-1SOC",
        destinations=[builder.Party(o, "urn:bench") for o in ORGS],
        focus=[f"CarePlan/plan{i % PATIENTS}", f"Patient/p{i % PATIENTS}"], resources=[])


def _store_tx(store: Store) -> Callable[[int], None]:
    def one(i: int) -> None:
        pid = f"p{i % PATIENTS}"
        patient = {"resourceType": "Patient", "active": True, "gender": "female",
                   "birthDate": "1990-01-01", "name": [{"family": f"F{i}", "given": ["A"]}],
                   "identifier": [{"system": "http://electronichealth.se/identifier/"
                                   "personnummer", "value": "199001012384"}]}
        with store.begin() as tx, tx.savepoint():
            if tx.current("Patient", pid) is None:
                tx.create(patient, pid)
            else:
                tx.update(patient, pid)
            tx.append_audit([{
                "resourceType": "AuditEvent", "recorded": "2026-12-05T10:00:00Z",
                "type": {"code": "rest"}, "action": "U", "outcome": "0",
                "agent": [{"requestor": True}], "source": {"observer": {}},
                "entity": [{"what": {"reference": f"Patient/{pid}"}}]}])
            tx.grants(pid)
            outbox.enqueue(tx, _message(i), ORGS)
    return one


def _floor_tx(dbapi: Any, postgres: bool) -> Callable[[int], None]:
    """On a connection of its own (``bench_backend``), in autocommit: the INSERT is a
    transaction of its own, one round trip on PostgreSQL."""
    content = orjson.dumps(_message(0))
    if postgres:
        dbapi.autocommit = True
    else:
        dbapi.isolation_level = None
    mark = "%s" if postgres else "?"
    sql = ("INSERT INTO outbox_message (message_id, event, kind, patient_id, careplan_id, "
           f"created, content) VALUES ({', '.join([mark] * 7)})")

    def one(i: int) -> None:
        cur = dbapi.cursor()
        cur.execute(sql, (f"floor-{i}", "ev", "notification", "p", "c", i, content))
        cur.close()
    return one


def _cpu(db_comm: str | None) -> tuple[dict[int, int], float]:
    use = resource.getrusage(resource.RUSAGE_SELF)
    return (sysinfo.named_cpu_ticks(db_comm) if db_comm else {}), use.ru_utime + use.ru_stime


def _measure(one: Callable[[int], None], start: int, seconds: float, rate: float | None,
             db_comm: str | None) -> dict[str, float]:
    """Transactions back to back (``rate`` None) or at ``rate`` a second for ``seconds``."""
    db0, me0 = _cpu(db_comm)
    t0, n = time.monotonic(), 0
    while (now := time.monotonic()) - t0 < seconds:
        if rate is not None and (wait := t0 + n / rate - now) > 0:
            time.sleep(wait)
        one(start + n)
        n += 1
    elapsed = time.monotonic() - t0
    db1, me1 = _cpu(db_comm)
    db_s = sysinfo.named_cpu_delta(db0, db1) if db_comm else 0.0
    return {"tx": n, "per_s": round(n / elapsed, 1),
            "db_cpu_ms": round(1000 * db_s / n, 3),
            "client_cpu_ms": round(1000 * (me1 - me0) / n, 3),
            "cpu_ms": round(1000 * (db_s + me1 - me0) / n, 3)}


def bench_backend(backend: run.Backend, seconds: float) -> dict[str, Any]:
    engine = make_engine(backend.url)
    upgrade(engine)
    store = Store(engine)
    # The floor's connection, set up as the store's (SQLite's pragmas), outside its pool.
    floor_engine = make_engine(backend.url, pool_size=1)
    floor_conn = floor_engine.raw_connection()
    out: dict[str, Any] = {"name": backend.name, "server_version": backend.server_version}
    try:
        for label, one in (("floor", _floor_tx(floor_conn.driver_connection,
                                               engine.dialect.name == "postgresql")),
                           ("store", _store_tx(store))):
            for i in range(200):  # warm: caches, prepared statements, the patients created
                one(10**9 + i)
            # Best of SLICES windows each (fastest; least CPU): other load on a shared
            # machine only ever slows a window down.
            closed = [_measure(one, k * 10**6, seconds, None, backend.db_comm)
                      for k in range(SLICES)]
            fixed = [_measure(one, (SLICES + k) * 10**6, seconds, FIXED_RATE, backend.db_comm)
                     for k in range(SLICES)]
            out[label] = {"closed": max(closed, key=lambda m: m["per_s"]),
                          f"at_{FIXED_RATE:.0f}": min(fixed, key=lambda m: m["cpu_ms"])}
            run.log(f"{backend.name} {label}: {out[label]}")
    finally:
        floor_conn.close()
        floor_engine.dispose()
        engine.dispose()
    floor, hub = out["floor"], out["store"]
    out["rate_ratio"] = round(floor["closed"]["per_s"] / hub["closed"]["per_s"], 2)
    out["cpu_ratio"] = round(hub["closed"]["cpu_ms"] / floor["closed"]["cpu_ms"], 2)
    fixed = f"at_{FIXED_RATE:.0f}"
    out["cpu_ratio_" + fixed] = round(hub[fixed]["cpu_ms"] / floor[fixed]["cpu_ms"], 2)
    return out


def report(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    fixed = f"at_{FIXED_RATE:.0f}"
    lines = [f"Store write transactions, hub {machine['hub_commit']}, {machine['cpu']}, "
             f"{machine['cores']} cores, {machine['date']}",
             "", "| backend | store tx/s | floor tx/s | floor / store | store CPU ms / tx "
             "(db + client) | floor CPU ms / tx | store / floor | the same at "
             f"{FIXED_RATE:.0f}/s: store, floor, ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        s, f = r["store"], r["floor"]
        c = s["closed"]
        lines.append(
            f"| {r['server_version']} | {c['per_s']:,.0f} | {f['closed']['per_s']:,.0f} | "
            f"{r['rate_ratio']} | {c['cpu_ms']} ({c['db_cpu_ms']} + {c['client_cpu_ms']}) | "
            f"{f['closed']['cpu_ms']} | {r['cpu_ratio']} | {s[fixed]['cpu_ms']}, "
            f"{f[fixed]['cpu_ms']}, {r['cpu_ratio_' + fixed]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--quick", action="store_true", help="2 s windows instead of 5")
    p.add_argument("--pg-url", default=run.DEFAULT_PG_URL)
    p.add_argument("--backends", default="sqlite,postgres")
    p.add_argument("--out", type=Path, default=BENCH / "results")
    args = p.parse_args(argv)
    seconds = 2.0 if args.quick else 5.0
    wanted = set(args.backends.split(","))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="sip-hub-writes-") as tmpdir:
        tmp = Path(tmpdir)
        if "sqlite" in wanted:
            with run.sqlite_backend(tmp) as backend:
                results.append(bench_backend(backend, seconds))
        if "postgres" in wanted:
            with run.postgres_backend(args.pg_url, tmp) as pg:
                if pg is not None:
                    results.append(bench_backend(pg, seconds))
    machine = sysinfo.machine(REPO)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "writes.json").write_bytes(orjson.dumps(
        {"machine": machine, "seconds": seconds, "backends": results},
        option=orjson.OPT_INDENT_2))
    markdown = report(results, machine)
    (args.out / "writes.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
