"""Back-pressure: ``$process-message`` says ``transient-error`` while too much is undelivered.

The API takes a message in a few milliseconds; delivering it to four organisations takes the
workers longer. Without a bound, senders that post as fast as they are answered build a
backlog whose every message waits behind the rest (seconds, then minutes, of delay for news
about a person's plan), and a broker or worker outage turns into an unbounded queue. So while
the deliveries that are due and not yet delivered (``store.outbox.backlog``: waiting for the
relay or on the bus) number ``SIP_HUB_MESSAGE_BACKLOG_LIMIT`` or more, a new message is
answered ``transient-error`` (nothing stored, nothing remembered: the same message sent again
later is taken as new), which FHIR messaging senders retry. Deliveries waiting out a retry
delay because their organisation is down do not count: one organisation's outage does not
stop everyone's messages.

The count is read at most every ``refresh_seconds`` per process (a bounded count: at most the
limit's worth of index entries), so a burst can pass the limit by what arrives in that time.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from ..fhir.dates import now_utc, to_us
from ..store import Store
from ..store import outbox as sql


@dataclass(slots=True)
class Backlog:
    limit: int  # 0: no bound
    refresh_seconds: float = 0.25
    _count: int = 0
    _read_at: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def over(self, store: Store) -> int | None:
        """The backlog when it is at or over the limit, else None."""
        if self.limit <= 0:
            return None
        if time.monotonic() - self._read_at >= self.refresh_seconds:
            with self._lock:  # one reader per process; the others take its count
                if time.monotonic() - self._read_at >= self.refresh_seconds:
                    with store.begin(write=False) as tx:
                        self._count = sql.backlog(tx, to_us(now_utc()), self.limit)
                    self._read_at = time.monotonic()
        return self._count if self._count >= self.limit else None
