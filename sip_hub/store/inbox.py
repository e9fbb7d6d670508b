"""SQL of the reliable-messaging cache: messages received by ``$process-message``.

Entries are per sender organisation: one organisation can neither read another's responses
nor block its ids. An entry is live until ``expires``; expired entries count as unseen.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from sqlalchemy import bindparam, delete, null, or_, select, tuple_, update

from ..errors import Conflict
from . import wakeup
from .driver import DriverStatement, any_row, constant
from .resources import Tx
from .schema import message_inbox

ACCEPTED: Final = "accepted"
DONE: Final = "done"

_I = message_inbox.c
_COLUMNS = ("sender_org", "header_id", "bundle_id", "event", "state", "received", "expires",
            "response_code", "response", "request", "caller", "response_url")


@dataclass(frozen=True, slots=True)
class Received:
    sender_org: str
    header_id: str
    bundle_id: str
    event: str
    state: str
    received: int
    expires: int
    response_code: str | None
    response: bytes | None
    request: bytes | None
    caller: bytes | None
    response_url: str | None


def _row(r: Any) -> Received:
    """An entry from a row of ``_COLUMNS`` (by position: SQLAlchemy rows and driver tuples)."""
    (sender_org, header_id, bundle_id, event, state, received, expires, code, response,
     request, caller, response_url) = r
    return Received(sender_org, header_id, bundle_id, event, state, received, expires, code,
                    bytes(response) if response else None, bytes(request) if request else None,
                    bytes(caller) if caller else None, response_url)


# Every message received runs these, inside the write transaction that applies it: built and
# compiled once, run on the driver's cursor (see .driver). The lookup finds expired entries
# too, so that the rare one in the way of a new receipt is dropped by its key, instead of
# every receipt running a DELETE of its own.
_SAME_IDS = or_(_I.header_id == bindparam("h"), _I.bundle_id == bindparam("b"))
_LOOKUP = DriverStatement(select(*(_I[c] for c in _COLUMNS)).where(
    _I.sender_org == bindparam("s"), _SAME_IDS))
_DROP = DriverStatement(delete(message_inbox).where(
    _I.sender_org == bindparam("s"), _I.header_id == bindparam("h")))
# A concurrent receipt of the same ids makes the insert do nothing (no savepoint needed); on
# PostgreSQL it first waits for that transaction to end.
_CLAIM = DriverStatement.on_conflict(lambda ins: ins(message_inbox).values(
    {c: bindparam(c) for c in _COLUMNS}).on_conflict_do_nothing().returning(_I.header_id))
_COMPLETE = DriverStatement(update(message_inbox).where(
    _I.sender_org == bindparam("s"), _I.header_id == bindparam("h")).values(
    state=DONE, response_code=bindparam("code"), response=bindparam("response"),
    request=null(), caller=null()))
ACCEPTED_WAITING = any_row(_I.state == constant(ACCEPTED))
_ANY_ACCEPTED = DriverStatement(select(ACCEPTED_WAITING))


def lookup(tx: Tx, sender_org: str, header_id: str, bundle_id: str, now: int
           ) -> tuple[Received | None, Received | None]:
    """The live entries with this MessageHeader.id, and with this Bundle.id. Expired entries
    with either id are dropped: they no longer count, and the new receipt takes their place."""
    rows = [_row(r) for r in _LOOKUP.all(tx.conn, {"s": sender_org, "h": header_id,
                                                    "b": bundle_id})]
    live = []
    for r in rows:
        if r.expires > now:
            live.append(r)
        else:
            _DROP.run(tx.conn, {"s": r.sender_org, "h": r.header_id})
    by_header = next((r for r in live if r.header_id == header_id), None)
    by_bundle = next((r for r in live if r.bundle_id == bundle_id), None)
    return by_header, by_bundle


def claim(tx: Tx, *, sender_org: str, header_id: str, bundle_id: str, event: str, state: str,
          now: int, expires: int, request: bytes | None = None, caller: bytes | None = None,
          response_url: str | None = None, response_code: str | None = None,
          response: bytes | None = None) -> None:
    """Record a message as received (``DONE``: with its response; ``ACCEPTED``: with the
    request to process), after ``lookup`` in the same transaction (which made room for it).
    Raises Conflict when a concurrent request recorded the same ids first (on PostgreSQL
    this waits for that request to commit or roll back)."""
    claimed = _CLAIM.first(tx.conn, {
        "sender_org": sender_org, "header_id": header_id, "bundle_id": bundle_id,
        "event": event, "state": state, "received": now, "expires": expires,
        "response_code": response_code, "response": response, "request": request,
        "caller": caller, "response_url": response_url})
    if claimed is None:
        raise Conflict(f"Message {header_id} (Bundle {bundle_id}) is being received "
                       "concurrently")
    if state == ACCEPTED:  # an async request: a worker processes it
        wakeup.announce(tx)


def complete(tx: Tx, sender_org: str, header_id: str, code: str, response: bytes) -> None:
    """Store the response; an async request's body and caller are no longer needed."""
    _COMPLETE.run(tx.conn, {"s": sender_org, "h": header_id, "code": code,
                            "response": response})


def any_accepted(tx: Tx) -> bool:
    """Whether async requests wait (a read: idle rounds take no write lock)."""
    row = _ANY_ACCEPTED.first(tx.conn, {})
    return row is not None and bool(row[0])


def claim_accepted(tx: Tx, limit: int) -> list[Received]:
    """Accepted async requests, oldest first, locked until the caller's transaction ends
    (``SKIP LOCKED``: concurrent workers take disjoint requests)."""
    q = (select(*(_I[c] for c in _COLUMNS)).where(_I.state == constant(ACCEPTED))
         .order_by(_I.received).limit(limit).with_for_update(skip_locked=True))
    return [_row(r) for r in tx.conn.execute(q)]


@lru_cache(maxsize=None)
def _expired(limit: int) -> DriverStatement:
    """The DELETE of up to ``limit`` expired entries (the limit in the SQL: see
    ``driver.constant``)."""
    return DriverStatement(delete(message_inbox).where(
        tuple_(_I.header_id, _I.sender_org).in_(
            select(_I.header_id, _I.sender_org)
            .where(_I.expires <= bindparam("now"), _I.state == constant(DONE))
            .order_by(_I.expires).limit(constant(limit))
            .with_for_update(skip_locked=True))))


def purge_expired(tx: Tx, now: int, limit: int) -> int:
    """Forget up to ``limit`` expired entries (accepted async requests stay until they are
    processed); how many. The caller repeats it, a transaction at a time, until fewer than
    ``limit`` went (a day's cache in one transaction held SQLite's write lock throughout)."""
    return _expired(limit).run(tx.conn, {"now": now})
