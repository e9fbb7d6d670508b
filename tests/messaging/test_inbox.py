"""The reliable-messaging cache is probed by a message's ids, never read through.

Every message received looks its ids up in the cache and records its response there, inside
the write that applies it. The cache keeps a day of messages, most of them from a few senders
(a coordinator sends most of a SIP's), so a statement that finds an entry through its sender
alone reads that sender's day. On PostgreSQL the plan of a statement is fixed when psycopg
prepares it (after its fifth run), which on a new hub is while the cache is nearly empty:
the statements must probe an index by id under that plan too.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert

from harness import cache_entry
from plans import generic_plan, rows_handled, sqlite_plan
from sip_hub.store import Store
from sip_hub.store import inbox, outbox
from sip_hub.store.engine import make_engine
from sip_hub.store.migrate import upgrade
from sip_hub.store.schema import message_inbox
from sip_hub.store.statistics import analyze_filled

SOC = "SE2321000016-1SOC"
CACHED = 3000
NOW = 10_000
DUE = {"now": NOW, "before": 0}  # the worker round's question at NOW


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def started(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A database as a new hub leaves it: migrated from empty at start-up."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
        upgrade(engine)
        yield engine
        engine.dispose()
    else:
        from conftest import pg_schema
        with pg_schema() as engine:
            upgrade(engine)
            yield engine


def _entry(k: int, expires: int = NOW + 10**9) -> dict[str, Any]:
    return cache_entry(k, SOC, expires)


def test_a_message_is_looked_up_by_its_ids_as_the_cache_fills(started: Engine) -> None:
    store = Store(started)
    # A statement run six times while the cache is small: on PostgreSQL its plan is made now.
    for k in range(6):
        with store.begin() as tx:
            inbox.lookup(tx, SOC, f"h-{k}", f"b-{k}", NOW)
            inbox.claim(tx, sender_org=SOC, header_id=f"h-{k}", bundle_id=f"b-{k}",
                        event="ev", state=inbox.DONE, now=NOW, expires=NOW + 10**9)
            inbox.complete(tx, SOC, f"h-{k}", "ok", b"{}")
    with store.begin() as tx:
        tx.conn.execute(insert(message_inbox), [_entry(k) for k in range(6, CACHED)])

    probes = [(inbox._LOOKUP, {"s": SOC, "h": "h-2000", "b": "b-2000"}),
              (inbox._LOOKUP, {"s": SOC, "h": "h-new", "b": "b-1999"}),
              (inbox._COMPLETE, {"s": SOC, "h": "h-2000", "code": "ok", "response": b"{}"}),
              (inbox._DROP, {"s": SOC, "h": "h-2000"})]
    for stmt, params in probes:
        if started.dialect.name == "sqlite":
            plan = sqlite_plan(started, stmt, params)
            assert "SCAN" not in plan and "INDEX" in plan, plan
        else:
            assert rows_handled(generic_plan(started, stmt, params)) <= 4, stmt

    with store.begin() as tx:  # and each finds what it looks for
        by_header, by_bundle = inbox.lookup(tx, SOC, "h-2000", "b-1999", NOW)
    assert by_header is not None and by_header.bundle_id == "b-2000"
    assert by_bundle is not None and by_bundle.header_id == "h-1999"


def test_waiting_async_requests_are_found_among_the_handled_by_index(started: Engine) -> None:
    """Each worker round asks whether async requests wait; the cache holds a day of handled
    messages. The few waiting ones are read by index, also under PostgreSQL's generic plan
    (planned for any state, it read the whole cache), and under the statistics SQLite takes
    at a start when every cached message was handled (it then read the whole cache)."""
    from sqlalchemy import text
    store = Store(started)
    with store.begin() as tx:
        tx.conn.execute(insert(message_inbox), [_entry(k) for k in range(CACHED)])
        assert not inbox.any_accepted(tx)
    if started.dialect.name == "sqlite":
        analyze_filled(started)  # as a restart does (migrate.upgrade)
    with store.begin() as tx:
        inbox.claim(tx, sender_org=SOC, header_id="h-async", bundle_id="b-async", event="ev",
                    state=inbox.ACCEPTED, now=NOW, expires=NOW + 10**9, request=b"{}")
    if started.dialect.name == "postgresql":
        with started.begin() as conn:
            conn.execute(text("ANALYZE message_inbox"))
        assert rows_handled(generic_plan(started, inbox._ANY_ACCEPTED, {})) <= 4
        # (the worker's round asks it together with the relay's question)
        assert rows_handled(generic_plan(started, outbox._WORK_DUE, DUE)) <= 4
    else:
        for stmt, params in ((inbox._ANY_ACCEPTED, {}), (outbox._WORK_DUE, DUE)):
            plan = sqlite_plan(started, stmt, params)
            assert "SCAN message_inbox" not in plan and "INDEX" in plan, plan
    with store.begin() as tx:
        assert inbox.any_accepted(tx)
        assert outbox.work_due(tx, NOW, 0) == (True, False)  # (no deliveries)
        assert [r.header_id for r in inbox.claim_accepted(tx, 10)] == ["h-async"]


def test_an_expired_entry_makes_room_for_a_new_receipt_of_its_ids(started: Engine) -> None:
    store = Store(started)
    with store.begin() as tx:
        tx.conn.execute(insert(message_inbox), [_entry(1, expires=NOW - 1), _entry(2)])
    with store.begin() as tx:   # h-1 expired; b-1 comes back under a new header id
        assert inbox.lookup(tx, SOC, "h-9", "b-1", NOW) == (None, None)
        inbox.claim(tx, sender_org=SOC, header_id="h-9", bundle_id="b-1", event="ev",
                    state=inbox.DONE, now=NOW, expires=NOW + 10)
    with store.begin() as tx:
        by_header, by_bundle = inbox.lookup(tx, SOC, "h-9", "b-1", NOW)
        assert by_header == by_bundle and by_header is not None and by_header.received == NOW
        live, _ = inbox.lookup(tx, SOC, "h-2", "b-2", NOW)
        assert live is not None and live.header_id == "h-2"   # the live one untouched
        assert inbox.lookup(tx, SOC, "h-1", "b-x", NOW) == (None, None)


def test_expired_entries_are_forgotten_a_batch_at_a_time_by_index(started: Engine) -> None:
    """The upkeep forgets a day's expired cache in transactions of a batch each (one
    transaction held SQLite's write lock throughout), finding them by their expiry; entries
    not yet expired and async requests not yet processed stay."""
    from sqlalchemy import text
    store = Store(started)
    expired = [_entry(k, expires=NOW - 10 + k % 7) for k in range(25)]
    live = [_entry(k) for k in range(25, CACHED)]
    with store.begin() as tx:
        tx.conn.execute(insert(message_inbox), expired + live)
        inbox.claim(tx, sender_org=SOC, header_id="h-async", bundle_id="b-async", event="ev",
                    state=inbox.ACCEPTED, now=NOW - 100, expires=NOW - 50, request=b"{}")
    if started.dialect.name == "postgresql":
        with started.begin() as conn:
            conn.execute(text("ANALYZE message_inbox"))
        assert rows_handled(generic_plan(started, inbox._expired(10), {"now": NOW})) <= 10 * 8
    else:
        plan = sqlite_plan(started, inbox._expired(10), {"now": NOW})
        assert "SCAN message_inbox" not in plan, plan
    batches = []
    while True:
        with store.begin() as tx:
            batches.append(inbox.purge_expired(tx, NOW, 10))
        if batches[-1] < 10:
            break
    assert batches == [10, 10, 5]
    with store.begin() as tx:
        left = {r.header_id for r in tx.conn.execute(message_inbox.select())}
    assert left == {e["header_id"] for e in live} | {"h-async"}


@pytest.mark.parametrize("backend", [
    "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_key_migration_keeps_what_the_cache_holds(backend: str, tmp_path: Path) -> None:
    from contextlib import nullcontext

    from conftest import pg_schema
    fresh = (nullcontext(make_engine(f"sqlite:///{tmp_path / 'hub.sqlite3'}"))
             if backend == "sqlite" else pg_schema())
    with fresh as engine:
        upgrade(engine, "0009")   # keys led by the sender
        with engine.begin() as conn:
            conn.execute(insert(message_inbox), [_entry(1), _entry(2, expires=NOW - 1)])
        upgrade(engine)
        with Store(engine).begin() as tx:
            by_header, by_bundle = inbox.lookup(tx, SOC, "h-1", "b-1", NOW)
            assert by_header == by_bundle and by_header is not None
            assert by_header.response == b"{}" and by_header.expires > NOW
            assert inbox.lookup(tx, SOC, "h-2", "b-2", NOW) == (None, None)   # expired
        engine.dispose()
