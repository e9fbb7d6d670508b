"""The transactional outbox: routed by consent, atomic with the change, ordered per stream,
withdrawn when consent narrows, and never published twice by concurrent relays."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body
from harness import BUP, OUTSIDER, SCHOOL, SOC, Hub, broker, hub, world  # noqa: F401
from plans import generic_plan, rows_handled, sqlite_plan
from sip_hub.bus import Ack, Bus, BusUnavailable, Topology
from sip_hub.messaging import builder, outbox
from sip_hub.messaging.relay import DELIVERY, Relay
from sip_hub.store import Store
from sip_hub.store import outbox as sql
from sip_hub.store.statistics import analyze_filled


def narrow_consent(hub: Hub, actors: list[str], status: str = "active") -> None:
    r = hub.put(SOC, f.sip_consent(actor_refs=actors, status=status))
    assert r.status_code == 200, r.text


def by_event(hub: Hub) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for d in hub.deliveries():
        out.setdefault(d.event, []).append((d.dest_org, d.state))
    return {k: sorted(v) for k, v in out.items()}


def note(patient: str = "alva", plan: str = "alva-sip") -> dict:
    return builder.message("sip-initiated", fhir_base="http://hub.test/fhir", sender=SOC,
                           destinations=[builder.Party(BUP, "urn:x")],
                           focus=[f"CarePlan/{plan}", f"Patient/{patient}"], resources=[])


# -- who receives ---------------------------------------------------------------------------------

def test_destinations_are_exactly_the_covered_organisations_plus_the_sender(world: Hub
                                                                             ) -> None:
    with world.store.begin(write=False) as tx:
        assert outbox.destinations_for(tx, "alva", BUP) == sorted([SOC, BUP, SCHOOL])
        assert outbox.destinations_for(tx, "alva", OUTSIDER) == sorted(
            [SOC, BUP, SCHOOL, OUTSIDER])
        assert outbox.destinations_for(tx, "nobody", SOC) == [SOC]
    narrow_consent(world, [f.SOCIAL_SERVICES, f.BUP])
    with world.store.begin(write=False) as tx:
        assert outbox.destinations_for(tx, "alva", SOC) == sorted([SOC, BUP])
    narrow_consent(world, [f.SOCIAL_SERVICES, f.BUP], status="inactive")
    with world.store.begin(write=False) as tx:
        assert outbox.destinations_for(tx, "alva", SOC) == [SOC]


def test_the_established_plan_goes_to_the_covered_participants_not_to_its_writer(
        world: Hub) -> None:
    assert by_event(world) == {"plan-established": sorted([(BUP, "pending"), (SCHOOL, "pending")])}


# -- atomic with the change ------------------------------------------------------------------

def test_a_change_that_rolls_back_leaves_no_message(world: Hub) -> None:
    before = len(world.deliveries())
    bad = f.patient(f.DEMO_PNR) | {"gender": "bogus"}
    r = world.client.post("/fhir", content=body({"resourceType": "Bundle", "type": "transaction",
                                                 "entry": [
        {"resource": f.sip_consent(actor_refs=[f.SOCIAL_SERVICES, f.BUP]),
         "request": {"method": "PUT", "url": "Consent/alva-sip-samtycke"}},
        {"resource": bad, "request": {"method": "PUT", "url": "Patient/alva"}}]})["content"],
        headers=JSON_HEADERS | world.headers[SOC])
    assert r.status_code == 422, r.text
    assert len(world.deliveries()) == before
    assert by_event(world) == {"plan-established": sorted([(BUP, "pending"), (SCHOOL, "pending")])}


def test_a_committed_change_always_has_its_messages(world: Hub) -> None:
    narrow_consent(world, [f.SOCIAL_SERVICES, f.BUP])
    events = by_event(world)
    assert events["consent-changed"] == [(BUP, "pending")]
    (d,) = world.deliveries(states=["pending"], patient_id="alva")[-1:]
    header = __import__("orjson").loads(d.content)["entry"][0]["resource"]
    assert header["reason"]["coding"][0]["code"] == "narrowed"


def test_the_outbox_keys_are_time_ordered(store: Store) -> None:
    """Messages' and deliveries' ids are UUIDs of version 7: each new row of the outbox lands
    at the end of its id index, not on a random page of it (a page written per row)."""
    keys: list[tuple[str, list[str]]] = []
    for _ in range(3):
        message = note()
        with store.begin() as tx:
            keys.append((message["entry"][0]["resource"]["id"],
                         outbox.enqueue(tx, message, [BUP, SCHOOL])))
        time.sleep(0.002)  # a new millisecond: order within one is random
    for message_id, delivery_ids in keys:
        assert {uuid.UUID(k).version for k in [message_id, *delivery_ids]} == {7}
    assert [m for m, _ in keys] == sorted(m for m, _ in keys)
    firsts = [min(ds) for _, ds in keys]
    assert firsts == sorted(firsts) and max(keys[0][1]) < firsts[1]
    assert uuid.UUID(note()["id"]).version == 7  # the Bundle's own id


def test_enqueue_in_a_transaction_that_fails_writes_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError):
        with store.begin() as tx:
            outbox.enqueue(tx, note(), [BUP, SCHOOL])
            raise RuntimeError("the change failed after its message was written")
    with store.begin(write=False) as tx:
        assert sql.find(tx) == []
    with store.begin() as tx:
        ids = outbox.enqueue(tx, note(), [BUP, SCHOOL])
    with store.begin(write=False) as tx:
        assert sorted(d.id for d in sql.find(tx)) == sorted(ids)


# -- order ------------------------------------------------------------------------------------

def test_each_stream_is_numbered_and_only_its_head_is_due(store: Store) -> None:
    with store.begin() as tx:
        for _ in range(3):
            outbox.enqueue(tx, note(), [BUP, SCHOOL])
        outbox.enqueue(tx, note("tolvan", "tolvan-sip"), [BUP])
    with store.begin(write=False) as tx:
        seqs = sorted((d.patient_id, d.dest_org, d.seq) for d in sql.find(tx))
    assert seqs == sorted([("alva", BUP, 1), ("alva", BUP, 2), ("alva", BUP, 3),
                           ("alva", SCHOOL, 1), ("alva", SCHOOL, 2), ("alva", SCHOOL, 3),
                           ("tolvan", BUP, 1)])
    with store.begin() as tx:
        heads = sql.claim_due(tx, 2 ** 62, 100)
    assert sorted((d.patient_id, d.dest_org, d.seq) for d in heads) == sorted(
        [("alva", BUP, 1), ("alva", SCHOOL, 1), ("tolvan", BUP, 1)])


def test_concurrent_writers_number_every_stream_without_gaps_or_deadlock(store: Store) -> None:
    dests = [f"SE2321000016-D{k:03d}" for k in range(20)]  # more than one statement takes
    errors: list[BaseException] = []

    def write(shift: int) -> None:
        try:
            for _ in range(5):
                with store.begin() as tx:  # the destinations in another order each time
                    outbox.enqueue(tx, note(), dests[shift:] + dests[:shift])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    threads = [threading.Thread(target=write, args=(k * 5,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with store.begin(write=False) as tx:
        found = sql.find(tx, limit=10_000)
    for org in dests:
        assert sorted(d.seq for d in found if d.dest_org == org) == list(range(1, 21))


# -- consent narrowed or withdrawn ------------------------------------------------------------

def test_narrowing_consent_withdraws_what_the_left_out_organisation_has_not_received(
        world: Hub) -> None:
    with world.store.begin() as tx:
        response = builder.response("req-1", "ok", fhir_base="http://hub.test/fhir",
                                    destination=builder.Party(SCHOOL, "urn:x"),
                                    focus=["CarePlan/alva-sip"])
        outbox.enqueue(tx, response, [SCHOOL], kind=outbox.RESPONSE,
                       sip=outbox.SipKey("alva", "alva-sip"))
    narrow_consent(world, [f.SOCIAL_SERVICES, f.BUP])
    states = {(d.event, d.dest_org): (d.state, d.last_error) for d in world.deliveries()}
    assert states[("plan-established", SCHOOL)] == ("withdrawn", outbox.WITHDRAWN_REASON)
    assert states[("plan-established", BUP)][0] == "pending"
    # A response to the school's own request is not others' data: it stays.
    assert states[("acknowledgement", SCHOOL)][0] == "pending"


def test_withdrawing_consent_withdraws_every_undelivered_notification(world: Hub) -> None:
    narrow_consent(world, [f.SOCIAL_SERVICES, f.BUP, f.SCHOOL], status="inactive")
    assert {d.state for d in world.deliveries()} == {"withdrawn"}
    assert "consent-changed" not in by_event(world)  # no one left to tell


# -- concurrent relays -----------------------------------------------------------------------

def test_concurrent_relays_never_publish_a_delivery_twice(store: Store) -> None:
    topology = Topology("tconcurrent.sip_hub", "tconcurrent.sip")
    with store.begin() as tx:
        for i in range(40):
            outbox.enqueue(tx, note(f"p{i}", f"plan{i}"), [BUP, SCHOOL])
    errors: list[BaseException] = []

    def published() -> int:
        with store.begin(write=False) as tx:
            return sql.counts(tx).get("published", 0)

    def relay_until_empty() -> None:
        with Bus("memory://", topology) as bus:  # each relay its own client, as workers
            relay = Relay(store, bus, batch=5)
            try:
                for _ in range(200):
                    if relay.run_once() == 0 and published() >= 80:
                        return
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    threads = [threading.Thread(target=relay_until_empty) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == []
    with store.begin(write=False) as tx:
        assert sql.counts(tx) == {"published": 80}
    seen: list[str] = []
    with Bus("memory://", topology) as sub:
        sub.consume([BUP, SCHOOL], lambda m: seen.append(str(m.headers[DELIVERY])) or Ack())
        sub.drain(timeout=0.5)
        sub.delete([BUP, SCHOOL])
    assert len(seen) == 80 and Counter(seen).most_common(1)[0][1] == 1


def test_relays_on_a_real_bus_publish_each_delivery_once(store: Store) -> None:
    topology = Topology("trelay.sip_hub", "trelay.sip")
    with store.begin() as tx:
        for i in range(10):
            outbox.enqueue(tx, note(f"p{i}", f"plan{i}"), [BUP])
    with Bus("memory://", topology) as a, Bus("memory://", topology) as b:
        assert Relay(store, a, batch=4).run_once() == 4
        assert Relay(store, b, batch=100).run_once() == 6
        assert Relay(store, a).run_once() == 0
        assert a.queue_size(BUP) == 10
        a.delete([BUP])


def test_an_in_process_bus_gets_the_claim_after_it_is_committed(store: Store) -> None:
    """On a bus that dies with the process the relay commits its claim before it publishes
    (the publish is out of the write lock). Nothing is lost either way: a crash after the
    commit loses the bus too, and the next start publishes again what it held."""
    topology = Topology("tafter.sip_hub", "tafter.sip")
    with store.begin() as tx:
        for i in range(3):
            outbox.enqueue(tx, note(f"p{i}", f"plan{i}"), [BUP])
    seen_in_outbox: list[dict[str, int]] = []
    with Bus("memory://", topology) as bus:
        publish_many = bus.publish_many

        def publish_and_look(items, **kw):  # what another transaction sees at the publish
            with store.begin(write=False) as tx:
                seen_in_outbox.append(sql.counts(tx))
            return publish_many(items, **kw)
        bus.publish_many = publish_and_look  # type: ignore[method-assign]
        assert Relay(store, bus).run_once() == 3
        assert seen_in_outbox == [{"published": 3}]
        assert bus.queue_size(BUP) == 3
        bus.delete([BUP])
    # The process died after the commit, its bus with it: the next start publishes again.
    with Bus("memory://", topology) as bus:
        relay = Relay(store, bus)
        assert relay.recover() == 3
        assert relay.run_once() == 3
        assert bus.queue_size(BUP) == 3
        bus.delete([BUP])


def test_a_failed_publish_after_the_commit_puts_the_claim_back(store: Store) -> None:
    topology = Topology("tfailed.sip_hub", "tfailed.sip")
    with store.begin() as tx:
        for i in range(4):
            outbox.enqueue(tx, note(f"p{i}", f"plan{i}"), [BUP, SCHOOL])
    with Bus("memory://", topology) as bus:
        def broken(items, **kw):
            raise BusUnavailable("injected: the bus refused")
        healthy, bus.publish_many = bus.publish_many, broken  # type: ignore[method-assign]
        with pytest.raises(BusUnavailable):
            Relay(store, bus).run_once()
        with store.begin(write=False) as tx:
            assert sql.counts(tx) == {"pending": 8}
        bus.publish_many = healthy  # type: ignore[method-assign]
        assert Relay(store, bus).run_once() == 8  # due at once, not an hour later
        assert bus.queue_size(BUP) == 4 and bus.queue_size(SCHOOL) == 4
        bus.delete([BUP, SCHOOL])


def test_a_delivery_is_held_back_exactly_while_an_earlier_one_of_its_stream_is_open(
        store: Store) -> None:
    with store.begin() as tx:
        for _ in range(3):
            outbox.enqueue(tx, note("p1", "plan1"), [BUP, SCHOOL])
        outbox.enqueue(tx, note("p2", "plan2"), [BUP])
        for i in range(40):  # more streams than one statement takes
            outbox.enqueue(tx, note(f"q{i}", f"plan-q{i}"), [BUP])
            outbox.enqueue(tx, note(f"q{i}", f"plan-q{i}"), [BUP])
        every = sql.find(tx, limit=10_000)
        first_bup = next(d for d in every if d.patient_id == "p1" and d.dest_org == BUP)
        sql.mark_delivered(tx, [first_bup.id], 1)
        every = sql.find(tx, limit=10_000)

    def stream(d: sql.Delivery) -> tuple[str, str]:
        return d.patient_id, d.dest_org
    # What it must say: any earlier delivery of the stream still pending or published.
    expected = {d.id for d in every if any(
        stream(e) == stream(d) and e.seq < d.seq and e.state in sql.OPEN for e in every)}
    with store.begin(write=False) as tx:
        held = sql.held_back(tx, every)
    assert held == expected
    seqs = {(stream(d), d.seq): d.id for d in every}
    p1_bup, p1_school = ("p1", BUP), ("p1", SCHOOL)
    assert seqs[(p1_bup, 2)] not in held and seqs[(p1_bup, 3)] in held  # 1 is delivered
    assert seqs[(p1_school, 1)] not in held and {seqs[(p1_school, 2)], seqs[(p1_school, 3)]} <= held
    assert len([d for d in every if d.patient_id.startswith("q") and d.id in held]) == 40


def test_a_streams_head_is_found_through_its_open_deliveries_only(tmp_path) -> None:
    """Whether a delivery waits for an earlier one of its stream is looked up in the index of
    open deliveries: not by reading back through the stream's settled history (with a
    backlog, the relay asks it of every waiting delivery, in SQLite's write lock)."""
    from sip_hub.store.engine import make_engine
    from sip_hub.store.migrate import upgrade
    from sip_hub.store.outbox import _HEADS, _earlier_open_of

    engine = make_engine(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    upgrade(engine)
    try:
        with engine.connect() as conn:
            for stmt in (_earlier_open_of(1), _earlier_open_of(5), _HEADS):
                sql_text, order, literals = stmt._sql(conn)
                args = [None] * len(order or ())
                plan = " ".join(str(r[-1]) for r in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + sql_text, tuple(args)).fetchall())
                assert "ix_outbox_delivery_open_stream" in plan, plan
    finally:
        engine.dispose()


def _message(mid: str, patient: str, plan: str, created: int) -> dict[str, Any]:
    """An outbox message row (a notification with an empty Bundle)."""
    return {"message_id": mid, "event": "sip-initiated", "kind": sql.NOTIFICATION,
            "patient_id": patient, "careplan_id": plan, "created": created, "content": b"{}"}


def _write(tx, messages: list[dict[str, Any]], rows: list[dict[str, Any]]) -> None:
    """Messages and their deliveries straight to the outbox tables, as ``enqueue`` would."""
    from sqlalchemy import insert

    from sip_hub.store.schema import outbox_message
    tx.conn.execute(insert(outbox_message), messages)
    sql.insert_deliveries(tx, rows)


def _backlog(tx, streams: int) -> None:
    """``streams`` streams with a waiting head (seq 2, after a delivered seq 1); every third
    also has a seq 3 behind it."""
    rows, messages = [], []
    for k in range(streams):
        for seq in (1, 2, 3) if k % 3 == 0 else (1, 2):
            mid = f"m-{k}-{seq}"
            messages.append(_message(mid, f"p{k}", f"c{k}", 0))
            row = sql.delivery_row(id=f"d-{k}-{seq}", message_id=mid, dest_org=BUP,
                                   patient_id=f"p{k}", careplan_id=f"c{k}", seq=seq,
                                   now=k, endpoint_url=None)
            rows.append({**row, "state": sql.DELIVERED} if seq == 1 else row)
    _write(tx, messages, rows)


def test_a_backlog_is_claimed_head_by_head_whatever_the_statistics(store: Store) -> None:
    """A relay round looks at each waiting delivery once, not once per other open delivery,
    also when the database's statistics date from an empty outbox (a new hub, or a backlog
    that grew since they were taken: organisations back after an outage). The claim of a
    PostgreSQL prepared statement (generic plan) is measured by the rows its plan handles."""
    from sqlalchemy import text
    streams = 1500
    pg = store.engine.dialect.name == "postgresql"
    if pg:
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE outbox_delivery"))  # statistics of an empty outbox
    with store.begin() as tx:
        _backlog(tx, streams)
    with store.begin() as tx:
        heads = sql.claim_due(tx, 2 ** 62, 10 * streams)
    assert sorted(d.id for d in heads) == sorted(f"d-{k}-2" for k in range(streams))
    assert [d.next_attempt_at for d in heads] == sorted(d.next_attempt_at for d in heads)
    if not pg:
        return
    plan = generic_plan(store.engine, sql._HEADS, {"now": 2 ** 62, "limit": 100})
    assert rows_handled(plan) < 20 * streams, plan


def _history(tx, settled: int, open_state: str, n_open: int) -> None:
    """An outbox as a hub's looks after a while: ``settled`` deliveries delivered (kept for
    days), then ``n_open`` in ``open_state``, each delivery a stream of its own."""
    rows, messages = [], []
    for k in range(settled + n_open):
        messages.append(_message(f"m-{k}", f"p{k}", f"c{k}", k))
        row = sql.delivery_row(id=f"d-{k}", message_id=f"m-{k}", dest_org=BUP,
                               patient_id=f"p{k}", careplan_id=f"c{k}", seq=1, now=k,
                               endpoint_url=None)
        state = sql.DELIVERED if k < settled else open_state
        rows.append({**row, "state": state,
                     "published_at": k if state == sql.PUBLISHED else None})
    _write(tx, messages, rows)


@pytest.mark.parametrize("open_state", [sql.PENDING, sql.PUBLISHED])
def test_the_few_open_deliveries_are_found_among_the_settled_by_index(
        store: Store, open_state: str) -> None:
    """What the relay and the API check every round or every message (is anything due, how
    large is the backlog, what is overdue on the bus) reads the open deliveries by index,
    never the settled ones that make up most of a hub's outbox, also under PostgreSQL's
    generic plan (the one a prepared statement runs with, planned for any value of its
    parameters: while the state was one of them, the check for due deliveries scanned the
    whole outbox, 2 ms a round in the benchmark), and under the statistics the hub takes
    at each start (on SQLite, which counts rows per state but not which states are rare:
    the idle check and the requeue of stale deliveries then read every delivery ever kept,
    16 ms a relay round at 90,000)."""
    from sqlalchemy import text
    settled, now, before = 20_000, 10**9, 10**8
    with store.begin() as tx:
        _history(tx, settled + 5, open_state, 0)
    pg = store.engine.dialect.name == "postgresql"
    if not pg:  # as at a start when every delivery was settled (migrate.upgrade)
        analyze_filled(store.engine)
    with store.begin() as tx:  # then five open ones
        tx.conn.execute(text(
            "UPDATE outbox_delivery SET state = :state, published_at = :at WHERE id IN "
            "(:a, :b, :c, :d, :e)"), {"state": open_state, "at": (
                settled if open_state == sql.PUBLISHED else None),
            **{k: f"d-{settled + i}" for i, k in enumerate("abcde")}})
    if pg:  # statistics that know how rare open deliveries are
        analyze_filled(store.engine)
    probes = [(sql._RELAY_DUE, {"now": now, "before": before}),
              (sql._WORK_DUE, {"now": now, "before": before}),
              (sql._BACKLOG_DUE, {"now": now, "cap": 100}),
              (sql._BACKLOG_ON_BUS, {"cap": 100}),
              (sql._HEADS, {"now": now, "limit": 100}),
              (sql._REQUEUE_BEFORE, {"now": now, "before": before}),
              (sql._REQUEUE_ALL, {"now": now})]
    for stmt, params in probes:
        if pg:
            plan = generic_plan(store.engine, stmt, params)
            assert rows_handled(plan) <= 40, plan
        else:
            plan = sqlite_plan(store.engine, stmt, params)
            assert "SCAN outbox_delivery" not in plan and "INDEX" in plan, plan
    # What they answer (the plans' probes were rolled back: nothing changed).
    opened = [f"d-{k}" for k in range(settled, settled + 5)]
    with store.begin() as tx:
        assert sql.relay_due(tx, now, published_before=before)
        assert sql.work_due(tx, now, published_before=before) == (False, True)
        assert sql.backlog(tx, now, cap=100) == 5
        assert sql.backlog(tx, now, cap=4) == 4
        if open_state == sql.PUBLISHED:
            assert sql.requeue_published(tx, now, published_before=before) == 5
        assert [d.id for d in sql.claim_due(tx, now, 10)] == opened


def _long_streams(tx, streams: int, settled: int) -> list[str]:
    """``streams`` streams, each with ``settled`` delivered deliveries, then one published
    and one pending behind it (a hub's outbox after a while); the published ones' ids."""
    rows, messages, published = [], [], []
    orgs = (BUP, SCHOOL, SOC, "SE2321000016-0000")  # four per SIP: a SIP per patient
    for k in range(streams):
        patient, plan, org = f"p{k // 4}", f"c{k // 4}", orgs[k % 4]
        for seq in range(1, settled + 3):
            mid = f"m-{k}-{seq}"
            if k % 4 == 0:
                messages.append(_message(mid, patient, plan, seq))
            row = sql.delivery_row(id=f"d-{k}-{seq}", message_id=f"m-{k - k % 4}-{seq}",
                                   dest_org=org, patient_id=patient, careplan_id=plan,
                                   seq=seq, now=seq, endpoint_url=None)
            state = (sql.DELIVERED if seq <= settled else
                     sql.PUBLISHED if seq == settled + 1 else sql.PENDING)
            if state == sql.PUBLISHED:
                published.append(row["id"])
            rows.append({**row, "state": state, "published_at": seq})
    _write(tx, messages, rows)
    return published


def test_a_streams_settled_history_is_not_read_whatever_the_statistics(store: Store) -> None:
    """Whether a delivery heads its stream (the relay's claim) or waits behind an earlier
    one (the deliverer's check) is read from the stream's open deliveries, and a batch's
    outcomes are written to the deliveries by id: never through a stream's settled history,
    nor through every open delivery (both grow with a backlog), also under a generic plan
    with statistics taken while streams were short and many deliveries open (in the
    benchmark both checks read each stream's whole history: a thousand pages a claim)."""
    from sqlalchemy import text
    pg = store.engine.dialect.name == "postgresql"
    settled = 1000
    with store.begin() as tx:
        published = _long_streams(tx, 40, settled)
    if pg:  # a backlog, drained since and vacuumed: the index of open deliveries keeps its
        # pages for the few it holds now, and the planner weighs its reads by them
        with store.engine.begin() as conn:
            conn.execute(text(f"UPDATE outbox_delivery SET state = 'published' "
                              f"WHERE seq <= {settled}"))
            conn.execute(text(f"UPDATE outbox_delivery SET state = 'delivered' "
                              f"WHERE seq <= {settled}"))
        with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE outbox_delivery"))
    head = {"p": "p0", "d": BUP, "s": settled + 2}
    # (statement, its parameters, rows its plan may handle: about what it looks for)
    probes = [(sql._HEADS, {"now": 10**9, "limit": 100}, 40 * 4),
              (sql._earlier_open_of(1), {f"{k}0": v for k, v in head.items()}, 4)]
    with store.engine.connect() as conn:  # by ids, as each dialect runs them
        for by_ids in (sql._DELIVERED, sql._PUBLISHED):
            stmt, params = next(by_ids._statements(conn, published[:8], {"now": 10**9}))
            probes.append((stmt, params, 8 * 4))
    for stmt, params, most in probes:
        if pg:
            plan = generic_plan(store.engine, stmt, params)
            assert rows_handled(plan) <= most, plan
        else:
            plan = sqlite_plan(store.engine, stmt, params)
            assert "SCAN outbox_delivery" not in plan, plan
    with store.begin() as tx:
        assert sorted(d.id for d in sql.claim_due(tx, 10**9, 100)) == []  # behind published
        behind = sql.get_many(tx, [f"d-{k}-{settled + 2}" for k in range(40)])
        assert sql.held_back(tx, list(behind.values())) == set(behind)
        assert sql.mark_delivered(tx, published, 10**9) == 40
        assert sorted(d.id for d in sql.claim_due(tx, 10**9, 100)) == sorted(behind)


def test_settled_deliveries_past_retention_are_forgotten_by_index_a_batch_at_a_time(
        store: Store) -> None:
    """The upkeep forgets delivered and withdrawn deliveries last changed before the
    retention period, and each message once none of its deliveries is left, reading what
    expired and not the history the retention period keeps (filtered by the time of the
    change alone, it read every settled delivery each time, also in SQLite's write lock);
    dead ones wait for an operator, open ones for delivery, and one settled lately stays
    however long ago it fell due."""
    from sqlalchemy import select, text

    from sip_hub.store.schema import outbox_message
    before, kept = 10**6, 20_000
    rows, messages = [], []

    def add(k: int, state: str, due: int, changed: int, mid: str | None = None) -> None:
        if mid is None:
            mid = f"m-{k}"
            messages.append(_message(mid, f"p{k}", f"c{k}", due))
        row = sql.delivery_row(id=f"d-{k}", message_id=mid, dest_org=BUP, patient_id=f"p{k}",
                               careplan_id=f"c{k}", seq=1, now=due, endpoint_url=None)
        rows.append({**row, "state": state, "updated": changed})
    for k in range(30):  # expired: due, then settled, long ago
        add(k, sql.DELIVERED if k < 20 else sql.WITHDRAWN, due=k, changed=k + 1)
    for k in range(30, 30 + kept):  # the retention period's history
        add(k, sql.DELIVERED, due=before + k, changed=before + k + 1)
    k = 30 + kept
    add(k, sql.DELIVERED, due=5, changed=before + 5)  # due long ago, settled lately
    add(k + 1, sql.DEAD, due=5, changed=6)
    add(k + 2, sql.PENDING, due=5, changed=5)
    add(k + 3, sql.DELIVERED, due=7, changed=8, mid="m-shared")  # with a dead one: the
    add(k + 4, sql.DEAD, due=7, changed=8, mid="m-shared")       # message stays for replay
    messages.append(_message("m-shared", "p-s", "c-s", 7))
    with store.begin() as tx:
        _write(tx, messages, rows)
    pg = store.engine.dialect.name == "postgresql"
    if pg:
        with store.engine.begin() as conn:
            conn.execute(text("ANALYZE outbox_delivery"))
    for state in (sql.DELIVERED, sql.WITHDRAWN):
        stmt = sql._forget(state, 64)  # more than have expired: the last batch of an upkeep
        if pg:  # (the plan's DELETE is rolled back)
            plan = generic_plan(store.engine, stmt, {"before": before})
            assert rows_handled(plan) <= 400, plan
        else:
            plan = sqlite_plan(store.engine, stmt, {"before": before})
            assert "SCAN outbox_delivery" not in plan and "next_attempt_at<?" in plan, plan
    batches = []
    while not batches or batches[-1] >= 8:
        with store.begin() as tx:
            batches.append(sql.delete_finished(tx, before, 8))
    assert batches == [16, 10, 5]  # delivered and withdrawn: 8 + 8, 8 + 2, 5 + 0
    with store.begin() as tx:
        left = {d.id: d.state for d in sql.find(tx, limit=kept + 100)}
        messages_left = {r[0] for r in tx.conn.execute(select(outbox_message.c.message_id))}
    assert set(left) == {f"d-{k}" for k in range(30, 30 + kept + 5) if k != 30 + kept + 3}
    assert messages_left == {f"m-{k}" for k in range(30, 30 + kept + 3)} | {"m-shared"}


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)  # (SQLite: one writer)
def test_workers_forgetting_a_messages_last_deliveries_at_once_forget_the_message(
        store: Store) -> None:
    """Two workers' upkeeps, each forgetting one of a message's two deliveries in
    transactions open at once, do not leave the message behind (each saw the other's
    delivery still there): the message, personal data, would outlive the retention period."""
    from sqlalchemy import select

    from sip_hub.store.schema import outbox_message
    rows = []
    for k, org in enumerate((BUP, SCHOOL)):
        row = sql.delivery_row(id=f"d-{k}", message_id="m-1", dest_org=org, patient_id="p",
                               careplan_id="c", seq=1, now=k, endpoint_url=None)
        rows.append({**row, "state": sql.DELIVERED, "updated": 10 + k})
    with store.begin() as tx:
        _write(tx, [_message("m-1", "p", "c", 0)], rows)
    other: list[int] = []
    with store.begin() as first:
        assert sql.delete_finished(first, 100, 1) == 1   # d-0, the message kept: d-1 is left

        def second() -> None:
            with store.begin() as tx:
                other.append(sql.delete_finished(tx, 100, 1))  # d-1 (d-0 is locked)
        thread = threading.Thread(target=second)
        thread.start()
        thread.join(timeout=1.0)
        assert thread.is_alive()  # waiting for the message the first one holds
    thread.join(timeout=30)
    assert other == [1]
    with store.begin() as tx:
        assert sql.find(tx) == []
        assert tx.conn.execute(select(outbox_message.c.message_id)).all() == []
