"""The bus contract: one suite, run against the in-memory transport and real RabbitMQ.

Every test uses its own exchange and queue names and removes them afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from sip_hub import bus as bus_module
from sip_hub.bus import (ATTEMPTS, REASON, Ack, Bus, BusUnavailable, DeadLetter, Envelope,
                         Received, Requeue, Topology)
from sip_hub.errors import BadRequest, TransientError

A, B = "SE2321000016-A001", "SE2120000142-B002"
MakeBus = Callable[[], Bus]


@pytest.fixture(params=["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
def make_bus(request: pytest.FixtureRequest) -> Iterator[MakeBus]:
    url = "memory://" if request.param == "memory" else request.getfixturevalue("broker_url")
    run = uuid.uuid4().hex[:10]
    topology = Topology(exchange=f"t{run}.sip_hub", prefix=f"t{run}.sip")
    made: list[Bus] = []

    def make() -> Bus:
        bus = Bus(url, topology, requeue_delay=0)
        made.append(bus)
        return bus

    yield make
    for bus in made:
        bus.close()
    with Bus(url, topology) as cleaner:
        cleaner.delete([A, B])


def eventually(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def env(n: int = 1, **headers: str | int) -> Envelope:
    return Envelope(f'{{"n": {n}}}'.encode(), f"msg-{n}", {"sip-seq": n, **headers})


def collect(bus: Bus, orgs: list[str], outcome: Callable[[Received], object] = lambda m: Ack(),
            timeout: float = 0.5) -> list[Received]:
    got: list[Received] = []

    def handler(m: Received):  # noqa: ANN202 - any Outcome
        got.append(m)
        return outcome(m)
    bus.consume(orgs, handler)
    bus.drain(timeout=timeout)
    return got


def test_a_message_reaches_exactly_its_organisations_queue(make_bus: MakeBus) -> None:
    pub, sub_a, sub_b = make_bus(), make_bus(), make_bus()
    sub_b.declare(B)
    pub.publish(A, env(1))
    assert collect(sub_b, [B]) == []
    (got,) = collect(sub_a, [A])
    assert got.org == A


def test_body_message_id_and_headers_arrive_unchanged(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    pub.publish(A, Envelope(b'{"resourceType":"Bundle","type":"message"}', "hdr-1",
                            {"sip-delivery": "d-1", "sip-seq": 7}))
    (got,) = collect(sub, [A])
    assert got.body == b'{"resourceType":"Bundle","type":"message"}'
    assert got.message_id == "hdr-1"
    assert got.headers["sip-delivery"] == "d-1" and got.headers["sip-seq"] == 7


def test_messages_of_several_publishers_in_one_queue_are_each_settled_once(
        make_bus: MakeBus) -> None:
    # each message's delivery tag is unique among those a consumer holds unacknowledged (on
    # the memory transport, tags come from one counter of the process, whichever channel)
    pubs = [make_bus() for _ in range(3)]
    for n in range(30):
        pubs[n % 3].publish(A, env(n))
    sub = make_bus()
    requeued: set[str] = set()

    def outcome(m: Received) -> object:
        if int(m.message_id.split("-")[1]) % 2 and m.message_id not in requeued:
            requeued.add(m.message_id)
            return Requeue(0)
        return Ack()
    got: list[Received] = []

    def handle(batch: list[Received]) -> list[object]:  # several unacknowledged at once
        got.extend(batch)
        return [outcome(m) for m in batch]
    sub.consume_batches([A], handle, batch=30)
    eventually(lambda: (sub.drain(timeout=0.2), len(got) >= 45)[1])
    assert sorted(m.message_id for m in got) == sorted(
        [f"msg-{n}" for n in range(30)] + [f"msg-{n}" for n in range(1, 30, 2)])
    sub.drain(timeout=0.3)
    assert len(got) == 45 and pubs[0].queue_size(A) == 0


def test_messages_wait_in_the_queue_until_a_consumer_comes(make_bus: MakeBus) -> None:
    pub = make_bus()
    for n in (1, 2, 3):
        pub.publish(A, env(n))
    assert pub.queue_size(A) == 3
    got = collect(make_bus(), [A])
    assert [m.message_id for m in got] == ["msg-1", "msg-2", "msg-3"]  # FIFO


def test_acknowledged_messages_are_gone(make_bus: MakeBus) -> None:
    pub = make_bus()
    pub.publish(A, env(1))
    assert len(collect(make_bus(), [A])) == 1
    assert collect(make_bus(), [A]) == []
    assert pub.queue_size(A) == 0


def test_a_requeued_message_is_delivered_again(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    pub.publish(A, env(1))
    seen: list[str] = []

    def once_then_ack(m: Received):  # noqa: ANN202
        seen.append(m.message_id)
        return Requeue(delay=0) if len(seen) == 1 else Ack()
    sub.consume([A], once_then_ack)
    sub.drain(timeout=0.5)
    assert seen == ["msg-1", "msg-1"]
    assert pub.queue_size(A) == 0


def test_a_dead_letter_carries_its_reason_and_attempts(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    pub.publish(A, env(1, **{"sip-delivery": "d-1"}))
    collect(sub, [A], lambda m: DeadLetter("HTTP 422 from https://x: bad plan", 3))
    assert pub.queue_size(A) == 0
    (dead,) = make_bus().take_dead()
    assert dead.message_id == "msg-1" and dead.body == b'{"n": 1}'
    assert dead.headers[REASON] == "HTTP 422 from https://x: bad plan"
    assert dead.headers[ATTEMPTS] == 3 and dead.headers["sip-delivery"] == "d-1"


def test_handler_errors_become_requeue_or_dead_letter_by_retryability(
        make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    pub.publish(A, env(1))
    pub.publish(A, env(2))
    calls: list[str] = []

    def failing(m: Received):  # noqa: ANN202
        calls.append(m.message_id)
        if m.message_id == "msg-1" and calls.count("msg-1") == 1:
            raise TransientError("database unavailable")
        if m.message_id == "msg-2":
            raise BadRequest("not a message Bundle")
        return Ack()
    sub.consume([A], failing)
    sub.drain(timeout=0.5)
    assert calls.count("msg-1") == 2 and calls.count("msg-2") == 1
    (dead,) = make_bus().take_dead()
    assert dead.message_id == "msg-2" and dead.headers[REASON] == "not a message Bundle"


def test_take_dead_takes_the_selected_and_leaves_the_rest(make_bus: MakeBus) -> None:
    bus = make_bus()
    for n in (1, 2, 3):
        bus.dead_letter(env(n), f"reason {n}", n)
    taken = bus.take_dead(lambda m: m.message_id == "msg-2")
    assert [m.message_id for m in taken] == ["msg-2"]
    eventually(lambda: bus.queue_size() == 2)  # RabbitMQ requeues asynchronously
    assert sorted(m.message_id for m in make_bus().take_dead()) == ["msg-1", "msg-3"]
    assert bus.queue_size() == 0


def test_consume_can_add_queues_later(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    pub.publish(A, env(1))
    pub.publish(B, env(2))
    got = collect(sub, [A])
    got += collect(sub, [A, B])
    assert sorted((m.org, m.message_id) for m in got) == sorted([(A, "msg-1"), (B, "msg-2")])


def test_a_batch_is_published_in_order_and_every_message_confirmed(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    batch = [(A if n % 3 else B, env(n)) for n in range(1, 31)]
    assert pub.publish_many(batch) == [True] * 30
    assert pub.publish_many([(A, env(31))]) == [True]  # the next batch counts on
    assert pub.publish_many([]) == []
    got = collect(sub, [A, B])
    for org in (A, B):
        assert [m.message_id for m in got if m.org == org] == [
            e.message_id for o, e in batch + [(A, env(31))] if o == org]


def test_one_message_for_several_organisations_reaches_each_with_its_own_headers(
        make_bus: MakeBus) -> None:
    """The relay publishes a routed message to each of its organisations; each queue's
    consumer sees its own delivery's headers only, and so does its dead letter."""
    pub, sub = make_bus(), make_bus()
    body = b'{"resourceType":"Bundle","type":"message"}'

    def to(delivery: str, seq: int) -> Envelope:
        return Envelope(body, "hdr-1", {"sip-delivery": delivery, "sip-seq": seq})
    # A twice (a delivery and its retry in one round): two messages in A's queue
    assert pub.publish_many([(B, to("d-b", 4)), (A, to("d-a", 1)), (A, to("d-a2", 2)),
                             (B, env(9))]) == [True] * 4

    def outcome(m: Received) -> object:
        return DeadLetter("refused", 1) if m.headers.get("sip-delivery") == "d-b" else Ack()
    got = collect(sub, [A, B], outcome)
    assert sorted((m.org, m.message_id, m.body, sorted(m.headers.items()))
                  for m in got) == sorted([
        (A, "hdr-1", body, [("sip-delivery", "d-a"), ("sip-seq", 1)]),
        (A, "hdr-1", body, [("sip-delivery", "d-a2"), ("sip-seq", 2)]),
        (B, "hdr-1", body, [("sip-delivery", "d-b"), ("sip-seq", 4)]),
        (B, "msg-9", b'{"n": 9}', [("sip-seq", 9)])])
    (dead,) = pub.take_dead()
    assert dead.body == body and {k: v for k, v in dead.headers.items()  # (x-: the broker's)
                                  if not k.startswith("x-")} == {
        "sip-delivery": "d-b", "sip-seq": 4, REASON: "refused", ATTEMPTS: 1}


@pytest.mark.rabbitmq
def test_on_rabbitmq_a_message_published_before_for_several_queues_gives_each_its_headers(
        broker_url: str) -> None:
    """A message an earlier release published once for several queues (the others in BCC,
    each queue's headers in ``sip-to``) is still read with its own queue's headers."""
    run = uuid.uuid4().hex[:10]
    topology = Topology(exchange=f"t{run}.sip_hub", prefix=f"t{run}.sip")
    with Bus(broker_url, topology) as pub, Bus(broker_url, topology) as sub:
        try:
            pub.declare(A)
            pub.declare(B)
            queues = {o: topology.org_queue(o) for o in (A, B)}
            pub.publish(A, Envelope(b"{}", "m", {
                "BCC": [topology.org_key(B)],
                "sip-to": {queues[o]: {"sip-delivery": f"d-{o}"} for o in (A, B)}}))
            got = collect(sub, [A, B])
            assert sorted((m.org, dict(m.headers)) for m in got) == sorted([
                (A, {"sip-delivery": f"d-{A}"}), (B, {"sip-delivery": f"d-{B}"})])
        finally:
            pub.delete([A, B])


def test_the_transport_declares_its_retryable_errors(make_bus: MakeBus) -> None:
    bus = make_bus()
    assert ConnectionError in bus.retryable_errors or any(
        issubclass(ConnectionRefusedError, e) for e in bus.retryable_errors)
    assert issubclass(BusUnavailable, TransientError) and BusUnavailable.retryable


# -- transport-specific -------------------------------------------------------------------------

def test_an_unreachable_broker_is_a_retryable_error() -> None:
    bus = Bus("amqp://guest:guest@127.0.0.1:1//", connect_timeout=1)
    with pytest.raises(BusUnavailable) as caught:
        bus.publish(A, env(1))
    assert caught.value.retryable and caught.value.status == 503
    bus.close()


def test_an_unreachable_broker_fails_a_batch_as_a_retryable_error() -> None:
    bus = Bus("amqp://guest:guest@127.0.0.1:1//", connect_timeout=1)
    with pytest.raises(BusUnavailable):
        bus.publish_many([(A, env(1)), (B, env(2))])
    bus.close()


@pytest.mark.rabbitmq
def test_messages_the_broker_refuses_in_a_batch_are_reported_and_the_rest_confirmed(
        broker_url: str) -> None:
    from kombu import Connection, Exchange, Queue
    run = uuid.uuid4().hex[:10]
    topology = Topology(exchange=f"t{run}.sip_hub", prefix=f"t{run}.sip")
    # A second queue on A's routing key that holds one message and refuses more: the broker
    # then nacks the publishes it cannot take.
    full = Queue(f"t{run}.full", Exchange(topology.exchange, type="topic", durable=True),
                 routing_key=topology.org_key(A), durable=False, auto_delete=True,
                 queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    with Bus(broker_url, topology) as bus, Connection(broker_url) as conn:
        try:
            bus.declare(A)
            full(conn.default_channel).declare()
            assert bus.publish_many([(A, env(1)), (A, env(2)), (B, env(3)), (A, env(4))]) == \
                [True, False, True, False]
            full(conn.default_channel).purge()
            assert bus.publish_many([(A, env(5))]) == [True]
            # one message for A and B: A's copy refused, B's confirmed
            refusals: dict[int, str] = {}
            assert bus.publish_many([(B, env(6)), (A, env(6))], refusals=refusals) == \
                [True, False]
            assert list(refusals) == [1] and "nack" in refusals[1]
            assert bus.publish_many([(B, env(7))]) == [True]
        finally:
            full(conn.default_channel).delete()
            bus.delete([A, B])


@pytest.mark.parametrize("cap", [5, 20])
def test_the_memory_dead_letter_queue_keeps_the_latest_copies_only(
        monkeypatch: pytest.MonkeyPatch, cap: int) -> None:
    """In process memory, an organisation without an endpoint would grow it without end
    (the outbox keeps every dead delivery: the queue holds copies)."""
    monkeypatch.setattr(bus_module, "MEMORY_DEAD_MAX", cap)
    run = uuid.uuid4().hex[:10]
    topology = Topology(exchange=f"t{run}.sip_hub", prefix=f"t{run}.sip")
    with Bus("memory://", topology) as bus, Bus("memory://", topology) as other:
        for n in range(1, 3 * cap):
            bus.dead_letter(env(n), f"reason {n}", 1)
            assert bus.queue_size() <= cap
        assert bus.queue_size() >= cap - cap // 10  # trimmed a tenth at a time
        for n in range(3 * cap, 6 * cap):  # two of the process's Buses share the queue
            (bus if n % 2 else other).dead_letter(env(n), f"reason {n}", 1)
            assert bus.queue_size() <= cap
        kept = [m.message_id for m in bus.take_dead()]
        assert kept[-1] == f"msg-{6 * cap - 1}" and cap - cap // 10 <= len(kept) <= cap
        assert kept == sorted(kept, key=lambda i: int(i.split("-")[1]))  # the oldest dropped
        bus.delete()


def test_the_memory_transport_does_not_outlive_the_process() -> None:
    with Bus("memory://") as bus:
        assert not bus.durable


@pytest.mark.rabbitmq
def test_rabbitmq_queues_are_durable_quorum_queues(broker_url: str) -> None:
    run = uuid.uuid4().hex[:10]
    topology = Topology(exchange=f"t{run}.sip_hub", prefix=f"t{run}.sip")
    with Bus(broker_url, topology) as bus:
        assert bus.durable
        bus.declare(A)
        try:
            from kombu import Connection, Queue
            with Connection(broker_url) as conn:
                classic = Queue(topology.org_queue(A), durable=True,
                                queue_arguments={"x-queue-type": "classic"})
                with pytest.raises(Exception, match="x-queue-type"):
                    classic(conn.default_channel).declare()
        finally:
            bus.delete([A])


def test_batches_take_what_has_arrived_and_settle_each_message_on_its_own(
        make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    for n in range(1, 8):
        pub.publish(A, env(n))
    batches: list[list[str]] = []

    def handler(ms: list[Received]):  # noqa: ANN202
        first_msg5 = not any("msg-5" in b for b in batches)
        batches.append([m.message_id for m in ms])
        return [DeadLetter("refused") if m.message_id == "msg-3" else
                Requeue(delay=0) if m.message_id == "msg-5" and first_msg5 else Ack()
                for m in ms]
    sub.consume_batches([A], handler, batch=4)
    # Seven, and msg-5 once more (a requeued message comes back in this drain or the next).
    assert sub.drain(timeout=0.5) + sub.drain(timeout=0.5) == 8
    assert all(len(b) <= 4 for b in batches) and any(len(b) > 1 for b in batches)
    seen = [i for b in batches for i in b]
    assert sorted(set(seen)) == [f"msg-{n}" for n in range(1, 8)]
    assert seen.count("msg-5") == 2 and seen.count("msg-3") == 1
    assert pub.queue_size(A) == 0
    # Every message was settled: none comes back to a new consumer once this one's channel
    # is gone.
    sub.close()
    assert collect(make_bus(), [A]) == []
    (dead,) = make_bus().take_dead()
    assert dead.message_id == "msg-3" and dead.headers[REASON] == "refused"


def test_a_failing_batch_handler_settles_every_message_of_the_batch(make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    pub.publish(A, env(1))
    pub.publish(A, env(2))
    calls: list[list[str]] = []

    def failing(ms: list[Received]):  # noqa: ANN202
        calls.append([m.message_id for m in ms])
        if len(calls) == 1:
            raise TransientError("database unavailable")  # retryable: both come again
        raise BadRequest("not a message Bundle")
    sub.consume_batches([A], failing, batch=2)
    sub.drain(timeout=0.5)
    # (retryable: both again; not retryable on the batch: each on its own, to find the culprit)
    assert calls[:2] == [["msg-1", "msg-2"]] * 2
    assert sorted(calls[2:]) == [["msg-1"], ["msg-2"]]
    dead = make_bus().take_dead()
    assert sorted(d.message_id for d in dead) == ["msg-1", "msg-2"]
    assert pub.queue_size(A) == 0


def test_messages_taken_but_not_yet_handled_when_the_wait_fails_come_again(
        make_bus: MakeBus) -> None:
    pub, sub = make_bus(), make_bus()
    pub.publish(A, env(1))
    handled: list[str] = []
    sub.consume_batches([A], lambda ms: [handled.append(m.message_id) or Ack() for m in ms],
                        batch=10)
    sub.close()  # the wait for a fuller batch would now fail; nothing was acknowledged
    again = make_bus()
    got = collect(again, [A])
    assert [m.message_id for m in got] == ["msg-1"]


def test_with_gather_what_has_arrived_is_handled_while_the_drain_waits_for_more(
        make_bus: MakeBus) -> None:
    """A batch not yet full is handled once no further message came within ``gather``, not
    at the end of the drain (a relay round's messages are delivered at once, not after the
    wait for more); what comes later is a batch of its own, in the same drain."""
    import threading
    pub, later_pub, sub = make_bus(), make_bus(), make_bus()
    for n in (1, 2, 3):
        pub.publish(A, env(n))
    published_later = threading.Event()
    batches: list[tuple[list[str], bool]] = []

    def handler(ms: list[Received]):  # noqa: ANN202
        batches.append(([m.message_id for m in ms], published_later.is_set()))
        return [Ack() for _ in ms]

    def publish_later() -> None:
        time.sleep(0.6)
        published_later.set()
        for n in (4, 5):
            later_pub.publish(A, env(n))
    sub.consume_batches([A], handler, batch=10)
    thread = threading.Thread(target=publish_later)
    thread.start()
    try:
        assert sub.drain(timeout=1.5, gather=0.05) == 5
    finally:
        thread.join()
    assert batches == [(["msg-1", "msg-2", "msg-3"], False), (["msg-4", "msg-5"], True)]
