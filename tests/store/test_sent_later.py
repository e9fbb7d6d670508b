"""Writes whose outcome nothing reads are sent later on PostgreSQL: queued, and sent in one
pipeline with the next statement whose result is read, or with the COMMIT. The transaction
sees them, commits them, or forgets them, exactly as if each had been sent at once; on SQLite
they run at once."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from psycopg import pq
from sqlalchemy import text

from sip_hub.errors import TransientError
from sip_hub.store import Store, driver
from sip_hub.store.driver import UNKNOWN_OUTCOME, DriverStatement, insert_into
from sip_hub.store.engine import make_engine
from sip_hub.store.schema import deadline_due

_INSERT = insert_into(deadline_due, "plan_id", "due")
_COUNT = DriverStatement(text("SELECT count(*) FROM deadline_due"))


def _rows(prefix: str, n: int) -> list[dict[str, object]]:
    return [{"plan_id": f"{prefix}{i}", "due": i} for i in range(n)]


def _stored(store: Store) -> list[str]:
    with store.begin(write=False) as tx:
        return [r[0] for r in tx.conn.exec_driver_sql(
            "SELECT plan_id FROM deadline_due ORDER BY plan_id").all()]


def test_the_transaction_reads_what_it_queued_by_either_kind_of_statement(store: Store) -> None:
    with store.begin() as tx:
        _INSERT.run_later(tx.conn, {"plan_id": "one", "due": 1})
        _INSERT.many_later(tx.conn, _rows("many", 70))  # past one INSERT's 64 rows
        row = _COUNT.first(tx.conn, {})  # the driver's read
        assert row is not None and row[0] == 71
        _INSERT.many_later(tx.conn, _rows("more", 3))
        # SQLAlchemy's own statements see it too
        assert tx.conn.execute(text("SELECT count(*) FROM deadline_due")).scalar() == 74
        _INSERT.run_later(tx.conn, {"plan_id": "last", "due": 2})
    stored = _stored(store)
    assert len(stored) == 75 and {"one", "last", "many69", "more2"} <= set(stored)


def test_what_was_queued_commits_with_the_transaction_and_only_then(store: Store) -> None:
    with store.begin() as tx:
        _INSERT.many_later(tx.conn, _rows("c", 5))
        assert len(_stored(store)) == 0  # another connection: not yet committed
    assert _stored(store) == [f"c{i}" for i in range(5)]


def test_a_rolled_back_transaction_sends_nothing_it_queued(store: Store) -> None:
    with pytest.raises(RuntimeError):
        with store.begin() as tx:
            _INSERT.run(tx.conn, {"plan_id": "at once", "due": 0})
            _INSERT.many_later(tx.conn, _rows("queued", 4))
            raise RuntimeError("refused")
    for k in range(3):  # the pool's connections again: nothing queued comes back with them
        with store.begin() as tx:
            _INSERT.run_later(tx.conn, {"plan_id": f"next{k}", "due": 1})
    assert _stored(store) == ["next0", "next1", "next2"]


def test_a_savepoint_undoes_what_its_block_queued(store: Store) -> None:
    with store.begin() as tx:
        _INSERT.run_later(tx.conn, {"plan_id": "before", "due": 1})
        with pytest.raises(RuntimeError):
            with tx.savepoint():
                _INSERT.many_later(tx.conn, _rows("inside", 3))
                raise RuntimeError("refused")
        with tx.savepoint():
            _INSERT.run_later(tx.conn, {"plan_id": "released", "due": 2})
    assert _stored(store) == ["before", "released"]


@contextmanager
def _round_trips(store: Store) -> Iterator[tuple[Any, list[int]]]:
    """A write transaction, and how many times the client waited for the server in it up to
    its COMMIT included: the runs of messages it sent, in libpq's trace."""
    out: list[int] = []
    with tempfile.TemporaryFile("w+") as trace:
        with store.begin() as tx:
            pgconn = tx.conn.connection.dbapi_connection.pgconn
            pgconn.trace(trace.fileno())
            pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
            try:
                yield tx, out
            except BaseException:
                pgconn.untrace()
                raise
        pgconn.untrace()
        trace.seek(0)
        sides = [line[0] for line in trace.read().splitlines() if line[:1] in "FB"]
    out.append(sum(1 for i, s in enumerate(sides) if s == "F" and (i == 0 or sides[i - 1] == "B")))


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_create_with_its_audit_record_is_two_round_trips(store: Store) -> None:
    """BEGIN with claiming the id; then its version, its search index rows, its audit
    record and the COMMIT in one pipeline (one statement and one round trip each before)."""
    plan = {"resourceType": "Patient", "id": "p1", "active": True, "gender": "female",
            "birthDate": "1990-01-01", "name": [{"family": "Andersson", "given": ["Anna"]}],
            "identifier": [{"system": "http://electronichealth.se/identifier/personnummer",
                            "value": "199001012384"}]}
    with _round_trips(store) as (tx, trips):
        tx.create(plan, "p1")
        tx.append_audit([{"resourceType": "AuditEvent", "recorded": "2026-12-05T10:00:00Z",
                          "type": {"code": "rest"}, "action": "C", "outcome": "0",
                          "agent": [{"requestor": True}], "source": {"observer": {}},
                          "entity": [{"what": {"reference": "Patient/p1"}}]}])
    assert trips == [2]
    with store.begin(write=False) as tx:
        assert tx.current("Patient", "p1") is not None
        found = tx.conn.execute(text(
            "SELECT count(*) FROM idx_token WHERE res_type = 'Patient' AND res_id = 'p1'"))
        assert found.scalar() >= 1
        assert tx.conn.execute(text("SELECT count(*) FROM audit_event")).scalar() == 1


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_round_trips_statements_are_handed_to_libpq_at_once(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg writes each command of a pipeline to the socket as its statement is executed;
    the driver holds them back and hands them to libpq as one, which sends them in one write
    (``driver._one_write``). That relies on how psycopg 3.3 sends them: should a version
    send them otherwise, the statements still go, a write each, and this fails."""
    handed: list[int] = []
    real = driver._send

    def counted(commands: list[Any]) -> None:
        handed.append(len(commands))
        real(commands)
    monkeypatch.setattr(driver, "_send", counted)
    with store.begin() as tx:
        _INSERT.run_later(tx.conn, {"plan_id": "one", "due": 1})
        _INSERT.many_later(tx.conn, _rows("many", 3))
        _INSERT.run_later(tx.conn, {"plan_id": "two", "due": 2})
    # the BEGIN, the three INSERTs and the COMMIT (a Parse too, where psycopg prepares one)
    assert len(handed) == 1 and handed[0] >= 5
    assert _stored(store) == ["many0", "many1", "many2", "one", "two"]


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
@pytest.mark.parametrize("fault", ["refused by the server", "not sendable"])
def test_a_queued_statement_that_fails_fails_its_transaction_alone(
        store: Store, fault: str) -> None:
    """The queue leaves in one write; a statement in its middle that the server refuses (a
    key taken twice) or that cannot be written at all (a value with no PostgreSQL type):
    the transaction fails with that error, nothing of it is stored, and the connection
    serves on, its prepared statements too (the same statements again, past psycopg's five
    runs before it prepares one)."""
    bad = {"plan_id": "first", "due": 1} if fault == "refused by the server" else \
        {"plan_id": "odd", "due": object()}
    with pytest.raises(Exception) as caught:
        with store.begin() as tx:
            _INSERT.run_later(tx.conn, {"plan_id": "first", "due": 0})
            _INSERT.many_later(tx.conn, _rows("queued", 3))
            _INSERT.run_later(tx.conn, bad)
            _INSERT.run_later(tx.conn, {"plan_id": "last", "due": 2})
    assert not isinstance(caught.value, TransientError)
    assert ("duplicate key" if fault == "refused by the server" else "cannot adapt") in \
        str(caught.value)
    assert _stored(store) == []
    for k in range(8):
        with store.begin() as tx:
            _INSERT.run_later(tx.conn, {"plan_id": f"after{k}", "due": k})
            _INSERT.many_later(tx.conn, _rows(f"more{k}-", 2))
            assert _COUNT.first(tx.conn, {}) == (3 * (k + 1),)
    assert len(_stored(store)) == 24


def _cut(store: Store, tx: Any) -> None:
    """The server ends the transaction's connection (as a restart or fail-over does)."""
    pid = tx.conn.connection.dbapi_connection.info.backend_pid
    with store.engine.connect() as other:
        other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
        other.commit()


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
@pytest.mark.parametrize("queued", [3, 0], ids=["queue-with-commit", "commit-alone"])
def test_a_connection_lost_at_the_commit_is_a_retryable_error_of_unknown_outcome(
        store: Store, queued: int) -> None:
    """The COMMIT goes with the queue (``queued``), or alone (psycopg's own, every statement
    sent already); the server gone by then is a 503 to the caller that does not say nothing
    was applied (a connection lost at the COMMIT may have lost only the server's answer),
    nothing is half-written, and the store serves on."""
    with pytest.raises(TransientError) as caught:
        with store.begin() as tx:
            _INSERT.run(tx.conn, {"plan_id": "first", "due": 0})
            _INSERT.many_later(tx.conn, _rows("queued", queued))
            _cut(store, tx)
    assert str(caught.value) == UNKNOWN_OUTCOME
    assert _stored(store) == []
    with store.begin() as tx:
        _INSERT.run_later(tx.conn, {"plan_id": "after", "due": 1})
    assert _stored(store) == ["after"]


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_connection_lost_before_the_commit_says_nothing_was_applied(store: Store) -> None:
    """A statement of the transaction's own that fails on the lost connection: the
    transaction never reached its COMMIT, and the caller may send the request again."""
    with pytest.raises(TransientError, match="nothing was applied") as caught:
        with store.begin() as tx:
            _INSERT.run(tx.conn, {"plan_id": "first", "due": 0})
            _cut(store, tx)
            _INSERT.run(tx.conn, {"plan_id": "second", "due": 1})
    assert str(caught.value) != UNKNOWN_OUTCOME
    assert _stored(store) == []


@pytest.mark.postgres
@pytest.mark.parametrize("store", ["postgres"], indirect=True)
def test_a_connection_asked_for_autocommit_runs_without_a_transaction(store: Store) -> None:
    """A VACUUM (which no transaction may hold) on a write connection asked for
    ``isolation_level="AUTOCOMMIT"``; the pool's connection afterwards still has only the
    driver's BEGIN (SQLAlchemy sets the default level back on its return to the pool by
    leaving psycopg's autocommit mode, where psycopg would send a BEGIN of its own)."""
    engine = make_engine(store.engine.url, pool_size=1)
    try:
        small = Store(engine)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM deadline_due"))
            used = conn.connection.dbapi_connection
        with _round_trips(small) as (tx, trips):
            assert tx.conn.connection.dbapi_connection is used
            _INSERT.run_later(tx.conn, {"plan_id": "after", "due": 1})
        assert trips == [1]  # BEGIN, the INSERT and the COMMIT in one
        with pytest.raises(RuntimeError):
            with small.begin() as tx:
                _INSERT.run(tx.conn, {"plan_id": "undone", "due": 2})
                raise RuntimeError("refused")
        assert _stored(small) == ["after"]
    finally:
        engine.dispose()
