"""Probes of the relay and of replay under broker faults: publishes the broker refuses (a
nack), one message to several organisations whose queues are partly gone, and two operators
replaying one dead letter at once.

Every test on RabbitMQ uses the hub fixture's own exchange and queue names (removed
afterwards) and removes the queues it declares itself. The outbox is filled directly (responses
of SIPs of their own: no consent to read, every delivery the head of its stream).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Exchange, Queue

from harness import BUP, SCHOOL, SOC, Hub, broker, hub, receivers, settled  # noqa: F401
from sip_hub.bus import REASON, Bus
from sip_hub.messaging import builder, outbox
from sip_hub.messaging.relay import DELIVERY, Relay
from sip_hub.messaging.replay import replay_dead
from sip_hub.messaging.worker import Worker
from sip_hub.metrics import DEAD_LETTERS, MESSAGES_PUBLISHED
from sip_hub.store import outbox as sql

RABBITMQ = pytest.mark.parametrize(
    "broker", [pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)], indirect=True)
BOTH = pytest.mark.parametrize(
    "broker", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)], indirect=True)


def relay_of(hub: Hub, bus: Bus | None = None) -> Relay:
    """A relay with the hub's messaging settings (attempts, backoff: milliseconds here)."""
    return Relay(hub.store, bus or hub.bus, republish_after_seconds=3600,
                 endpoints=hub.messaging.endpoints, config=hub.messaging.config)


def dead_count(kind: str = "notification") -> float:
    return DEAD_LETTERS.labels(kind)._value.get()


def published_count() -> float:
    return MESSAGES_PUBLISHED._value.get()


def to(hub: Hub, org: str) -> list[sql.Delivery]:
    return [d for d in hub.deliveries() if d.dest_org == org]


def enqueue(hub: Hub, dests: list[str], n: int = 1) -> list[str]:
    """``n`` messages, each to every one of ``dests``, each of a SIP of its own; their
    MessageHeader.ids."""
    ids: list[str] = []
    with hub.store.begin() as tx:
        for _ in range(n):
            k = uuid.uuid4().hex[:8]
            msg = builder.message("sip-initiated", fhir_base="http://hub.test/fhir", sender=SOC,
                                  destinations=[builder.Party(o, "urn:x") for o in dests],
                                  focus=[f"CarePlan/plan{k}"], resources=[])
            outbox.enqueue(tx, msg, dests, kind=outbox.RESPONSE,
                           sip=outbox.SipKey(f"p{k}", f"plan{k}"))
            ids.append(msg["entry"][0]["resource"]["id"])
    return ids


@pytest.fixture
def refusing(hub: Hub) -> Iterator[str]:
    """A second queue on BUP's routing key that takes no message and refuses publishes
    (``x-overflow: reject-publish``): the broker nacks every publish to BUP. Yields BUP."""
    topology = hub.messaging.topology
    full = Queue(f"{topology.prefix}.full", Exchange(topology.exchange, type="topic",
                                                     durable=True),
                 routing_key=topology.org_key(BUP), durable=False, auto_delete=False,
                 queue_arguments={"x-max-length": 0, "x-overflow": "reject-publish"})
    with Connection(hub.bus.url) as conn:
        full(conn.default_channel).declare()
        try:
            yield BUP
        finally:
            full(conn.default_channel).delete()


# -- 1. a publish the broker refuses -----------------------------------------------------------

@RABBITMQ
def test_a_delivery_the_broker_refuses_is_a_failed_attempt_then_dead_and_the_rest_goes_on(
        hub: Hub, receivers: Any, refusing: str) -> None:
    """Each refusal counts an attempt of that delivery with its backoff and reason; after
    max_attempts it is dead (the alert counts it, its copy is in the dead-letter queue);
    the round does not fail: the other organisations' deliveries are published."""
    hub.configure({BUP: receivers().url, SCHOOL: receivers().url})
    enqueue(hub, [BUP, SCHOOL], 3)
    relay = relay_of(hub)
    before = dead_count("response")  # (the alert counts dead letters by kind)
    relay.run_once()  # no BusUnavailable: the broker is up, it refused some messages
    first = to(hub, BUP)
    assert len(first) == 3 and all(d.state == "pending" and d.attempts == 1 for d in first)
    assert all("refused by the broker" in (d.last_error or "").lower() for d in first)
    assert all(d.next_attempt_at > d.updated for d in first)  # backoff, not the next poll
    assert to(hub, SCHOOL) and {d.state for d in to(hub, SCHOOL)} == {"published"}

    deadline = time.monotonic() + 20
    while any(d.state in sql.OPEN for d in to(hub, BUP)):
        assert time.monotonic() < deadline, "the refused deliveries never died"
        time.sleep(0.06)  # (the backoff: 0.01 s doubled, at most 0.05 s)
        relay.run_once()
    dead = to(hub, BUP)
    assert {d.state for d in dead} == {"dead"}
    assert all(d.attempts == hub.messaging.config.max_attempts for d in dead)
    assert all((d.last_error or "").startswith("Gave up after 3 attempts")
               and "refused by the broker" in (d.last_error or "").lower() for d in dead)
    assert dead_count("response") == before + len(dead)
    copies = hub.bus.take_dead()
    assert sorted(str(c.headers[DELIVERY]) for c in copies) == sorted(d.id for d in dead)
    assert all("refused by the broker" in str(c.headers[REASON]).lower() for c in copies)


@RABBITMQ
def test_a_worker_whose_publishes_the_broker_refuses_keeps_its_rounds_and_health(
        hub: Hub, receivers: Any, refusing: str) -> None:
    """A refusal is the delivery's failure, not the round's: the worker neither drops its
    broker connection nor reports itself failing (its /healthz stays 200)."""
    hub.configure({BUP: receivers().url, SCHOOL: receivers().url, SOC: receivers().url},
                    poll_seconds=0.05)
    enqueue(hub, [BUP, SCHOOL, SOC], 3)
    worker = Worker(hub.store, hub.messaging)
    try:
        deadline = time.monotonic() + 20
        rounds = 0
        while not settled(hub) or rounds < 3:
            assert time.monotonic() < deadline, "messaging did not settle in time"
            assert worker._survive(worker.run_once) is not None, "a round failed"
            assert worker.failing_since is None and worker.healthy()
            rounds += 1
            time.sleep(0.02)
    finally:
        worker.close()
    assert {d.state for d in to(hub, SCHOOL)} == {"delivered"}


# -- 2. one message to several organisations, a queue of them gone ---------------------------

@RABBITMQ
def test_a_copy_that_reaches_no_queue_of_its_destination_is_a_failed_attempt_at_once(
        hub: Hub, receivers: Any) -> None:
    """One message to BUP and the school, the school's queue deleted after the hub declared
    it: its copy is noticed in the round (not an hour later), retried with backoff, the
    queue declared again, and every organisation gets the message once."""
    bup, school = receivers(), receivers()
    hub.configure({BUP: bup.url, SCHOOL: school.url, SOC: receivers().url})
    deadline = time.monotonic() + 20

    def settle(relay: Relay) -> None:
        """Relay and deliver (a consumer of its own, gone before a queue is deleted: what
        a consumer does when its queue goes is test_probe_bus's)."""
        with Bus(hub.bus.url, hub.messaging.topology, requeue_delay=0) as sub:
            deliverer = hub.deliverer()
            try:
                sub.consume_batches([BUP, SCHOOL, SOC], deliverer.handle_batch)
                while not settled(hub):
                    assert time.monotonic() < deadline, "messaging did not settle in time"
                    time.sleep(0.02)  # (the backoff: 0.01 s)
                    relay.run_once()
                    sub.drain(timeout=0.05)
            finally:
                deliverer.http.close()

    with Bus(hub.bus.url, hub.messaging.topology) as pub:
        relay = relay_of(hub, pub)
        enqueue(hub, [BUP, SCHOOL])
        settle(relay)  # every queue declared by the relay's bus
        with Connection(hub.bus.url) as conn:
            conn.default_channel.queue_delete(hub.messaging.topology.org_queue(SCHOOL))
        (header,) = enqueue(hub, [BUP, SCHOOL])
        relay.run_once()
        after = {d.dest_org: d for d in hub.deliveries(ids=[header])}
        lost = after[SCHOOL]
        assert lost.state == "pending" and lost.attempts == 1, lost
        assert "refused by the broker" in (lost.last_error or "").lower()
        assert "no queue" in (lost.last_error or "")
        assert lost.next_attempt_at > lost.updated  # after its backoff
        assert after[BUP].state == "published"
        time.sleep(0.02)
        relay.run_once()  # the queue declared again, the copy in it
        assert pub.queue_size(SCHOOL) == 1
        settle(relay)
    final = {d.dest_org: d.state for d in hub.deliveries(ids=[header])}
    assert set(final.values()) == {"delivered"}
    assert school.applied.count(header) == 1 and bup.applied.count(header) == 1


# -- 3. two operators replaying one dead letter ------------------------------------------------

def kill_school(hub: Hub, receivers: Any) -> tuple[Any, sql.Delivery]:
    bup, school = receivers(), receivers()
    hub.configure({BUP: bup.url, SCHOOL: school.url})
    school.script = [422]
    enqueue(hub, [BUP, SCHOOL])
    hub.rounds(lambda: settled(hub))
    (d,) = [d for d in hub.deliveries() if d.dest_org == SCHOOL]
    assert d.state == "dead" and hub.bus.queue_size() == 1
    return school, d


@BOTH
def test_a_replay_that_takes_the_dead_letter_another_replayed_does_not_publish_it_again(
        hub: Hub, receivers: Any) -> None:
    """The first operator puts the dead delivery back and the relay publishes it; the second,
    finding it no longer dead, takes its dead-letter copy before the first does. That copy
    is of the publish that died, not of the one on its way: the delivery is not put back
    again (it was, and was published twice)."""
    school, d = kill_school(hub, receivers)
    reset, go = threading.Event(), threading.Event()
    results: dict[str, list[str]] = {}
    with Bus(hub.bus.url, hub.messaging.topology) as first:
        take_dead = first.take_dead

        def held(*args: Any, **kw: Any) -> Any:  # between its claim and its copies
            reset.set()
            assert go.wait(10)
            return take_dead(*args, **kw)
        first.take_dead = held  # type: ignore[method-assign]

        def replay() -> None:
            results["one"] = replay_dead(hub.store, first, [d.id])
        one = threading.Thread(target=replay)
        published = published_count()
        one.start()
        try:
            assert reset.wait(10)
            hub.relay()
            assert [x.state for x in hub.deliveries(ids=[d.id])] == ["published"]
            with Bus(hub.bus.url, hub.messaging.topology) as second:
                results["two"] = replay_dead(hub.store, second, [d.id])
        finally:
            go.set()
            one.join(10)
    assert sorted(results["one"] + results["two"]) == [d.id]   # replayed once, not twice
    hub.rounds(lambda: settled(hub))
    assert published_count() == published + 1                  # and published once
    assert [x.state for x in hub.deliveries(ids=[d.id])] == ["delivered"]
    assert school.applied == [d.message_id] and hub.bus.queue_size() == 0


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_replays_racing_each_other_and_the_relay_publish_a_dead_letter_once(
        hub: Hub, receivers: Any) -> None:
    """Two operators at once (threads, each its own connections) while a relay keeps
    publishing: the dead delivery is replayed and published once in total."""
    school, d = kill_school(hub, receivers)
    start = threading.Barrier(3)
    stop = threading.Event()
    results: dict[str, list[str]] = {}
    errors: list[BaseException] = []

    def replay(name: str) -> None:
        try:
            with Bus(hub.bus.url, hub.messaging.topology) as bus:
                start.wait(5)
                results[name] = replay_dead(hub.store, bus, [d.id])
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    def relay() -> None:
        with Bus(hub.bus.url, hub.messaging.topology) as bus:
            r = relay_of(hub, bus)
            start.wait(5)
            while not stop.is_set():
                r.run_once()
    published = published_count()
    threads = [threading.Thread(target=replay, args=(n,)) for n in ("one", "two")]
    threads.append(threading.Thread(target=relay))
    for t in threads:
        t.start()
    for t in threads[:2]:
        t.join(10)
    stop.set()
    threads[2].join(10)
    assert not errors
    assert sorted(results["one"] + results["two"]) == [d.id]
    hub.rounds(lambda: settled(hub))
    assert published_count() == published + 1
    assert [x.state for x in hub.deliveries(ids=[d.id])] == ["delivered"]
    assert school.applied == [d.message_id]
