"""The relay: pending outbox deliveries onto the bus.

Each round claims the due stream heads (``store.outbox.claim_due``: locked, ``SKIP LOCKED`` on
PostgreSQL, so concurrent relays never publish the same delivery), publishes them and waits
for the broker's confirms of the batch, then marks the confirmed ones published in the same
transaction. A crash between the publish and the commit leaves them pending: they are
published again, and the receiver drops the duplicate by MessageHeader.id. Deliveries
published long ago and still not settled are published again too (the broker lost them).

On a bus that lives in the process (``memory://``) the round marks its claim published and
commits first, then publishes: the bus dies with the process, and ``recover()`` at the next
start publishes again what it held, so a crash after the commit loses nothing, and the publish
no longer runs while the database's write lock is held (on SQLite, inside a group-commit round
every API write of the moment waits for: ~9% of the round's CPU under the messaging bench).
A publish that fails all the same puts its deliveries back to pending.

Each delivery is published on its own (not one publish for a message's several destinations:
the broker tells nothing of a copy whose queue alone is gone). One the broker refuses, with a
nack (e.g. its queue is full and rejects publishes) or by returning it (no queue took it: the
queue is declared again before the next publish), is recorded as a failed attempt of that
delivery, as a failed POST is: retried after its backoff, dead after max_attempts.

Deliveries to an organisation with no endpoint (and no address of their own) are settled in
the claim, as the deliverer would settle them (``messaging.outbox.settle_unreachable``): dead
with the reason, or withdrawn when the consent no longer covers the organisation. Their copies
go to the dead-letter queue: on RabbitMQ before the claim commits (a broker that cannot take
them leaves the round to be done again), in memory after it. Publishing them to a queue only
for a worker to find no address cost a publish, a delivery and two more transactions each.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..bus import ATTEMPTS, Bus, BusUnavailable, Envelope
from ..fhir.dates import now_utc, to_us
from ..metrics import DELIVERIES, MESSAGES_PUBLISHED, count_committed
from ..store import Store, Tx
from ..store import outbox as sql
from .config import MessagingSettings
from .endpoints import Endpoints
from .outbox import log_dead, record_dead, settle_unreachable

log = logging.getLogger("sip_hub.relay")

DELIVERY = "sip-delivery"
SEQ = "sip-seq"
EVENT = "sip-event"
ORG = "sip-org"
# The delivery's published_at of the publish a copy came from (0: never published). A replay
# that finds a dead-letter copy of a delivery it did not claim goes by it (see replay).
PUBLISHED_AT = "sip-published"
REFUSED = "Refused by the broker"


def envelope(d: sql.Delivery, published_at: int) -> Envelope:
    return Envelope(d.content, d.message_id, {DELIVERY: d.id, ORG: d.dest_org, SEQ: d.seq,
                                              EVENT: d.event, ATTEMPTS: d.attempts,
                                              PUBLISHED_AT: published_at})


Dead = tuple[sql.Delivery, str]  # a delivery recorded dead, with the reason


def _items(due: list[sql.Delivery], now: int) -> list[tuple[str, Envelope]]:
    return [(d.dest_org, envelope(d, now)) for d in due]


def record_failure(tx: Tx, d: sql.Delivery, detail: str, now: int, config: MessagingSettings,
                   *, fatal: bool = False, only_from: Sequence[str] = sql.OPEN,
                   wait: float = 0.0) -> str | None:
    """Record an attempt of ``d`` that did not deliver: back to pending after its backoff
    (base * 2^(attempts-1)), or after ``wait`` seconds when the receiver asked for longer
    (its Retry-After: an organisation that says when it is back is not asked before; at most
    ``retry_max_seconds``, as the backoff), or dead when ``fatal`` or out of attempts.
    Returns the dead reason once recorded dead (None: to be retried; or another copy settled
    it meanwhile, and it is neither counted nor dead-lettered twice). One count of attempts and one
    backoff, whether the POST failed (the deliverer) or the broker refused the publish (the
    relay): a refusal left uncounted was retried every round and never dead-lettered."""
    attempts = d.attempts + 1
    if fatal or attempts >= config.max_attempts:
        reason = detail if fatal else f"Gave up after {attempts} attempts: {detail}"
        return reason if record_dead(tx, [d], reason, now) else None
    delay = max(config.retry_delay(attempts), min(wait, config.retry_max_seconds))
    if sql.set_state(tx, d.id, sql.PENDING, now, error=detail, attempts=attempts,
                     next_attempt_at=now + int(delay * 1_000_000), only_from=only_from):
        count_committed(tx, DELIVERIES.labels("retry"))
    return None


@dataclass(slots=True)
class Relay:
    store: Store
    bus: Bus
    batch: int = 100
    republish_after_seconds: float = 3600.0
    # The organisations it has published to: their queues need a consumer.
    orgs: set[str] = field(default_factory=set)
    # Where organisations receive their messages; None: every delivery goes to the bus.
    endpoints: Endpoints | None = None
    # Attempts and backoff of a delivery the broker refuses (as of one that fails later).
    config: MessagingSettings = field(default_factory=MessagingSettings)

    def window(self) -> tuple[int, int]:
        """Now, and the time before which a delivery published and never settled is due
        again (``republish_after_seconds`` ago)."""
        now = to_us(now_utc())
        return now, now - int(self.republish_after_seconds * 1e6)

    def run_once(self, window: tuple[int, int] | None = None, due: bool | None = None) -> int:
        """Publish what is due; returns how many were published or settled here. A delivery
        the broker refuses (a nack, or no queue took it) is a failed attempt of its own; the
        round goes on. Raises BusUnavailable after marking those the broker confirmed (none
        when it went away during the batch: they are published again). ``due``: whether
        anything is, as read (``store.outbox.work_due``) at ``window``; None: read it here."""
        now, stale = window or self.window()
        if due is None:
            with self.store.begin(write=False) as tx:
                due = sql.relay_due(tx, now, stale)
        if not due:
            return 0

        if not self.bus.durable:
            return self._commit_then_publish(now, stale)

        def publish(tx: Tx) -> tuple[list[str], list[Dead], BusUnavailable | None]:
            due, dead = self._claim(tx, now, stale)
            self._dead_letter(dead)  # (the broker gone: the whole round is done again)
            failure: BusUnavailable | None = None
            why: dict[int, str] = {}
            try:
                # A publish per destination: each copy confirmed, refused or returned alone.
                confirmed = self.bus.publish_many(_items(due, now), refusals=why)
            except BusUnavailable as exc:
                failure, confirmed = exc, []
            published = [d.id for d, ok in zip(due, confirmed) if ok]
            self.orgs.update(d.dest_org for d in due)
            sql.mark_published(tx, published, now)
            refused = [(d, why.get(i, "not confirmed"))
                       for i, (d, ok) in enumerate(zip(due, confirmed)) if not ok]
            gone = self._refused(tx, refused, now)
            self._dead_letter(gone)  # (before the commit, as those settled in the claim)
            return published, dead + gone, failure
        # On SQLite in the same write transaction as the API's writes of the moment (group
        # commit): one turn of the write lock instead of one more. The round's leader may be
        # another thread; it uses the bus while this one waits for it, never beside it.
        published, dead, failure = self.store.write(publish)
        MESSAGES_PUBLISHED.inc(len(published))
        for d, reason in dead:
            log_dead(d, reason)
        if failure is not None:
            raise failure
        return len(published) + len(dead)

    def _commit_then_publish(self, now: int, stale: int) -> int:
        """The round on a bus that does not outlive the process (see the module's doc)."""
        def claim(tx: Tx) -> tuple[list[sql.Delivery], list[Dead]]:
            due, dead = self._claim(tx, now, stale)
            sql.mark_published(tx, [d.id for d in due], now)
            return due, dead
        due, dead = self.store.write(claim)
        for d, reason in dead:
            log_dead(d, reason)
        self._dead_letter(dead)
        self.orgs.update(d.dest_org for d in due)
        try:  # (the memory transport stores synchronously: it refuses nothing)
            self.bus.publish_many(_items(due, now))
        except BaseException:
            self.store.write(lambda tx: sql.mark_unpublished(tx, [d.id for d in due], now))
            raise
        MESSAGES_PUBLISHED.inc(len(due))
        return len(due) + len(dead)

    def _claim(self, tx: Tx, now: int, stale: int) -> tuple[list[sql.Delivery], list[Dead]]:
        """The round's deliveries to publish (the due stream heads, those published before
        ``stale`` and never settled due again among them), and those it settled dead
        because their organisations have no endpoint.

        Its transaction commits lazily (``Tx.lazy_commit``): lost in a crash of the database
        server, the round's deliveries are due again and published again at the next round
        (the deliverer, which marks a delivery delivered durably, drops the second copy, as
        receivers do), its dead letters settled again."""
        tx.lazy_commit()
        sql.requeue_stale(tx, now, stale)
        due = sql.claim_due(tx, now, self.batch)
        endpoints = self.endpoints
        if endpoints is None:
            return due, []
        unreachable = [d for d in due
                       if d.endpoint_url is None and endpoints.get(d.dest_org) is None]
        if not unreachable:
            return due, []
        dead = settle_unreachable(tx, unreachable, now, endpoints.source)
        settled = {d.id for d in unreachable}
        return [d for d in due if d.id not in settled], dead

    def _refused(self, tx: Tx, refused: list[tuple[sql.Delivery, str]], now: int
                 ) -> list[Dead]:
        """The claimed deliveries the broker did not take (a nack, or no queue took them):
        each a failed attempt with its backoff, dead after max_attempts; the round goes on
        for the others (the broker is up: failing the round retried them every poll,
        uncounted, and made the worker look down). Returns those now dead."""
        dead: list[Dead] = []
        for d, why in refused:
            reason = record_failure(tx, d, f"{REFUSED}: {why}", now, self.config,
                                    only_from=(sql.PENDING,))
            if reason is not None:
                dead.append((d, reason))
        if refused:
            log.warning("the broker refused %d of the deliveries published (%s)",
                        len(refused), refused[0][1])
        return dead

    def _dead_letter(self, dead: list[Dead]) -> None:
        for d, reason in dead:
            self.bus.dead_letter(envelope(d, d.published_at or 0), reason, d.attempts + 1)

    def recover(self) -> int:
        """After a start on a bus that does not outlive the process (memory://): what was
        published before is gone with the old process, so publish it again."""
        with self.store.begin() as tx:
            return sql.requeue_published(tx, to_us(now_utc()))
