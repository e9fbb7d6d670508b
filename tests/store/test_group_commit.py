"""Group commit on the embedded store: writes asked for at the same time share a transaction,
and each caller still gets exactly its own outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import event

from sip_hub.errors import Conflict, TransientError
from sip_hub.store import Store, Tx
from sip_hub.store.engine import make_engine
from sip_hub.store.migrate import upgrade


def patient(family: str) -> dict:
    return {"resourceType": "Patient", "name": [{"family": family}]}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    upgrade(engine)
    yield Store(engine)
    engine.dispose()


def queued_behind_a_slow_write(store: Store, calls: list, queued: list[int] | None = None,
                               caller: Callable[[int], object] | None = None
                               ) -> tuple[list, list[BaseException]]:
    """Run ``calls`` (each ``fn(tx)``) in threads while a first write holds its round open,
    so that they all queue for the next round. Returns (results, errors) in call order;
    ``queued`` gets the calls' indexes in the order they queued; ``caller(i)`` runs first in
    the thread of call ``i``."""
    queued = [] if queued is None else queued
    gate, inside = threading.Event(), threading.Event()

    def slow(tx: Tx) -> str:
        inside.set()
        assert gate.wait(10)
        return tx.create(patient("First"), "first").id

    results: list = [None] * len(calls)
    errors: list = [None] * len(calls)

    def call(i: int) -> None:
        if caller is not None:
            caller(i)
        try:
            results[i] = store.write(calls[i])
        except Exception as exc:  # noqa: BLE001 (recorded for the assertions)
            errors[i] = exc

    first = threading.Thread(target=lambda: store.write(slow))
    first.start()
    assert inside.wait(10)
    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    group = store._group
    assert group is not None
    while True:  # every call queued behind the open round
        with group._mutex:
            if len(group._queue) == len(calls):
                queued.extend(calls.index(c.fn) for c in group._queue)
                break
        time.sleep(0.001)
    gate.set()
    for t in [first, *threads]:
        t.join(10)
    return results, errors


def test_writes_at_the_same_time_share_one_transaction_and_all_land(store):
    calls = [lambda tx, i=i: tx.create(patient(f"P{i}"), f"p{i}").id for i in range(10)]
    rounds_before = store._group.rounds
    results, errors = queued_behind_a_slow_write(store, calls)
    assert errors == [None] * 10
    assert results == [f"p{i}" for i in range(10)]  # each caller its own result
    assert store._group.rounds - rounds_before == 2  # the slow one's round, then the rest
    for i in range(10):
        assert store.read("Patient", f"p{i}").json()["name"] == [{"family": f"P{i}"}]


def test_each_write_of_a_round_runs_in_its_callers_context(store):
    """The round's leader runs everyone's writes, but each sees its own caller's context:
    the AuditEvent of a write names the request that asked for it, not the leader's."""
    from sip_hub.logs import REQUEST_ID

    def write(tx: Tx) -> str:
        return REQUEST_ID.get()
    calls = [lambda tx, w=write: w(tx) for _ in range(5)]
    results, errors = queued_behind_a_slow_write(
        store, calls, caller=lambda i: REQUEST_ID.set(f"request-{i}"))
    assert errors == [None] * 5
    assert results == [f"request-{i}" for i in range(5)]
    token = REQUEST_ID.set("alone")
    try:
        assert store.write(write) == "alone"  # a lone write too (its own thread, here)
    finally:
        REQUEST_ID.reset(token)


def test_a_failing_write_is_undone_alone_and_only_its_caller_sees_the_error(store):
    def fails_after_writing(tx: Tx) -> str:
        tx.create(patient("Half"), "half")
        raise Conflict("refused after a write")

    calls = [lambda tx: tx.create(patient("A"), "a").id, fails_after_writing,
             lambda tx: tx.update(patient("A2"), "a")[0].version_id]
    results, errors = queued_behind_a_slow_write(store, calls)
    assert results == ["a", None, 2]
    assert errors[0] is None and errors[2] is None
    assert isinstance(errors[1], Conflict) and "refused after a write" in str(errors[1])
    assert store.read("Patient", "half") is None  # its own write was undone
    assert store.read("Patient", "a").version_id == 2  # the next call saw and built on "a"
    # What the failed call read and wrote is forgotten too: a later write sees the truth.
    assert store.write(lambda tx: tx.current("Patient", "half")) is None


def test_what_waits_for_the_commit_runs_after_it_and_only_for_writes_kept(store, caplog):
    """``Tx.after_commit``: each kept write's callbacks run once the round has committed
    (outside SQLite's write lock), in order; an undone write's never do; one that fails is
    logged and reaches no caller."""
    ran: list[str] = []
    lock = store._writer_lock

    def registers(name: str, *, fails: bool = False, broken: bool = False):
        def fn(tx: Tx) -> str:
            tx.create(patient(name), name.lower())

            def after() -> None:
                assert not lock._threads.locked(), "the write lock is released first"
                assert store.read("Patient", name.lower()) is not None  # committed
                if broken:
                    raise RuntimeError("a broken callback")
                ran.append(name)
            tx.after_commit(after)
            if fails:
                raise Conflict("refused")
            return name
        return fn

    calls = [registers("A"), registers("B", fails=True), registers("C", broken=True),
             registers("D")]
    results, errors = queued_behind_a_slow_write(store, calls)
    assert results == ["A", None, "C", "D"]
    assert isinstance(errors[1], Conflict) and errors[0] is errors[2] is errors[3] is None
    assert ran == ["A", "D"]
    assert "after the commit of a transaction" in caplog.text
    assert "a broken callback" in caplog.text
    ran.clear()
    with pytest.raises(Conflict):
        store.write(registers("E", fails=True))  # alone: its transaction rolled back
    assert ran == [] and store.read("Patient", "e") is None


def test_a_lone_failing_write_stores_nothing(store):
    def fails(tx: Tx) -> None:
        tx.create(patient("Alone"), "alone")
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        store.write(fails)
    assert store.read("Patient", "alone") is None
    assert store.write(lambda tx: tx.create(patient("B"), "b").id) == "b"


def test_when_the_commit_fails_every_caller_of_the_round_is_told_and_nothing_is_stored(store):
    """A COMMIT that SQLite refuses (here a deferred foreign key left dangling by one call of
    the round: checked only at COMMIT) fails the whole round, and each caller hears of it."""
    with store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE fk_parent (id INTEGER PRIMARY KEY)")
        conn.exec_driver_sql("CREATE TABLE fk_child (ref INTEGER REFERENCES fk_parent (id) "
                             "DEFERRABLE INITIALLY DEFERRED)")
    event.listen(store.engine, "connect",
                 lambda dbapi, _rec: dbapi.execute("PRAGMA foreign_keys=ON"))
    store.engine.dispose()  # connections anew, with the pragma

    def dangling(tx: Tx) -> str:
        tx.create(patient("D"), "d")
        tx.conn.exec_driver_sql("INSERT INTO fk_child VALUES (1)")  # checked at COMMIT
        return "d"

    calls = [lambda tx: tx.create(patient("A"), "a").id, dangling,
             lambda tx: tx.create(patient("B"), "b").id]
    results, errors = queued_behind_a_slow_write(store, calls)
    assert results == [None, None, None]
    assert all(isinstance(e, TransientError) for e in errors), errors
    assert all("FOREIGN KEY" in str(e) for e in errors)
    for rid in ("a", "d", "b"):
        assert store.read("Patient", rid) is None
    assert store.read("Patient", "first") is not None  # the round before committed
    assert store.write(lambda tx: tx.create(patient("C"), "c").id) == "c"  # and on it goes


def test_more_calls_than_a_round_holds_run_in_rounds_in_arrival_order(store):
    """Callers queued beyond one round's worth wait for the next, which the oldest of them
    leads: every call lands, in the order it was queued."""
    from sip_hub.store import group
    n = group.MAX_ROUND * 2 + 5
    order: list[int] = []
    calls = [lambda tx, i=i: (order.append(i), tx.create(patient(f"P{i}"), f"p{i}").id)[1]
             for i in range(n)]
    rounds_before = store._group.rounds
    queued: list[int] = []
    results, errors = queued_behind_a_slow_write(store, calls, queued)
    assert errors == [None] * n
    assert results == [f"p{i}" for i in range(n)]
    assert order == queued and sorted(queued) == list(range(n))
    assert store._group.rounds - rounds_before == 1 + 3  # the slow one's, then 32 + 32 + 5


def test_many_writers_at_once_all_land_and_share_rounds(store):
    """A stress of the hand-over: threads writing back to back; no write is lost, no caller
    is left waiting, and rounds are shared."""
    threads_n, each = 12, 40
    rounds_before = store._group.rounds
    failures: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for k in range(each):
                assert store.write(lambda tx: tx.create(patient(f"T{t}"), f"t{t}-{k}").id) \
                    == f"t{t}-{k}"
        except BaseException as exc:  # noqa: BLE001 (recorded for the assertions)
            failures.append(exc)
    threads = [threading.Thread(target=writer, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a caller was left waiting"
    assert failures == []
    with store.begin(write=False) as tx:
        assert len(tx.current_many([("Patient", f"t{t}-{k}") for t in range(threads_n)
                                    for k in range(each)])) == threads_n * each
    assert store._group.rounds - rounds_before < threads_n * each
