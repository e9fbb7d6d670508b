"""SQL of the reliable-messaging cache: messages received by ``$process-message``.

Entries are per sender organisation: one organisation can neither read another's responses
nor block its ids. An entry is live until ``expires``; expired entries count as unseen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import delete, exists, insert, or_, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import Conflict
from .resources import Tx
from .schema import message_inbox

ACCEPTED: Final = "accepted"
DONE: Final = "done"

_I = message_inbox.c


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
    return Received(r.sender_org, r.header_id, r.bundle_id, r.event, r.state, r.received,
                    r.expires, r.response_code, bytes(r.response) if r.response else None,
                    bytes(r.request) if r.request else None,
                    bytes(r.caller) if r.caller else None, r.response_url)


def lookup(tx: Tx, sender_org: str, header_id: str, bundle_id: str, now: int
           ) -> tuple[Received | None, Received | None]:
    """The live entries with this MessageHeader.id, and with this Bundle.id."""
    rows = [_row(r) for r in tx.conn.execute(select(message_inbox).where(
        _I.sender_org == sender_org, _I.expires > now,
        or_(_I.header_id == header_id, _I.bundle_id == bundle_id)))]
    by_header = next((r for r in rows if r.header_id == header_id), None)
    by_bundle = next((r for r in rows if r.bundle_id == bundle_id), None)
    return by_header, by_bundle


def claim(tx: Tx, *, sender_org: str, header_id: str, bundle_id: str, event: str, state: str,
          now: int, expires: int, request: bytes | None = None, caller: bytes | None = None,
          response_url: str | None = None) -> None:
    """Record a message as received. Raises Conflict when a concurrent request recorded the
    same ids first (on PostgreSQL this waits for that request to commit or roll back)."""
    # Expired entries with these ids no longer count; make room for the new one.
    tx.conn.execute(delete(message_inbox).where(
        _I.sender_org == sender_org, _I.expires <= now,
        or_(_I.header_id == header_id, _I.bundle_id == bundle_id)))
    try:
        with tx.conn.begin_nested():
            tx.conn.execute(insert(message_inbox).values(
                sender_org=sender_org, header_id=header_id, bundle_id=bundle_id, event=event,
                state=state, received=now, expires=expires, response_code=None, response=None,
                request=request, caller=caller, response_url=response_url))
    except IntegrityError:
        raise Conflict(f"Message {header_id} (Bundle {bundle_id}) is being received "
                       "concurrently") from None


def complete(tx: Tx, sender_org: str, header_id: str, code: str, response: bytes) -> None:
    """Store the response; an async request's body and caller are no longer needed."""
    tx.conn.execute(update(message_inbox).where(
        _I.sender_org == sender_org, _I.header_id == header_id).values(
        state=DONE, response_code=code, response=response, request=None, caller=None))


def any_accepted(tx: Tx) -> bool:
    """Whether async requests wait (a read: idle rounds take no write lock)."""
    return tx.conn.execute(select(exists().where(_I.state == ACCEPTED))).scalar() is True


def claim_accepted(tx: Tx, limit: int) -> list[Received]:
    """Accepted async requests, oldest first, locked until the caller's transaction ends
    (``SKIP LOCKED``: concurrent workers take disjoint requests)."""
    q = (select(message_inbox).where(_I.state == ACCEPTED).order_by(_I.received)
         .limit(limit).with_for_update(skip_locked=True))
    return [_row(r) for r in tx.conn.execute(q)]


def purge_expired(tx: Tx, now: int) -> int:
    """Forget expired entries (accepted async requests stay until they are processed)."""
    done = tx.conn.execute(delete(message_inbox).where(_I.expires <= now, _I.state == DONE))
    return int(done.rowcount or 0)
