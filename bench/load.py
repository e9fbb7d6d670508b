"""The load client: concurrent keep-alive HTTP connections driving the hub, in its own process.

Run by ``bench/run.py`` as ``python bench/load.py CONFIG.json RESULT.json``; not meant to be run
by hand. One aiohttp session (on uvloop when available) with ``concurrency`` connections; each
connection is one coroutine issuing requests back to back (closed loop). Every phase runs a
warm-up (requests sent, not recorded) and then a measurement window of fixed duration; a
request counts when it starts inside the window. Non-2xx answers and transport errors are
errors. The client's own CPU time and the hub's (server process tree, plus PostgreSQL
backends when asked) are sampled over each window from ``/proc``. After each window the client
waits until the hub is idle again and reports how long that took ("drain": work the hub
deferred, such as the audit events of reads, which it writes in the background), so that one
phase's deferred work does not land in the next one's window.

Operations (``op``):

Every request carries the bearer token of the config (``token``), as a real client's would.

* ``create``  POST /fhir/CarePlan, a complete draft SIP CarePlan of one of ``create_patients``
* ``read``    GET /fhir/CarePlan/{id}, ids created by this process's create phases
* ``search``  GET /fhir/CarePlan?patient=Patient/{id}, patients of the phase's ``patients``
* ``update``  PUT /fhir/CarePlan/{id} with If-Match, each connection on its own created ids,
              starting from the hub's last answer: a progress note and one intervention's
              status
"""

from __future__ import annotations

import asyncio
import math
import random
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent))
import payloads  # noqa: E402
import sysinfo  # noqa: E402

FHIR_JSON = "application/fhir+json"
MAX_ERROR_SAMPLES = 3
DRAIN_MAX_SECONDS = 180.0   # bound on waiting for the hub to finish deferred work
DRAIN_IDLE_SHARE = 0.10     # the hub is idle below this share of one core
DRAIN_STEP = 0.5

Op = Callable[[], Awaitable[tuple[int, bytes]]]
"""One request of one connection: returns (status, body)."""


@dataclass(slots=True)
class Created:
    rid: str
    version: int
    body: bytes  # the hub's latest representation, which the next update starts from


@dataclass(slots=True)
class Window:
    """Latencies and errors of the requests started inside one measurement window."""
    start: float
    end: float
    latencies_ns: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    response_bytes: int = 0

    def record(self, started: float, elapsed_ns: int, status: int, body: bytes) -> None:
        if not self.start <= started < self.end:
            return
        self.latencies_ns.append(elapsed_ns)
        self.response_bytes += len(body)
        if not 200 <= status < 300:
            self.error(str(status), body[:300].decode("utf-8", "replace"))

    def error(self, key: str, sample: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(f"{key}: {sample}")


@dataclass(slots=True)
class Snapshot:
    wall: float
    client_cpu: float
    hub_cpu: float
    db_ticks: dict[int, int] | None
    busy: float

    @classmethod
    def take(cls, server_pid: int, db_comm: str | None) -> Snapshot:
        return cls(time.perf_counter(), time.process_time(), sysinfo.tree_cpu_seconds(server_pid),
                   sysinfo.named_cpu_ticks(db_comm) if db_comm else None,
                   sysinfo.machine_busy_seconds())


def percentile(sorted_ns: list[int], q: float) -> float | None:
    """Nearest-rank percentile in milliseconds."""
    if not sorted_ns:
        return None
    rank = max(1, math.ceil(q * len(sorted_ns)))
    return round(sorted_ns[rank - 1] / 1e6, 2)


class Client:
    def __init__(self, config: dict[str, Any], session: aiohttp.ClientSession) -> None:
        self.session = session
        self.base = config["base_url"].rstrip("/")
        self.concurrency: int = config["concurrency"]
        self.server_pid: int = config["server_pid"]
        self.db_comm: str | None = config.get("db_comm")
        auth = {"Authorization": f"Bearer {config['token']}"} if config.get("token") else {}
        self.get_headers = {"Accept": FHIR_JSON, **auth}
        self.send_headers = {**self.get_headers, "Content-Type": FHIR_JSON}
        self.patients: list[str] = config.get("create_patients", [])
        # One body per patient, serialised once: the client must stay cheap.
        self.create_bodies = [orjson.dumps(payloads.careplan(pid)) for pid in self.patients]
        self.create_url = URL(f"{self.base}/fhir/CarePlan", encoded=True)
        self.created: list[Created] = []

    # -- operations: each returns (status, body) ------------------------------------------
    async def _send(self, method: str, url: URL, headers: dict[str, str],
                    data: bytes | None = None) -> tuple[int, bytes, Any]:
        async with self.session.request(method, url, headers=headers, data=data) as resp:
            return resp.status, await resp.read(), resp.headers

    def targets(self, phase: dict[str, Any]) -> list[URL]:
        """The URLs a read or search phase picks from at random, built once per phase."""
        if phase["op"] == "read":
            return [URL(f"{self.base}/fhir/CarePlan/{c.rid}", encoded=True)
                    for c in self.created]
        if phase["op"] == "search":
            return [URL(f"{self.base}/fhir/CarePlan?patient=Patient/{pid}", encoded=True)
                    for pid in phase["patients"]]
        return []

    def make_op(self, op: str, worker: int, targets: list[URL]) -> Op | None:
        """The request loop body of one connection; None when it has nothing to do."""
        if op == "create":
            counter = [worker]

            async def create() -> tuple[int, bytes]:
                i = counter[0] % len(self.create_bodies)
                counter[0] += self.concurrency
                status, body, headers = await self._send("POST", self.create_url,
                                                         self.send_headers,
                                                         self.create_bodies[i])
                loc = headers.get("Location", "")
                if status == 201 and "/_history/" in loc:
                    self.created.append(Created(loc.split("/")[-3], 1, body))
                return status, body
            return create if self.create_bodies else None
        if op in ("read", "search"):
            rng = random.Random(worker)

            async def get() -> tuple[int, bytes]:
                status, body, _ = await self._send("GET", rng.choice(targets),
                                                  self.get_headers)
                return status, body
            return get if targets else None
        if op == "update":
            # Disjoint ids per connection: an If-Match conflict would be the hub's fault.
            mine = self.created[worker::self.concurrency]
            turn = [0]

            async def update() -> tuple[int, bytes]:
                item = mine[turn[0] % len(mine)]
                turn[0] += 1
                plan = revised(item.body, item.version + 1)
                headers = {**self.send_headers, "If-Match": f'W/"{item.version}"'}
                url = URL(f"{self.base}/fhir/CarePlan/{item.rid}", encoded=True)
                status, body, resp_headers = await self._send("PUT", url, headers,
                                                              orjson.dumps(plan))
                etag = resp_headers.get("ETag", "")
                if status == 200 and etag.startswith('W/"'):
                    item.version, item.body = int(etag[3:-1]), body
                return status, body
            return update if mine else None
        raise ValueError(f"unknown op {op!r}")

    # -- one phase -------------------------------------------------------------------------
    async def run_phase(self, phase: dict[str, Any]) -> dict[str, Any]:
        warmup, duration = float(phase["warmup"]), float(phase["duration"])
        begin = time.perf_counter()
        window = Window(begin + warmup, begin + warmup + duration)
        targets = self.targets(phase)
        ops = [op for w in range(self.concurrency)
               if (op := self.make_op(phase["op"], w, targets)) is not None]
        if not ops:
            raise SystemExit(f"load: phase {phase['label']!r} has nothing to do")

        async def worker(op: Op) -> None:
            while (started := time.perf_counter()) < window.end:
                t0 = time.perf_counter_ns()
                try:
                    status, body = await op()
                except (TimeoutError, aiohttp.ClientError) as exc:
                    if window.start <= started < window.end:
                        window.error(type(exc).__name__, str(exc)[:300])
                    continue
                window.record(started, time.perf_counter_ns() - t0, status, body)

        async def sampler() -> tuple[Snapshot, Snapshot]:
            await asyncio.sleep(max(0.0, window.start - time.perf_counter()))
            first = Snapshot.take(self.server_pid, self.db_comm)
            await asyncio.sleep(max(0.0, window.end - time.perf_counter()))
            return first, Snapshot.take(self.server_pid, self.db_comm)

        sampled = asyncio.create_task(sampler())
        await asyncio.gather(*(worker(op) for op in ops))
        s0, s1 = await sampled
        result = summarise(phase, window, s0, s1)
        result["drain_s"], result["drain_hub_cpu_s"] = await self.drain()
        return result

    async def drain(self) -> tuple[float, float]:
        """Wait until the hub is idle (deferred work such as queued audit events done):
        (seconds waited, hub CPU seconds spent meanwhile), bounded by DRAIN_MAX_SECONDS."""
        start = time.perf_counter()
        first = last = sysinfo.tree_cpu_seconds(self.server_pid)
        while time.perf_counter() - start < DRAIN_MAX_SECONDS:
            await asyncio.sleep(DRAIN_STEP)
            now = sysinfo.tree_cpu_seconds(self.server_pid)
            if now - last < DRAIN_IDLE_SHARE * DRAIN_STEP:
                break
            last = now
        waited = time.perf_counter() - start - DRAIN_STEP
        return round(max(0.0, waited), 1), round(last - first, 1)


def revised(current: bytes, version: int) -> dict[str, Any]:
    """A day-to-day change to a SIP plan (one that an established plan takes without the
    person's new approval too): the coordinator records progress (a note, one
    intervention's status)."""
    plan: dict[str, Any] = orjson.loads(current)
    plan["note"] = [{"time": "2026-12-01T10:00:00+01:00",
                     "text": f"Uppföljning {version}: insatserna pågår enligt plan."}]
    detail = plan["activity"][0]["detail"]
    detail["status"] = "on-hold" if detail.get("status") == "in-progress" else "in-progress"
    return plan


def summarise(phase: dict[str, Any], window: Window, s0: Snapshot, s1: Snapshot
              ) -> dict[str, Any]:
    lat = sorted(window.latencies_ns)
    seconds = window.end - window.start
    wall = s1.wall - s0.wall
    n = len(lat)

    def pct(seconds: float | None) -> float | None:
        return None if seconds is None or wall <= 0 else round(100 * seconds / wall, 1)

    client = s1.client_cpu - s0.client_cpu
    hub = s1.hub_cpu - s0.hub_cpu
    db = (sysinfo.named_cpu_delta(s0.db_ticks, s1.db_ticks)
          if s0.db_ticks is not None and s1.db_ticks is not None else None)
    # Everything else the machine did meanwhile (other users' processes, the kernel ...).
    other = max(0.0, (s1.busy - s0.busy) - client - hub - (db or 0.0))

    return {
        "label": phase["label"],
        "op": phase["op"],
        "requests": n,
        "seconds": round(seconds, 2),
        "rps": round(n / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": percentile(lat, 0.50),
        "p90_ms": percentile(lat, 0.90),
        "p99_ms": percentile(lat, 0.99),
        "max_ms": round(lat[-1] / 1e6, 2) if lat else None,
        "errors": sum(window.errors.values()),
        "errors_by_status": window.errors,
        "error_samples": window.error_samples,
        "mean_response_bytes": round(window.response_bytes / n) if n else 0,
        # Percent of one core; the machine has os.cpu_count() of them.
        "cpu_client_pct": pct(client),
        "cpu_hub_pct": pct(hub),
        "cpu_db_pct": pct(db),
        "cpu_other_pct": pct(other),
    }


async def main(config: dict[str, Any]) -> list[dict[str, Any]]:
    conc = int(config["concurrency"])
    connector = aiohttp.TCPConnector(limit=conc, limit_per_host=conc, keepalive_timeout=60,
                                     ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=float(config.get("timeout", 60)))
    results = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     skip_auto_headers=("User-Agent",),
                                     auto_decompress=False) as session:
        client = Client(config, session)
        for phase in config["phases"]:
            result = await client.run_phase(phase)
            results.append(result)
            print(f"  {result['label']:<34} {result['rps']:>8.1f} req/s  "
                  f"p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms  "
                  f"errors {result['errors']}  cpu client/hub/db/other "
                  f"{result['cpu_client_pct']}/{result['cpu_hub_pct']}/{result['cpu_db_pct']}/"
                  f"{result['cpu_other_pct']} %  drain {result['drain_s']} s",
                  file=sys.stderr, flush=True)
    return results


def runner_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    cfg = orjson.loads(Path(sys.argv[1]).read_bytes())
    with asyncio.Runner(loop_factory=runner_factory()) as runner:
        out = runner.run(main(cfg))
    Path(sys.argv[2]).write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
