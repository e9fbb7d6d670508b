"""Wake-ups for the messaging workers: work for them was committed.

A worker that finds nothing to do waits before it looks again (up to ``poll_seconds``); a
message committed meanwhile waited for that look, which set a message's latency under
moderate load (tens of milliseconds of it) rather than the work it took. Now a transaction
that leaves work for a worker (deliveries in the outbox, an accepted async request) says so:

* in its own process, at once after its commit (``Wakeups``, which the store sets): the
  embedded default's workers run in the API processes;
* to every process on the same PostgreSQL database, through ``NOTIFY``, which PostgreSQL
  delivers when that transaction commits (and not at all when it rolls back). A worker's
  ``Listener`` holds a connection of its own that ``LISTEN``s.

A wake-up is a hint, never the only way work is found: a worker still polls, so a lost
notification (a listener reconnecting) costs latency, not a message. A spurious one (another
hub's schema in the same database, work another worker took first) costs one look.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine, text

from .driver import DriverStatement
from .resources import Tx

log = logging.getLogger("sip_hub.store.wakeup")
CHANNEL = "sip_hub_work"
_NOTIFY = DriverStatement(text(f"NOTIFY {CHANNEL}"))
_RECONNECT_SECONDS = 1.0


def announce(tx: Tx) -> None:
    """``tx`` leaves work for the workers: wake them when it commits (once per
    transaction)."""
    if tx.leaves_work:
        return
    tx.leaves_work = True
    if tx.conn.dialect.name == "postgresql":
        _NOTIFY.run_later(tx.conn, {})


class Listener:
    """A thread that ``LISTEN``s on PostgreSQL and sets ``event`` for each notification (and
    once when it (re)connects: what was announced while it was away is not lost). Nothing on
    other databases."""

    def __init__(self, engine: Engine, event: threading.Event) -> None:
        self._url = engine.url.set(drivername="postgresql").render_as_string(
            hide_password=False)
        self._event = event
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sip-hub-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psycopg
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._url, autocommit=True, connect_timeout=10) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    self._event.set()
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=0.5):
                            self._event.set()
            except Exception as exc:  # (the thread lives on: without it the workers poll)
                self.connected.clear()
                log.warning("listening for work on PostgreSQL failed, polling meanwhile: %s",
                            str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                self._stop.wait(_RECONNECT_SECONDS)
        self.connected.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
