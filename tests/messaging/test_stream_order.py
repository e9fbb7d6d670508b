"""Order per SIP for each destination (README, Messaging): a person's messages reach each
organisation in the order they were written, also those written before the SIP's plan
existed (its consent) or after the plan was closed, which name no plan; and deliveries an
earlier release numbered per plan keep that order after the upgrade (migration 0022)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, insert, text

import sip_factory as f
import sip_process as sp
from harness import (BUP, SCHOOL, SOC, Hub, broker, hub, receivers, settled,  # noqa: F401
                     world)
from sip_hub.store import Store
from sip_hub.store import outbox as sql
from sip_hub.store.migrate import upgrade
from sip_hub.store.schema import outbox_message

BOTH = pytest.mark.parametrize(
    "broker", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)], indirect=True)


def event_of(message: dict) -> str:
    return message["entry"][0]["resource"]["eventCoding"]["code"]


@BOTH
def test_a_sips_consent_told_before_its_plan_existed_reaches_a_participant_first(
        hub: Hub, receivers: Any) -> None:
    """The coordinator records Alva's SIP over REST step by step: the care team, then her
    consent (told to BUP and the school as consent-changed, granted, before any plan
    exists), then the draft plan (sip-initiated). BUP's endpoint answers the first POST of
    the consent 503. BUP still gets the consent before the SIP initiated under it: a
    receiver that applies sip-initiated before it holds the person's consent refuses it, or
    shares it without one."""
    bup, school = receivers(), receivers()
    hub.configure({BUP: bup.url, SCHOOL: school.url})
    failed = []

    def once(message: dict) -> Any:
        if event_of(message) == "consent-changed" and not failed:
            failed.append(1)
            return 503
        return None
    bup.fail_when = once
    resources = sp.alva_case()
    consent = next(r for r in resources if r["resourceType"] == "Consent")
    for r in resources:
        if r["resourceType"] == "Consent":
            continue
        if r["resourceType"] == "CareTeam":
            r = f.sip_careteam()  # active: BUP and the school take part
        if r["resourceType"] == "CarePlan":
            assert hub.put(SOC, consent).status_code == 201
        assert hub.put(SOC, r).status_code == 201, r["resourceType"]
    to_bup = sorted((d for d in hub.deliveries() if d.dest_org == BUP), key=lambda d: d.seq)
    assert [(d.event, d.careplan_id) for d in to_bup] == [
        ("consent-changed", ""), ("sip-initiated", "alva-sip")]
    hub.rounds(lambda: settled(hub))
    events = {m["entry"][0]["resource"]["id"]: event_of(m) for m in bup.received}
    assert [events[i] for i in bup.applied] == ["consent-changed", "sip-initiated"]
    assert [event_of(m) for m in bup.received] == [
        "consent-changed", "consent-changed", "sip-initiated"]


def test_what_is_told_after_a_plan_is_closed_waits_for_the_plans_messages(
        world: Hub, receivers: Any) -> None:
    """A message about the person that names no plan (her consent changed after her SIP was
    closed: no open plan) is not sent to an organisation before the plan's messages written
    earlier: BUP failing the plan's sip-closed once holds the consent's message back until
    sip-closed is delivered."""
    bup, school = receivers(), receivers()
    world.configure({BUP: bup.url, SCHOOL: school.url})
    world.rounds(lambda: settled(world))
    consent = next(r["id"] for r in f.demo_case() if r["resourceType"] == "Consent")
    with world.store.begin() as tx:
        closed = world.messaging.emitter.emit(
            tx, "sip-closed", sender_org=SOC, patient_id="alva", careplan_id="alva-sip",
            focus=["CarePlan/alva-sip"])
        changed = world.messaging.emitter.emit(
            tx, "consent-changed", sender_org=SOC, patient_id="alva", careplan_id="",
            focus=[f"Consent/{consent}"], reason="narrowed")
    assert closed and changed
    failed: list[str] = []

    def once(message: dict) -> Any:
        if message["entry"][0]["resource"]["id"] == closed and not failed:
            failed.append(closed)
            return 503
        return None
    bup.fail_when = once
    seen = len(bup.received)
    world.rounds(lambda: settled(world))
    assert bup.header_ids[seen:] == [closed, closed, changed]


# -- deliveries numbered per plan by the release before (migration 0022) -------------------------

T0 = 1_760_000_000_000_000


def _old_outbox(engine: Engine) -> None:
    """As revision 0021 stored it: Alva's streams to BUP per plan, the plan-less one (her
    consent, and a message after a closed plan) beside the plan's; and Gösta's one stream."""
    deliveries = [  # (id, patient, plan, seq, state, written)
        ("p0", "alva", "alva-sip", 1, "delivered", 5),
        ("c1", "alva", "", 1, "pending", 10),
        ("p1", "alva", "alva-sip", 2, "published", 20),
        ("c2", "alva", "", 2, "dead", 30),
        ("p2", "alva", "alva-sip", 3, "pending", 40),
        ("g1", "gosta", "gosta-sip", 1, "pending", 50),
    ]
    with engine.begin() as conn:
        conn.execute(insert(outbox_message), [
            {"message_id": f"m-{d}", "event": "sip-plan-updated", "kind": "notification",
             "patient_id": p, "careplan_id": c, "created": T0 + at, "content": b"{}"}
            for d, p, c, _, _, at in deliveries])
        for d, p, c, seq, state, at in deliveries:
            conn.execute(text(
                "INSERT INTO outbox_delivery (id, message_id, dest_org, patient_id, "
                "careplan_id, seq, state, attempts, next_attempt_at, published_at, updated) "
                "VALUES (:id, :m, :org, :p, :c, :seq, :state, 0, :at, NULL, :at)"),
                {"id": d, "m": f"m-{d}", "org": BUP, "p": p, "c": c, "seq": seq,
                 "state": state, "at": T0 + at})
        for p, c, last in (("alva", "", 2), ("alva", "alva-sip", 3), ("gosta", "gosta-sip", 1)):
            conn.execute(text("INSERT INTO outbox_stream (patient_id, careplan_id, dest_org, "
                              "last_seq) VALUES (:p, :c, :org, :last)"),
                         {"p": p, "c": c, "org": BUP, "last": last})


def test_deliveries_numbered_per_plan_keep_the_order_they_were_written_in(
        fresh: Engine) -> None:
    """An upgrade with messages on their way: Alva's deliveries still to settle (pending,
    published, dead: a replay puts those back at their place) from her plan-less and her
    plan's streams are numbered in the order they were written, after every number the old
    streams gave; settled ones and a person's single stream keep theirs. Her stream's head
    is her consent, and the next message to BUP comes after all of them."""
    upgrade(fresh, "0021")
    _old_outbox(fresh)
    upgrade(fresh)
    with fresh.connect() as conn:
        seqs = dict(conn.execute(text("SELECT id, seq FROM outbox_delivery")).all())
        streams = set(conn.execute(text(
            "SELECT patient_id, dest_org, last_seq FROM outbox_stream")).all())
    assert seqs == {"p0": 1, "c1": 4, "p1": 5, "c2": 6, "p2": 7, "g1": 1}
    assert streams == {("alva", BUP, 7), ("gosta", BUP, 1)}
    store = Store(fresh)
    with store.begin() as tx:
        assert sorted(d.id for d in sql.claim_due(tx, T0 + 10**9, 100)) == ["c1", "g1"]
        assert sql.next_seqs(tx, "alva", [BUP]) == {BUP: 8}
