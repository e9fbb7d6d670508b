"""Hot statements on the driver's cursor answer errors as SQLAlchemy's statements do in the
store: an operational failure is retryable, a violated constraint is not hidden as one."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip_hub.errors import TransientError
from sip_hub.store import Store
from sip_hub.store.driver import insert_into, numbered
from sip_hub.store.engine import make_engine
from sip_hub.store.migrate import upgrade
from sip_hub.store.schema import deadline_due

_INSERT = insert_into(deadline_due, "plan_id", "due")


def test_rows_go_in_and_a_violated_constraint_propagates_as_such(store: Store) -> None:
    with store.begin() as tx:
        _INSERT.many(tx.conn, [{"plan_id": "p1", "due": 1}, {"plan_id": "p2", "due": 2}])
    with pytest.raises(Exception) as caught:
        with store.begin() as tx:
            _INSERT.run(tx.conn, {"plan_id": "p1", "due": 3})
    assert not isinstance(caught.value, TransientError)
    assert isinstance(caught.value, store.engine.dialect.loaded_dbapi.IntegrityError)
    with store.begin(write=False) as tx:
        assert tx.conn.exec_driver_sql("SELECT count(*) FROM deadline_due").scalar() == 2


def test_an_operational_failure_is_a_retryable_error(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    upgrade(engine)
    store = Store(engine)
    with pytest.raises(TransientError, match="Database unavailable"):
        with store.begin() as tx:
            tx.conn.exec_driver_sql("PRAGMA query_only=1")  # writes now fail in SQLite itself
            _INSERT.run(tx.conn, {"plan_id": "p1", "due": 1})
    engine.dispose()


def _count(tx) -> int:  # type: ignore[no-untyped-def]
    return int(tx.conn.exec_driver_sql("SELECT count(*) FROM deadline_due").scalar())


def test_a_savepoint_undoes_its_block_and_the_transaction_goes_on(store: Store) -> None:
    """What a refused message wrote is undone, the rest of its transaction commits: also
    after a violated constraint, which on PostgreSQL aborts everything up to the savepoint."""
    patient = {"resourceType": "Patient", "id": "p1", "active": True}
    with store.begin() as tx:
        _INSERT.run(tx.conn, {"plan_id": "kept", "due": 1})
        with pytest.raises(RuntimeError):
            with tx.savepoint():
                _INSERT.run(tx.conn, {"plan_id": "undone", "due": 2})
                tx.create(dict(patient), "p1")
                assert tx.current("Patient", "p1") is not None
                raise RuntimeError("refused")
        assert tx.current("Patient", "p1") is None  # nor remembered as read
        with pytest.raises(store.engine.dialect.loaded_dbapi.IntegrityError):
            with tx.savepoint():
                _INSERT.run(tx.conn, {"plan_id": "kept", "due": 3})
        with tx.savepoint():
            with tx.savepoint():  # nested, released in turn
                _INSERT.run(tx.conn, {"plan_id": "also kept", "due": 4})
    with store.begin(write=False) as tx:
        assert _count(tx) == 2
        rows = tx.conn.exec_driver_sql("SELECT plan_id FROM deadline_due ORDER BY due").all()
        assert [r[0] for r in rows] == ["kept", "also kept"]
        assert tx.current("Patient", "p1") is None


def test_batch_reads_of_any_size_find_each_row_once_in_a_few_statement_sizes(
        store: Store) -> None:
    """Reads of a batch of keys come in power-of-two sizes (a few statements compiled and
    prepared, not one per count): whatever the batch, each row is found exactly once."""
    from sip_hub.messaging import builder, outbox
    from sip_hub.store import outbox as sql

    with store.begin() as tx:
        for i in range(100):
            note = builder.message("sip-initiated", fhir_base="http://hub.test/fhir",
                                   sender="SE2321000016-SOC1",
                                   destinations=[builder.Party("SE2321000016-15CQ", "urn:x")],
                                   focus=[f"CarePlan/plan{i}", f"Patient/p{i}"], resources=[])
            outbox.enqueue(tx, note, ["SE2321000016-15CQ"])
        ids = [d.id for d in sql.find(tx, limit=1000)]
    assert len(ids) == 100
    sizes: set[int] = set()
    delivered: set[str] = set()
    for count in (1, 3, 5, 17, 33, 64, 65, 100):
        assert [n for n, _ in numbered([{"i": i} for i in ids[:count]], 64)] == (
            [count] if count <= 64 else [64, count - 64])
        padded = [n for n, _ in numbered([{"i": i} for i in ids[:count]], 64, pad=True)]
        sizes.update(padded)
        assert all(n & (n - 1) == 0 for n in padded)  # powers of two
        with store.begin(write=False) as tx:
            found = sql.get_many(tx, ids[:count])
            assert sorted(found) == sorted(ids[:count])
            assert sql.held_back(tx, list(found.values())) == set()  # each its stream's head
        with store.begin() as tx:
            # An id given twice (the padding) is still one delivery settled once.
            assert sql.mark_delivered(tx, ids[:count], 1) == len(set(ids[:count]) - delivered)
        delivered.update(ids[:count])
    assert sizes == {1, 4, 8, 32, 64}


def test_bulk_inserts_of_any_size_store_every_row_in_order_in_a_few_statements(
        store: Store) -> None:
    """A bulk insert stores exactly its rows, in order, whatever their number. On SQLite the
    rows go as multi-row INSERTs in power-of-two chunks (13 rows: 8, 4, 1), not one
    statement per row: each statement lets go of the interpreter lock while the writer holds
    the database's write lock. A violated constraint anywhere fails the whole insert."""
    sqlite = store.engine.dialect.name == "sqlite"
    expected: list[tuple[str, int]] = []
    # rows -> the rows of each INSERT statement on SQLite
    chunks = {0: [], 1: [1], 2: [2], 13: [8, 4, 1], 64: [64], 65: [64, 1],
              200: [64, 64, 64, 8]}
    for count in chunks:
        rows = [{"plan_id": f"n{count}-{i}", "due": 1000 * count + i} for i in range(count)]
        traced: list[str] = []
        with store.begin() as tx:
            if sqlite:
                tx.conn.connection.dbapi_connection.set_trace_callback(traced.append)
            _INSERT.many(tx.conn, rows)
            if sqlite:
                tx.conn.connection.dbapi_connection.set_trace_callback(None)
        expected += [(r["plan_id"], r["due"]) for r in rows]
        if sqlite:
            inserts = [s for s in traced if s.startswith("INSERT")]
            assert [s.count("(") - 1 for s in inserts] == chunks[count], count
    with store.begin(write=False) as tx:
        stored = tx.conn.exec_driver_sql(
            "SELECT plan_id, due FROM deadline_due ORDER BY plan_id").all()
    assert [tuple(r) for r in stored] == sorted(expected)
    duplicate = [{"plan_id": f"new{i}", "due": i} for i in range(12)] + [
        {"plan_id": expected[5][0], "due": 1}]
    with pytest.raises(store.engine.dialect.loaded_dbapi.IntegrityError):
        with store.begin() as tx:
            _INSERT.many(tx.conn, duplicate)
    with store.begin(write=False) as tx:
        assert _count(tx) == len(expected)


def test_a_statement_runs_as_written_with_a_parameter_used_twice_and_a_percent_sign(
        store: Store) -> None:
    # On PostgreSQL the statement runs in numbered placeholders (driver._numbered): a name
    # used twice is one parameter, and the literal '%' that psycopg's form escapes stays one.
    from sqlalchemy import bindparam, literal_column, or_, select

    from sip_hub.store.driver import DriverStatement
    c = deadline_due.c
    stmt = DriverStatement(select(c.plan_id, literal_column("'100%'")).where(
        or_(c.plan_id == bindparam("p"), c.plan_id == bindparam("p") + "-b"),
        c.plan_id.like(literal_column("'plan-%'"))).order_by(c.plan_id))
    with store.begin() as tx:
        _INSERT.many(tx.conn, [{"plan_id": p, "due": 1}
                               for p in ("plan-a", "plan-a-b", "plan-c", "other-a")])
    with store.begin(write=False) as tx:
        assert stmt.all(tx.conn, {"p": "plan-a"}) == [("plan-a", "100%"), ("plan-a-b", "100%")]
        assert stmt.all(tx.conn, {"p": "other-a"}) == []
