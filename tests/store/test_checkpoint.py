"""The embedded store's write-ahead log is checkpointed in the background, not in commits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from sqlalchemy import text

from sip_hub.store import Store
from sip_hub.store.checkpoint import BACKSTOP_PAGES, Checkpointer
from sip_hub.store.engine import make_engine
from sip_hub.store.migrate import upgrade


def _patient(i: int) -> dict[str, object]:
    return {"resourceType": "Patient", "active": True, "name": [{"family": f"Svensson{i}"}]}


def _store(tmp_path: Path) -> Store:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    upgrade(engine)
    return Store(engine)


def test_commits_leave_the_log_to_the_checkpointer(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == BACKSTOP_PAGES
    for i in range(20):
        with store.begin() as tx:
            tx.create(_patient(i))
    busy, frames, done = Checkpointer(store.engine).run_once()
    assert busy == 0 and frames > 0 and done == frames
    # The log is then reused from its start: the next commit's frames are all that is in it.
    with store.begin() as tx:
        tx.create(_patient(99))
    _, after, _ = Checkpointer(store.engine).run_once()
    assert 0 < after < frames
    store.engine.dispose()


def test_the_thread_checkpoints_while_writers_write_and_stops(tmp_path: Path) -> None:
    store = _store(tmp_path)
    cp = Checkpointer(store.engine, interval=0.01)
    cp.start()
    try:
        assert any(t.name == "wal-checkpoint" for t in threading.enumerate())
        for i in range(50):
            with store.begin() as tx:
                tx.create(_patient(i))
        time.sleep(0.1)
        _, frames, done = Checkpointer(store.engine).run_once()
        assert done == frames  # nothing was left behind
        with store.begin(write=False) as tx:
            n = tx.conn.execute(text("SELECT count(*) FROM resource")).scalar()
        assert n == 50
    finally:
        cp.stop()
    assert not any(t.name == "wal-checkpoint" for t in threading.enumerate())
    store.engine.dispose()


def test_postgresql_needs_no_checkpointer() -> None:
    engine = make_engine("postgresql://nobody@127.0.0.1:1/none")
    cp = Checkpointer(engine)
    cp.start()  # does nothing: the server checkpoints itself
    assert not any(t.name == "wal-checkpoint" for t in threading.enumerate())
    cp.stop()


def _deleted_temp_files() -> list[str]:
    """The files this process holds open that were unlinked: SQLite's temporary files."""
    fds = Path("/proc/self/fd")
    return [t for t in (str(p.readlink()) for p in fds.iterdir() if p.is_symlink())
            if t.endswith("(deleted)") and "sqlite3" not in t]


def test_a_savepoints_undo_journal_stays_in_memory(tmp_path: Path) -> None:
    # Group commit runs each write in a savepoint; SQLite keeps the original of every page a
    # savepoint changes, and past 64 KiB it spilled them to a temporary file (a write and a
    # syscall per page, in the writer holding the write lock).
    store = _store(tmp_path)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA temp_store").scalar() == 2  # MEMORY
    with store.begin() as tx:
        ids = [tx.create(_patient(i)).id for i in range(300)]
    before = _deleted_temp_files()
    with store.begin() as tx:
        with tx.savepoint():
            for i, rid in enumerate(ids):
                tx.update({**_patient(i), "id": rid, "active": False}, rid)
            assert _deleted_temp_files() == before
        with tx.savepoint():
            tx.update({**_patient(0), "id": ids[0], "gender": "other"}, ids[0])
    assert store.read("Patient", ids[0]).doc()["gender"] == "other"
    assert store.read("Patient", ids[299]).doc()["active"] is False
