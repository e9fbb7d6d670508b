"""Sending dead deliveries again: ``sip-hub messages replay`` and
``POST /admin/messages/{id}/$replay``.

The outbox is the record: its dead deliveries go back to pending with fresh attempts and the
relay publishes them again. Their copies in the dead-letter queue are then removed; a copy
whose delivery the outbox does not hold as dead (a consumer failed on it before recording
anything) puts that delivery back to pending too, if it is still published by the publish
that copy came from.

Two operators replaying at once replay each delivery once: the reset to pending is one guarded
UPDATE (``store.outbox.reset_dead``: of two, one changes the row), and so is the put-back of a
copy's delivery (``store.outbox.requeue_copy``). A replay that finds the copy of a delivery
the other replayed (and the relay has published again meanwhile) sees a later publish than
the copy's and leaves it: putting it back again published it twice.

A replay sends personal data to organisations again on an operator's word: it is audited (an
AuditEvent per replay, in the transaction that puts the deliveries back, naming the operator's
client when it came over HTTP, the patients, plans and destinations).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..audit import AuditRecord
from ..auth import Principal
from ..bus import Bus, Received
from ..fhir.dates import now_utc, to_us
from ..store import Store, Tx
from ..store import outbox as sql
from .relay import DELIVERY, PUBLISHED_AT


def _audit(tx: Tx, delivery_ids: Sequence[str], principal: Principal | None) -> None:
    if not delivery_ids:
        return
    found = sql.find(tx, ids=delivery_ids, limit=len(delivery_ids))
    orgs = sorted({d.dest_org for d in found})
    tx.append_audit([AuditRecord(
        "operation", principal,
        tuple(sorted({("CarePlan", d.careplan_id) for d in found if d.careplan_id})),
        frozenset(d.patient_id for d in found if d.patient_id),
        detail=f"$replay of dead deliveries {', '.join(sorted(delivery_ids))} to "
               f"{', '.join(orgs)}").entry()])


def replay_dead(store: Store, bus: Bus, ids: Sequence[str] | None = None, *,
                principal: Principal | None = None) -> list[str]:
    """Replay the dead deliveries named by delivery id or MessageHeader.id (all when ``ids``
    is None); returns the delivery ids put back to pending. ``principal``: who asked (None:
    an operator at the command line)."""
    now = to_us(now_utc())
    with store.begin() as tx:
        replayed = set(sql.reset_dead(tx, ids, now))
        _audit(tx, sorted(replayed), principal)
    wanted = set(ids) if ids is not None else None

    def pick(m: Received) -> bool:
        return wanted is None or m.message_id in wanted or m.headers.get(DELIVERY) in wanted

    taken = bus.take_dead(pick)
    stuck = {d: _published_at(m) for m in taken
             if isinstance(d := m.headers.get(DELIVERY), str) and d not in replayed}
    if stuck:
        with store.begin() as tx:
            again = [d for d, published_at in stuck.items()
                     if sql.requeue_copy(tx, d, published_at, now)]
            _audit(tx, again, principal)
            replayed.update(again)
    return sorted(replayed)


def _published_at(m: Received) -> int | None:
    """The publish a dead-letter copy came from (the delivery's published_at then); None
    when the copy does not tell (copied before the relay said it)."""
    value = m.headers.get(PUBLISHED_AT)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
