"""On PostgreSQL a message's write transaction waits for the server a few times only: the
writes whose outcome nothing reads go in one pipeline with the next read or with the COMMIT,
and its BEGIN with its first statement (``sip_hub.store.driver``). Over a network each round
trip is part of the message's latency and of how long its rows stay locked."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from psycopg import pq
from sqlalchemy import event

from harness import (BUP, SCHOOL, URL, Hub, broker, hub, receivers,  # noqa: F401
                     status_change, world)


@contextmanager
def _traced_transactions(engine: Any) -> Iterator[list[tuple[str, int]]]:
    """Every write transaction on ``engine`` meanwhile, as (its libpq trace, how many times
    the client waited for the server: the runs of messages it sent)."""
    done: list[tuple[str, int]] = []
    open_: dict[int, Any] = {}

    def start(conn: Any) -> None:
        dbapi = conn.connection.dbapi_connection
        trace = tempfile.TemporaryFile("w+")
        dbapi.pgconn.trace(trace.fileno())
        dbapi.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        open_[id(dbapi)] = trace

    def stop(dbapi: Any, _record: Any) -> None:  # back in the pool: committed or not
        trace = open_.pop(id(dbapi), None)
        if trace is None:
            return
        dbapi.pgconn.untrace()
        trace.seek(0)
        text = trace.read()
        trace.close()
        sides = [line[0] for line in text.splitlines() if line[:1] in "FB"]
        done.append((text, sum(1 for i, s in enumerate(sides)
                               if s == "F" and (i == 0 or sides[i - 1] == "B"))))

    event.listen(engine, "begin", start)
    event.listen(engine.pool, "checkin", stop)
    try:
        yield done
    finally:
        event.remove(engine, "begin", start)
        event.remove(engine.pool, "checkin", stop)


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_messages_write_waits_for_postgresql_seven_times(world: Hub) -> None:
    """Reading the inbox (with the BEGIN); the resources it names; the patient's grants
    (with the savepoint; the sender's access and the routing take them from there); the
    plan's new version; the streams' sequence numbers (with the version's history and index
    rows, the audit record and the outbox message); recording the message with its response
    (with the deliveries, the wake-up and the savepoint's release); the COMMIT. Each of its
    eighteen statements waited on its own before."""
    msg = status_change(world)
    with _traced_transactions(world.store.engine) as transactions:
        r = world.post(BUP, URL, msg)
    assert r.status_code == 200 and r.json()["entry"][0]["resource"]["response"]["code"] == "ok"
    # The message's write is the one with a savepoint (its statements may be prepared by
    # now, and a prepared statement's text is not in the trace; a savepoint's always is).
    writes = [trips for text, trips in transactions if "SAVEPOINT sip_sp_" in text]
    assert writes == [7], [trips for _, trips in transactions]


_LAZY = "SET LOCAL synchronous_commit TO off"


def _worker_round(world: Hub) -> tuple[str, list[str]]:
    """The relay's transaction and the deliveries' outcome transactions of one round."""
    with _traced_transactions(world.store.engine) as transactions:
        world.relay()
        world.deliver()
    relay_tx, *outcome_txs = [text for text, _ in transactions if "outbox_delivery" in text]
    assert "UPDATE outbox_delivery" in relay_tx
    return relay_tx, outcome_txs


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_the_relays_round_commits_without_waiting_for_the_disk(
        world: Hub, receivers: Any) -> None:
    """The relay's round commits asynchronously: a crash of the database server may lose it
    as a whole, and its deliveries are published again at the next round (the second copy
    dropped). A message's write, and the deliveries' outcomes (acknowledged on the bus once
    committed: delivered, or a retry's due time), wait for the disk as every write does."""
    bup, school = receivers(), receivers()
    world.configure({BUP: bup.url, SCHOOL: school.url})
    relay_tx, outcome_txs = _worker_round(world)
    assert _LAZY in relay_tx and outcome_txs and not any(_LAZY in t for t in outcome_txs)
    assert {d.state for d in world.deliveries()} == {"delivered"}

    school.script = [500]  # the next message's delivery to the school fails, to be retried
    with _traced_transactions(world.store.engine) as transactions:
        r = world.post(BUP, URL, status_change(world))
    assert r.status_code == 200, r.text
    writes = [text for text, _ in transactions if "SAVEPOINT sip_sp_" in text]
    assert len(writes) == 1 and _LAZY not in writes[0]
    relay_tx, outcome_txs = _worker_round(world)
    assert _LAZY in relay_tx
    assert outcome_txs and not any(_LAZY in t for t in outcome_txs)
    assert [d.state for d in world.deliveries() if d.dest_org == SCHOOL][-1] == "pending"
    assert len(school.received) == 2 and len(school.applied) == 1


def test_a_relay_round_lost_with_the_database_is_published_again(world: Hub,
                                                                  receivers: Any) -> None:
    """What a lazily committed round may lose: its deliveries marked published. They are due
    again, published again, and the copy already on the bus is delivered once."""
    bup, school = receivers(), receivers()
    world.configure({BUP: bup.url, SCHOOL: school.url})
    assert world.relay() == 2
    with world.store.begin() as tx:  # as if the round's COMMIT had not reached the disk
        tx.conn.exec_driver_sql("UPDATE outbox_delivery SET state = 'pending', "
                                "published_at = NULL WHERE state = 'published'")
    assert world.relay() == 2  # published again: two copies of each on the bus
    world.rounds(lambda: {d.state for d in world.deliveries()} == {"delivered"})
    world.deliver()
    assert len(bup.received) == len(school.received) == 1  # the copy was dropped, not posted
    assert len(bup.applied) == len(school.applied) == 1
