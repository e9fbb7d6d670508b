"""The messaging worker: async ``$process-message`` requests, the relay, delivery, upkeep.

One loop in one thread: each round processes accepted async requests, publishes what is due,
delivers what the organisations' queues hold and, now and then, forgets expired cache entries
and old settled deliveries, and refreshes the planner's statistics of tables that grew.
``sip-hub worker`` runs it in the foreground (``run_worker``); the API process runs it in a
background thread for the embedded default (``Worker.start``).
Several workers may run against one PostgreSQL and RabbitMQ: claims are ``SKIP LOCKED`` and
queues are shared. A delivery blocks its worker for at most its HTTP timeout; run more
workers for more throughput.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable

from .. import heap
from ..audit import AuditLog
from ..bus import Bus, BusUnavailable
from ..errors import TransientError
from ..fhir.dates import now_utc, to_us
from ..metrics import serve_metrics
from ..settings import Settings
from ..store import Store
from ..store import inbox, outbox as sql, statistics, wakeup
from .delivery import Deliverer, Outcome, Received
from .http import HttpClient
from .process_message import process_accepted
from .relay import Relay
from .runtime import Messaging

log = logging.getLogger("sip_hub.worker")
_UPKEEP_SECONDS = 300.0
_FORGET_BATCH = 1000  # expired rows forgotten per transaction (of each kind)
# Transactions of each kind per upkeep: the round's relay and deliveries wait for it, so a
# large backlog of expired rows (a first upkeep after a long stop) is worked off over rounds.
_FORGET_BATCHES = 10
_DAY_US = 86_400_000_000
# After a round with work the worker looks again this soon, then twice as late each idle
# round: up to _HOT_WAIT while it did work in the last _HOT_SECONDS (traffic flows: a new
# message goes out within tens of milliseconds), else up to poll_seconds (an idle worker
# polls the database rarely).
_FIRST_IDLE_WAIT = 0.005
_HOT_WAIT = 0.05
_HOT_SECONDS = 10.0
_OPEN_ORGS_SECONDS = 5.0
# How often the worker looks for tables that outgrew their planner statistics (PostgreSQL;
# store.statistics): a table that doubles is analyzed within this, not within autovacuum's
# minute.
_STATISTICS_SECONDS = 10.0
# While it waits, a worker looks this often whether it is to stop, and, on a broker, takes
# what arrived on its queues within _DRAIN_SLICE.
_STOP_CHECK = 0.05
_DRAIN_SLICE = 0.01
# Messages taken from the queues are delivered together once no further one came within this
# (a relay round's publishes arrive within it), not at the end of a wait for more.
_GATHER = 0.002


class Worker:
    def __init__(self, store: Store, messaging: Messaging, *, audit: AuditLog | None = None,
                 http: HttpClient | None = None) -> None:
        self.store = store
        self.messaging = messaging
        self.audit = audit
        self._http = http or HttpClient()
        self._own_http = http is None
        self._bus: Bus | None = None
        self._relay: Relay | None = None
        self._deliverer = Deliverer(store, messaging.endpoints, messaging.config, self._http)
        self._last_upkeep = 0.0
        self._statistics_at = 0.0
        self._statistics: threading.Thread | None = None
        self._orgs: set[str] = set()
        self._orgs_read_at = float("-inf")
        self._recovered = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: wakeup.Listener | None = None
        # Since when every round has failed (monotonic; None: the last one went through),
        # and when the worker last showed progress (a round begun, a batch delivered, a
        # wait between rounds): what the worker's health check asks.
        self.failing_since: float | None = None
        self.progress_at = time.monotonic()

    def healthy(self) -> bool:
        """Whether rounds go through: failing for three times what a round may take (a
        POST's timeout and a wait between rounds) is a worker that cannot reach the
        database or the broker, though its process (and its metrics server) lives on; no
        progress for as long is a worker stuck in a round (a publish the broker blocks, a
        call that never returns). A long round (slow endpoints, a backlog) is neither: it
        shows progress POST by POST and batch by batch."""
        config = self.messaging.config
        timeout = max(config.timeout_seconds, self.messaging.endpoints.longest_timeout or 0)
        limit = 3 * (timeout + config.poll_seconds)
        now = time.monotonic()
        return now - max(self.progress_at, self._http.progress_at) < limit and (
            self.failing_since is None or now - self.failing_since < limit)

    def _deliver(self, batch: list[Received]) -> list[Outcome]:
        self.progress_at = time.monotonic()
        return self._deliverer.handle_batch(batch)

    # -- one round ----------------------------------------------------------------------------
    def _connect(self) -> Bus:
        if self._bus is None:
            bus = self.messaging.bus()
            relay = Relay(self.store, bus, self.messaging.config.relay_batch,
                          self.messaging.config.republish_after_seconds,
                          endpoints=self.messaging.endpoints, config=self.messaging.config)
            # The in-process bus starts empty with the process (not with a reconnect).
            if not bus.durable and not self._recovered:
                relay.recover()
            self._recovered = True
            self._bus, self._relay = bus, relay
            self._deliverer.bus = bus  # (organisations that consume their own queues)
        return self._bus

    def _disconnect(self) -> None:
        if self._bus is not None:
            self._bus.close()
        self._bus = self._relay = self._deliverer.bus = None

    def run_once(self, drain_seconds: float = 0.01) -> int:
        """One round; returns how much work it did (0: idle). ``drain_seconds``: how long to
        wait for one more message from the bus before the next round (a message arriving
        later is taken then; a long wait only delays the relay)."""
        bus = self._connect()
        assert self._relay is not None
        window = self._relay.window()
        with self.store.begin(write=False) as tx:  # one read for both
            accepted, due = sql.work_due(tx, *window)
        work = process_accepted(self.store, self.messaging, audit=self.audit, waiting=accepted)
        work += self._relay.run_once(window, due)
        orgs = self._open_orgs() | self._relay.orgs | self.messaging.endpoints.orgs
        # A batch as large as the relay's: what one relay round published is checked in one
        # read, POSTed side by side and settled in one write.
        bus.consume_batches(sorted(orgs), self._deliver,
                            batch=self.messaging.config.relay_batch)
        work += bus.drain(timeout=drain_seconds, gather=_GATHER)
        if time.monotonic() - self._last_upkeep > _UPKEEP_SECONDS:
            self._upkeep_in_round()
        if time.monotonic() - self._statistics_at > _STATISTICS_SECONDS:
            self._refresh_statistics()
        return work

    def _refresh_statistics(self) -> None:
        """``statistics.refresh_grown`` in a thread of its own, one at a time: an ANALYZE of
        a grown table takes a tenth of a second or more (the outbox's, under the messaging
        benchmark), several tables' in a row more, and the deliveries this worker holds
        waited for them (the latency's tail). On SQLite there is nothing to refresh."""
        self._statistics_at = time.monotonic()
        if self.store.embedded or (self._statistics is not None and
                                   self._statistics.is_alive()):
            return
        self._statistics = threading.Thread(target=statistics.refresh_grown, args=(self.store,),
                                            name="sip-hub-statistics", daemon=True)
        self._statistics.start()

    def _open_orgs(self) -> set[str]:
        """Organisations with deliveries on their way, as the database says, read again every
        _OPEN_ORGS_SECONDS (with a backlog, the query visits every open delivery: each round
        it cost more than the round's own work). Between reads, the queues this worker's
        relay publishes to are consumed from its first publish; another worker's arrive with
        the next read, and that worker consumes them meanwhile."""
        now = time.monotonic()
        if now - self._orgs_read_at >= _OPEN_ORGS_SECONDS:
            with self.store.begin(write=False) as tx:
                self._orgs = sql.open_orgs(tx)
            self._orgs_read_at = now
        return self._orgs

    def _upkeep_in_round(self) -> None:
        """``upkeep`` as part of a round: one that fails is logged and tried again at the
        next upkeep's time. Failing the round with it failed every round from then on (the
        upkeep was due again at once), and with them the worker's health check."""
        self._last_upkeep = time.monotonic()
        try:
            self.upkeep()
        except Exception:  # noqa: BLE001 (the round's own work goes on)
            log.exception("upkeep failed; tried again in %d s", _UPKEEP_SECONDS)

    def upkeep(self) -> None:
        """Forget expired cache entries and deliveries settled before the retention period,
        ``_FORGET_BATCH`` at a time, each batch a transaction of its own (on SQLite the
        API's writes take turns with them), at most ``_FORGET_BATCHES`` of each kind: with
        more left, the next round's upkeep goes on."""
        now = to_us(now_utc())
        before = max(now - self.messaging.config.retention_days * _DAY_US, 0)
        more = False
        for forget, until in ((inbox.purge_expired, now), (sql.delete_finished, before)):
            for _ in range(_FORGET_BATCHES):
                self.progress_at = time.monotonic()
                with self.store.begin() as tx:
                    if forget(tx, until, _FORGET_BATCH) < _FORGET_BATCH:
                        break
            else:
                more = True
        self._last_upkeep = time.monotonic() - (_UPKEEP_SECONDS if more else 0.0)

    def run(self, stop: threading.Event) -> None:
        """Rounds until ``stop`` is set; waits between idle rounds (see _FIRST_IDLE_WAIT) and
        poll_seconds after a failed one, woken by work as it is committed (``_idle``);
        survives outages."""
        poll = self.messaging.config.poll_seconds
        wait, last_work = 0.0, 0.0
        if self.store.engine.dialect.name == "postgresql" and self._listener is None:
            self._listener = wakeup.Listener(self.store.engine, self.store.work_committed)
        while not stop.is_set():
            # Work committed from here on wakes the next wait: this round may miss it.
            self.store.work_committed.clear()
            self.progress_at = time.monotonic()
            done = self._survive(self.run_once)
            failed, busy = done is None, done or 0
            if failed:
                self.failing_since = self.failing_since or time.monotonic()
            else:
                self.failing_since = None
            if failed:
                wait = poll
            elif busy:
                wait, last_work = 0.0, time.monotonic()
                continue
            else:
                hot = time.monotonic() - last_work < _HOT_SECONDS
                wait = min(_HOT_WAIT if hot else poll, poll, max(_FIRST_IDLE_WAIT, 2 * wait))
            if self._idle(stop, wait, failed):
                wait = 0.0

    def _idle(self, stop: threading.Event, seconds: float, failed: bool) -> bool:
        """Wait up to ``seconds`` between rounds; True when work came meanwhile. Work
        committed in this process, or announced on PostgreSQL (see ``store.wakeup``), ends
        the wait at once; on a broker, messages arriving on the queues this worker consumes
        (another worker's relay publishes to them too) are delivered as they come."""
        woken = self.store.work_committed
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            self.progress_at = time.monotonic()
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if woken.is_set():
                return True
            bus = self._bus
            # Without a queue to consume (no organisation has an endpoint yet) a drain returns
            # at once: waiting on it would spin (half a core for an idle worker, measured).
            if failed or bus is None or not bus.durable or not bus.consuming:
                woken.wait(min(left, _STOP_CHECK))
                continue
            slice_ = min(left, _DRAIN_SLICE)
            done = self._survive(lambda: bus.drain(timeout=slice_, gather=_GATHER))
            if done is None:  # (the next round reconnects, or waits out the outage)
                return False
            if done:
                return True
        return False

    def _survive(self, work: Callable[[], int]) -> int | None:
        """``work()``, or None when it failed: logged, the broker connection dropped where it
        may be at fault (the next round reconnects). The worker lives on; the outbox keeps
        every delivery."""
        try:
            return work()
        except BusUnavailable as exc:
            log.warning("message broker unavailable, reconnecting: %s", exc.diagnostics)
            self._disconnect()
        except TransientError as exc:
            log.warning("messaging round failed, retrying: %s", exc.diagnostics)
        except Exception:
            log.exception("messaging round failed")
            self._disconnect()
        return None

    # -- in the API process -------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self.run, args=(self._stop,),
                                            name="sip-hub-messaging", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=30)
            self._thread = None
        self.close()

    def close(self) -> None:
        if self._statistics is not None:  # (bounded by the statement timeout; a daemon)
            self._statistics.join(timeout=_STATISTICS_SECONDS)
            self._statistics = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._disconnect()
        if self._own_http:
            self._http.close()


def run_worker(settings: Settings) -> None:
    """``sip-hub worker``: run the messaging worker until SIGINT or SIGTERM."""
    from ..app import build_store  # the app module wires the store the same way

    store = build_store(settings)
    audit = AuditLog(store)
    audit.start()
    messaging = Messaging.for_hub(settings)
    worker = Worker(store, messaging, audit=audit)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop_metrics = None
    if messaging.config.metrics_port:
        # The dead-letter alert must see this process's counters: scrape every worker.
        token = settings.metrics_token
        stop_metrics = serve_metrics(messaging.config.metrics_port, settings.host,
                                     healthy=worker.healthy,
                                     token=token.get_secret_value() if token else None)
    heap.settle()
    log.info("messaging worker started (broker %s)", settings.broker_url.split("@")[-1])
    try:
        worker.run(stop)
    finally:
        if stop_metrics is not None:
            stop_metrics()
        worker.close()
        audit.stop()
        store.engine.dispose()


def replay(settings: Settings, ids: list[str] | None) -> list[str]:
    """``sip-hub messages replay [ID ...] | --all``: dead deliveries back to pending."""
    from ..app import build_store
    from .replay import replay_dead

    store = build_store(settings)
    try:
        with Messaging.for_hub(settings).bus() as bus:
            return replay_dead(store, bus, ids)
    finally:
        store.engine.dispose()
