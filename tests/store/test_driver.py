"""Hot statements on the driver's cursor answer errors as SQLAlchemy's statements do in the
store: an operational failure is retryable, a violated constraint is not hidden as one."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip_hub.errors import TransientError
from sip_hub.store import Store
from sip_hub.store.driver import insert_into
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
