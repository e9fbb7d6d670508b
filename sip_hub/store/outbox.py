"""SQL of the transactional outbox: outgoing messages and their deliveries.

A delivery is one message to one organisation. Its states::

    pending --relay publishes--> published --delivered (2xx)--> delivered
       ^                            |  \\--fatal or out of attempts--> dead --replay--> pending
       \\----- transient failure ----/   \\--consent no longer covers it--> withdrawn

Deliveries of one stream (patient, destination) are published one at a time, in ``seq``
order: only the stream's head (no earlier pending or published delivery) is due. The stream
is the person's, not the plan's: a SIP's messages written before its plan existed (its
consent), or after its plan was closed, are ordered with the plan's (migration 0022).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Sequence

from sqlalchemy import (BigInteger, Integer, String, and_, bindparam, delete, func,
                        literal_column, or_, select, union_all, update)
from sqlalchemy.orm import aliased

from . import inbox, wakeup
from .driver import ByIds, DriverStatement, any_row, constant, insert_into, numbered
from .resources import Tx
from .schema import outbox_delivery, outbox_message, outbox_stream

PENDING: Final = "pending"
PUBLISHED: Final = "published"
DELIVERED: Final = "delivered"
DEAD: Final = "dead"
WITHDRAWN: Final = "withdrawn"
OPEN: Final = (PENDING, PUBLISHED)
STATES: Final = (PENDING, PUBLISHED, DELIVERED, DEAD, WITHDRAWN)

NOTIFICATION: Final = "notification"
RESPONSE: Final = "response"

_D = outbox_delivery.c
_M = outbox_message.c
_S = outbox_stream.c
_ERROR_MAX = 2000


@dataclass(frozen=True, slots=True)
class Delivery:
    id: str
    message_id: str
    dest_org: str
    patient_id: str
    careplan_id: str
    seq: int
    state: str
    attempts: int
    next_attempt_at: int
    published_at: int | None
    updated: int
    last_error: str | None
    endpoint_url: str | None
    event: str
    kind: str
    content: bytes


_OWN_COLUMNS = (_D.id, _D.message_id, _D.dest_org, _D.patient_id, _D.careplan_id, _D.seq,
                _D.state, _D.attempts, _D.next_attempt_at, _D.published_at, _D.updated,
                _D.last_error, _D.endpoint_url)
_MESSAGE_COLUMNS = (_M.event, _M.kind, _M.content)


# What every delivery runs (the delivery's checks and its outcome), built once with parameters
# and run on the driver's cursor (see .driver): building a statement cost more than running it.
def _in(state: Any, *values: str) -> Any:
    """``state IN (...)`` with the values in the SQL (``driver.constant``): a few open
    deliveries among many settled ones are found by index under any prepared plan."""
    return state.in_([constant(v) for v in values])


def _still(state: Any, *values: str) -> Any:
    """``state IN (...)`` as the guard of a change to deliveries found by id: written so that
    no index of the state serves it (``state || ''``), or PostgreSQL's planner, which counts
    few deliveries open, would read every open delivery for the few ids instead of finding
    them by key (in a backlog, thousands for each batch settled)."""
    return _in(state.op("||")(literal_column("''")), *values)


def _open(state: Any) -> Any:
    """``state IN ('pending', 'published')``, as the partial index of each stream's open
    deliveries states it (see ``schema.OPEN_STATE_SQL``), so that the query may use it."""
    return _in(state, *OPEN)


@lru_cache(maxsize=None)
def _set_state(only_from: tuple[str, ...]) -> DriverStatement:
    """The state change from ``only_from``; a value left None keeps the column's value."""
    return DriverStatement(
        update(outbox_delivery)
        .where(_D.id == bindparam("delivery"), _still(_D.state, *only_from))
        .values(state=bindparam("to"), updated=bindparam("now"),
                last_error=func.coalesce(bindparam("error", type_=String), _D.last_error),
                attempts=func.coalesce(bindparam("tries", type_=Integer), _D.attempts),
                next_attempt_at=func.coalesce(bindparam("next", type_=BigInteger),
                                              _D.next_attempt_at)))


# Batches of deliveries and messages by id (see driver.ByIds).
_BY_IDS = ByIds(_D.id, lambda ids: select(*_OWN_COLUMNS).where(ids))
_MESSAGES = ByIds(_M.message_id, lambda ids: select(_M.message_id, *_MESSAGE_COLUMNS).where(ids))
_DELIVERED = ByIds(_D.id, lambda ids: update(outbox_delivery).where(
    ids, _still(_D.state, *OPEN)).values(
        state=DELIVERED, updated=bindparam("now"), attempts=_D.attempts + 1))
_DEAD = ByIds(_D.id, lambda ids: update(outbox_delivery).where(
    ids, _still(_D.state, *OPEN)).values(
        state=DEAD, updated=bindparam("now"), attempts=_D.attempts + 1,
        last_error=bindparam("error")).returning(_D.id))


# -- writing --------------------------------------------------------------------------------------

# Written in the transaction of every change that notifies: on the driver's cursor.
_INSERT_MESSAGE = insert_into(outbox_message, "message_id", "event", "kind", "patient_id",
                              "careplan_id", "created", "content")
_INSERT_DELIVERY = insert_into(outbox_delivery, "id", "message_id", "dest_org", "patient_id",
                               "careplan_id", "seq", "state", "attempts", "next_attempt_at",
                               "published_at", "updated", "last_error", "endpoint_url")


def insert_message(tx: Tx, *, message_id: str, event: str, kind: str, patient_id: str,
                   careplan_id: str, content: bytes, now: int) -> None:
    _INSERT_MESSAGE.run_later(tx.conn, {
        "message_id": message_id, "event": event, "kind": kind, "patient_id": patient_id,
        "careplan_id": careplan_id, "created": now, "content": content})


@lru_cache(maxsize=16)
def _next_seqs(n: int) -> DriverStatement:
    """The next sequence numbers of ``n`` streams of one person (destinations d0 .. dn-1):
    each stream's row claimed or advanced (per dialect: ON CONFLICT). The upsert locks the
    rows until commit, so a second writer to a stream waits and numbers after the first."""
    return DriverStatement.on_conflict(lambda ins: ins(outbox_stream).values([
        {"patient_id": bindparam("p"), "dest_org": bindparam(f"d{k}"), "last_seq": 1}
        for k in range(n)])
        .on_conflict_do_update(index_elements=[_S.patient_id, _S.dest_org],
                               set_={"last_seq": outbox_stream.c.last_seq + 1})
        .returning(_S.dest_org, _S.last_seq))


def next_seqs(tx: Tx, patient_id: str, dest_orgs: Sequence[str]) -> dict[str, int]:
    """The next sequence number of each destination's stream, in one statement (per 16).
    Give the destinations in a stable order (sorted): the upsert locks the rows in that
    order, and writers that lock in one order never deadlock."""
    out: dict[str, int] = {}
    for n, params in numbered([{"d": org} for org in dest_orgs], 16):
        rows = _next_seqs(n).all(tx.conn, {"p": patient_id, **params})
        out.update({org: int(seq) for org, seq in rows})
    return out


def delivery_row(*, id: str, message_id: str, dest_org: str, patient_id: str,
                 careplan_id: str, seq: int, now: int, endpoint_url: str | None
                 ) -> dict[str, Any]:
    return {"id": id, "message_id": message_id, "dest_org": dest_org,
            "patient_id": patient_id, "careplan_id": careplan_id, "seq": seq,
            "state": PENDING, "attempts": 0, "next_attempt_at": now, "published_at": None,
            "updated": now, "last_error": None, "endpoint_url": endpoint_url}


def insert_deliveries(tx: Tx, rows: Sequence[dict[str, Any]]) -> None:
    """Pending deliveries (``delivery_row``s) in one bulk statement."""
    _INSERT_DELIVERY.many_later(tx.conn, rows)  # each stream's seq claimed by next_seqs
    if rows:
        wakeup.announce(tx)


def set_state(tx: Tx, delivery_id: str, state: str, now: int, *, error: str | None = None,
              attempts: int | None = None, next_attempt_at: int | None = None,
              only_from: Sequence[str] = STATES) -> bool:
    """Move a delivery to ``state`` if it is in one of ``only_from``; False when it was not."""
    return _set_state(tuple(only_from)).run(tx.conn, {
        "delivery": delivery_id, "to": state, "now": now,
        "error": error[:_ERROR_MAX] if error is not None else None, "tries": attempts,
        "next": next_attempt_at}) == 1


_PUBLISHED = ByIds(_D.id, lambda ids: update(outbox_delivery).where(
    ids, _still(_D.state, PENDING)).values(
        state=PUBLISHED, published_at=bindparam("now"), updated=bindparam("now")))


def mark_published(tx: Tx, ids: Sequence[str], now: int) -> None:
    """Pending deliveries of ``ids`` published; on PostgreSQL sent with the COMMIT."""
    _PUBLISHED.run_later(tx.conn, ids, now=now)


def mark_delivered(tx: Tx, ids: Sequence[str], now: int) -> int:
    """Open deliveries of ``ids`` to delivered, counting the attempt; how many were open
    (another copy may have settled one meanwhile)."""
    return _DELIVERED.run(tx.conn, ids, now=now)


def mark_dead(tx: Tx, ids: Sequence[str], error: str, now: int) -> set[str]:
    """Open deliveries of ``ids`` dead with ``error``, counting the attempt; the ids that were
    open (another copy may have settled one meanwhile)."""
    return {row[0] for row in _DEAD.all(tx.conn, ids, now=now, error=error[:_ERROR_MAX])}


# -- the relay's claim ------------------------------------------------------------------------

def _heads() -> Any:
    """Due pending deliveries that are the first open one of their stream (their own columns:
    the claim reads them with its locks, then their messages).

    Whether a delivery heads its stream is the stream's lowest open ``seq``, a correlated
    subquery that the databases run for each due delivery as one probe of the index of open
    deliveries (its first entry for the stream; a MIN cost SQLite 15% more a claim). Written
    as NOT EXISTS (an earlier open one), PostgreSQL may join it instead, and with statistics
    taken while the outbox was small (a new hub, or a backlog that grew since the last
    ANALYZE) it chose a nested loop that read every open delivery once per due one: 1.2 s a
    round with 3,000 waiting, where this takes 7 ms, and the relay falls behind just when
    organisations come back after an outage."""
    earlier = aliased(outbox_delivery)
    e = earlier.c
    first_open = (select(e.seq)
                  .where(e.patient_id == _D.patient_id, e.dest_org == _D.dest_org,
                         _open(e.state))
                  .order_by(e.seq).limit(1).scalar_subquery())
    return (select(*_OWN_COLUMNS).where(_in(_D.state, PENDING),
                                _D.next_attempt_at <= bindparam("now"), _D.seq == first_open)
            .order_by(_D.next_attempt_at, _D.seq).limit(bindparam("limit"))
            .with_for_update(skip_locked=True))


# Every relay round runs these (built once, on the driver's cursor where they can be).
_HEADS = DriverStatement(_heads())
# Published before :before, found by the index of the state. The state is named twice, as
# open and as published: SQLite's statistics count rows per state, not which states are rare,
# and taken when every delivery was settled (at a start) they made its planner read the whole
# outbox for ``published_at``, which no index holds; the second term on the state weighs
# the search down to the index, where the published are few.
_PUBLISHED_BEFORE = (_open(_D.state), _in(_D.state, PUBLISHED),
                     _D.published_at < bindparam("before"))
_RELAY_DUE_WHERE = or_(
    any_row(_in(_D.state, PENDING), _D.next_attempt_at <= bindparam("now")),
    any_row(*_PUBLISHED_BEFORE))
_RELAY_DUE = DriverStatement(select(_RELAY_DUE_WHERE))
# A messaging worker's round: accepted async requests waiting, and the relay's work, in one
# read (each idle or delivery-only round ran both reads, a round trip each on PostgreSQL).
_WORK_DUE = DriverStatement(select(inbox.ACCEPTED_WAITING, _RELAY_DUE_WHERE))
_TO_PENDING = update(outbox_delivery).values(
    state=PENDING, next_attempt_at=bindparam("now"), updated=bindparam("now"))
_REQUEUE = _TO_PENDING.where(_in(_D.state, PUBLISHED))
_REQUEUE_ALL = DriverStatement(_REQUEUE)
_REQUEUE_BEFORE = DriverStatement(_TO_PENDING.where(*_PUBLISHED_BEFORE))


_REQUEUE_IDS = ByIds(_D.id, lambda ids: _TO_PENDING.where(ids, _still(_D.state, PUBLISHED)))


def mark_unpublished(tx: Tx, ids: Sequence[str], now: int) -> None:
    """Published deliveries of ``ids`` back to pending, due now (their publish failed after
    all)."""
    _REQUEUE_IDS.run(tx.conn, ids, now=now)


def claim_due(tx: Tx, now: int, limit: int) -> list[Delivery]:
    """Due stream heads, locked until the caller's transaction ends.

    On PostgreSQL ``FOR UPDATE SKIP LOCKED``: concurrent relays take disjoint rows, and a row
    another relay published meanwhile no longer matches ``state = 'pending'`` when rechecked.
    SQLite takes the database write lock at BEGIN, which serialises relays instead.
    """
    return _with_messages(tx, _HEADS.all(tx.conn, {"now": now, "limit": limit}))


# Undelivered and due: waiting for the relay, or on the bus waiting for delivery. A delivery
# waiting out its retry delay (its organisation is down) is not counted. Each part is bounded
# by :cap, so the count costs at most cap index entries however large the backlog.
def _count_up_to(*where: Any) -> DriverStatement:
    return DriverStatement(select(func.count()).select_from(
        select(literal_column("1")).where(*where).limit(bindparam("cap")).subquery()))


_BACKLOG_DUE = _count_up_to(_in(_D.state, PENDING), _D.next_attempt_at <= bindparam("now"))
_BACKLOG_ON_BUS = _count_up_to(_in(_D.state, PUBLISHED))


def backlog(tx: Tx, now: int, cap: int) -> int:
    """How many deliveries are due and not yet delivered, counted up to ``cap``."""
    row = _BACKLOG_DUE.first(tx.conn, {"now": now, "cap": cap})
    total = int(row[0]) if row else 0
    if total < cap:
        row = _BACKLOG_ON_BUS.first(tx.conn, {"cap": cap - total})
        total += int(row[0]) if row else 0
    return total


def relay_due(tx: Tx, now: int, published_before: int) -> bool:
    """Whether the relay has anything to do (a read: idle rounds take no write lock)."""
    row = _RELAY_DUE.first(tx.conn, {"now": now, "before": published_before})
    return bool(row and row[0])


def work_due(tx: Tx, now: int, published_before: int) -> tuple[bool, bool]:
    """Whether async requests wait (``inbox.any_accepted``) and whether the relay has
    anything to do (``relay_due``), in one read."""
    row = _WORK_DUE.first(tx.conn, {"now": now, "before": published_before})
    return (bool(row[0]), bool(row[1])) if row else (False, False)


def requeue_published(tx: Tx, now: int, published_before: int | None = None) -> int:
    """Published deliveries back to pending: all (the broker lost them, e.g. an in-process
    bus after a restart) or those published before ``published_before`` (never confirmed
    delivered: re-publish; receivers drop duplicates by MessageHeader.id)."""
    if published_before is None:
        return _REQUEUE_ALL.run(tx.conn, {"now": now})
    return _REQUEUE_BEFORE.run(tx.conn, {"now": now, "before": published_before})


def requeue_stale(tx: Tx, now: int, published_before: int) -> None:
    """``requeue_published(tx, now, published_before)`` uncounted: on PostgreSQL sent with the
    transaction's next read (the relay's claim, which then sees it)."""
    _REQUEUE_BEFORE.run_later(tx.conn, {"now": now, "before": published_before})


# -- reading ------------------------------------------------------------------------------------

def get_many(tx: Tx, ids: Sequence[str]) -> dict[str, Delivery]:
    """The deliveries of ``ids`` that exist, by id (a delivery worker's batch is read at once,
    not a delivery at a time), with their messages, each read once.

    Not a join: PostgreSQL joined the two by hashing every message in the outbox (whose
    contents lie outside the table, so it looks small to the planner), 1.3 ms a statement at
    6,000 messages and growing with the outbox; each message is also read once for its
    deliveries to the four or so organisations it goes to."""
    return {d.id: d for d in _with_messages(tx, _BY_IDS.all(tx.conn, ids))}


def _with_messages(tx: Tx, own: Sequence[Any]) -> list[Delivery]:
    """Deliveries from rows of ``_OWN_COLUMNS`` (in their order), each with its message."""
    messages = {r[0]: (r[1], r[2], bytes(r[3])) for r in _MESSAGES.all(tx.conn,
                                                                      [r[1] for r in own])}
    return [Delivery(*r, *messages[r[1]]) for r in own if r[1] in messages]


_STREAMS_MAX = 32  # deliveries per statement of ``held_back``


@lru_cache(maxsize=_STREAMS_MAX)
def _earlier_open_of(n: int) -> DriverStatement:
    """The open deliveries that come before any of ``n`` deliveries in its stream."""
    # One SELECT per stream, each as the partial index of open stream deliveries serves it
    # (an OR of the streams led SQLite to the index of all pending deliveries instead).
    return DriverStatement(union_all(*(
        select(_D.patient_id, _D.dest_org, _D.seq).where(
            _D.patient_id == bindparam(f"p{k}"), _D.dest_org == bindparam(f"d{k}"),
            _D.seq < bindparam(f"s{k}"), _open(_D.state))
        for k in range(n))))


def held_back(tx: Tx, ds: Sequence[Delivery]) -> set[str]:
    """The ids of ``ds`` that an earlier delivery of their stream, still pending or
    published, holds back (in a statement per 32 deliveries)."""
    earliest: dict[tuple[str, str], int] = {}
    rows = [{"p": d.patient_id, "d": d.dest_org, "s": d.seq} for d in ds]
    for n, params in numbered(rows, _STREAMS_MAX, pad=True):
        for p, dest, seq in _earlier_open_of(n).all(tx.conn, params):
            key = (p, dest)
            earliest[key] = min(seq, earliest.get(key, seq))
    return {d.id for d in ds
            if (first := earliest.get((d.patient_id, d.dest_org))) is not None
            and first < d.seq}


def find(tx: Tx, *, ids: Sequence[str] | None = None, states: Sequence[str] | None = None,
         patient_id: str | None = None, limit: int = 1000) -> list[Delivery]:
    """Deliveries by delivery id or MessageHeader.id, state and patient, oldest first."""
    q = select(*_OWN_COLUMNS)
    if ids is not None:
        q = q.where((_D.id.in_(ids)) | (_D.message_id.in_(ids)))
    if states is not None:
        q = q.where(_D.state.in_(states))
    if patient_id is not None:
        q = q.where(_D.patient_id == patient_id)
    q = q.order_by(_D.patient_id, _D.dest_org, _D.seq).limit(limit)
    return _with_messages(tx, tx.conn.execute(q).all())


def page(tx: Tx, state: str, org: str | None, after: tuple[int, str] | None, limit: int, *,
         oldest_first: bool = False) -> list[Delivery]:
    """Deliveries in ``state`` (to ``org``) by their last or next attempt, the latest first
    (``oldest_first``: the earliest), after ``after`` (the previous page's last one's
    next_attempt_at and id): the (state, next_attempt_at) index reads them in that order."""
    q = select(*_OWN_COLUMNS).where(_D.state == state)
    if org is not None:
        q = q.where(_D.dest_org == org)
    if after is not None:
        at, last = after
        beyond = (lambda c, v: c > v) if oldest_first else (lambda c, v: c < v)
        q = q.where(or_(beyond(_D.next_attempt_at, at),
                        and_(_D.next_attempt_at == at, beyond(_D.id, last))))
    order = (_D.next_attempt_at, _D.id) if oldest_first else \
        (_D.next_attempt_at.desc(), _D.id.desc())
    return _with_messages(tx, tx.conn.execute(q.order_by(*order).limit(limit)).all())


def counts_by_org(tx: Tx) -> dict[str, dict[str, int]]:
    """Open and dead deliveries per organisation and state (what operators act on)."""
    q = select(_D.dest_org, _D.state, func.count()).where(
        _D.state.in_((PENDING, PUBLISHED, DEAD))).group_by(_D.dest_org, _D.state)
    out: dict[str, dict[str, int]] = {}
    for org, state, n in tx.conn.execute(q):
        out.setdefault(org, {})[state] = int(n)
    return out


def open_orgs(tx: Tx) -> set[str]:
    """Organisations with deliveries on their way (whose bus queues must be consumed)."""
    q = select(_D.dest_org).where(_open(_D.state)).distinct()
    return {r.dest_org for r in tx.conn.execute(q)}


# -- consent and operators -------------------------------------------------------------------

def withdraw(tx: Tx, patient_id: str, covered: set[str], now: int, reason: str) -> list[str]:
    """Withdraw the patient's undelivered notifications to organisations not in ``covered``.
    Responses to a sender's own request are not personal data of others and stay."""
    notifications = select(_M.message_id).where(_M.kind == constant(NOTIFICATION))
    cond = and_(_D.patient_id == patient_id, _open(_D.state),
                _D.message_id.in_(notifications))
    if covered:
        cond = and_(cond, _D.dest_org.not_in(sorted(covered)))
    ids = [r.id for r in tx.conn.execute(select(_D.id).where(cond))]
    if ids:
        tx.conn.execute(update(outbox_delivery).where(_D.id.in_(ids), _still(_D.state, *OPEN))
                        .values(state=WITHDRAWN, updated=now, last_error=reason[:_ERROR_MAX]))
    return ids


def reset_dead(tx: Tx, ids: Sequence[str] | None, now: int) -> list[str]:
    """Dead deliveries (those named by delivery or message id, or all) back to pending with
    fresh attempts; their last error is kept until the next attempt replaces it."""
    q = select(_D.id).where(_in(_D.state, DEAD))
    if ids is not None:
        q = q.where((_D.id.in_(ids)) | (_D.message_id.in_(ids)))
    found = [r.id for r in tx.conn.execute(q)]
    if not found:
        return []
    # Those this statement changed: a concurrent replay may have put some back meanwhile
    # (PostgreSQL re-checks the guard once the other commits), and they are its to report.
    reset = [r.id for r in tx.conn.execute(
        update(outbox_delivery).where(_D.id.in_(found), _still(_D.state, DEAD))
        .values(state=PENDING, attempts=0, next_attempt_at=now, updated=now,
                published_at=None).returning(_D.id))]
    if reset:
        wakeup.announce(tx)
    order = {d: i for i, d in enumerate(found)}  # (replay --all: thousands)
    return sorted(reset, key=order.__getitem__)


def requeue_copy(tx: Tx, delivery_id: str, published_at: int | None, now: int) -> bool:
    """A published delivery back to pending with fresh attempts, due now: a copy of it failed
    on the bus before anything was recorded, and a replay found that copy among the dead
    letters. Only while the delivery is still as that copy's publish (``published_at``; None:
    a copy that does not tell) left it: one published again since (another operator's replay
    put it back and the relay published it; or the relay republished it) has a copy of its
    own on the way, and putting it back published it twice. One guarded statement: of two
    replays that find the copy, and the relay, one wins. False when it was not put back."""
    q = update(outbox_delivery).where(_D.id == delivery_id, _still(_D.state, PUBLISHED))
    if published_at is not None:
        q = q.where(_D.published_at == published_at)
    changed = tx.conn.execute(q.values(state=PENDING, attempts=0, next_attempt_at=now,
                                       updated=now)).rowcount == 1
    if changed:
        wakeup.announce(tx)
    return changed


def counts(tx: Tx) -> dict[str, int]:
    """Deliveries per state (for metrics and operators)."""
    q = select(_D.state, func.count()).group_by(_D.state)
    return {state: int(n) for state, n in tx.conn.execute(q)}


# Forgetting settled deliveries: one statement per settled state, reading its deliveries in
# the order they fell due, and the messages left without any.
@lru_cache(maxsize=None)
def _forget(state: str, limit: int) -> DriverStatement:
    """The DELETE of up to ``limit`` deliveries in ``state`` (the limit in the SQL: see
    ``driver.constant``)."""
    expired = (select(_D.id).where(_in(_D.state, state), _D.next_attempt_at < bindparam("before"),
                                   _D.updated < bindparam("before"))
               .order_by(_D.next_attempt_at).limit(constant(limit))
               .with_for_update(skip_locked=True))
    return DriverStatement(delete(outbox_delivery).where(_D.id.in_(expired))
                           .returning(_D.message_id))


# A message goes with its last delivery. Its row is locked first (in the order of the ids,
# so that two workers wait for each other in one order): two workers forgetting its last two
# deliveries at once each saw the other's still there, and the message was left behind.
_LOCK_MESSAGES = ByIds(_M.message_id, lambda ids: select(_M.message_id).where(ids)
                       .order_by(_M.message_id).with_for_update())
_FORGET_MESSAGES = ByIds(_M.message_id, lambda ids: delete(outbox_message).where(
    ids, ~any_row(_D.message_id == _M.message_id)))


def delete_finished(tx: Tx, before: int, limit: int) -> int:
    """Forget up to ``limit`` delivered and withdrawn deliveries last changed before
    ``before`` (of each state), and their messages once no delivery of theirs is left (dead
    ones stay until an operator replays them); how many deliveries were forgotten. The caller
    repeats it, a transaction at a time, until it forgets fewer than ``limit``.

    A delivery falls due before it is settled (a copy that settles one waiting out a retry
    delay is the exception, forgotten once that delay is past too), so the index of states
    and due times finds what expired without reading the settled history that the retention
    period keeps: filtered by the time of the change alone, every upkeep read every settled
    delivery (0.24 s at 800,000 on PostgreSQL; 78 ms on SQLite, holding its write lock), and
    the messages were found by a scan of them all. On PostgreSQL concurrent workers skip
    each other's deliveries and take turns at a message they share."""
    gone: list[str] = []
    for state in (DELIVERED, WITHDRAWN):
        gone += [r[0] for r in _forget(state, limit).all(tx.conn, {"before": before})]
    messages = sorted(set(gone))
    _LOCK_MESSAGES.all(tx.conn, messages)
    _FORGET_MESSAGES.run(tx.conn, messages)
    return len(gone)
