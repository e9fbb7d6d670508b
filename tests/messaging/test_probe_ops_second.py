"""Probe 5 (operations) on the bus and the deliverer: a message kombu cannot decode, a
malformed delivery id in a batch of genuine ones, a handler failing on a batch, timeouts
libcurl cannot take, the endpoints file's problems on one line, strangers logged and counted.

Every test on RabbitMQ uses its own exchange and queue names and removes them afterwards.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection, Exchange
from pydantic import ValidationError

import harness
from harness import BUP, SCHOOL, Hub, settled
from sip_hub.bus import (REASON, UNKNOWN, Ack, Bus, DeadLetter, Envelope, Received,
                         Topology)
from sip_hub.messaging.config import MessagingSettings
from sip_hub.messaging.endpoints import Endpoints
from sip_hub.messaging.outbox import no_endpoint_reason
from sip_hub.messaging.relay import DELIVERY
from sip_hub.metrics import DEAD_LETTERS

# (the harness's fixtures, under the names the tests ask for)
broker, hub, receivers = harness.broker, harness.hub, harness.receivers
A = "SE2321000016-PA01"
URLS = pytest.mark.parametrize(
    "url", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)])
BOTH = pytest.mark.parametrize(
    "broker", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)], indirect=True)


@pytest.fixture
def bus_at(request: pytest.FixtureRequest, url: str) -> Iterator[tuple[str, Topology]]:
    broker_url = "memory://" if url == "memory" else request.getfixturevalue("broker_url")
    run = uuid.uuid4().hex[:10]
    topology = Topology(exchange=f"p5b{run}.sip_hub", prefix=f"p5b{run}.sip")
    yield broker_url, topology
    with Bus(broker_url, topology) as cleaner:
        cleaner.delete([A])


def raw_publish(url: str, topology: Topology, org: str, body: Any, **props: Any) -> None:
    with Connection(url) as conn:
        producer = conn.Producer(exchange=Exchange(topology.exchange, type="topic",
                                                   durable=True))
        producer.publish(body, routing_key=topology.org_key(org), **props)


def unknown_dead() -> float:
    return DEAD_LETTERS.labels(UNKNOWN)._value.get()


# -- 1. a message kombu cannot decode -------------------------------------------------------

@URLS
def test_a_message_that_cannot_be_decompressed_is_dead_lettered_and_the_queue_goes_on(
        bus_at: tuple[str, Topology], caplog: pytest.LogCaptureFixture) -> None:
    url, topology = bus_at
    got: list[Received] = []

    def handle(ms: list[Received]) -> list[Any]:
        got.extend(ms)
        return [Ack() for _ in ms]

    before = unknown_dead()
    with Bus(url, topology, requeue_delay=0) as bus:
        bus.declare(A)
        raw_publish(url, topology, A, b"{}", content_type="application/fhir+json",
                    content_encoding="binary", message_id="cmp-1",
                    headers={DELIVERY: "cmp-1", "compression": "application/x-gzip"})
        bus.publish(A, Envelope(b'{"n": 1}', "after", {"sip-seq": 1}))
        bus.consume_batches([A], handle)
        with caplog.at_level(logging.WARNING, "sip_hub.bus"):
            for _ in range(3):
                bus.drain(timeout=0.3)
        assert [m.message_id for m in got] == ["after"]
        assert bus.queue_size(A) == 0
        dead = bus.take_dead()  # (the dead copy must itself be readable: replay reads it)
    assert [m.message_id for m in dead] == ["cmp-1"]
    reason = str(dead[0].headers[REASON])
    assert reason.startswith("Not an outbox delivery: the message cannot be decoded")
    assert "application/x-gzip" in reason and "compression" not in dead[0].headers
    assert dead[0].body == b"{}" and dead[0].headers[DELIVERY] == "cmp-1"
    assert unknown_dead() == before + 1
    assert "cmp-1" in caplog.text and "dead-lettered" in caplog.text


@URLS
def test_a_dead_letter_another_publisher_left_undecodable_does_not_stop_take_dead(
        bus_at: tuple[str, Topology]) -> None:
    url, topology = bus_at
    with Bus(url, topology) as bus:
        bus.queue_size()  # (declares the dead-letter queue)
        with Connection(url) as conn:
            conn.Producer().publish(b"xx", exchange=topology.exchange,
                                    routing_key=topology.dead_key,
                                    headers={"compression": "application/x-gzip"},
                                    content_type="application/octet-stream",
                                    content_encoding="binary", message_id="odd")
        bus.dead_letter(Envelope(b"{}", "mine", {}), "why", 1)
        assert sorted(m.message_id for m in bus.take_dead()) == ["mine", "odd"]


# -- 2. a malformed message in a batch of genuine deliveries ---------------------------------

def enqueue_for(hub: Hub, org: str, n: int) -> None:
    from test_probe_bus_faults import enqueue
    enqueue(hub, [org], n)


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["sqlite", pytest.param("postgres")], indirect=True)
def test_a_nul_in_a_delivery_id_dead_letters_that_message_alone(
        hub: Hub, receivers: Any) -> None:
    bup = receivers()
    hub.configure({BUP: bup.url})
    enqueue_for(hub, BUP, 2)
    before = unknown_dead()
    # The stranger first, then the relay's genuine deliveries: all in one batch.
    hub.bus.publish(BUP, Envelope(b"{}", "nul", {DELIVERY: "abc\x00def"}))
    hub.bus.publish(BUP, Envelope(b"{}", "short", {DELIVERY: "not-an-id"}))
    hub.relay()
    hub.deliver([BUP], timeout=0.5)
    assert [d.state for d in hub.deliveries() if d.dest_org == BUP] == ["delivered"] * 2
    assert len(bup.received) == 2
    dead = {m.message_id: str(m.headers[REASON]) for m in hub.bus.take_dead()}
    assert set(dead) == {"nul", "short"}
    assert dead["nul"] == ("Not an outbox delivery: sip-delivery 'abc\\x00def' is not a "
                           "delivery id")
    assert "'not-an-id' is not a delivery id" in dead["short"]
    assert unknown_dead() == before + 2


@BOTH
def test_a_handler_failing_on_a_batch_dead_letters_only_the_message_it_fails_on(
        hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[list[str]] = []

    def handle(ms: list[Received]) -> list[Any]:
        seen.append([m.message_id for m in ms])
        if any(m.headers.get("poison") for m in ms):
            raise RuntimeError("chokes on the poison")
        return [Ack() for _ in ms]

    for n, poison in enumerate([0, 1, 0]):
        hub.bus.publish(BUP, Envelope(b"{}", f"m{n}", {"poison": poison}))
    hub.bus.consume_batches([BUP], handle, batch=10)
    with caplog.at_level(logging.ERROR, "sip_hub.bus"):
        hub.bus.drain(timeout=0.3)
    assert seen[0] == ["m0", "m1", "m2"] and sorted(seen[1:]) == [["m0"], ["m1"], ["m2"]]
    dead = {m.message_id: str(m.headers[REASON]) for m in hub.bus.take_dead()}
    assert dead == {"m1": "RuntimeError: chokes on the poison"}
    assert hub.bus.queue_size(BUP) == 0


def test_a_retryable_failure_of_one_message_requeues_it_alone() -> None:
    from sip_hub.errors import TransientError
    bus = Bus("memory://", Topology(exchange=f"p5{uuid.uuid4().hex[:8]}", prefix="p5"))
    out: list[Any] = []

    def handle(ms: list[Received]) -> list[Any]:
        if len(ms) > 1:
            raise ValueError("a bug")
        if ms[0].message_id == "b":
            raise TransientError("later")
        return [DeadLetter("x")] if ms[0].message_id == "c" else [Ack()]

    bus._handler = handle
    rs = [Received(b"", i, {}, A, False) for i in "abc"]
    out = bus._outcomes(rs)
    assert [type(o).__name__ for o in out] == ["Ack", "Requeue", "DeadLetter"]
    bus.close()


# -- 3. timeouts libcurl cannot take -----------------------------------------------------

@pytest.mark.parametrize("value", ["inf", "1e16", "3601", "nan"])
def test_a_delivery_timeout_beyond_an_hour_or_not_finite_is_refused(value: str) -> None:
    with pytest.raises(ValidationError):
        MessagingSettings(timeout_seconds=value)
    assert MessagingSettings(timeout_seconds="3600").timeout_seconds == 3600


@pytest.mark.parametrize("value", [1e16, 3601])  # (orjson refuses an infinite number)
def test_an_endpoint_timeout_beyond_an_hour_is_refused_on_one_line(
        tmp_path: Path, value: float) -> None:
    path = tmp_path / "e.json"
    path.write_text(json.dumps({"endpoints": [{"organization": A, "url": "http://x.test/",
                                               "timeoutSeconds": value}]}))
    with pytest.raises(ValueError) as err:
        Endpoints.load(path)
    assert str(err.value).startswith(f"{path}: not a valid endpoints file: "
                                     "endpoints[0].timeoutSeconds:")
    assert "\n" not in str(err.value)


# -- 6. the endpoints file's problems on one line -----------------------------------------

@pytest.mark.parametrize("content, fragment", [
    ({"endpoints": {}}, "endpoints: Input should be a valid list"),
    ({"endpoints": [{"organization": A}]}, "endpoints[0]: Value error, organization"),
    ({"endpoints": [{"organization": A, "url": "http://x.test/", "nope": 1}]},
     "endpoints[0].nope: Extra inputs are not permitted"),
])
def test_an_invalid_endpoints_file_is_reported_on_one_line_naming_it(
        tmp_path: Path, content: Any, fragment: str) -> None:
    path = tmp_path / "e.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError) as err:
        Endpoints.load(path)
    text = str(err.value)
    assert text.startswith(f"{path}: not a valid endpoints file: ") and fragment in text
    assert "\n" not in text and "pydantic" not in text and "input_value" not in text


# -- 7. the configured file in the reason; strangers logged and counted ----------------------

def test_the_no_endpoint_reason_names_the_configured_file(tmp_path: Path) -> None:
    path = tmp_path / "elsewhere.json"
    path.write_text(json.dumps({"endpoints": []}))
    assert no_endpoint_reason(A, Endpoints.load(path).source) == (
        f"No message endpoint is configured for {A} ({path})")


@BOTH
def test_a_delivery_to_an_organisation_without_endpoint_names_the_configured_file(
        hub: Hub, receivers: Any) -> None:
    hub.configure({BUP: receivers().url})  # SCHOOL has none
    enqueue_for(hub, SCHOOL, 1)
    hub.rounds(lambda: settled(hub))
    (d,) = [d for d in hub.deliveries() if d.dest_org == SCHOOL]
    assert d.state == "dead"
    assert d.last_error == f"No message endpoint is configured for {SCHOOL} ({hub.tmp}/" \
                           "endpoints.json)"


@BOTH
def test_a_stranger_on_a_queue_is_logged_and_counted(
        hub: Hub, receivers: Any, caplog: pytest.LogCaptureFixture) -> None:
    hub.configure({BUP: receivers().url})
    before = unknown_dead()
    hub.bus.publish(BUP, Envelope(b"{}", "no-header", {}))
    hub.bus.publish(BUP, Envelope(b"{}", "unknown", {DELIVERY: str(uuid.uuid4())}))
    with caplog.at_level(logging.WARNING, "sip_hub.delivery"):
        hub.deliver([BUP], timeout=0.3)
    assert unknown_dead() == before + 2
    assert "no-header" in caplog.text and "unknown" in caplog.text
    assert len(hub.bus.take_dead()) == 2
