"""Group commit on the embedded store: writes asked for at the same time share a transaction,
and each caller still gets exactly its own outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from sip_hub.errors import Conflict, TransientError
from sip_hub.store import Store, Tx
from sip_hub.store.engine import make_engine
from sip_hub.store.group import GroupCommit
from sip_hub.store.migrate import upgrade


def patient(family: str) -> dict:
    return {"resourceType": "Patient", "name": [{"family": family}]}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    upgrade(engine)
    yield Store(engine)
    engine.dispose()


def queued_behind_a_slow_write(store: Store, calls: list) -> tuple[list, list[BaseException]]:
    """Run ``calls`` (each ``fn(tx)``) in threads while a first write holds its round open,
    so that they all queue for the next round. Returns (results, errors) in call order."""
    gate, inside = threading.Event(), threading.Event()

    def slow(tx: Tx) -> str:
        inside.set()
        assert gate.wait(10)
        return tx.create(patient("First"), "first").id

    results: list = [None] * len(calls)
    errors: list = [None] * len(calls)

    def call(i: int) -> None:
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
        with group._cond:
            if len(group._queue) == len(calls):
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


def test_a_lone_failing_write_stores_nothing(store):
    def fails(tx: Tx) -> None:
        tx.create(patient("Alone"), "alone")
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        store.write(fails)
    assert store.read("Patient", "alone") is None
    assert store.write(lambda tx: tx.create(patient("B"), "b").id) == "b"


def test_when_the_commit_fails_every_caller_of_the_round_is_told_and_nothing_is_stored(store):
    @contextmanager
    def commit_fails() -> Iterator[Tx]:
        with store.begin() as tx:
            yield tx
            raise OperationalError("COMMIT", {}, Exception("disk I/O error"))

    group = GroupCommit(commit_fails)
    gate, inside = threading.Event(), threading.Event()
    errors: dict[str, BaseException] = {}

    def run(name: str, fn) -> None:
        try:
            group.run(fn)
        except Exception as exc:  # noqa: BLE001
            errors[name] = exc

    def slow(tx: Tx) -> None:
        inside.set()
        gate.wait(10)
        tx.create(patient("S"), "s")

    first = threading.Thread(target=run, args=("s", slow))
    first.start()
    assert inside.wait(10)
    others = [threading.Thread(target=run, args=(f"o{i}", lambda tx, i=i: tx.create(
        patient("O"), f"o{i}"))) for i in range(3)]
    for t in others:
        t.start()
    while len(group._queue) < 3:
        time.sleep(0.001)
    gate.set()
    for t in [first, *others]:
        t.join(10)
    assert sorted(errors) == ["o0", "o1", "o2", "s"]
    assert all(isinstance(e, TransientError) for e in errors.values())
    for rid in ("s", "o0", "o1", "o2"):
        assert store.read("Patient", rid) is None
