"""The messaging worker: one loop for async requests, the relay, delivery and upkeep."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness import (BUP, SCHOOL, SOC, URL, Hub, acks, broker, hub, receivers,  # noqa: F401
                     status_change, world)
from harness import cache_entry, settled, worker_rounds
from sip_hub.messaging.capability import messaging_section
from sip_hub.messaging.runtime import Messaging
from sip_hub.messaging.worker import Worker
from sip_hub.store import inbox
from sip_hub.store import outbox as sql


def test_the_worker_processes_async_requests_and_delivers_everything(world: Hub,
                                                                    receivers: Any) -> None:
    bup, school = receivers(), receivers()
    world.configure({BUP: bup.url, SCHOOL: school.url, SOC: receivers().url})
    r = world.post(BUP, URL + "?async=true", status_change(world))
    assert r.status_code == 202
    worker = Worker(world.store, world.messaging)
    try:
        worker_rounds(worker, lambda: bool(acks(bup)) and settled(world)
                      and len(school.received) == 2)
    finally:
        worker.close()
    assert acks(bup)[0]["entry"][0]["resource"]["response"]["code"] == "ok"
    assert sorted(m["entry"][0]["resource"]["eventCoding"]["code"] for m in school.received) \
        == ["insats-status-changed", "plan-established"]


def test_the_worker_runs_in_a_background_thread_and_stops(world: Hub, receivers: Any) -> None:
    bup, school = receivers(), receivers()
    world.configure({BUP: bup.url, SCHOOL: school.url}, poll_seconds=0.05)
    worker = Worker(world.store, world.messaging)
    worker.start()
    try:
        deadline = time.monotonic() + 20
        while not settled(world):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        worker.stop()
    assert len(bup.received) == len(school.received) == 1


@contextmanager
def _waiting(world: Hub, store: Any, monkeypatch: Any) -> Iterator[threading.Thread]:
    """A worker in a thread of its own, done with the set-up's notifications and waiting 60
    s between idle rounds: only a wake-up, or what arrives on its queues, makes it act."""
    from sip_hub.messaging import worker as worker_module
    monkeypatch.setattr(worker_module, "_FIRST_IDLE_WAIT", 60.0)
    monkeypatch.setattr(worker_module, "_HOT_WAIT", 60.0)
    worker = Worker(store, world.messaging)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not settled(world):  # the set-up's notifications: its first round takes them
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.3)  # it waits now (its first round over, its listener connected)
        yield thread
    finally:
        stop.set()
        thread.join(timeout=30)
        worker.close()
    assert not thread.is_alive()


@pytest.mark.parametrize(
    "broker", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)], indirect=True)
def test_a_waiting_worker_is_woken_when_work_is_committed(
        world: Hub, receivers: Any, monkeypatch: Any) -> None:
    """A worker with nothing to do waits (here 60 s) before it looks again; a message
    committed meanwhile, or an async request accepted, is taken at once: in the process that
    committed it (the embedded default's workers run in the API processes) and, on
    PostgreSQL, in any process (LISTEN/NOTIFY): there the worker has a store of its own, as
    a ``sip-hub worker`` has, which nothing but a notification can wake."""
    from sip_hub.store import Store
    bup, school, soc = receivers(), receivers(), receivers()
    world.configure({BUP: bup.url, SCHOOL: school.url, SOC: soc.url}, poll_seconds=60.0)
    pg = world.store.engine.dialect.name == "postgresql"
    with _waiting(world, Store(world.store.engine) if pg else world.store, monkeypatch):
        started = time.monotonic()
        r = world.post(BUP, URL, status_change(world, destinations=(SOC, SCHOOL)))
        assert r.status_code == 200, r.text
        while len(soc.received) < 1 or not settled(world):
            assert time.monotonic() - started < 5, "not woken: the message waited"
            time.sleep(0.01)

        started = time.monotonic()
        r = world.post(BUP, URL + "?async=true", status_change(world, status="cancelled"))
        assert r.status_code == 202, r.text
        while not acks(bup):
            assert time.monotonic() - started < 5, "not woken: the async request waited"
            time.sleep(0.01)
    assert acks(bup)[0]["entry"][0]["resource"]["response"]["code"] == "ok"
    assert [m["entry"][0]["resource"]["eventCoding"]["code"] for m in soc.received][:1] == [
        "insats-status-changed"]


@pytest.mark.parametrize("broker", [pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)],
                         indirect=True)
def test_a_failure_while_waiting_on_the_queues_does_not_end_the_worker(
        world: Hub, receivers: Any, monkeypatch: Any, caplog: Any) -> None:
    """A waiting worker takes what arrives on its queues (another worker's relay publishes to
    them too). Taking them fails once in a way nobody foresaw: the worker lives on, and what
    another worker's relay publishes next (committed in another store: no wake-up) is
    delivered."""
    import logging

    from sip_hub.bus import Bus
    from sip_hub.store import Store
    bup, school, soc = receivers(), receivers(), receivers()
    world.configure({BUP: bup.url, SCHOOL: school.url, SOC: soc.url}, poll_seconds=60.0)
    real = Bus.drain
    armed = threading.Event()
    failures: list[float] = []

    def fails_once(self: Bus, timeout: float = 0.1, max_messages: int = 1000,
                   gather: float | None = None) -> int:
        if armed.is_set() and not failures:
            failures.append(timeout)
            raise RuntimeError("unexpected")
        return real(self, timeout, max_messages, gather)
    monkeypatch.setattr(Bus, "drain", fails_once)
    caplog.set_level(logging.WARNING, logger="sip_hub.worker")
    with _waiting(world, Store(world.store.engine), monkeypatch) as thread:
        armed.set()
        deadline = time.monotonic() + 20
        while not failures:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.3)  # (the thread would have ended by now)
        assert thread.is_alive()
        r = world.post(BUP, URL, status_change(world, destinations=(SOC, SCHOOL)))
        assert r.status_code == 200, r.text
        if world.store.engine.dialect.name == "sqlite":  # (PostgreSQL wakes the worker)
            assert world.relay() > 0                  # published by another worker's relay
        while not settled(world):
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.02)
    assert any("messaging round failed" in r.getMessage() for r in caplog.records)
    for r in (soc, school):
        assert [m["entry"][0]["resource"]["eventCoding"]["code"] for m in r.received
                ].count("insats-status-changed") == 1


def test_a_worker_consumes_the_queues_another_workers_relay_publishes_to(
        world: Hub, receivers: Any, monkeypatch: Any) -> None:
    """Several workers share the queues: one must also consume an organisation's queue that
    only another worker's relay published to, learning of it from the database. Here the
    school, configured on the other worker first (a rolling change of the endpoints file):
    this worker has no endpoint for it yet, so its deliveries end dead with the reason."""
    from sip_hub.messaging import worker as worker_module
    monkeypatch.setattr(worker_module, "_OPEN_ORGS_SECONDS", 0.2)
    bup, soc = receivers(), receivers()
    world.configure({BUP: bup.url, SOC: soc.url})
    world.rounds(lambda: settled(world))          # the set-up's notifications, out of the way
    worker = Worker(world.store, world.messaging)
    try:
        worker.run_once()                         # nothing open: it knows of no queue
        world.configure({BUP: bup.url, SOC: soc.url, SCHOOL: receivers().url})  # the other's
        r = world.post(BUP, URL, status_change(world, destinations=(SOC, SCHOOL)))
        assert r.status_code == 200
        assert world.relay() > 0                  # published by another worker's relay
        assert {d.dest_org for d in world.deliveries(states=["published"])} >= {SCHOOL}
        worker_rounds(worker, lambda: settled(world))   # the school's queue consumed
    finally:
        worker.close()
    school = [d for d in world.deliveries() if d.dest_org == SCHOOL]
    assert school and {d.state for d in school} == {"dead"}
    assert all("No message endpoint is configured" in (d.last_error or "") for d in school)


@pytest.mark.parametrize(
    "broker", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)], indirect=True)
def test_an_idle_worker_with_no_queue_to_consume_waits_instead_of_spinning(hub: Hub) -> None:
    """No organisation has an endpoint yet (a fresh deployment; the demo's endpoints file is
    empty), so the worker consumes no queue. Between rounds it waits for work: on RabbitMQ
    it used to wait on queues it did not consume, which returned at once (half a core for
    each idle ``sip-hub worker``)."""
    worker = Worker(hub.store, hub.messaging)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        time.sleep(0.5)  # its first rounds: it connects and finds nothing to do
        assert thread.ident is not None
        clock = time.pthread_getcpuclockid(thread.ident)
        before = time.clock_gettime(clock)
        time.sleep(2.0)
        used = time.clock_gettime(clock) - before
        assert worker._bus is not None and not worker._bus.consuming
    finally:
        stop.set()
        thread.join(timeout=30)
        worker.close()
    assert not thread.is_alive()
    assert used < 0.2, f"an idle worker took {used:.2f} s of CPU in 2 s"


@contextmanager
def _serving_health(worker: Worker) -> Iterator[tuple[threading.Thread, Callable[[], int]]]:
    """``sip-hub worker``'s metrics server on a port of its own for ``worker``, whose rounds
    run in the thread yielded (not yet started) with a function that asks /healthz; the
    metrics page must answer throughout. Everything is stopped on the way out."""
    import socket

    import httpx

    from sip_hub.metrics import serve_metrics

    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop_server = serve_metrics(port, "127.0.0.1", healthy=worker.healthy)

    def health() -> int:
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert metrics.status_code == 200 and "sip_hub_message_dead_letters" in metrics.text
        return httpx.get(f"http://127.0.0.1:{port}/healthz").status_code
    try:
        yield thread, health
    finally:
        stop.set()
        if thread.ident is not None:
            thread.join(timeout=30)
        worker.close()
        stop_server()


def _until(done: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_the_worker_health_check_tells_an_outage_from_a_live_process(world: Hub) -> None:
    """`sip-hub worker`'s /healthz (its container's health check): 503 once its rounds have
    failed for a while (here the broker is down), while /metrics still answers; a worker
    whose rounds go through is healthy."""
    def health(worker: Worker, seconds: float) -> int:
        with _serving_health(worker) as (thread, ask):
            # A worker made just now is healthy (its progress counted from then: on a loaded
            # machine the metrics server's start alone took longer than this test's limit of
            # 0.45 s, and /healthz said 503 before the rounds began)
            worker.progress_at = time.monotonic()
            assert ask() == 200
            thread.start()
            time.sleep(seconds)
            return ask()

    config = world.messaging.config.model_copy(update={
        "broker_url": "amqp://guest:guest@127.0.0.1:1//", "poll_seconds": 0.05,
        "timeout_seconds": 0.1})  # (unhealthy after 3 x 0.15 s of failed rounds)
    down = Worker(world.store, Messaging.from_config(config))
    assert health(down, 1.5) == 503
    up = Worker(world.store, world.messaging)
    assert health(up, 1.0) == 200 and up.failing_since is None


def test_the_worker_health_check_tells_a_stuck_round(world: Hub, receivers: Any,
                                                    monkeypatch: Any) -> None:
    """A round that never ends (here the relay's publish blocks, as RabbitMQ blocks
    publishers under a memory or disk alarm) is not a failing one: the health check said 200
    for ever. Now no progress for 3 x (timeout + poll) is a 503, and 200 again once the
    round goes on."""
    from sip_hub.bus import Bus

    world.configure({BUP: receivers().url, SCHOOL: receivers().url, SOC: receivers().url},
                    poll_seconds=0.05, timeout_seconds=0.1)
    release, blocked = threading.Event(), threading.Event()
    publish_many = Bus.publish_many

    def blocking(self: Bus, *args: Any, **kw: Any) -> Any:
        blocked.set()
        release.wait(30)
        return publish_many(self, *args, **kw)
    monkeypatch.setattr(Bus, "publish_many", blocking)
    worker = Worker(world.store, world.messaging)
    try:
        with _serving_health(worker) as (thread, health):
            assert world.post(BUP, URL, status_change(world)).status_code == 200
            thread.start()
            assert blocked.wait(10), "the relay never published"
            assert health() == 200  # (a round just begun)
            time.sleep(0.6)  # (beyond 3 x 0.15 s without progress)
            assert health() == 503 and worker.failing_since is None
            release.set()
            _until(lambda: settled(world))
            assert health() == 200
    finally:
        release.set()


def test_a_slow_endpoint_with_a_long_timeout_of_its_own_is_no_stuck_worker(
        world: Hub, receivers: Any) -> None:
    """An organisation's endpoint may set a longer timeout than the hub's default
    (timeoutSeconds); a worker waiting on its slow answer is working, not stuck."""
    slow = receivers()
    slow.fail_when = lambda m: (200, "ok", 1.5)
    world.configure({BUP: receivers().url, SCHOOL: slow.url, SOC: receivers().url},
                    entries={SCHOOL: {"timeoutSeconds": 5}},
                    poll_seconds=0.05, timeout_seconds=0.1)
    worker = Worker(world.store, world.messaging)
    with _serving_health(worker) as (thread, health):
        thread.start()
        _until(lambda: bool(slow.received))
        time.sleep(1.0)  # (well inside the slow answer, beyond 3 x the default's 0.15 s)
        assert health() == 200
        _until(lambda: settled(world))


def test_the_worker_survives_a_broker_that_is_down(world: Hub) -> None:
    config = world.messaging.config.model_copy(update={
        "broker_url": "amqp://guest:guest@127.0.0.1:1//", "poll_seconds": 0.05})
    worker = Worker(world.store, Messaging.from_config(config))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    time.sleep(1.0)
    stop.set()
    thread.join(timeout=30)
    worker.close()
    assert not thread.is_alive()
    assert {d.state for d in world.deliveries()} == {"pending"}   # kept for later


def test_upkeep_forgets_expired_cache_entries_and_old_settled_deliveries(
        world: Hub, receivers: Any) -> None:
    world.configure({BUP: receivers().url, SCHOOL: receivers().url})
    world.post(BUP, URL, status_change(world))
    world.rounds(lambda: settled(world))
    states = sorted(d.state for d in world.deliveries())
    assert states == ["dead", "delivered", "delivered", "delivered"]  # SOC has no endpoint
    with world.store.begin() as tx:
        assert inbox.purge_expired(tx, 2 ** 62, 100) == 1
        assert sql.delete_finished(tx, 2 ** 62, 100) == 3
    # Dead deliveries wait for an operator's replay.
    assert [(d.state, d.dest_org) for d in world.deliveries()] == [("dead", SOC)]


def test_a_backlog_of_expired_rows_is_forgotten_over_rounds(world: Hub,
                                                            monkeypatch: Any) -> None:
    """An upkeep forgets at most a few batches of each kind (the round's relay and
    deliveries wait for it); with more left the next round's upkeep goes on, and once
    they are gone the next upkeep waits its five minutes."""
    from sqlalchemy import func, insert, select

    from sip_hub.messaging import worker as worker_module
    from sip_hub.store.schema import message_inbox
    monkeypatch.setattr(worker_module, "_FORGET_BATCH", 2)
    monkeypatch.setattr(worker_module, "_FORGET_BATCHES", 3)

    def expired(ks: range) -> None:
        with world.store.begin() as tx:
            tx.conn.execute(insert(message_inbox), [cache_entry(k, BUP, k + 1) for k in ks])

    def left() -> int:
        with world.store.begin(write=False) as tx:
            return int(tx.conn.execute(select(func.count()).select_from(message_inbox))
                       .scalar_one())
    expired(range(15))
    worker = Worker(world.store, world.messaging)
    try:
        seen = []
        for _ in range(3):
            worker.run_once()
            seen.append(left())
        expired(range(100, 102))
        worker.run_once()
        seen.append(left())
    finally:
        worker.close()
    assert seen == [9, 3, 0, 2]  # 6 a round, then the last 3; the next in five minutes


def test_the_capability_statement_section_declares_the_reliable_cache(hub: Hub) -> None:
    (section,) = messaging_section(hub.messaging, "http://hub.test/fhir")
    assert section["reliableCache"] == 24 * 60
    assert section["endpoint"][0]["address"] == "http://hub.test/fhir/$process-message"
    # Every MessageDefinition the hub publishes, sent and received (15 events since
    # invitation-cancelled).
    shipped = {orjson.loads(path.read_bytes())["url"] for path in
               (Path(__file__).parents[2] / "sip_hub" / "fhir" / "definitions").glob(
                   "MessageDefinition-*.json")}
    assert len(shipped) == 15
    assert sorted((m["definition"], m["mode"]) for m in section["supportedMessage"]) == \
        sorted((url, mode) for url in shipped for mode in ("receiver", "sender"))
    cs = {"resourceType": "CapabilityStatement", "status": "active", "date": "2026-11-22",
          "kind": "instance", "fhirVersion": "4.0.1", "format": ["json"],
          "messaging": [section]}
    from sip_hub.fhir import models
    models.validate(orjson.loads(orjson.dumps(cs)))


@pytest.mark.postgres
def test_the_planner_statistics_are_refreshed_beside_the_rounds_not_in_them(
        tmp_path: Any) -> None:
    """A table grown past its statistics is analyzed in a thread of the worker's own: a
    round does not wait for the ANALYZE (here held back by a lock that only ANALYZE waits
    for: the rounds' reads and writes go on), one refresh runs at a time, and the statistics
    are taken once the lock is gone."""
    from sqlalchemy import insert

    from conftest import pg_schema
    from pgwait import counted
    from sip_hub.messaging.config import MessagingSettings
    from sip_hub.store import Store
    from sip_hub.store.migrate import upgrade
    from sip_hub.store.schema import message_inbox
    from sip_hub.store.statistics import GROWN_ROWS

    def analyzed(conn: Any) -> float:
        return float(conn.exec_driver_sql("SELECT reltuples FROM pg_class "
                                          "WHERE oid = 'message_inbox'::regclass").scalar_one())

    with pg_schema() as engine:
        upgrade(engine)
        store = Store(engine)
        with engine.connect() as conn:
            conn.execute(insert(message_inbox), [cache_entry(k, BUP, 2 ** 62)
                                                 for k in range(2 * GROWN_ROWS)])
            conn.commit()
            assert counted(conn, "message_inbox", "n_live_tup", 2 * GROWN_ROWS) == 2 * GROWN_ROWS
            assert analyzed(conn) < 2 * GROWN_ROWS
        config = MessagingSettings(base_url="http://hub.test", broker_url="memory://",
                                   endpoints_file=tmp_path / "endpoints.json")
        worker = Worker(store, Messaging.from_config(config))
        holder = engine.connect()
        try:
            holder.exec_driver_sql("LOCK TABLE message_inbox IN SHARE UPDATE EXCLUSIVE MODE")
            start = time.monotonic()
            worker.run_once()
            assert time.monotonic() - start < 5   # (an ANALYZE in the round waited 30 s)
            refresh = worker._statistics
            assert refresh is not None and refresh.is_alive()

            def waiting_analyze() -> bool:
                with engine.connect() as conn:
                    return bool(conn.exec_driver_sql(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                        "'Lock' AND query LIKE 'ANALYZE%%'").scalar_one())
            deadline = time.monotonic() + 20
            while not waiting_analyze():
                assert time.monotonic() < deadline, "no ANALYZE waits for the lock"
                time.sleep(0.05)
            worker._statistics_at = 0.0   # due again: the one still running goes on alone
            worker.run_once()
            assert worker._statistics is refresh
            holder.rollback()             # the lock goes: the statistics are taken
            refresh.join(timeout=20)
            assert not refresh.is_alive()
            with engine.connect() as conn:
                assert analyzed(conn) == 2 * GROWN_ROWS
        finally:
            holder.rollback()
            holder.close()
            worker.close()
