"""Two transactions that wait for each other (PostgreSQL; SQLite has one writer): the one the
database fails is a retryable conflict, and nothing of it stays."""

from __future__ import annotations

import threading

import pytest

from sip_hub.errors import ConcurrentChange

PAT = {"resourceType": "Patient", "name": [{"family": "Tolvansson"}]}


@pytest.mark.parametrize("store", [pytest.param("postgres", marks=pytest.mark.postgres)],
                         indirect=True)
@pytest.mark.parametrize("lock", ["row", "advisory"])
def test_the_transaction_failed_to_break_a_deadlock_is_a_concurrent_change_undone(store, lock):
    """Row locks are taken on the driver's cursor, advisory locks through SQLAlchemy: both
    ways a deadlock is a ``ConcurrentChange`` (409, retryable), not a 503 with PostgreSQL's
    internals, and the failed transaction's own earlier write is rolled back."""
    with store.begin() as tx:
        tx.create(dict(PAT), "x")
        tx.create(dict(PAT), "y")
    both_hold_one = threading.Barrier(2, timeout=10)
    outcomes: dict[str, object] = {}

    def take(tx, key: str) -> None:
        if lock == "row":
            tx.lock_resource("Patient", key)
        else:
            tx.serialise(f"test:{key}")

    def writer(first: str, then: str) -> None:
        try:
            with store.begin() as tx:
                tx.create(dict(PAT), f"by-{first}")
                take(tx, first)
                both_hold_one.wait()
                take(tx, then)
            outcomes[first] = "committed"
        except ConcurrentChange as exc:
            outcomes[first] = exc

    threads = [threading.Thread(target=writer, args=order) for order in (("x", "y"),
                                                                         ("y", "x"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    failed = [k for k, v in outcomes.items() if isinstance(v, ConcurrentChange)]
    assert len(outcomes) == 2 and len(failed) == 1, outcomes
    err = outcomes[failed[0]]
    assert isinstance(err, ConcurrentChange)
    assert (err.status, err.code, err.retryable) == (409, "conflict", True)
    assert "deadlock" not in err.diagnostics and "changed concurrently" in err.diagnostics
    with store.begin(write=False) as tx:
        assert tx.current("Patient", f"by-{failed[0]}") is None
        winner = "y" if failed[0] == "x" else "x"
        assert tx.current("Patient", f"by-{winner}") is not None
