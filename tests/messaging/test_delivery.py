"""Delivery to the organisations' endpoints (real HTTP servers on loopback): retries with
backoff, dead letters with their reason, replay, withdrawal, order per SIP, crash recovery."""

from __future__ import annotations

import threading
from typing import Any, Callable

import orjson
import pytest

import sip_factory as f
from harness import (BUP, SCHOOL, SOC, Hub, Receiver, broker, hub, receivers,  # noqa: F401
                     world)
from harness import responses_to, settled
from sip_hub.bus import ATTEMPTS, REASON, Bus, BusUnavailable
from sip_hub.fhir.dates import now_utc, to_us
from sip_hub.messaging import builder, outbox
from sip_hub.messaging.relay import DELIVERY, Relay
from sip_hub.messaging.replay import replay_dead
from sip_hub.metrics import DEAD_LETTERS
from sip_hub.store import outbox as sql
from sip_hub.store.search import Grant

BOTH = pytest.mark.parametrize(
    "broker", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)], indirect=True)


def endpoints(hub: Hub, receivers: Any, **overrides: Any) -> tuple[Receiver, Receiver]:
    bup, school = receivers(), receivers()
    hub.configure({BUP: bup.url, SCHOOL: school.url}, **overrides)
    return bup, school


def state(hub: Hub, org: str, event: str = "plan-established") -> sql.Delivery:
    (d,) = [d for d in hub.deliveries() if d.dest_org == org and d.event == event]
    return d


def event_of(message: dict) -> str:
    return message["entry"][0]["resource"]["eventCoding"]["code"]


@BOTH
def test_messages_reach_the_organisations_endpoints(world: Hub, receivers: Any) -> None:
    bup, school = endpoints(world, receivers)
    world.rounds(lambda: settled(world))
    for org, r in ((BUP, bup), (SCHOOL, school)):
        d = state(world, org)
        assert (d.state, d.attempts) == ("delivered", 1)
        (got,) = r.received
        assert got["entry"][0]["resource"]["id"] == d.message_id == r.applied[0]
        assert got == orjson.loads(d.content)
        assert r.headers[0]["Content-Type"] == "application/fhir+json"
        assert r.headers[0]["X-Request-ID"] == d.id  # what the hub's logs name it by


@BOTH
def test_destinations_are_posted_side_by_side(world: Hub, receivers: Any) -> None:
    """One slow organisation does not hold up another's deliveries: each receiver answers its
    first message only once the other has received its own (a barrier), which sequential
    POSTs would never reach: they would time out and be retried."""
    both = threading.Barrier(2)

    def meet(_message: Any) -> None:
        try:
            both.wait(timeout=5)
        except threading.BrokenBarrierError:
            return 503  # type: ignore[return-value]
        return None
    bup, school = endpoints(world, receivers)
    bup.fail_when = school.fail_when = meet
    world.rounds(lambda: settled(world))
    for org in (BUP, SCHOOL):
        assert (state(world, org).state, state(world, org).attempts) == ("delivered", 1)
    assert len(bup.received) == len(school.received) == 1


@BOTH
def test_server_errors_are_retried_with_backoff_then_dead_lettered_with_the_reason(
        world: Hub, receivers: Any) -> None:
    bup, _ = endpoints(world, receivers)
    bup.script = [503, 503, 503]
    dead_before = DEAD_LETTERS.labels("notification")._value.get()
    world.relay()
    world.deliver()
    d = state(world, BUP)
    assert (d.state, d.attempts) == ("pending", 1) and "HTTP 503" in (d.last_error or "")
    assert d.next_attempt_at - d.updated == 10_000   # base 0.01 s after the first failure
    world.rounds(lambda: state(world, BUP).state == "dead")
    d = state(world, BUP)
    assert d.attempts == 3 and d.last_error.startswith("Gave up after 3 attempts: HTTP 503")
    assert len(bup.received) == 3 and bup.applied == []
    (dead,) = world.bus.take_dead()
    assert dead.headers[REASON] == d.last_error and dead.headers[ATTEMPTS] == 3
    assert dead.headers[DELIVERY] == d.id and dead.message_id == d.message_id
    assert DEAD_LETTERS.labels("notification")._value.get() == dead_before + 1
    metrics = world.client.get("/metrics").text
    assert "sip_hub_message_dead_letters_total" in metrics
    assert state(world, SCHOOL).state == "delivered"   # other destinations are not held up


def test_backoff_doubles_up_to_its_maximum(hub: Hub) -> None:
    config = hub.messaging.config.model_copy(update={"retry_base_seconds": 10,
                                                     "retry_max_seconds": 3600})
    assert [config.retry_delay(n) for n in range(1, 10)] == [
        10, 20, 40, 80, 160, 320, 640, 1280, 2560]
    assert config.retry_delay(12) == 3600


def test_a_4xx_is_dead_at_once_with_the_receivers_reason(world: Hub, receivers: Any) -> None:
    bup, _ = endpoints(world, receivers)
    bup.script = [422]
    world.rounds(lambda: settled(world))
    d = state(world, BUP)
    assert (d.state, d.attempts) == ("dead", 1)
    assert "HTTP 422" in d.last_error and "said 422" in d.last_error


def test_a_receivers_error_naming_the_person_is_stored_and_logged_masked(
        world: Hub, receivers: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A receiving system's refusal commonly names whom it is about ("Okänd patient
    201103142384"). The hub logs ids, organisations, states and reasons, never personal data
    (README, Operations), and shows the last error to every admin client: the personal
    identity numbers in the receiver's text are masked before it is stored or logged."""
    _, school = endpoints(world, receivers)
    refusal = orjson.dumps({"resourceType": "OperationOutcome", "issue": [{
        "severity": "error", "code": "not-found",
        "diagnostics": f"Okänd patient {f.DEMO_PNR}: ingen elev med detta personnummer"}]})
    school.answer = lambda message: (422, refusal, 0.0)  # type: ignore[method-assign]
    with caplog.at_level("INFO"):
        world.rounds(lambda: settled(world))
    d = state(world, SCHOOL)
    assert d.state == "dead" and d.last_error == (
        f"HTTP 422 from {school.url}: Okänd patient [personnummer]: ingen elev med detta "
        "personnummer")
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if d.id in line and "is dead" in line] == [
        f"delivery {d.id} of message {d.message_id} to {SCHOOL} is dead: {d.last_error}"]
    assert not [line for line in lines if f.DEMO_PNR in line]


def test_a_fatal_error_response_is_dead_and_a_transient_one_is_retried(
        world: Hub, receivers: Any) -> None:
    bup, school = endpoints(world, receivers)
    bup.script = [(200, "fatal-error")]
    school.script = [(200, "transient-error")]
    world.rounds(lambda: settled(world))
    assert (state(world, BUP).state, state(world, BUP).attempts) == ("dead", 1)
    assert "fatal-error" in state(world, BUP).last_error
    assert (state(world, SCHOOL).state, state(world, SCHOOL).attempts) == ("delivered", 2)


def test_a_timeout_is_retried_and_the_receiver_applies_the_message_once(
        world: Hub, receivers: Any) -> None:
    bup, _ = endpoints(world, receivers, timeout_seconds=0.3)
    bup.script = [(200, "ok", 1.0)]   # answers too late, but did apply it
    world.rounds(lambda: settled(world))
    d = state(world, BUP)
    assert (d.state, d.attempts) == ("delivered", 2)
    assert bup.header_ids == [d.message_id, d.message_id] and bup.applied == [d.message_id]


def test_an_organisation_without_an_endpoint_is_dead_lettered_with_the_reason(
        world: Hub, caplog: pytest.LogCaptureFixture) -> None:
    world.configure({})
    with caplog.at_level("WARNING", logger="sip_hub.delivery"):
        world.rounds(lambda: settled(world))
    d = state(world, BUP)
    assert d.state == "dead" and "No message endpoint is configured" in d.last_error
    # Operators are told once per dead delivery, with its reason (logged after the commit).
    told = [r for r in caplog.records if d.id in r.getMessage()]
    assert [r.getMessage() for r in told] == [
        f"delivery {d.id} of message {d.message_id} to {BUP} is dead: {d.last_error}"]
    # ... and as fields a log pipeline filters on (JSON lines: fields of their own).
    assert (told[0].delivery, told[0].message_id, told[0].organization, told[0].event) == (
        d.id, d.message_id, BUP, d.event)


def test_a_dead_letter_is_counted_once_committed_never_for_work_undone(world: Hub) -> None:
    """The alert metric counts dead letters that were stored: not one whose transaction (or
    savepoint: a write of a group commit) was undone, and not before its commit."""
    d = state(world, SCHOOL)
    dead, now = DEAD_LETTERS.labels(d.kind), to_us(now_utc())
    before = dead._value.get()

    class Undo(Exception):
        pass

    def undone(tx: Any) -> None:
        assert outbox.record_dead(tx, [d], "gave up", now) == [d]
        raise Undo

    def undone_inside(tx: Any) -> None:
        with pytest.raises(Undo), tx.savepoint():
            undone(tx)

    with pytest.raises(Undo):
        world.store.write(undone)
    world.store.write(undone_inside)
    assert dead._value.get() == before
    assert state(world, SCHOOL).state == "pending"

    def kept(tx: Any) -> None:
        assert outbox.record_dead(tx, [d], "gave up", now) == [d]
        assert dead._value.get() == before  # not yet: the transaction may still fail

    world.store.write(kept)
    assert dead._value.get() == before + 1
    assert state(world, SCHOOL).state == "dead"


@BOTH
def test_the_relay_settles_deliveries_to_an_organisation_without_an_endpoint(
        world: Hub, receivers: Any) -> None:
    """Nothing to publish where no one can deliver: dead in the relay's round, with the
    reason, its copy in the dead-letter queue, the next message of its stream free to go."""
    bup = receivers()
    world.configure({BUP: bup.url})   # the school has no endpoint
    dead_before = DEAD_LETTERS.labels(sql.NOTIFICATION)._value.get()
    assert world.relay() == 2         # BUP's published, the school's settled
    d = state(world, SCHOOL)
    assert (d.state, d.attempts) == ("dead", 1)
    assert d.last_error == outbox.no_endpoint_reason(SCHOOL, world.tmp / "endpoints.json")
    assert world.bus.queue_size(SCHOOL) == 0          # never on the bus to be delivered
    (copy,) = world.bus.take_dead()
    assert (copy.message_id, copy.headers[REASON], copy.headers[ATTEMPTS]) == (
        d.message_id, d.last_error, 1)
    assert DEAD_LETTERS.labels(sql.NOTIFICATION)._value.get() == dead_before + 1
    with world.store.begin() as tx:   # the stream's next message: its head at once
        world.messaging.emitter.emit(tx, "follow-up-scheduled", sender_org=SOC,
                                     patient_id="alva", careplan_id="alva-sip",
                                     focus=["CarePlan/alva-sip"])
    world.rounds(lambda: settled(world))
    follow_up = state(world, SCHOOL, "follow-up-scheduled")
    assert (follow_up.state, follow_up.attempts) == ("dead", 1)
    assert sorted(event_of(m) for m in bup.received) == ["follow-up-scheduled",
                                                          "plan-established"]


def test_the_relay_withdraws_rather_than_kills_what_the_consent_no_longer_covers(
        world: Hub) -> None:
    world.configure({})
    with world.store.begin() as tx:   # the school's coverage ran out before the relay came
        grants = [g if g.org != SCHOOL else Grant(g.org, g.role, g.reads, to_us(now_utc()) - 1)
                  for g in tx.grants("alva")]
        tx.replace_grants("alva", grants)
    world.relay()
    school, bup = state(world, SCHOOL), state(world, BUP)
    assert (school.state, school.last_error) == ("withdrawn", outbox.WITHDRAWN_REASON)
    assert bup.state == "dead"
    assert [m.message_id for m in world.bus.take_dead()] == [bup.message_id]


@pytest.mark.rabbitmq
@pytest.mark.parametrize("broker", ["rabbitmq"], indirect=True)
def test_a_dead_delivery_the_broker_cannot_copy_stays_for_the_next_round(hub: Hub) -> None:
    hub.configure({})
    with hub.store.begin() as tx:   # a response to the school: no consent to check
        note = builder.message("follow-up-scheduled", fhir_base="http://hub.test/fhir",
                               sender=SOC, destinations=[builder.Party(SCHOOL, "x")],
                               focus=["CarePlan/plan-1", "Patient/p1"], resources=[])
        outbox.enqueue(tx, note, [SCHOOL], kind=outbox.RESPONSE,
                       sip=outbox.SipKey("p1", "plan-1"))
    gone = Bus("amqp://guest:guest@127.0.0.1:1//", hub.messaging.topology, connect_timeout=0.5)
    with pytest.raises(BusUnavailable), gone:
        Relay(hub.store, gone, endpoints=hub.messaging.endpoints).run_once()
    (d,) = hub.deliveries()
    assert (d.state, d.attempts) == ("pending", 0)   # the round undone, done again later
    assert hub.relay() == 1 and hub.deliveries()[0].state == "dead"
    assert [c.message_id for c in hub.bus.take_dead()] == [d.message_id]


# -- replay ---------------------------------------------------------------------------------

@BOTH
def test_replay_sends_dead_messages_again(world: Hub, receivers: Any) -> None:
    bup, _ = endpoints(world, receivers)
    bup.script = [422]
    world.rounds(lambda: settled(world))
    d = state(world, BUP)
    assert d.state == "dead" and world.bus.queue_size() == 1
    assert replay_dead(world.store, world.bus, [d.message_id]) == [d.id]
    assert state(world, BUP).state == "pending" and state(world, BUP).attempts == 0
    assert world.bus.queue_size() == 0
    world.rounds(lambda: settled(world))
    assert state(world, BUP).state == "delivered" and bup.applied == [d.message_id]
    assert replay_dead(world.store, world.bus, None) == []


def test_operators_replay_over_http(world: Hub, receivers: Any) -> None:
    bup, _ = endpoints(world, receivers)
    bup.script = [400]
    world.rounds(lambda: settled(world))
    d = state(world, BUP)
    url = f"/admin/messages/{d.id}/$replay"
    assert world.client.post(url, headers=world.headers[SOC]).status_code == 403
    r = world.client.post(url, headers=world.headers["admin"])
    assert r.status_code == 200 and d.id in r.json()["issue"][0]["diagnostics"]
    assert world.client.post(url, headers=world.headers["admin"]).status_code == 404
    world.rounds(lambda: settled(world))
    assert state(world, BUP).state == "delivered"


# -- crashes ------------------------------------------------------------------------------

@BOTH
def test_a_crash_between_publish_and_mark_publishes_again_and_nothing_is_doubled(
        world: Hub, receivers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    bup, _ = endpoints(world, receivers)
    real = sql.mark_published

    def crash(*args: Any) -> None:
        raise RuntimeError("the relay died after publishing")
    monkeypatch.setattr(sql, "mark_published", crash)
    with pytest.raises(RuntimeError):
        world.relay()
    monkeypatch.setattr(sql, "mark_published", real)
    assert {d.state for d in world.deliveries()} == {"pending"}
    assert world.relay() == 2                     # published again
    # On RabbitMQ the relay publishes (with confirms) before it marks: two copies wait for
    # BUP. On the in-process bus it marks and commits first, so the failed mark kept the
    # claim from the bus (test_outbox: a crash after the commit takes the bus along).
    assert world.bus.queue_size(BUP) == (2 if world.bus.durable else 1)
    world.rounds(lambda: settled(world))
    d = state(world, BUP)
    assert d.state == "delivered" and bup.header_ids == [d.message_id]  # the copy is dropped


def test_a_delivery_whose_outcome_was_lost_is_published_again_and_deduplicated(
        world: Hub, receivers: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    bup, _ = endpoints(world, receivers)
    world.relay()
    monkeypatch.setattr(sql, "mark_delivered", lambda tx, ids, now: 0)  # the record is lost
    world.deliver()
    monkeypatch.undo()
    assert state(world, BUP).state == "published" and len(bup.received) == 1
    Relay(world.store, world.bus, republish_after_seconds=0).run_once()
    world.rounds(lambda: settled(world))
    d = state(world, BUP)
    assert d.state == "delivered"
    assert bup.header_ids == [d.message_id, d.message_id] and bup.applied == [d.message_id]


# -- consent --------------------------------------------------------------------------------

def test_a_narrowed_consent_withdraws_what_was_published_but_not_delivered(
        world: Hub, receivers: Any) -> None:
    bup, school = endpoints(world, receivers)
    world.relay()
    r = world.put(SOC, f.sip_consent(actor_refs=[f.SOCIAL_SERVICES, f.BUP]))
    assert r.status_code == 200
    world.rounds(lambda: settled(world))
    assert state(world, SCHOOL).state == "withdrawn" and school.received == []
    assert state(world, BUP).state == "delivered"
    assert sorted(event_of(m) for m in bup.received) == ["consent-changed",
                                                          "plan-established"]


def test_coverage_is_checked_again_just_before_delivery(world: Hub, receivers: Any) -> None:
    _, school = endpoints(world, receivers)
    world.relay()
    # The consent ran out while the message waited (no write happened to notice it).
    with world.store.begin() as tx:
        grants = [g if g.org != SCHOOL else Grant(g.org, g.role, g.reads, to_us(now_utc()) - 1)
                  for g in tx.grants("alva")]
        tx.replace_grants("alva", grants)
    world.rounds(lambda: settled(world))
    d = state(world, SCHOOL)
    assert d.state == "withdrawn" and d.last_error == outbox.WITHDRAWN_REASON
    assert school.received == []


# -- order ------------------------------------------------------------------------------------

def test_order_is_kept_per_sip_for_each_destination(world: Hub, receivers: Any) -> None:
    bup, school = endpoints(world, receivers)
    bup.script = [503, 503]
    with world.store.begin() as tx:
        for _ in range(2):
            world.messaging.emitter.emit(tx, "follow-up-scheduled", sender_org=SOC,
                                         patient_id="alva", careplan_id="alva-sip",
                                         focus=["CarePlan/alva-sip"])
    order = [d.message_id for d in sorted(
        (d for d in world.deliveries() if d.dest_org == BUP), key=lambda d: d.seq)]
    world.rounds(lambda: settled(world))
    assert bup.header_ids == [order[0], order[0], order[0], order[1], order[2]]
    assert school.header_ids == order   # the same messages, in the same order


def _in_flight(meet: int) -> tuple[Callable[[Any], Any], list[int]]:
    """A receiver hook holding each request until ``meet`` are in flight together (a barrier:
    fewer at once time out and are answered 503); and the most that were."""
    together = threading.Barrier(meet)
    in_flight, most = [0], [0]
    count = threading.Lock()

    def arrive(_message: Any) -> Any:
        with count:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        try:
            together.wait(timeout=5)
        except threading.BrokenBarrierError:
            return 503
        finally:
            with count:
                in_flight[0] -= 1
        return None
    return arrive, most


def test_one_organisations_sips_are_posted_side_by_side_four_at_most(
        hub: Hub, receivers: Any) -> None:
    """Eight SIPs' messages to one organisation: its streams go side by side (each SIP's in
    order), at most four at a time (the default). The receiver holds each request until four
    are in flight: one after another they would time out and be retried."""
    bup = receivers()
    hub.configure({BUP: bup.url})
    bup.on_arrival, most = _in_flight(4)
    responses_to(hub, BUP, 8)
    hub.rounds(lambda: settled(hub))
    assert [(d.state, d.attempts) for d in hub.deliveries()] == [("delivered", 1)] * 8
    assert len(bup.received) == 8 and most[0] == 4


def test_an_endpoint_configured_for_one_request_at_a_time_gets_one_at_a_time(
        hub: Hub, receivers: Any) -> None:
    bup = receivers()
    hub.configure({BUP: bup.url}, entries={BUP: {"maxConcurrent": 1}})
    bup.on_arrival, most = _in_flight(1)
    responses_to(hub, BUP, 8)
    hub.rounds(lambda: settled(hub))
    assert [(d.state, d.attempts) for d in hub.deliveries()] == [("delivered", 1)] * 8
    assert len(bup.received) == 8 and most[0] == 1


def test_one_sips_failing_stream_does_not_hold_up_another(world: Hub, receivers: Any) -> None:
    bup, _ = endpoints(world, receivers)
    bup.fail_when = lambda m: 503 if event_of(m) == "plan-established" else None
    with world.store.begin() as tx:
        response = builder.response("req-1", "ok", fhir_base="http://hub.test/fhir",
                                    destination=builder.Party(BUP, "x"),
                                    focus=["Patient/tolvan"])
        outbox.enqueue(tx, response, [BUP], kind=outbox.RESPONSE,
                       sip=outbox.SipKey("tolvan", ""))
    world.rounds(lambda: any(event_of(m) == "acknowledgement" for m in bup.received))
    assert state(world, BUP).state == "pending"          # alva's stream still failing
    assert state(world, BUP, "acknowledgement").state == "delivered"
