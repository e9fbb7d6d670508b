"""Wake-ups for the messaging workers: work for them was committed.

A worker that finds nothing to do waits before it looks again (up to ``poll_seconds``); a
message committed meanwhile waited for that look, which set a message's latency under
moderate load (tens of milliseconds of it) rather than the work it took. Now a transaction
that leaves work for a worker (deliveries in the outbox, an accepted async request) says so:

* in its own process, at once after its commit (``Wakeups``, which the store sets): the
  embedded default's workers run in the API processes;
* to every process on the same PostgreSQL database, through ``NOTIFY``: once the
  transaction has committed (never when it rolls back), its process's ``Notifier`` sends one
  on a connection of its own. A worker's ``Listener`` holds a connection of its own that
  ``LISTEN``s.

Why not ``NOTIFY`` in the transaction itself: PostgreSQL serialises the commits of every
transaction that notifies on one lock of the database, held until its commit is on disk. Under
the messaging benchmark's load (pg_stat_activity sampled every 20 ms) up to a dozen API and
worker transactions at once waited there for each other's COMMIT, and a holder that lost its
CPU held them all. The notifier's own transaction commits without waiting for the disk (a
wake-up needs none), and the commits of a burst make one ``NOTIFY``.

A wake-up is a hint, never the only way work is found: a worker still polls, so a lost
notification (a listener reconnecting) costs latency, not a message. A spurious one (work
another worker took first) costs one look. The channel is the schema's (``channel``): hubs in
other schemas of the same database neither wake these workers nor are woken by them.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from .engine import companion

if TYPE_CHECKING:
    from .resources import Tx

log = logging.getLogger("sip_hub.store.wakeup")
CHANNEL = "sip_hub_work"
_RECONNECT_SECONDS = 1.0
_IDLE_SECONDS = 0.5  # how often an idle thread looks whether it is to stop


def announce(tx: Tx) -> None:
    """``tx`` leaves work for the workers: wake them once it commits (``Store.begin``)."""
    tx.leaves_work = True


def channel(conn: Any) -> str:
    """The NOTIFY channel of the hub whose tables ``conn`` sees: one per schema (its name
    hashed: a channel is an identifier of at most 63 bytes). A database-wide channel woke
    every hub sharing the database for each other's work (and one test's listener for
    another's leftover notifier)."""
    schema = conn.execute("SELECT current_schema()").fetchone()[0] or ""
    return f"{CHANNEL}_{hashlib.sha256(schema.encode()).hexdigest()[:16]}"


def _url_of(engine: Engine) -> str:
    """The engine's database as libpq takes it (its options and application_name kept)."""
    return engine.url.set(drivername="postgresql").render_as_string(hide_password=False)


def _keep_connected(url: str, stop: threading.Event, serve: Callable[[Any], None],
                    failed: str, lost: Callable[[], None] | None = None) -> None:
    """``serve`` a connection of its own until ``stop``; a connection that fails (or cannot
    be made) is logged with ``failed`` and made again a second later. (A thread's loop: the
    thread lives on, and the workers poll meanwhile.)"""
    import psycopg
    while not stop.is_set():
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                serve(conn)
        except Exception as exc:
            if lost is not None:
                lost()
            log.warning("%s: %s", failed,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            stop.wait(_RECONNECT_SECONDS)


class Notifier:
    """A thread that sends ``NOTIFY`` on a connection of its own each time ``poke`` was
    called since its last one (pokes meanwhile make one). Started by the first poke in each
    process (a forked API process starts its own) and again by one after ``close``. A poke
    while it cannot reach the database is sent once it can again; a process that ends before
    is covered by the workers' polls."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._lock = threading.Lock()
        self._pid = 0  # the process its thread runs in (0: none)
        self._thread: threading.Thread | None = None
        self._want = threading.Event()
        self._stop = threading.Event()

    def poke(self) -> None:
        if self._pid != os.getpid():
            self._start()
        self._want.set()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._want, self._stop = threading.Event(), threading.Event()
            self._want.set()  # (a poke that took the event before it was replaced)
            self._thread = threading.Thread(target=self._run, args=(self._want, self._stop),
                                            name="sip-hub-notify", daemon=True)
            self._pid = os.getpid()
            self._thread.start()

    def _run(self, want: threading.Event, stop: threading.Event) -> None:
        def serve(conn: Any) -> None:
            # (its commit need not wait for the disk: a lost wake-up costs a poll)
            conn.execute("SET synchronous_commit = off")
            notify = f"NOTIFY {channel(conn)}"
            while not stop.is_set():
                if not want.wait(_IDLE_SECONDS) or stop.is_set():
                    continue
                want.clear()
                try:
                    conn.execute(notify)
                except BaseException:
                    want.set()  # (sent once connected again)
                    raise

        _keep_connected(self._url, stop, serve,
                        "waking the workers through PostgreSQL failed, they poll meanwhile")

    def close(self) -> None:
        """Its thread stopped (and its connection closed); a later poke starts another."""
        with self._lock:
            mine = self._pid == os.getpid()
            thread, self._thread, self._pid = self._thread, None, 0
            self._stop.set()
            self._want.set()
        if thread is not None and mine:
            thread.join(timeout=5)


_NOTIFIERS: weakref.WeakKeyDictionary[Engine, Notifier] = weakref.WeakKeyDictionary()


def notifier(engine: Engine) -> Notifier | None:
    """The engine's notifier (one however many stores use it); None but on PostgreSQL. It
    stops when the engine is disposed or collected."""
    if engine.dialect.name != "postgresql":
        return None
    return companion(engine, _NOTIFIERS, lambda: Notifier(_url_of(engine)), Notifier.close)


class Listener:
    """A thread that ``LISTEN``s on PostgreSQL and sets ``event`` for each notification (and
    once when it (re)connects: what was announced while it was away is not lost). Nothing on
    other databases."""

    def __init__(self, engine: Engine, event: threading.Event) -> None:
        self._url = _url_of(engine)
        self._event = event
        self._stop = threading.Event()
        self.connected = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sip-hub-listen", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        def serve(conn: Any) -> None:
            conn.execute(f"LISTEN {channel(conn)}")
            self.connected.set()
            self._event.set()
            while not self._stop.is_set():
                for _ in conn.notifies(timeout=_IDLE_SECONDS):
                    self._event.set()

        _keep_connected(self._url, self._stop, serve,
                        "listening for work on PostgreSQL failed, polling meanwhile",
                        lost=self.connected.clear)
        self.connected.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
