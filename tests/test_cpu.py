"""The turns of ``sip_hub.cpu``: handed over in the order asked for, re-entrant, and never
stalled by a waiter that stopped waiting."""

from __future__ import annotations

import ctypes
import threading
import time

from sip_hub.cpu import _Turns


def _queued(turns: _Turns, n: int) -> None:
    """Until ``n`` threads hold or wait for a turn."""
    deadline = time.monotonic() + 5
    while (turns._owner is not None) + len(turns._waiters) < n:
        assert time.monotonic() < deadline, "the threads did not ask for their turns"
        time.sleep(0.001)


def test_turns_go_in_the_order_they_were_asked_for() -> None:
    turns, order = _Turns(), []

    def work(n: int) -> None:
        with turns:
            order.append(n)
    threads = [threading.Thread(target=work, args=(n,)) for n in range(5)]
    with turns:
        for n, t in enumerate(threads):
            t.start()
            _queued(turns, n + 2)  # the holder and each waiter, in this order
    for t in threads:
        t.join(timeout=5)
    assert order == [0, 1, 2, 3, 4]


def test_a_thread_asking_again_at_once_queues_behind_the_waiting_ones() -> None:
    """A Bundle's entries each take a turn: another request gets one between them."""
    turns, order = _Turns(), []
    waiting = threading.Thread(target=lambda: (turns.__enter__(), order.append("other"),
                                               turns.__exit__()))
    with turns:
        order.append("entry 0")
        waiting.start()
        _queued(turns, 2)
    for k in (1, 2):
        with turns:
            order.append(f"entry {k}")
    waiting.join(timeout=5)
    assert order == ["entry 0", "other", "entry 1", "entry 2"]


def test_the_holder_may_take_its_turn_again_inside_it() -> None:
    turns = _Turns()
    with turns:
        with turns:
            pass
        other = threading.Thread(target=lambda: turns.__enter__() and turns.__exit__())
        other.start()
        other.join(timeout=0.2)
        assert other.is_alive()  # still the holder's turn after the inner one ended
    other.join(timeout=5)
    assert not other.is_alive()


def test_a_waiter_that_stops_waiting_does_not_stall_those_behind_it() -> None:
    turns, done = _Turns(), []

    class Stop(Exception):
        pass

    def wait_then_stop() -> None:
        try:
            with turns:
                done.append("interrupted one ran")
        except Stop:
            done.append("stopped")

    def behind() -> None:
        with turns:
            done.append("behind")
    quitter, last = threading.Thread(target=wait_then_stop), threading.Thread(target=behind)
    with turns:
        quitter.start()
        _queued(turns, 2)
        last.start()
        _queued(turns, 3)
        # Raise Stop in the waiting thread: it sees it within its wait's slice.
        assert ctypes.pythonapi.PyThreadState_SetAsyncExc(
            ctypes.c_ulong(quitter.ident), ctypes.py_object(Stop)) == 1
        quitter.join(timeout=5)
        assert done == ["stopped"] and len(turns._waiters) == 1  # only the one behind
    last.join(timeout=5)
    quitter.join(timeout=5)
    assert done == ["stopped", "behind"]
