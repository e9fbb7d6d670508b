"""OS file locks that let the processes sharing one SQLite file take turns as its writer.

SQLite has one writer at a time. Left to SQLite, waiting writers poll with growing sleeps
(seconds of p99 under load); a ``flock`` wakes the next one at once, across processes.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

try:
    import fcntl
except ImportError:  # pragma: no cover (Windows: the store then runs in one process)
    fcntl = None  # type: ignore[assignment]

AVAILABLE = fcntl is not None
_ALL: weakref.WeakSet[WriterLock] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child starts with one thread: a thread lock its parent's other threads held
    at the fork would never be released in it, and a descriptor it inherited shares the
    parent's OS lock. It gets a free thread lock and opens its own descriptor when it first
    writes (closing its copy leaves the parent's lock as it is)."""
    for lock in list(_ALL):
        lock._threads = threading.Lock()
        if lock._fd is not None and lock._finalizer is not None:
            lock._finalizer.detach()
            os.close(lock._fd)
            lock._fd = lock._finalizer = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class WriterLock:
    """The exclusive lock of one file, for one ``Store``: the threads of a process queue on
    an in-process lock and only its holder takes the OS lock, on a descriptor opened once
    per process (not an open, a close and a second descriptor's lock per transaction: each
    system call also hands the interpreter lock to another thread, while the database's
    write lock is held). Two ``WriterLock``s of one file exclude each other like two
    processes do (each its own open file description)."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._finalizer: weakref.finalize | None = None  # closes _fd with the lock
        _ALL.add(self)

    @contextmanager
    def held(self) -> Iterator[None]:
        with self._threads:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
                self._finalizer = weakref.finalize(self, os.close, self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Close the descriptor (a later ``held`` opens it again): with its ``Store``'s
        engine, so that stores made and dropped (tests, tools) do not each keep one open."""
        with self._threads:
            if self._fd is not None:
                assert self._finalizer is not None
                self._finalizer.detach()
                os.close(self._fd)
                self._fd = self._finalizer = None


@contextmanager
def try_lock(path: str) -> Iterator[bool]:
    """The exclusive OS lock on ``path`` while the block runs if no other thread or process
    holds it (True), else False at once. For jobs that one process runs at a time."""
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
