"""Wake-ups: a transaction that leaves work for the messaging workers says so when it commits,
in its process and (PostgreSQL) to every listener; never when it rolls back."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy import Engine

from sip_hub.store import Store, wakeup
from sip_hub.store.engine import make_engine


def test_work_is_announced_on_commit_only(store: Store) -> None:
    woken = store.work_committed
    woken.clear()
    with store.begin() as tx:
        wakeup.announce(tx)
        assert not woken.is_set()  # not before the commit
    assert woken.is_set()

    woken.clear()
    with pytest.raises(RuntimeError), store.begin() as tx:
        wakeup.announce(tx)
        raise RuntimeError("rolled back")
    assert not woken.is_set()

    with store.begin() as tx:  # announced in a savepoint rolled back: announced again after
        with pytest.raises(RuntimeError), tx.savepoint():
            wakeup.announce(tx)
            raise RuntimeError("undone")
        assert not tx.leaves_work
        wakeup.announce(tx)
    assert woken.is_set()

    woken.clear()
    with store.begin() as tx:  # a transaction without work wakes nobody
        pass
    assert not woken.is_set()


@pytest.mark.postgres
def test_a_listener_is_woken_by_another_process_commit(pg_engine: Engine) -> None:
    """Another process stands in as another Store on its own engine: only the notification
    can reach the listener's event."""
    other = Store(make_engine(pg_engine.url))
    heard = threading.Event()
    listener = wakeup.Listener(pg_engine, heard)
    try:
        assert listener.connected.wait(10)
        assert heard.wait(5)  # woken once on connecting: nothing announced meanwhile is lost
        heard.clear()
        with pytest.raises(RuntimeError), other.begin() as tx:
            wakeup.announce(tx)
            raise RuntimeError("rolled back: no notification")
        assert not heard.wait(0.5)
        with other.begin() as tx:
            wakeup.announce(tx)
            assert not heard.wait(0.3)  # PostgreSQL sends it with the commit
        assert heard.wait(5)
    finally:
        listener.close()
        other.engine.dispose()


@pytest.mark.postgres
def test_a_listener_without_its_database_keeps_trying(pg_engine: Engine,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    url = pg_engine.url.set(port=1)
    heard = threading.Event()
    caplog.set_level(logging.WARNING, logger="sip_hub.store.wakeup")
    listener = wakeup.Listener(make_engine(url), heard)
    try:
        deadline = time.monotonic() + 10
        while not caplog.records:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "polling meanwhile" in caplog.records[0].getMessage()
        assert not listener.connected.is_set() and not heard.is_set()
    finally:
        started = time.monotonic()
        listener.close()
    assert time.monotonic() - started < 5  # it stops while it waits to try again
