"""The SQLite writer lock: one writer at a time across threads, Store objects and processes,
including a process forked while its parent held the lock."""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from pathlib import Path

import pytest

from sip_hub.store.filelock import AVAILABLE, WriterLock, try_lock

pytestmark = pytest.mark.skipif(not AVAILABLE, reason="no POSIX file locks")


def test_threads_of_one_lock_take_turns(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path / "w.lock"))
    inside, most = 0, 0
    guard = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(50):
            with lock.held():
                with guard:
                    inside += 1
                    most = max(most, inside)
                time.sleep(0.0001)
                with guard:
                    inside -= 1
    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most == 1


def test_two_locks_of_one_file_exclude_each_other(tmp_path: Path) -> None:
    path = str(tmp_path / "w.lock")
    a, b = WriterLock(path), WriterLock(path)
    with a.held():
        with try_lock(path) as got:
            assert got is False  # the OS lock is taken, not only a thread lock
        entered = threading.Event()

        def take_b() -> None:
            with b.held():
                entered.set()
        t = threading.Thread(target=take_b)
        t.start()
        assert not entered.wait(0.2)  # b waits for a
    assert entered.wait(5)
    t.join()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork")
def test_a_child_forked_while_the_parent_writes_waits_for_it(tmp_path: Path) -> None:
    lock = WriterLock(str(tmp_path / "w.lock"))
    read, write = os.pipe()
    with lock.held():
        pid = os.fork()
        if pid == 0:  # the child: its own descriptor, and a thread lock that is free
            try:
                os.close(read)
                with lock.held():
                    os.write(write, b"y")
            finally:
                os._exit(0)
        os.close(write)
        # (poll, not select: late in a long test run the pipe's descriptor may lie beyond
        # select's 1024)
        ready = select.poll()
        ready.register(read, select.POLLIN)
        try:
            assert ready.poll(300) == []  # the child waits for the parent's release
        except BaseException:
            os.kill(pid, signal.SIGKILL)
            raise
    try:
        assert [fd for fd, _ in ready.poll(10_000)] == [read]
        assert os.read(read, 1) == b"y"
    finally:
        if os.waitpid(pid, os.WNOHANG) == (0, 0):  # stuck: do not leave it behind
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
