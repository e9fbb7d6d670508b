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
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ..errors import TransientError

T = TypeVar("T")
MAX_ROUND = 32  # calls per transaction: bounds how long one round holds the write lock


@dataclass(slots=True)
class _Call(Generic[T]):
    fn: Callable[[Any], T]
    # The caller's context variables (its request's id, ...): ``fn`` runs in them, whichever
    # thread leads its round, so that what it records (an AuditEvent, a log line) is its own.
    context: contextvars.Context
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
    transaction object offers ``savepoint()`` (``Tx``)."""

    def __init__(self, begin: Callable[[], AbstractContextManager[Any]],
                 max_round: int = MAX_ROUND) -> None:
        self._begin = begin
        self._max_round = max_round
        self._cond = threading.Condition()
        self._queue: list[_Call[Any]] = []
        self._leading = False
        self.rounds = 0  # transactions begun

    def run(self, fn: Callable[[Any], T]) -> T:
        call: _Call[T] = _Call(fn, contextvars.copy_context())
        with self._cond:
            self._queue.append(call)
        while True:
            with self._cond:
                while not call.done and self._leading:
                    self._cond.wait()
                if call.done:
                    return call.outcome()
                # Lead one round: the oldest calls (this one among them unless more than a
                # round's worth were queued before it), then hand over to a waiting caller.
                self._leading = True
                batch = self._queue[:self._max_round]
                del self._queue[:self._max_round]
            try:
                self._round(batch)
            finally:
                with self._cond:
                    for c in batch:
                        c.done = True
                    self._leading = False
                    self._cond.notify_all()

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
