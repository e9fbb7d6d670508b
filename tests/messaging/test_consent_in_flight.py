"""A consent withdrawn while a worker's batch is being POSTed: the deliveries an endpoint's
lane has not started yet are checked again as they start, and are withdrawn, not sent (the
batch's consent check was the only one: a lane of an endpoint taking one request at a time
POSTed its later deliveries seconds after the withdrawal). A delivery that was already on
its way and is acknowledged is recorded delivered, as it was (the withdrawal had recorded it
withdrawn, a record of something that did not happen)."""

from __future__ import annotations

from typing import Any

import sip_factory as f
from harness import BUP, SOC, Hub, broker, hub, receivers, world  # noqa: F401
from sip_hub.messaging import builder, outbox
from sip_hub.messaging.delivery import DELIVERED_DESPITE
from sip_hub.messaging.http import HttpClient


def _event(message: dict[str, Any]) -> str:
    return str(message["entry"][0]["resource"]["eventCoding"]["code"])


def _deliver(hub: Hub, orgs: list[str], recheck_after: float = 0.0) -> None:
    http = HttpClient()
    http.recheck_after = recheck_after
    try:
        hub.bus.consume_batches(orgs, hub.deliverer(http).handle_batch)
        hub.bus.drain(timeout=0.2)
    finally:
        http.close()


def test_nothing_is_posted_once_the_consent_is_withdrawn_and_the_outbox_tells_what_was(
        world: Hub, receivers: Any) -> None:  # noqa: F811
    bup = receivers()
    world.configure({BUP: bup.url}, entries={BUP: {"maxConcurrent": 1}})
    # A second notification to BUP, about another person covered as Alva is (a stream of its
    # own), so that it waits in BUP's one lane behind the plan-established of the same batch.
    with world.store.begin() as tx:
        tx.replace_grants("tolvan", tx.grants("alva"))
        note = builder.message("follow-up-scheduled", fhir_base="http://hub.test/fhir",
                               sender=SOC, destinations=[builder.Party(BUP, "x")],
                               focus=["CarePlan/alva-sip", "Patient/alva"], resources=[])
        (later,) = outbox.enqueue(tx, note, [BUP], sip=outbox.SipKey("tolvan", "tolvan-sip"))
    withdrawals: list[int] = []

    def withdraw_while_the_first_is_on_its_way(m: dict[str, Any]) -> None:
        if _event(m) == "plan-established" and not withdrawals:  # BUP left out of both
            r = world.put(SOC, f.sip_consent(actor_refs=[f.SOCIAL_SERVICES, f.SCHOOL]))
            with world.store.begin() as tx:
                tx.replace_grants("tolvan", tx.grants("alva"))
            withdrawals.append(r.status_code)
    bup.on_arrival = withdraw_while_the_first_is_on_its_way
    world.relay()
    _deliver(world, [BUP])
    assert withdrawals == [200]
    assert [_event(m) for m in bup.received] == ["plan-established"]
    (first,) = [d for d in world.deliveries() if d.dest_org == BUP
                and d.event == "plan-established"]
    (second,) = world.deliveries(ids=[later])
    assert (first.state, first.attempts, first.last_error) == ("delivered", 1,
                                                               DELIVERED_DESPITE)
    assert (second.state, second.attempts, second.last_error) == (
        "withdrawn", 0, outbox.WITHDRAWN_REASON)


def test_a_lane_checks_again_at_most_every_recheck_after_seconds(
        world: Hub, receivers: Any) -> None:  # noqa: F811
    """Within ``recheck_after`` of the last check a lane's next POST starts without a read
    (a batch of fast answers reads the grants a few times, not once per POST)."""
    bup = receivers()
    world.configure({BUP: bup.url}, entries={BUP: {"maxConcurrent": 1}})
    with world.store.begin() as tx:  # three more people's streams, on BUP's one lane
        for k in range(3):
            tx.replace_grants(f"person-{k}", tx.grants("alva"))
            note = builder.message("follow-up-scheduled", fhir_base="http://hub.test/fhir",
                                   sender=SOC, destinations=[builder.Party(BUP, "x")],
                                   focus=["CarePlan/alva-sip", "Patient/alva"], resources=[])
            outbox.enqueue(tx, note, [BUP], sip=outbox.SipKey(f"person-{k}", f"plan-{k}"))
    reads: list[int] = []
    original = world.store.begin

    def counting(*args: Any, **kw: Any) -> Any:
        if kw.get("write") is False:
            reads.append(1)
        return original(*args, **kw)
    world.store.begin = counting  # type: ignore[method-assign]
    try:
        world.relay()
        reads.clear()
        _deliver(world, [BUP], recheck_after=3600)
    finally:
        world.store.begin = original  # type: ignore[method-assign]
    assert sorted(_event(m) for m in bup.received) == ["follow-up-scheduled"] * 3 + [
        "plan-established"]
    assert len(reads) == 1  # the batch's own checks only
