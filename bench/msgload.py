"""The messaging load client: messages POSTed to ``$process-message``, followed to their receipt.

Run by ``bench/messaging.py`` as ``python bench/msgload.py CONFIG.json RESULT.json``; not
meant to be run by hand. One aiohttp session (on uvloop when available). Each message is
one of the per-SIP templates of the config with a new Bundle.id, MessageHeader.id, meeting time
(one of ``slots``) and token filled in; the token is how the receiver (``bench/receiver.py``)
names what it got, so the client knows when each message has reached all ``orgs``
organisations. A SIP has one message on its way to the hub at a time (messages about one SIP
from one sender follow each other, and two at once would race to change the same meeting): a
message waits for a free SIP, and its latency includes the wait.

Phases (``mode``), each a warm-up (sent, not recorded) and a measurement window of fixed
duration; a message counts when it is sent (closed loop) or due (open loop) inside the window:

* ``closed``: ``concurrency`` connections, each POSTing back to back.
* ``open``: one message every 1/rate seconds whatever the answers, with ``rate`` given or
  ``rate_fraction`` of the sustained rate of the last closed phase; latency counts from when
  the message was due, so a slow hub cannot hide its queueing (no coordinated omission). At
  most ``max_in_flight`` requests are outstanding; messages due beyond that are ``dropped``.

After each window the client waits (at most ``drain_max_seconds``) until every accepted
message has reached every organisation, then reports, per phase: messages accepted per second
(POST answered 200 with response code ``ok``); messages fully delivered per second (the last
of the ``orgs`` receipts inside the window); the sustained rate (the window's messages that
reached everyone, over the time from the window's start until the last of them did: a
backlog the hub works off after the window counts against it); the end-to-end latency from
POST (or due time) to the last receipt; the POST latency alone; errors; duplicates the
receiver dropped; and the CPU shares of the load client, the hub's processes, the receiver,
the database and the broker over the window; and the hub's CPU (with the database's and
the broker's) per message, from the window's start until its backlog was worked off.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent))
import payloads  # noqa: E402
import sysinfo  # noqa: E402
from load import MAX_ERROR_SAMPLES, runner_factory, percentile  # noqa: E402

Json = dict[str, Any]
HEADERS = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
POLL_SECONDS = 0.05          # how often the receiver is asked for new receipts while draining
STALL_SECONDS = 30.0         # give up draining when no receipt came for this long
RESEND_SECONDS = 0.2         # after a transient-error (back-pressure), send the message again
RESEND_MAX = 100


SLOWEST = 12  # the slowest POSTs a phase reports, with when they were due


@dataclass(slots=True)
class Sent:
    """One message: when it was due, when its POST started and ended, what the hub said, and
    when its receipts came."""
    phase: int
    due: float
    start: float
    answered: float = 0.0
    ok: bool = False
    receipts: int = 0
    last: float = 0.0


@dataclass(slots=True)
class Window:
    start: float
    end: float
    errors: dict[str, int] = field(default_factory=dict)
    error_samples: list[str] = field(default_factory=list)
    dropped: int = 0
    resent: int = 0  # answered transient-error (the hub's back-pressure) and sent again

    def inside(self, t: float) -> bool:
        return self.start <= t < self.end

    def error(self, key: str, sample: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(f"{key}: {sample}")


@dataclass(slots=True)
class Cpu:
    """CPU seconds so far of each party (``db`` and ``broker`` by process name)."""
    wall: float
    client: float
    hub: float
    receiver: float
    db: dict[int, int] | None
    broker: dict[int, int] | None
    busy: float


def _named(before: dict[int, int] | None, after: dict[int, int] | None) -> float:
    return sysinfo.named_cpu_delta(before, after) if before is not None and after is not None \
        else 0.0


def _response_code(body: bytes) -> str | None:
    try:
        header = orjson.loads(body)["entry"][0]["resource"]
        return str(header["response"]["code"])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return None


def _diagnostics(body: bytes) -> str:
    """What the hub said was wrong: the OperationOutcome's diagnostics (of the response
    message, or of the body itself), else the start of the body."""
    try:
        data = orjson.loads(body)
        found = [data] + [e.get("resource", {}) for e in data.get("entry", [])]
        outcome = next(r for r in found if r.get("resourceType") == "OperationOutcome")
        return "; ".join(str(i.get("diagnostics", "")) for i in outcome["issue"])[:300]
    except (orjson.JSONDecodeError, AttributeError, StopIteration, KeyError, TypeError):
        return body[:300].decode("utf-8", "replace")


class Client:
    def __init__(self, config: Json, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.url = URL(f"{config['base_url'].rstrip('/')}/fhir/$process-message", encoded=True)
        self.receipts_url = f"{config['receiver_url'].rstrip('/')}/_receipts"
        self.headers = {**HEADERS, "Authorization": f"Bearer {config['token']}"}
        self.templates = [t.encode() for t in config["templates"]]
        self.slots = [(a.encode(), b.encode()) for a, b in config["slots"]]
        self.free: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(self.templates)):
            self.free.put_nowait(i)
        self.orgs: int = config["orgs"]
        self.hub_pids: list[int] = config["hub_pids"]
        self.receiver_pid: int = config["receiver_pid"]
        self.db_comm: str | None = config.get("db_comm")
        self.broker_comm: str | None = config.get("broker_comm")
        self.drain_max: float = float(config.get("drain_max_seconds", 120))
        self.sent: dict[str, Sent] = {}
        self.turn = 0
        self.receipts_seen = 0
        self.duplicates = 0

    # -- one message --------------------------------------------------------------------------
    def body(self, sip: int) -> tuple[str, bytes]:
        """A new message from the SIP's template: (its token, the Bundle)."""
        start, end = self.slots[self.turn % len(self.slots)]
        self.turn += 1
        token = f"bm{uuid.uuid4().hex}"
        return token, (self.templates[sip].replace(payloads.TOKEN.encode(), token.encode())
                       .replace(payloads.START.encode(), start)
                       .replace(payloads.END.encode(), end)
                       .replace(payloads.HEADER_ID.encode(), str(uuid.uuid4()).encode())
                       .replace(payloads.BUNDLE_ID.encode(), str(uuid.uuid4()).encode()))

    async def send(self, phase: int, window: Window, due: float) -> None:
        sip = await self.free.get()
        try:
            await self._send(sip, phase, window, due)
        finally:
            self.free.put_nowait(sip)

    async def _send(self, sip: int, phase: int, window: Window, due: float) -> None:
        token, body = self.body(sip)
        sent = self.sent[token] = Sent(phase, due, time.monotonic())
        counted = window.inside(due)
        for attempt in range(RESEND_MAX + 1):
            try:
                async with self.session.post(self.url, data=body, headers=self.headers) as resp:
                    status, answer = resp.status, await resp.read()
            except (TimeoutError, aiohttp.ClientError) as exc:
                if counted:
                    window.error(type(exc).__name__, str(exc)[:300])
                return
            code = _response_code(answer) if status == 200 else None
            if code != "transient-error" or attempt == RESEND_MAX:
                break
            # Back-pressure: a sender tries the same message again a little later (its
            # latency keeps counting from when it was first due).
            if counted:
                window.resent += 1
            await asyncio.sleep(RESEND_SECONDS)
        sent.answered = time.monotonic()
        sent.ok = code == "ok"
        if counted and not sent.ok:
            window.error(f"{status} {code or ''}".strip(), _diagnostics(answer))

    # -- receipts -----------------------------------------------------------------------------
    async def fetch_receipts(self) -> None:
        async with self.session.get(self.receipts_url,
                                    params={"since": str(self.receipts_seen)}) as resp:
            data = orjson.loads(await resp.read())
        self.duplicates = int(data["duplicates"])
        for _org, token, t in data["rows"]:
            sent = self.sent.get(token) if token else None
            if sent is not None:
                sent.receipts += 1
                sent.last = max(sent.last, t)
        self.receipts_seen += len(data["rows"])

    async def drain(self) -> tuple[float, int]:
        """Wait until every accepted message has reached every organisation: (seconds
        waited, messages still short of receipts when giving up)."""
        start = last_progress = time.monotonic()
        seen = -1
        while True:
            await self.fetch_receipts()
            short = sum(1 for s in self.sent.values() if s.ok and s.receipts < self.orgs)
            now = time.monotonic()
            if short == 0:
                return now - start, 0
            if self.receipts_seen != seen:
                seen, last_progress = self.receipts_seen, now
            if now - start > self.drain_max or now - last_progress > STALL_SECONDS:
                return now - start, short
            await asyncio.sleep(POLL_SECONDS)

    # -- CPU ------------------------------------------------------------------------------------
    def cpu(self) -> Cpu:
        """Every party's CPU so far, from one pass over /proc. Taken in a thread of its own
        (``sampled``): in the event loop, its passes (one per party, under load tens of
        milliseconds) held back the messages due at the window's start, which then went
        late and together, the slowest POSTs of the open loops."""
        stats = sysinfo.all_stats()
        return Cpu(time.monotonic(), time.process_time(),
                   sum(sysinfo.tree_cpu_seconds(p, stats) for p in self.hub_pids),
                   sysinfo.tree_cpu_seconds(self.receiver_pid, stats),
                   sysinfo.named_cpu_ticks(self.db_comm, stats) if self.db_comm else None,
                   sysinfo.named_cpu_ticks(self.broker_comm, stats) if self.broker_comm
                   else None,
                   sysinfo.machine_busy_seconds())

    # -- phases -----------------------------------------------------------------------------------
    async def closed(self, phase: int, window: Window, concurrency: int) -> None:
        async def connection() -> None:
            while (now := time.monotonic()) < window.end:
                await self.send(phase, window, now)
        await asyncio.gather(*(connection() for _ in range(concurrency)))

    async def open(self, phase: int, window: Window, rate: float, begin: float,
                   max_in_flight: int) -> None:
        in_flight: set[asyncio.Task[None]] = set()
        i = 0
        while (due := begin + i / rate) < window.end:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            i += 1
            if len(in_flight) >= max_in_flight:
                if window.inside(due):
                    window.dropped += 1
                continue
            task = asyncio.create_task(self.send(phase, window, due))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(in_flight, timeout=self.drain_max)

    async def run_phase(self, index: int, phase: Json, last_closed: Json | None) -> Json:
        warmup, duration = float(phase["warmup"]), float(phase["duration"])
        rate = None
        if phase["mode"] == "open":
            rate = phase.get("rate")
            if rate is None:
                if last_closed is None:
                    raise SystemExit("msgload: an open phase needs a rate or an earlier closed "
                                     "phase")
                rate = max(1.0, float(phase["rate_fraction"]) * last_closed["sustained_per_s"])
        begin = time.monotonic()
        window = Window(begin + warmup, begin + warmup + duration)

        async def sampler() -> tuple[Cpu, Cpu]:
            await asyncio.sleep(max(0.0, window.start - time.monotonic()))
            first = await asyncio.to_thread(self.cpu)
            await asyncio.sleep(max(0.0, window.end - time.monotonic()))
            return first, await asyncio.to_thread(self.cpu)

        sampled = asyncio.create_task(sampler())
        if phase["mode"] == "closed":
            await self.closed(index, window, int(phase["concurrency"]))
        else:
            assert rate is not None
            await self.open(index, window, float(rate), begin,
                            int(phase.get("max_in_flight", 512)))
        c0, c1 = await sampled
        duplicates_before = self.duplicates
        drain_s, undelivered = await self.drain()
        c2 = self.cpu()
        return self.summarise(index, phase, window, rate, (c0, c1, c2), drain_s, undelivered,
                              self.duplicates - duplicates_before)

    def summarise(self, index: int, phase: Json, window: Window, rate: float | None,
                  cpu: tuple[Cpu, Cpu, Cpu], drain_s: float, undelivered: int,
                  duplicates: int) -> Json:
        """The phase's figures; ``cpu`` at the window's start and end and after the drain."""
        c0, c1, c2 = cpu
        seconds = window.end - window.start
        mine = [s for s in self.sent.values() if s.phase == index and window.inside(s.due)]
        ok = [s for s in mine if s.ok]
        done = [s for s in ok if s.receipts >= self.orgs]
        # Messages (of any phase, warm-up included) whose last receipt came inside the window.
        completed_in_window = sum(1 for s in self.sent.values()
                                  if s.receipts >= self.orgs and window.inside(s.last))
        e2e = sorted(int((s.last - s.due) * 1e9) for s in done)
        post = sorted(int((s.answered - s.due) * 1e9) for s in ok)
        accepted_per_s = len(ok) / seconds
        delivered_per_s = completed_in_window / seconds
        # The window's messages over the time until the last of them had reached everyone:
        # what the hub sustains end to end (a backlog it only works off later counts).
        finished = max((s.last for s in done), default=window.end)
        sustained_per_s = len(done) / max(seconds, finished - window.start)
        wall = c1.wall - c0.wall

        def pct(cpu_seconds: float | None) -> float | None:
            return None if cpu_seconds is None or wall <= 0 else \
                round(100 * cpu_seconds / wall, 1)

        client, hub, receiver = (c1.client - c0.client, c1.hub - c0.hub,
                                 c1.receiver - c0.receiver)
        db = (sysinfo.named_cpu_delta(c0.db, c1.db)
              if c0.db is not None and c1.db is not None else None)
        broker = (sysinfo.named_cpu_delta(c0.broker, c1.broker)
                  if c0.broker is not None and c1.broker is not None else None)
        other = max(0.0, (c1.busy - c0.busy) - client - hub - receiver - (db or 0.0)
                    - (broker or 0.0))
        # The hub's cost per message: its CPU (with database and broker) from the window's
        # start until its backlog was worked off, over the messages completed meanwhile.
        system = (c2.hub - c0.hub) + _named(c0.db, c2.db) + _named(c0.broker, c2.broker)
        completed = sum(1 for s in self.sent.values() if s.receipts >= self.orgs
                        and window.start <= s.last <= c2.wall)
        return {
            "label": phase["label"],
            "mode": phase["mode"],
            "concurrency": phase.get("concurrency"),
            "rate": round(rate, 1) if rate is not None else None,
            "rate_fraction": phase.get("rate_fraction"),
            "seconds": round(seconds, 2),
            "sent": len(mine),
            "accepted": len(ok),
            "delivered": len(done),
            "undelivered": undelivered,
            "dropped": window.dropped,
            "resent": window.resent,
            "accepted_per_s": round(accepted_per_s, 1),
            "delivered_per_s": round(delivered_per_s, 1),
            "sustained_per_s": round(sustained_per_s, 1),
            "e2e_p50_ms": percentile(e2e, 0.50),
            "e2e_p90_ms": percentile(e2e, 0.90),
            "e2e_p99_ms": percentile(e2e, 0.99),
            "e2e_max_ms": round(e2e[-1] / 1e6, 2) if e2e else None,
            "post_p50_ms": percentile(post, 0.50),
            "post_p99_ms": percentile(post, 0.99),
            # When the window started (wall clock, to match with logs), and its slowest POSTs:
            # when each was due (seconds into the window), its POST's and its receipts'
            # latency (ms). Slow ones due together are a stall of the machine or of a process,
            # slow ones spread out are queueing.
            "window_start_unix": round(time.time() - (time.monotonic() - window.start), 3),
            "post_slowest": [
                [round(s.due - window.start, 3), round((s.answered - s.due) * 1000, 1),
                 round((s.last - s.due) * 1000, 1) if s.receipts >= self.orgs else None]
                for s in sorted(ok, key=lambda s: s.answered - s.due)[-SLOWEST:]],
            "errors": sum(window.errors.values()),
            "errors_by_kind": window.errors,
            "error_samples": window.error_samples,
            "duplicates": duplicates,
            "drain_s": round(drain_s, 2),
            # Percent of one core; the machine has os.cpu_count() of them.
            "cpu_client_pct": pct(client),
            "cpu_hub_pct": pct(hub),
            "cpu_receiver_pct": pct(receiver),
            "cpu_db_pct": pct(db),
            "cpu_broker_pct": pct(broker),
            "cpu_other_pct": pct(other),
            "cpu_ms_per_msg": round(1000 * system / completed, 2) if completed else None,
        }


async def main(config: Json) -> list[Json]:
    limit = max(int(p.get("concurrency") or p.get("max_in_flight", 512))
                for p in config["phases"])
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=60,
                                     ttl_dns_cache=None)
    timeout = aiohttp.ClientTimeout(total=float(config.get("timeout", 60)))
    results: list[Json] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout,
                                     skip_auto_headers=("User-Agent",),
                                     auto_decompress=False) as session:
        client = Client(config, session)
        last_closed: Json | None = None
        for i, phase in enumerate(config["phases"]):
            result = await client.run_phase(i, phase, last_closed)
            if phase["mode"] == "closed":
                last_closed = result
            results.append(result)
            print(f"  {result['label']:<38} accepted {result['accepted_per_s']:>7.1f}/s  "
                  f"delivered {result['delivered_per_s']:>7.1f}/s  e2e p50 "
                  f"{result['e2e_p50_ms']} p99 {result['e2e_p99_ms']} ms  errors "
                  f"{result['errors']}  resent {result['resent']}  undelivered "
                  f"{result['undelivered']}  cpu "
                  f"client/hub/recv/db/broker/other {result['cpu_client_pct']}/"
                  f"{result['cpu_hub_pct']}/{result['cpu_receiver_pct']}/"
                  f"{result['cpu_db_pct']}/{result['cpu_broker_pct']}/"
                  f"{result['cpu_other_pct']} %  drain {result['drain_s']} s",
                  file=sys.stderr, flush=True)
    return results


if __name__ == "__main__":
    cfg = orjson.loads(Path(sys.argv[1]).read_bytes())
    with asyncio.Runner(loop_factory=runner_factory()) as runner:
        out = runner.run(main(cfg))
    Path(sys.argv[2]).write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
