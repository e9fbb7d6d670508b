"""Organisations that take their messages from the broker themselves (``"queue": true`` in the
endpoints file): the delivery workers hand each message over to the organisation's own queue,
in order per SIP, and record it delivered once RabbitMQ confirms it. Routing by consent is the
same as for an endpoint: nothing reaches the queue of an organisation the consent does not
cover."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from kombu import Connection, Exchange, Queue

from harness import (BUP, OUTSIDER, SCHOOL, SOC, Hub, broker, hub, receivers,  # noqa: F401
                     world)
from harness import settled, worker_rounds
from sip_hub.bus import Bus
from sip_hub.messaging import builder, outbox
from sip_hub.messaging.delivery import Deliverer
from sip_hub.messaging.http import HttpClient
from sip_hub.messaging.worker import Worker

RABBITMQ = pytest.mark.parametrize(
    "broker", [pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)], indirect=True)


def take(hub: Hub, org: str) -> list[Any]:
    """Everything in the organisation's own queue, as its system would consume it (kombu,
    acknowledging each)."""
    topology = hub.messaging.topology
    queue = Queue(topology.inbox_queue(org), Exchange(topology.exchange, type="topic",
                                                      durable=True),
                  routing_key=topology.inbox_key(org), durable=True,
                  queue_arguments={"x-queue-type": "quorum"})
    got = []
    with Connection(hub.messaging.config.broker_url) as conn:
        bound = queue(conn.default_channel)
        bound.declare()
        while (message := bound.get(no_ack=False)) is not None:
            got.append(message)
            message.ack()
    return got


def follow_ups(hub: Hub, n: int) -> None:
    with hub.store.begin() as tx:
        for _ in range(n):
            hub.messaging.emitter.emit(tx, "follow-up-scheduled", sender_org=SOC,
                                       patient_id="alva", careplan_id="alva-sip",
                                       focus=["CarePlan/alva-sip"])


@RABBITMQ
def test_an_organisation_takes_its_messages_from_its_own_queue(world: Hub,
                                                               receivers: Any) -> None:
    school = receivers()
    world.configure({BUP: None, SCHOOL: school.url})
    follow_ups(world, 3)
    worker = Worker(world.store, world.messaging)
    try:
        worker_rounds(worker, lambda: settled(world))
    finally:
        worker.close()
    to_bup = sorted((d for d in world.deliveries() if d.dest_org == BUP), key=lambda d: d.seq)
    assert len(to_bup) == 4 and all((d.state, d.attempts) == ("delivered", 1) for d in to_bup)
    got = take(world, BUP)
    # Each message once, in the SIP's order, as the Bundle the outbox holds.
    assert [m.properties["message_id"] for m in got] == [d.message_id for d in to_bup]
    assert [orjson.loads(m.body) for m in got] == [orjson.loads(d.content) for d in to_bup]
    assert [m.headers["sip-event"] for m in got] == [d.event for d in to_bup]
    assert {m.content_type for m in got} == {"application/fhir+json"}
    assert all(orjson.loads(m.body)["entry"][0]["resource"]["id"] == m.properties["message_id"]
               for m in got)
    assert len(school.received) == 4          # the school still gets its POSTs
    assert take(world, SCHOOL) == [] and take(world, OUTSIDER) == []   # nothing else queued


@RABBITMQ
def test_a_hand_over_the_broker_cannot_take_is_retried_with_the_reason(hub: Hub) -> None:
    hub.configure({BUP: None})
    with hub.store.begin() as tx:   # a response to BUP: no consent to check
        note = builder.message("follow-up-scheduled", fhir_base="http://hub.test/fhir",
                               sender=SOC, destinations=[builder.Party(BUP, "x")],
                               focus=["CarePlan/plan-1", "Patient/p1"], resources=[])
        outbox.enqueue(tx, note, [BUP], kind=outbox.RESPONSE,
                       sip=outbox.SipKey("p1", "plan-1"))
    assert hub.relay() == 1
    with Bus("amqp://guest:guest@127.0.0.1:1//", hub.messaging.topology,
             connect_timeout=0.5) as gone:   # the broker went away between the two
        deliverer = Deliverer(hub.store, hub.messaging.endpoints, hub.messaging.config,
                              HttpClient(), gone)
        hub.bus.consume_batches([BUP], deliverer.handle_batch)
        assert hub.bus.drain(timeout=0.5) == 1
    (d,) = hub.deliveries()
    assert (d.state, d.attempts) == ("pending", 1)
    assert d.last_error is not None and f"queue of {BUP}" in d.last_error
    assert take(hub, BUP) == []


def test_the_in_process_bus_cannot_offer_an_organisation_its_queue(hub: Hub) -> None:
    with pytest.raises(ValueError, match=f"{BUP}.*in-process bus.*SIP_HUB_BROKER_URL"):
        hub.configure({BUP: None})
