"""Sending dead deliveries again: ``sip-hub messages replay`` and
``POST /admin/messages/{id}/$replay``.

The outbox is the record: its dead deliveries go back to pending with fresh attempts and the
relay publishes them again. Their copies in the dead-letter queue are then removed; a copy
whose delivery the outbox does not hold as dead (a consumer failed on it before recording
anything) puts that delivery back to pending too.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..bus import Bus, Received
from ..fhir.dates import now_utc, to_us
from ..store import Store
from ..store import outbox as sql
from .relay import DELIVERY


def replay_dead(store: Store, bus: Bus, ids: Sequence[str] | None = None) -> list[str]:
    """Replay the dead deliveries named by delivery id or MessageHeader.id (all when ``ids``
    is None); returns the delivery ids put back to pending."""
    now = to_us(now_utc())
    with store.begin() as tx:
        replayed = set(sql.reset_dead(tx, ids, now))
    wanted = set(ids) if ids is not None else None

    def pick(m: Received) -> bool:
        return wanted is None or m.message_id in wanted or m.headers.get(DELIVERY) in wanted

    taken = bus.take_dead(pick)
    stuck = [d for m in taken if isinstance(d := m.headers.get(DELIVERY), str)
             and d not in replayed]
    if stuck:
        with store.begin() as tx:
            for delivery_id in stuck:
                if sql.set_state(tx, delivery_id, sql.PENDING, now, attempts=0,
                                 next_attempt_at=now, only_from=(sql.PUBLISHED,)):
                    replayed.add(delivery_id)
    return sorted(replayed)
