"""WAL checkpoints of the embedded store, in the background.

SQLite copies its write-ahead log back into the database file (a checkpoint) inside whichever
commit crosses ``wal_autocheckpoint`` pages: that writer holds the one write lock meanwhile,
and a create paid ~0.5 ms for it on average. The hub's processes instead checkpoint every
``interval`` seconds from a thread of their own, PASSIVE (never waiting for readers or
writers). The connections' ``wal_autocheckpoint`` stays as a backstop, set high, for processes
without this thread (the command line, a stalled checkpointer).
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger("sip_hub.store")

BACKSTOP_PAGES = 8000  # ~32 MiB of log at 4 KiB pages


class Checkpointer:
    def __init__(self, engine: Engine, interval: float = 0.25) -> None:
        self.engine = engine
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.engine.dialect.name != "sqlite" or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="wal-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None

    def run_once(self) -> tuple[int, int, int]:
        """(busy, frames in the log, frames checkpointed), as SQLite reports them."""
        with self.engine.connect() as conn:
            conn = conn.execution_options(sip_no_begin=True)
            row = conn.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)").one()
            conn.commit()
        return int(row[0]), int(row[1]), int(row[2])

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.run_once()
            except SQLAlchemyError:  # the next round tries again; commits are the backstop
                log.exception("WAL checkpoint failed")
