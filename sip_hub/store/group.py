"""Group commit: the write transactions that a process's threads ask for at the same time run
as one database transaction, each in a savepoint of its own.

SQLite has one writer at a time. Taken one by one, every write pays for the cross-process
write lock, BEGIN, COMMIT and the hand-over to the next writer, and its thread is one of many
contending for the interpreter lock while it holds the database's. Here the first caller
becomes the leader: it takes the write lock once, runs the calls queued so far (its own
included) in order, commits, and hands each caller its own result or exception; callers that
arrive meanwhile wait for the next round, led by one of them. Nothing waits for company: a
lone call runs at once, as before.

What each caller sees is what it would see alone:
* its work is all or nothing (a savepoint: an exception undoes exactly its own writes, and the
  transaction's memory of what it read, and reaches that caller only);
* it returns only once its work is committed; if the COMMIT fails, every caller of that round
  gets the error (a ``TransientError``: nothing of theirs was stored, a retry is safe);
* the calls of one round run in arrival order and each sees the writes of those before it, as
  it would have after their commits;
* it runs in its caller's context variables (the request it belongs to), not the leader's.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..errors import TransientError

T = TypeVar("T")
MAX_ROUND = 32  # calls per transaction: bounds how long one round holds the write lock


def _held() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(slots=True)
class _Call(Generic[T]):
    fn: Callable[[Any], T]
    # The caller's context variables (its request's id, ...): ``fn`` runs in them, whichever
    # thread leads its round, so that what it records (an AuditEvent, a log line) is its own.
    context: contextvars.Context
    # Held from the call's arrival; released once, when its caller is to go on: its round is
    # over (``done``) or it is to lead the next round. Each caller sleeps on its own gate.
    gate: threading.Lock = field(default_factory=_held)
    done: bool = False  # its round is over: its caller may take the outcome
    result: T | None = None
    error: BaseException | None = None

    def outcome(self) -> T:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class _Undo(Exception):
    """Rolls back the transaction of a lone call that raised (its caller gets the error)."""


class GroupCommit:
    """Runs ``fn(tx)`` calls in shared write transactions opened by ``begin()``, whose
    transaction object offers ``savepoint()`` (``Tx``).

    A round's end wakes exactly the threads that have something to do: its callers, and the
    oldest waiting caller, which leads the next round (it is handed the lead; no thread
    competes for it). The others sleep on: with one condition for all, every waiting thread
    woke at each round's end and queued for the interpreter lock beside the next round's
    leader, which then held SQLite's write lock."""

    def __init__(self, begin: Callable[[], AbstractContextManager[Any]],
                 max_round: int = MAX_ROUND) -> None:
        self._begin = begin
        self._max_round = max_round
        self._mutex = threading.Lock()
        self._queue: list[_Call[Any]] = []
        self._leading = False
        self.rounds = 0  # transactions begun

    def run(self, fn: Callable[[Any], T]) -> T:
        call: _Call[T] = _Call(fn, contextvars.copy_context())
        with self._mutex:
            self._queue.append(call)
            lead = not self._leading
            self._leading = True
        if not lead:
            call.gate.acquire()  # released when its round is over or the lead is handed to it
            if call.done:
                return call.outcome()
        # It leads: it is the oldest call waiting (it came when no round ran, or the lead
        # was handed to the head of the queue), so its round includes it.
        with self._mutex:
            batch = self._queue[:self._max_round]
            del self._queue[:self._max_round]
        try:
            self._round(batch)
        finally:
            with self._mutex:
                for c in batch:
                    c.done = True
                following = self._queue[0] if self._queue else None
                self._leading = following is not None
            if following is not None:  # first, so that the next round begins at once
                following.gate.release()
            for c in batch:
                if c is not call:
                    c.gate.release()
        return call.outcome()

    def _round(self, batch: list[_Call[Any]]) -> None:
        self.rounds += 1
        try:
            with self._begin() as tx:
                if len(batch) == 1:  # alone: the transaction is its savepoint
                    self._alone(batch[0], tx)
                    return
                for call in batch:
                    try:
                        with tx.savepoint():
                            call.result = call.context.run(call.fn, tx)
                    except Exception as exc:  # noqa: BLE001 (handed to its own caller)
                        call.error = exc
        except _Undo:
            pass
        except BaseException as exc:  # BEGIN or COMMIT failed, or the round was interrupted:
            failed = exc if isinstance(exc, TransientError) else TransientError(  # none stored
                f"The write was not applied: {exc or type(exc).__name__}")
            for call in batch:
                call.result, call.error = None, failed
            if not isinstance(exc, Exception):
                raise

    @staticmethod
    def _alone(call: _Call[Any], tx: Any) -> None:
        try:
            call.result = call.context.run(call.fn, tx)
        except Exception as exc:
            call.error = exc
            raise _Undo from exc
