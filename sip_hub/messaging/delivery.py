"""Delivery: a message from an organisation's bus queue to its ``$process-message`` endpoint.

For each bus message (one outbox delivery) the handler:

1. skips it when the delivery is already settled (a duplicate publish), except a dead one
   the broker delivers again: its dead-letter copy may never have reached ``sip.dead`` (the
   broker went away between the outbox commit and that publish), so it is dead-lettered again;
2. withdraws it when the person's consent no longer covers the organisation (rule 1). A
   POST that starts later than the batch's check (a lane's POSTs go one after another) is
   checked again as it starts (its grants read again, at most every ``RECHECK_AFTER``
   seconds, see ``http.HttpClient.exchange``), so nothing leaves once the consent no longer
   covers the organisation. A POST already on its way when the withdrawal commits is not
   called back: acknowledged, it is recorded delivered (what was sent), although the
   withdrawal had settled it as withdrawn;
3. holds it back when an earlier delivery of its stream (patient, organisation) is still on
   its way: order is kept per SIP (the person's messages, also those told before its plan
   existed) for each destination. The relay already publishes only a stream's head, so this
   only happens after a replay;
4. POSTs the Bundle (outside any database transaction), or hands it over to the
   organisation's own queue when it takes its messages from the broker (``"queue": true``
   in the endpoints file: delivered once the broker confirms it; refused or unreachable, a
   retry as for a 5xx), and records the result:

   =========================================  =========================================
   answer                                     outcome
   =========================================  =========================================
   2xx with the response message to this one  delivered
   (``response.identifier`` its MessageHeader
   .id, code ok); 202 (accepted, to answer
   later by message) or 204
   4xx, or a response with fatal-error        dead letter with the reason (resending
                                              unchanged cannot help)
   5xx, 408, 425, 429, timeout, no connection retry: back to the outbox, next attempt after
   or a response with transient-error; any    base * 2^(attempts-1) seconds, or later if
   other 2xx (an HTML page of a proxy, a bare the answer's Retry-After asks (at most the
   OperationOutcome, a response to another    maximum); dead letter after max_attempts
   message: nothing says it was received)
   no endpoint configured                     dead letter (replay once it is configured)
   a URL that cannot be sent to (not an       dead letter with the reason, the batch's
   absolute http(s) URL in printable ASCII,   other deliveries unaffected
   see ``http.url_problem``) or a header
   field that cannot be sent
   =========================================  =========================================

   (The relay settles deliveries to organisations without an endpoint in its claim already;
   here are those whose endpoint went from this worker's configuration meanwhile.)

Why order is kept by publishing stream heads only (rather than prefetch 1 per SIP key):
a broker cannot prefetch per key, and holding later messages in the consumer would need a
buffer that a crash loses. With at most one delivery per stream on the bus, any number of
workers can consume any queue with any prefetch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..bus import (UNKNOWN, Ack, Bus, BusUnavailable, DeadLetter, Envelope, Outcome,
                   Received)
from ..fhir.dates import now_utc, to_us
from ..identifiers import mask_person_ids
from ..metrics import DEAD_LETTERS, DELIVERIES, count_committed
from ..store import Store, Tx
from ..store import outbox as sql
from . import vocabulary as vocab
from .config import MessagingSettings
from .endpoints import DEFAULT_CONCURRENT, Endpoint, Endpoints
from .http import (HttpClient, HttpError, HttpNotSent, HttpRefused, HttpRequest, HttpResponse,
                   HttpTimeout)
from .outbox import (NOTIFICATION, WITHDRAWN_REASON, delivery_log, log_dead,
                     no_endpoint_reason, record_withdrawn, uncovered)
from .relay import DELIVERY, EVENT, record_failure

_HOLD_US = 1_000_000  # a held-back delivery is looked at again after a second
_RETRY_STATUS = frozenset({408, 425, 429})
# What the outbox names its deliveries with (``ids.uuid7``; ``uuid.uuid4`` before): anything
# else in a sip-delivery header is no delivery, and is not asked of the database (PostgreSQL
# refused a NUL in it, and the whole batch failed with it).
_DELIVERY_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# A POST to make: the delivery's index in its batch, the delivery, the URL, its endpoint.
_Post = tuple[int, sql.Delivery, str, Endpoint | None]


# The outbox's note on a delivery the consent's withdrawal had settled as withdrawn while it
# was being POSTed, and that its organisation then acknowledged: it was sent.
DELIVERED_DESPITE = ("Delivered: POSTed while the consent still covered this organisation and "
                     "acknowledged after its withdrawal was recorded")


@dataclass(frozen=True, slots=True)
class Result:
    kind: str  # delivered | transient | fatal | withdrawn (not sent: checked again before)
    detail: str = ""
    # Seconds the receiver asked the next attempt to wait at least (its Retry-After; 0: none).
    wait: float = 0.0


def _diagnostics(resp: HttpResponse) -> str:
    """The first diagnostics of an OperationOutcome (or of a response message's one), with
    the personal identity numbers in it masked: it becomes the delivery's last error, shown
    in the console to every admin and logged with a dead delivery, and a receiving system
    commonly names whom it refuses ("Okänd patient 201103142384")."""
    return mask_person_ids(_first_diagnostics(resp))


def _first_diagnostics(resp: HttpResponse) -> str:
    try:
        body: Any = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return resp.text[:300]
    resources = [body] + [e.get("resource", {}) for e in body.get("entry", [])] \
        if isinstance(body, dict) else []
    for res in resources:
        if isinstance(res, dict) and res.get("resourceType") == "OperationOutcome":
            issues = res.get("issue") or [{}]
            return str(issues[0].get("diagnostics", ""))[:500]
    return ""


def _response_of(resp: HttpResponse) -> dict[str, Any] | None:
    """``MessageHeader.response`` when the body is a FHIR response message (a Bundle of type
    message whose first entry is a MessageHeader with a response), else None."""
    try:
        body: Any = orjson.loads(resp.content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle" \
            or body.get("type") != "message":
        return None
    entries = body.get("entry")
    first = entries[0] if isinstance(entries, list) and entries else None
    header = first.get("resource") if isinstance(first, dict) else None
    if not isinstance(header, dict) or header.get("resourceType") != "MessageHeader":
        return None
    response = header.get("response")
    return response if isinstance(response, dict) else None


# 2xx answers that acknowledge a message without a response message: 202, $process-message's
# asynchronous acceptance (the response comes later as a message of its own; the hub's own
# answers it with an informational OperationOutcome), and 204, no content by definition.
_ACCEPTED = frozenset({202, 204})


def classify(resp: HttpResponse, message_id: str) -> Result:
    """The outcome of the answer to the POST of the message ``message_id`` (its
    MessageHeader.id), as the module's table says.

    A 2xx is taken as received only when it says so: the response message that answers this
    message (FHIR: ``response.identifier`` is the MessageHeader.id answered), or a 202 or
    204. Any other 2xx (a reverse proxy's sign-in or maintenance page, a bare
    OperationOutcome, a response to another message) says nothing of this one: taken as
    delivered, the message was lost without a dead letter or a metric telling anyone."""
    status = resp.status_code
    where = f"HTTP {status} from {resp.url}"
    if 200 <= status < 300:
        if status in _ACCEPTED:
            return Result("delivered")
        response = _response_of(resp)
        if response is None:
            said = _diagnostics(resp)
            return Result("transient", f"{where}: not a FHIR response message"
                                       + (f": {said}" if said else ""))
        answered = response.get("identifier")
        if answered != message_id:
            return Result("transient", f"{where}: a response message to message "
                                       f"{str(answered)[:100]!r}, not to this one")
        code = response.get("code")
        if code == vocab.OK:
            return Result("delivered")
        if code == vocab.FATAL_ERROR:
            return Result("fatal", f"{where}: fatal-error: {_diagnostics(resp)}")
        if code == vocab.TRANSIENT_ERROR:
            return Result("transient", f"{where}: transient-error: {_diagnostics(resp)}",
                          resp.retry_after)
        return Result("transient", f"{where}: response code {str(code)[:100]!r} is none of "
                                   "ok, transient-error, fatal-error")
    if status >= 500 or status in _RETRY_STATUS:
        return Result("transient", f"{where}: {_diagnostics(resp)}", resp.retry_after)
    return Result("fatal", f"{where}: {_diagnostics(resp)}")


def _delivery_id(value: object) -> bool:
    return isinstance(value, str) and _DELIVERY_ID.fullmatch(value) is not None


class _Stranger(DeadLetter):
    """The outcome of a message on an organisation's queue that is no delivery of the outbox
    (another publisher's): dead-lettered with the reason, not dropped; logged and counted
    (the alert metric's kind ``unknown``) once the batch is handled."""


def _stranger(m: Received, why: str) -> DeadLetter:
    return _Stranger(f"Not an outbox delivery: {why}")


def _tell_strangers(ms: list[Received], outcomes: list[Outcome]) -> None:
    for m, outcome in zip(ms, outcomes):
        if isinstance(outcome, _Stranger):
            delivery_log.warning("message %s on the queue of %s dead-lettered: %s",
                                 m.message_id[:200], m.org, outcome.reason)
            DEAD_LETTERS.labels(UNKNOWN).inc()


@dataclass(slots=True)
class Deliverer:
    store: Store
    endpoints: Endpoints
    config: MessagingSettings
    http: HttpClient
    # Where messages to organisations that consume their own queue go (the worker's bus).
    bus: Bus | None = None

    def handle(self, m: Received) -> Outcome:
        """The bus handler of every organisation's queue, a message at a time."""
        return self.handle_batch([m])[0]

    def handle_batch(self, ms: list[Received]) -> list[Outcome]:
        """The bus handler of messages taken together: their checks in one read transaction,
        their POSTs, then every outcome in one write transaction (on SQLite the write lock is
        the bottleneck: a transaction per delivery queued behind every API write)."""
        now = to_us(now_utc())
        outcomes: list[Outcome | None] = [None] * len(ms)
        withdraw: list[tuple[int, sql.Delivery]] = []
        hold: list[tuple[int, sql.Delivery]] = []
        post: list[tuple[int, sql.Delivery]] = []
        open_: list[tuple[int, sql.Delivery]] = []  # still to deliver, as far as the outbox says
        taken: set[str] = set()  # a second copy of a delivery in the batch is a duplicate
        # The checks only read; the rare withdrawal or hold is written with the outcomes,
        # guarded by the state it read.
        with self.store.begin(write=False) as tx:
            found = sql.get_many(tx, [i for m in ms if _delivery_id(i := m.headers.get(
                DELIVERY))])
            for i, m in enumerate(ms):
                delivery_id = m.headers.get(DELIVERY)
                if not isinstance(delivery_id, str):
                    outcomes[i] = _stranger(m, "no sip-delivery header")
                    continue
                if not _delivery_id(delivery_id):
                    outcomes[i] = _stranger(m, f"sip-delivery {delivery_id[:200]!r} is not "
                                               "a delivery id")
                    continue
                d = found.get(delivery_id)
                if d is not None and d.state in sql.OPEN and delivery_id in taken:
                    DELIVERIES.labels("duplicate").inc()
                    outcomes[i] = Ack()
                    continue
                taken.add(delivery_id)
                if d is not None and d.state == sql.DEAD and m.redelivered:
                    # At least once in the dead-letter queue; a second copy is harmless
                    # (replay goes by the outbox).
                    outcomes[i] = DeadLetter(d.last_error or "dead", d.attempts)
                elif d is None:  # a stranger on the queue: kept, with the reason, not dropped
                    outcomes[i] = _stranger(m, f"no delivery {delivery_id} in the outbox")
                elif d.state not in sql.OPEN:
                    DELIVERIES.labels("duplicate").inc()
                    outcomes[i] = Ack()
                else:
                    open_.append((i, d))
            # The batch's grants and stream heads in a statement or two, not two per delivery.
            gone = uncovered(tx, [d for _, d in open_], now)
            held = sql.held_back(tx, [d for _, d in open_])
            for i, d in open_:
                if d.id in gone:
                    withdraw.append((i, d))
                elif d.id in held:
                    hold.append((i, d))
                else:
                    post.append((i, d))
        posted = self._post_all(post)
        if withdraw or hold or posted:  # on SQLite with the API's writes (group commit)
            self.store.write(lambda tx: self._write_outcomes(tx, outcomes, withdraw, hold,
                                                             posted))
        for i, d, _ in posted:  # logged once committed, not in the write lock
            if isinstance(dead := outcomes[i], DeadLetter):
                log_dead(d, dead.reason)
        assert all(o is not None for o in outcomes), "every message has its outcome"
        _tell_strangers(ms, outcomes)  # type: ignore[arg-type]
        return outcomes  # type: ignore[return-value]

    def _write_outcomes(self, tx: Tx, outcomes: list[Outcome | None],
                        withdraw: list[tuple[int, sql.Delivery]],
                        hold: list[tuple[int, sql.Delivery]],
                        posted: list[tuple[int, sql.Delivery, Result]]) -> None:
        """The batch's state changes, in one transaction, each guarded by the state read.
        It waits for the disk (unlike the relay's round): once it commits, the bus's copies
        are acknowledged, and a delivered mark lost with them would leave its delivery
        published in the outbox, holding back the rest of its stream until the relay
        publishes it again (``republish_after_seconds``, an hour)."""
        now = to_us(now_utc())
        for i, d in withdraw:
            record_withdrawn(tx, d, now)
            outcomes[i] = Ack()
        for i, d in hold:
            sql.set_state(tx, d.id, sql.PENDING, now, next_attempt_at=now + _HOLD_US,
                          only_from=sql.OPEN)
            count_committed(tx, DELIVERIES.labels("held"))
            outcomes[i] = Ack()
        delivered = [d for _, d, result in posted if result.kind == "delivered"]
        if delivered:  # the common outcome, for the whole batch at once
            n = sql.mark_delivered(tx, [d.id for d in delivered], now)
            if n < len(delivered):  # rare: settled meanwhile, see _delivered_anyway
                n += self._delivered_anyway(tx, delivered, now)
            count_committed(tx, DELIVERIES.labels("delivered"), n)
        for i, d, result in posted:
            if result.kind == "withdrawn":
                record_withdrawn(tx, d, now)
                outcomes[i] = Ack()
            else:
                outcomes[i] = Ack() if result.kind == "delivered" else \
                    self._record(tx, d, result, now)

    @staticmethod
    def _delivered_anyway(tx: Tx, delivered: list[sql.Delivery], now: int) -> int:
        """The outbox tells what was sent: a delivery its organisation acknowledged is
        recorded delivered also when the consent's withdrawal settled it as withdrawn while
        it was on its way (the POST started while the consent still covered the organisation,
        see ``_post_all``). Another state another copy of it recorded is left as it is."""
        return sum(sql.set_state(tx, d.id, sql.DELIVERED, now, error=DELIVERED_DESPITE,
                                 attempts=d.attempts + 1, only_from=(sql.WITHDRAWN,))
                   for d in delivered)

    def _post_all(self, post: list[tuple[int, sql.Delivery]]
                  ) -> list[tuple[int, sql.Delivery, Result]]:
        """POST the batch: each stream's deliveries (one person to one organisation) one
        after another in the batch's order, the streams side by side, at most the organisation's
        endpoint's ``max_concurrent`` of them at once to it. Most of a POST is waiting for
        the answer: one after another, a batch of a hundred took as long as its slowest
        organisation's share of round trips, and the next deliveries of every stream waited
        for the batch."""
        lanes: dict[tuple[str, str], list[_Post]] = {}
        done: list[tuple[int, sql.Delivery, Result]] = []
        queued: list[tuple[int, sql.Delivery]] = []
        for i, d in post:
            endpoint = self.endpoints.get(d.dest_org)
            url = d.endpoint_url or (endpoint.url if endpoint else None)
            if url is None and endpoint is not None:  # it consumes its own queue
                queued.append((i, d))
            elif url is None:  # nothing to send
                done.append((i, d, Result("fatal", no_endpoint_reason(d.dest_org,
                                                                  self.endpoints.source))))
            else:
                lanes.setdefault((d.patient_id, d.dest_org), []).append(
                    (i, d, url, endpoint))
        # Each organisation's streams dealt over at most its endpoint's max_concurrent tasks.
        tasks: dict[tuple[str, int], list[_Post]] = {}
        per_org: dict[str, int] = {}
        for (_, org), lane in lanes.items():
            n = per_org[org] = per_org.get(org, -1) + 1
            endpoint = lane[0][3]
            width = endpoint.max_concurrent if endpoint else DEFAULT_CONCURRENT
            tasks.setdefault((org, n % width), []).extend(lane)

        done += self._hand_over(queued)
        todo = list(tasks.values())

        def recheck(starting: Sequence[tuple[int, int]]) -> dict[tuple[int, int], HttpError]:
            """Whether the consent still covers the organisations of the notifications a
            lane is about to POST, some time after the batch's check (a lane's POSTs go one
            after another): those it no longer covers are not sent (rule 1)."""
            notes = {(lane, k): todo[lane][k][1] for lane, k in starting
                     if todo[lane][k][1].kind == NOTIFICATION}
            if not notes:
                return {}
            with self.store.begin(write=False) as tx:
                gone = uncovered(tx, notes.values(), to_us(now_utc()))
            return {key: HttpNotSent(WITHDRAWN_REASON) for key, d in notes.items()
                    if d.id in gone}

        answers = self.http.exchange([[self._request(d, url, endpoint)
                                       for _, d, url, endpoint in lane] for lane in todo],
                                     recheck=recheck)
        done += [(i, d, self._result(d, url, answer))
                 for lane, lane_answers in zip(todo, answers)
                 for (i, d, url, endpoint), answer in zip(lane, lane_answers)]
        return sorted(done, key=lambda r: r[0])

    def _hand_over(self, queued: list[tuple[int, sql.Delivery]]
                   ) -> list[tuple[int, sql.Delivery, Result]]:
        """Publish the deliveries to organisations that consume their own queues, in the
        batch's order (a stream's deliveries one after another), all confirmed at once."""
        if not queued:
            return []
        if self.bus is None:
            return [(i, d, Result("transient", "No message broker to hand the message over "
                                               "to its organisation's queue")) for i, d in queued]
        why: dict[int, str] = {}
        try:
            confirmed = self.bus.hand_over([(d.dest_org, Envelope(
                d.content, d.message_id, {EVENT: d.event})) for _, d in queued], refusals=why)
        except BusUnavailable as exc:
            return [(i, d, Result("transient", f"Could not hand the message over to the "
                                               f"queue of {d.dest_org}: {exc.diagnostics}"))
                    for i, d in queued]
        return [(i, d, Result("delivered") if ok else Result(
            "transient", f"The broker refused the message for the queue of {d.dest_org}: "
                         f"{why.get(k, 'not confirmed')}"))
                for k, ((i, d), ok) in enumerate(zip(queued, confirmed))]

    def _request(self, d: sql.Delivery, url: str, endpoint: Endpoint | None) -> HttpRequest:
        """The POST of ``d`` to ``url`` (its own, or that of ``endpoint``, its
        organisation's)."""
        # X-Request-ID: the delivery's id, which the hub's log lines and dead letters name,
        # for the receiver's own logs (each attempt of a delivery sends the same).
        headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json",
                   "X-Request-ID": d.id, **(endpoint.headers() if endpoint else {})}
        timeout = endpoint.timeout if endpoint and endpoint.timeout else \
            self.config.timeout_seconds
        return HttpRequest(url, d.content, headers, timeout)

    @staticmethod
    def _result(d: sql.Delivery, url: str, answer: HttpResponse | HttpError) -> Result:
        if isinstance(answer, HttpNotSent):  # the consent no longer covers it
            return Result("withdrawn", str(answer))
        if isinstance(answer, HttpRefused):  # its URL or headers: sending again cannot help
            return Result("fatal", f"Not sent: {answer}")
        if isinstance(answer, HttpTimeout):  # "No answer from <url> within <timeout> s"
            return Result("transient", str(answer))
        if isinstance(answer, HttpError):
            return Result("transient", f"Could not reach {url}: {answer}")
        return classify(answer, d.message_id)

    def _record(self, tx: Tx, d: sql.Delivery, result: Result, now: int) -> Outcome:
        """Record an attempt that did not deliver (a retry later, or dead), unless another
        copy of the delivery settled it meanwhile (it is then neither counted nor
        dead-lettered twice). Deliveries are recorded by ``_write_outcomes``, a batch at once."""
        reason = record_failure(tx, d, result.detail, now, self.config,
                                fatal=result.kind == "fatal", wait=result.wait)
        return DeadLetter(reason, d.attempts + 1) if reason is not None else Ack()
