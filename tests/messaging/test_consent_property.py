"""Routing by consent, as a property: whatever the order of the participants' messages, the
coordinator's consent changes and the relay and delivery rounds between them,

* a message is routed to exactly the organisations the consent in force covers when the
  message is created (but its sender);
* it reaches an organisation only while the consent still covers it: a narrowing or a
  withdrawal withdraws what that organisation has not received yet, for good (rule 1: from
  then on nothing more is shared with those no longer covered);
* everything else reaches its organisation exactly once.

A small model of the consent (not the hub's grants) says what is expected.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import sip_factory as f
from harness import (BUP, OUTSIDER, SCHOOL, SOC, URL, Hub, Receiver, broker, hub,  # noqa: F401
                     current_plan, receivers, status_change, world)
from sip_hub.messaging import vocabulary as vocab
from sip_hub.store import outbox as sql
from sip_process import day

Json = dict[str, Any]
PARTICIPANTS = (BUP, SCHOOL)
ORG_REF = {SOC: f.SOCIAL_SERVICES, BUP: f.BUP, SCHOOL: f.SCHOOL}
INSATS = {BUP: 0, SCHOOL: 1}   # each participant's own insats in the demo plan
LIVE, LOST, DELIVERED = "live", "lost", "delivered"

steps = st.lists(st.one_of(
    st.tuples(st.just("status"), st.sampled_from(PARTICIPANTS),
              st.sampled_from(["in-progress", "on-hold", "completed", "scheduled"])),
    st.tuples(st.just("consent"), st.frozensets(st.sampled_from(PARTICIPANTS)),
              st.sampled_from(["active", "active", "inactive"])),
    st.tuples(st.just("relay")),
    st.tuples(st.just("deliver")),
), min_size=1, max_size=12)


@dataclass
class Model:
    """What the consent says, and what each (message, organisation) pair is owed."""

    hub: Hub
    endpoint: dict[str, Receiver]
    covered: set[str] = field(default_factory=set)
    consent_now: tuple[frozenset[str], str] = (frozenset(PARTICIPANTS), "active")
    # (MessageHeader.id, organisation) -> owed (LIVE), no longer owed (LOST), DELIVERED
    routed: dict[tuple[str, str], str] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # delivery ids already checked
    heard: dict[str, int] = field(default_factory=dict)  # messages checked per receiver

    def deliveries(self) -> list[sql.Delivery]:
        return self.hub.deliveries(limit=1_000_000)

    def settle(self) -> None:
        self.hub.rounds(lambda: all(d.state not in sql.OPEN for d in self.deliveries()),
                        seconds=60)

    def reset(self) -> None:
        """Every example starts from the full consent, with nothing on its way."""
        set_consent(self.hub, PARTICIPANTS, "active")
        self.settle()
        for r in self.endpoint.values():
            with r.lock:
                r.received.clear()
                r.applied.clear()
        self.covered = {SOC, *PARTICIPANTS}
        self.consent_now = (frozenset(PARTICIPANTS), "active")
        self.routed.clear()
        self.seen = {d.id for d in self.deliveries()}
        self.heard = {org: 0 for org in self.endpoint}

    def created(self, sender: str, event: str, expected: bool) -> None:
        """The messages the last action wrote: to exactly the covered organisations but the
        sender."""
        new = [d for d in self.deliveries() if d.id not in self.seen]
        self.seen |= {d.id for d in new}
        by_message: dict[str, set[str]] = {}
        for d in new:
            assert d.event == event and d.kind == sql.NOTIFICATION, d
            by_message.setdefault(d.message_id, set()).add(d.dest_org)
        want = self.covered - {sender}
        assert len(by_message) == (1 if expected and want else 0), (by_message, want)
        for message_id, dests in by_message.items():
            assert dests == want, (message_id, dests, want)
            self.routed.update({(message_id, org): LIVE for org in dests})

    def consent(self, actors: frozenset[str], status: str) -> None:
        set_consent(self.hub, actors, status)
        # A change is news when a consent is or was in force (granted, narrowed, withdrawn).
        news = (actors, status) != self.consent_now and "active" in (status,
                                                                      self.consent_now[1])
        self.consent_now = (actors, status)
        covered = {SOC, *actors} if status == "active" else set()
        for (message_id, org), state in self.routed.items():
            if state == LIVE and org not in covered:
                self.routed[(message_id, org)] = LOST
        self.covered = covered
        self.created(SOC, vocab.CONSENT_CHANGED, expected=news)

    def status(self, sender: str, status: str) -> None:
        before = current_plan(self.hub)["activity"][INSATS[sender]]["detail"]["status"]
        msg = status_change(self.hub, sender=sender, status=status, insats=INSATS[sender])
        r = self.hub.post(sender, URL, msg)
        assert r.status_code == 200, r.text
        code = r.json()["entry"][0]["resource"]["response"]["code"]
        allowed = sender in self.covered
        assert code == (vocab.OK if allowed else vocab.FATAL_ERROR), r.text
        # (a status as it stands already changes nothing: nothing is sent on)
        self.created(sender, vocab.INSATS_STATUS_CHANGED, expected=allowed and before != status)

    def check_received(self) -> None:
        """What arrived since the last look was owed to its receiver at that moment."""
        for org, r in self.endpoint.items():
            with r.lock:
                arrived = r.header_ids[self.heard[org]:]
            self.heard[org] += len(arrived)
            for message_id in arrived:
                assert self.routed.get((message_id, org)) == LIVE, (org, message_id)
                self.routed[(message_id, org)] = DELIVERED

    def check_settled(self) -> None:
        """Every message owed was received exactly once; nothing else was."""
        self.settle()
        self.check_received()
        assert LIVE not in self.routed.values()
        for org, r in self.endpoint.items():
            got = Counter(r.header_ids)
            owed = {m for (m, o), state in self.routed.items() if o == org and state == DELIVERED}
            assert set(got) == owed and all(n == 1 for n in got.values()), (org, got, owed)
        states = {(d.message_id, d.dest_org): d.state for d in self.deliveries()
                  if (d.message_id, d.dest_org) in self.routed}
        assert states == {k: "delivered" if v == DELIVERED else "withdrawn"
                          for k, v in self.routed.items()}


def set_consent(hub: Hub, actors: frozenset[str] | tuple[str, ...], status: str) -> None:
    refs = [ORG_REF[o] for o in (SOC, *sorted(actors))]
    r = hub.put(SOC, f.sip_consent(actor_refs=refs, status=status, start=day(-10),
                                   end=day(365)))
    assert r.status_code == 200, r.text


def run(hub: Hub, endpoint: dict[str, Receiver], plan: list[tuple[Any, ...]]) -> None:
    model = Model(hub, endpoint)
    model.reset()
    for step in plan:
        if step[0] == "status":
            model.status(step[1], step[2])
        elif step[0] == "consent":
            model.consent(step[1], step[2])
        elif step[0] == "relay":
            hub.relay()
        else:
            hub.deliver(timeout=0.02)
            model.check_received()
    model.check_settled()
    assert endpoint[OUTSIDER].received == []


@pytest.fixture
def endpoints(world: Hub, receivers: Any) -> dict[str, Receiver]:
    endpoint = {org: receivers() for org in (SOC, BUP, SCHOOL, OUTSIDER)}
    world.configure({org: r.url for org, r in endpoint.items()})
    return endpoint


FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("store, broker", [("sqlite", "memory")], indirect=True)
@FAST
@given(plan=steps)
def test_messages_reach_only_and_exactly_the_organisations_the_consent_covers(
        world: Hub, endpoints: dict[str, Receiver], plan: list[tuple[Any, ...]]) -> None:
    run(world, endpoints, plan)


@pytest.mark.parametrize("store, broker", [
    pytest.param("postgres", "rabbitmq", marks=[pytest.mark.postgres, pytest.mark.rabbitmq]),
], indirect=True)
@settings(FAST, max_examples=10)
@given(plan=steps)
def test_the_same_on_postgresql_and_rabbitmq(world: Hub, endpoints: dict[str, Receiver],
                                             plan: list[tuple[Any, ...]]) -> None:
    run(world, endpoints, plan)
