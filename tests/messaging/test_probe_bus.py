"""Probes of the message bus under faults: queues deleted under a consumer, messages the broker
cannot route, poison messages on the hub's queues, and replays that race or come late.

Every test on RabbitMQ uses its own exchange and queue names and removes them afterwards.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kombu import Connection, Exchange

import sip_factory as f
from harness import (BUP, SCHOOL, SOC, Hub, broker, hub, receivers, settled,  # noqa: F401
                     world)
from sip_hub.bus import (ATTEMPTS, REASON, Ack, Bus, BusUnavailable, DeadLetter, Envelope,
                         Received, Topology)
from sip_hub.messaging.relay import DELIVERY
from sip_hub.messaging.replay import replay_dead
from sip_hub.metrics import DEAD_LETTERS
from sip_hub.store import outbox as sql

A, B = "SE2321000016-PA01", "SE2120000142-PB02"
BOTH = pytest.mark.parametrize(
    "broker", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)], indirect=True)


@pytest.fixture
def topology(broker_url: str) -> Iterator[Topology]:
    run = uuid.uuid4().hex[:10]
    topology = Topology(exchange=f"probe{run}.sip_hub", prefix=f"probe{run}.sip")
    yield topology
    with Bus(broker_url, topology) as cleaner:
        cleaner.delete([A, B])


def env(n: int, **headers: str | int) -> Envelope:
    return Envelope(f'{{"n": {n}}}'.encode(), f"msg-{n}", {"sip-seq": n, **headers})


def raw_publish(url: str, topology: Topology, org: str, body: Any, **props: Any) -> None:
    """A message on the organisation's queue that the hub's relay did not publish."""
    with Connection(url) as conn:
        producer = conn.Producer(exchange=Exchange(topology.exchange, type="topic",
                                                   durable=True))
        producer.publish(body, routing_key=topology.org_key(org), **props)


def delete_queue(url: str, name: str) -> None:
    with Connection(url) as conn:
        conn.default_channel.queue_delete(name)


# -- poison messages on a queue the hub consumes ---------------------------------------------

POISON = [
    pytest.param({"body": "not json at all", "content_type": "text/plain",
                  "content_encoding": "utf-8"}, id="text-body"),
    pytest.param({"body": b"\x00\xff", "content_type": "application/octet-stream",
                  "content_encoding": "binary", "headers": {"sip-to": "garbage"}},
                 id="sip-to-not-a-table"),
    pytest.param({"body": b"{}", "content_type": "application/fhir+json",
                  "content_encoding": "binary",
                  "headers": {"sip-to": {"whatever": "x"}}}, id="sip-to-entry-not-a-table"),
]


@pytest.mark.rabbitmq
@pytest.mark.parametrize("poison", POISON)
def test_a_poison_message_is_dead_lettered_with_a_reason_never_a_crash_loop(
        broker_url: str, topology: Topology, poison: dict[str, Any]) -> None:
    poison = dict(poison)
    if isinstance(poison.get("headers", {}).get("sip-to"), dict):  # this queue's entry
        poison["headers"] = {"sip-to": {topology.org_queue(A): "not a table"}}
    got: list[Received] = []

    def handler(m: Received) -> Any:
        got.append(m)
        return DeadLetter("not ours") if m.message_id != "msg-1" else Ack()
    with Bus(broker_url, topology, requeue_delay=0) as bus:
        bus.declare(A)
        raw_publish(broker_url, topology, A, poison.pop("body"), **poison)
        bus.publish(A, env(1))       # a good one behind it
        bus.consume([A], handler)
        for _ in range(3):           # a crash loop would raise each time
            bus.drain(timeout=0.3)
        assert bus.queue_size(A) == 0
        dead = bus.take_dead()
        assert len(dead) == 1 and dead[0].headers[REASON]
        assert [m.message_id for m in got][-1] == "msg-1"


@pytest.mark.rabbitmq
def test_a_failing_handler_on_a_message_with_odd_attempts_header_dead_letters_it(
        broker_url: str, topology: Topology) -> None:
    def handler(m: Received) -> Any:
        raise RuntimeError("a bug")
    with Bus(broker_url, topology, requeue_delay=0) as bus:
        bus.declare(A)
        raw_publish(broker_url, topology, A, b"{}", content_type="application/fhir+json",
                    content_encoding="binary", headers={ATTEMPTS: "three"})
        bus.consume([A], handler)
        for _ in range(3):
            bus.drain(timeout=0.3)
        assert bus.queue_size(A) == 0
        (dead,) = bus.take_dead()
        assert "RuntimeError: a bug" in str(dead.headers[REASON])


# -- queues gone under the bus ---------------------------------------------------------------

@pytest.mark.rabbitmq
def test_a_queue_deleted_under_a_consumer_loses_no_later_publish(
        broker_url: str, topology: Topology) -> None:
    with Bus(broker_url, topology, requeue_delay=0) as bus:
        got: list[Received] = []
        bus.consume([A], lambda m: got.append(m) or Ack())
        bus.publish_many([(A, env(1))])
        bus.drain(timeout=0.3)
        assert [m.message_id for m in got] == ["msg-1"]
        delete_queue(broker_url, topology.org_queue(A))
        # The broker cancels the consumer; the bus says so (the worker reconnects).
        with pytest.raises(BusUnavailable):
            bus.drain(timeout=0.3)
        # A publish meanwhile is either refused or reaches a queue: never confirmed and lost.
        confirmed = bus.publish_many([(A, env(2))])
        if confirmed == [True]:
            assert bus.queue_size(A) == 1
        assert bus.publish_many([(A, env(3))]) == [True]   # the queue is back
        assert bus.queue_size(A) >= 1


@pytest.mark.rabbitmq
def test_a_publish_to_a_queue_deleted_meanwhile_is_not_confirmed_as_taken(
        broker_url: str, topology: Topology) -> None:
    """Without a consumer to be told (the relay publishes on its own connection)."""
    with Bus(broker_url, topology) as bus:
        assert bus.publish_many([(A, env(1)), (B, env(2))]) == [True, True]
        delete_queue(broker_url, topology.org_queue(A))
        first = bus.publish_many([(A, env(3)), (B, env(4))])
        assert first == [False, True]            # unroutable: refused, published again
        assert bus.publish_many([(A, env(3))]) == [True]
        assert bus.queue_size(A) == 1 and bus.queue_size(B) == 2


@pytest.mark.rabbitmq
def test_an_exchange_deleted_meanwhile_loses_no_publish(broker_url: str,
                                                        topology: Topology) -> None:
    with Bus(broker_url, topology) as bus:
        assert bus.publish_many([(A, env(1))]) == [True]
        with Connection(broker_url) as conn:
            conn.default_channel.exchange_delete(topology.exchange)
            # another process declares it again, without this queue's binding
            conn.default_channel.exchange_declare(topology.exchange, "topic", durable=True,
                                                  auto_delete=False)
        try:
            confirmed = bus.publish_many([(A, env(2))])
        except BusUnavailable:
            confirmed = [False]
        if confirmed == [True]:
            assert bus.queue_size(A) == 2
        assert bus.publish_many([(A, env(3))]) == [True]
        assert bus.queue_size(A) >= 2


# -- poison messages through the deliverer ----------------------------------------------------

def dead_count(kind: str = "notification") -> float:
    return DEAD_LETTERS.labels(kind)._value.get()


@BOTH
def test_a_message_naming_no_delivery_of_the_outbox_is_dead_lettered_not_dropped(
        world: Hub, receivers: Any) -> None:
    bup = receivers()
    world.configure({BUP: bup.url})
    world.bus.publish(BUP, Envelope(b'{"resourceType": "Bundle"}', "stranger",
                                    {DELIVERY: "no-such-delivery"}))
    world.bus.publish(BUP, Envelope(b"\x00not json", "", {}))
    world.deliver([BUP])
    assert world.bus.queue_size(BUP) == 0 and bup.received == []
    dead = {m.message_id: str(m.headers[REASON]) for m in world.bus.take_dead()}
    assert set(dead) == {"stranger", ""}
    assert "no-such-delivery" in dead["stranger"] and "sip-delivery" in dead[""]


# -- replay ---------------------------------------------------------------------------------

def kill_school(world: Hub, receivers: Any) -> tuple[Any, Any, sql.Delivery]:
    bup, school = receivers(), receivers()
    world.configure({BUP: bup.url, SCHOOL: school.url})
    school.script = [422]
    world.rounds(lambda: settled(world))
    (d,) = [d for d in world.deliveries() if d.dest_org == SCHOOL]
    assert d.state == "dead" and world.bus.queue_size() == 1
    return bup, school, d


@BOTH
def test_a_replay_of_what_the_consent_no_longer_covers_is_withdrawn_not_delivered(
        world: Hub, receivers: Any) -> None:
    _, school, d = kill_school(world, receivers)
    r = world.put(SOC, f.sip_consent(actor_refs=[f.SOCIAL_SERVICES, f.BUP]))
    assert r.status_code == 200
    world.rounds(lambda: settled(world))
    replay_dead(world.store, world.bus, [d.id])
    world.rounds(lambda: settled(world))
    (after,) = [x for x in world.deliveries() if x.id == d.id]
    assert after.state == "withdrawn" and len(school.received) == 1
    assert world.bus.queue_size() == 0


@BOTH
def test_a_replay_after_the_endpoint_was_removed_is_dead_again_with_the_reason(
        world: Hub, receivers: Any) -> None:
    bup, _, d = kill_school(world, receivers)
    world.configure({BUP: bup.url})
    before = dead_count()
    assert replay_dead(world.store, world.bus, [d.message_id]) == [d.id]
    world.rounds(lambda: settled(world))
    (after,) = [x for x in world.deliveries() if x.id == d.id]
    assert after.state == "dead" and "No message endpoint" in (after.last_error or "")
    assert dead_count() == before + 1
    (copy,) = world.bus.take_dead()
    assert copy.headers[DELIVERY] == d.id and "No message endpoint" in str(copy.headers[REASON])


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_two_operators_replaying_one_dead_letter_at_once_replay_it_once(
        world: Hub, receivers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, school, d = kill_school(world, receivers)
    from sip_hub.store import wakeup
    real = wakeup.announce
    first_in = threading.Event()

    def slow(tx: Any) -> None:   # the first replay holds its change uncommitted a while
        real(tx)
        if not first_in.is_set():
            first_in.set()
            threading.Event().wait(0.5)
    monkeypatch.setattr(wakeup, "announce", slow)
    results: dict[str, list[str]] = {}

    def replay(name: str) -> None:
        with Bus(world.bus.url, world.messaging.topology) as bus:
            results[name] = replay_dead(world.store, bus, [d.id])
    one = threading.Thread(target=replay, args=("one",))
    one.start()
    assert first_in.wait(5)
    two = threading.Thread(target=replay, args=("two",))
    two.start()
    one.join(10)
    two.join(10)
    assert sorted(results["one"] + results["two"]) == [d.id]   # replayed once, not twice
    world.rounds(lambda: settled(world))
    assert [x.state for x in world.deliveries() if x.id == d.id] == ["delivered"]
    assert school.applied == [d.message_id]


@pytest.mark.rabbitmq
@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_a_queue_deleted_under_the_worker_leaves_no_delivery_stuck_published(
        world: Hub, receivers: Any) -> None:
    from harness import worker_rounds
    from sip_hub.messaging.worker import Worker
    bup = receivers()
    world.configure({BUP: bup.url})
    worker = Worker(world.store, world.messaging)
    try:
        worker_rounds(worker, lambda: settled(world))
        delete_queue(world.bus.url, world.messaging.topology.org_queue(BUP))
        with world.store.begin() as tx:
            world.messaging.emitter.emit(tx, "follow-up-scheduled", sender_org=SOC,
                                         patient_id="alva", careplan_id="alva-sip",
                                         focus=["CarePlan/alva-sip"])
        deadline = time.monotonic() + 15
        while not settled(world):    # rounds as Worker.run runs them: surviving failures
            assert time.monotonic() < deadline, "messaging did not settle in time"
            worker._survive(worker.run_once)
    finally:
        worker.close()
    to_bup = [d for d in world.deliveries() if d.dest_org == BUP]
    assert {d.state for d in to_bup} == {"delivered"}
    assert sorted(bup.applied) == sorted(d.message_id for d in to_bup)
