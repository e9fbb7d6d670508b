"""The message bus between the outbox relay and the delivery workers: the only module that
imports kombu.

Connection string
=================
``SIP_HUB_BROKER_URL``: ``memory://`` (the default: in-process, messages pass between threads
of one process and are gone when it stops) or ``amqp://user:password@host:5672/vhost``
(RabbitMQ). Both run the same code below; only the queue type and publisher confirms differ.

Topology
========
* a durable topic exchange ``sip_hub``;
* per organisation a durable queue ``sip.org.<HSA-id>`` bound with ``org.<HSA-id>``; on RabbitMQ
  a quorum queue (``x-queue-type: quorum``: replicated, survives a broker node), on the
  memory transport a plain queue;
* per organisation that takes its messages from the broker itself (RabbitMQ only; see
  ``messaging.endpoints``) a durable quorum queue ``sip.inbox.<HSA-id>`` bound with
  ``inbox.<HSA-id>``: the delivery workers hand its messages over to it, and its own system
  consumes it;
* the dead-letter queue ``sip.dead`` bound with ``dead``; its messages carry the headers
  ``sip-reason`` and ``sip-attempts`` besides the original ones. On the memory transport it
  keeps at most the latest ``MEMORY_DEAD_MAX`` (the oldest are dropped): it lives in the
  process's memory, and an organisation without an endpoint dead-letters every message sent to it,
  the whole Bundle each time, for as long as the hub runs. The outbox is the record of every
  dead delivery (with its reason) and what replay goes by; the queue holds copies.

Reliability
===========
* Publishing waits for the broker's confirm on RabbitMQ (``confirm_publish``); the memory
  transport stores synchronously. Messages are persistent.
* Publishes are mandatory: one that no queue takes comes back (``basic.return``) and counts
  as refused, like one the broker nacks (e.g. a queue with ``x-overflow: reject-publish``
  that is full); ``publish_many`` tells which items were refused and why, and the relay
  records each as a failed attempt of its delivery. The queue of a returned publish is
  declared again before the next publish to it.
* Each organisation's copy of a message is a publish of its own, confirmed, refused or
  returned on its own. (Up to 2026-12-06 a message for several organisations was one
  publish, the other queues in RabbitMQ's ``BCC`` header and each queue's headers in the
  table ``sip-to``; but the broker returns a publish only when it reached no queue at all,
  so the copy for a queue deleted meanwhile was lost without a word until the relay's
  hourly republish. Consumers still take their queue's ``sip-to`` entry as the headers of
  such a message published before.)
* Consumers acknowledge explicitly: the handler returns ``Ack``, ``Requeue`` (put it back:
  the handler could not decide now, e.g. the database is down) or ``DeadLetter`` (to
  ``sip.dead`` with the reason, then acknowledged). An exception from the handler becomes
  ``Requeue`` when it is retryable (``SipHubError.retryable``) and ``DeadLetter`` otherwise.
* Which broker errors are worth retrying is declared by each kombu transport
  (``recoverable_connection_errors``, ``recoverable_channel_errors``); they surface as
  ``BusUnavailable``, a retryable ``TransientError``.

Retries with backoff are not the broker's job here: the memory transport has neither message
TTL nor dead-lettering, so per-attempt delay queues would need a second code path. A delivery
that failed transiently goes back to the outbox with its next attempt time, and the relay
publishes it again when it is due (see ``sip_hub.messaging.delivery``). One code path, the
exact backoff, and the database stays the record of every delivery.
"""

from __future__ import annotations

import itertools
import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from amqp.exceptions import AccessRefused, MessageNacked, NotAllowed, NotFound
from kombu import Connection, Consumer, Exchange, Producer, Queue
from kombu.exceptions import OperationalError
from kombu.message import Message
from kombu.transport import memory
from kombu.utils.url import maybe_sanitize_url

from .errors import SipHubError, TransientError
from .metrics import DEAD_LETTERS

log = logging.getLogger("sip_hub.bus")

HeaderValue = str | int
REASON: Final = "sip-reason"
ATTEMPTS: Final = "sip-attempts"
# One message for several queues (see "Reliability"): each queue's headers, by queue name.
_TO: Final = "sip-to"
# kombu undoes a ``compression`` header as it takes a message; one it cannot undo is
# dead-lettered without it (see ``Bus._undecodable``).
_COMPRESSION: Final = "compression"
# The dead-letter metric's kind of messages on the hub's queues that are no delivery of its
# outbox (another publisher's, or undecodable): counted and logged where they are
# dead-lettered, from the start at 0 (see sip_hub.metrics).
UNKNOWN: Final = "unknown"
DEAD_LETTERS.labels(UNKNOWN)
_CONTENT_TYPE: Final = "application/fhir+json"
MEMORY_DEAD_MAX: Final = 1000  # dead letters the memory transport keeps (see above)
_NACKED: Final = ("a nack (a queue it was routed to refused it: full, with x-overflow "
                   "reject-publish, or unavailable)")
_PUBLISH_RETRY: Final = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                         "interval_max": 1}


class BusUnavailable(TransientError):
    """The broker cannot be reached or refused the operation; trying again may work."""


class BusRefused(BusUnavailable):
    """The broker refused the login or the virtual host (``SIP_HUB_BROKER_URL``'s user,
    password or vhost): an operator's input. A worker goes on trying, as for a broker that
    is down (it may be put right on the broker), with the reason on one line; a one-shot
    command stops (exit 2)."""

    retryable = False


@dataclass(frozen=True, slots=True)
class Topology:
    """Names on the broker; tests use their own prefix so that runs never meet."""

    exchange: str = "sip_hub"
    prefix: str = "sip"

    def org_queue(self, org: str) -> str:
        return f"{self.prefix}.org.{org}"

    @staticmethod
    def org_key(org: str) -> str:
        return f"org.{org}"

    def inbox_queue(self, org: str) -> str:
        return f"{self.prefix}.inbox.{org}"

    @staticmethod
    def inbox_key(org: str) -> str:
        return f"inbox.{org}"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def dead_key(self) -> str:
        return "dead"


@dataclass(frozen=True, slots=True)
class Envelope:
    """What is published: the body (a FHIR message Bundle) and its headers."""

    body: bytes
    message_id: str
    headers: Mapping[str, HeaderValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Received:
    """A message taken from a queue; ``org`` is the organisation whose queue held it."""

    body: bytes
    message_id: str
    headers: Mapping[str, HeaderValue]
    org: str | None
    redelivered: bool

    def envelope(self) -> Envelope:
        return Envelope(self.body, self.message_id, dict(self.headers))


@dataclass(frozen=True, slots=True)
class Ack:
    """Done with the message (delivered, or nothing more to do)."""


@dataclass(frozen=True, slots=True)
class Requeue:
    """Put the message back after ``delay`` seconds: it could not be handled just now."""

    delay: float = 1.0


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Move the message to the dead-letter queue with the reason and the attempts made."""

    reason: str
    attempts: int = 0


Outcome = Ack | Requeue | DeadLetter
Handler = Callable[[Received], Outcome]
# Handles the messages taken together: one outcome each, in order.
BatchHandler = Callable[[list[Received]], list[Outcome]]


def _prepared(channel: Any, env: Envelope) -> Any:
    """``env`` as the channel's message, persistent: what kombu's Producer.publish makes of
    it, without the Producer's wrappers (retries, serialisation) around the channel's publish,
    which cost two thirds of a publish on the memory transport (22 against 7.5 us)."""
    return channel.prepare_message(env.body, 0, _CONTENT_TYPE, "binary", dict(env.headers),
                                   {"message_id": env.message_id, "delivery_mode": 2})


class _Confirms:
    """A channel of the publishing connection in confirm mode, publishing without waiting and
    counting the delivery tags the broker gives its messages (1, 2, ... per channel: only
    this class publishes on it), so that a batch can wait for all its confirms at once. The
    broker confirms in any order, several at once (``multiple``), and a refused message
    with a nack."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel
        self.tag = 0
        self.outstanding: set[int] = set()
        self.refused: dict[int, str] = {}  # tag -> why the broker did not take it
        # Messages are published mandatory: one no queue took (its queue deleted, or the
        # exchange declared again without its binding) comes back (basic.return) before
        # its confirm, and counts as refused. What each outstanding tag was, to match them.
        self.sent: dict[int, tuple[str, str]] = {}
        self.returned: dict[int, str] = {}  # tag -> the broker's reply (NO_ROUTE)
        self.returned_keys: set[str] = set()  # routing keys no queue took (since the wait)
        channel.events["basic_ack"].add(self._ack)
        channel.events["basic_nack"].add(self._nack)
        channel.events["basic_return"].add(self._return)
        channel.confirm_select()
        channel._confirm_selected = True  # py-amqp's own flag: do not select again

    def publish(self, env: Envelope, exchange: str, key: str) -> int:
        self.channel._basic_publish(_prepared(self.channel, env), exchange=exchange,
                                    routing_key=key, mandatory=True)
        self.tag += 1
        self.outstanding.add(self.tag)
        self.sent[self.tag] = (env.message_id, key)
        return self.tag

    def _settle(self, tag: int, multiple: bool) -> set[int]:
        done = {t for t in self.outstanding if t <= tag} if multiple else {tag}
        self.outstanding -= done
        for t in done:
            self.sent.pop(t, None)
        return done

    def _ack(self, tag: int, multiple: bool) -> None:
        for t in self._settle(tag, multiple):
            if t in self.returned:
                self.refused[t] = self.returned.pop(t)

    def _return(self, exc: Exception, exchange: str, key: str, message: Any) -> None:
        """A message no queue took: the first outstanding one of its id and key not yet
        returned (the broker returns it before it confirms it)."""
        props = getattr(message, "properties", None) or {}
        sent = (str(props.get("message_id") or ""), key)
        tags = sorted(t for t in self.outstanding
                      if self.sent.get(t) == sent and t not in self.returned)
        if tags:
            self.returned[tags[0]] = (f"no queue took it (routing key {key}: its queue is "
                                      f"gone or unbound; {exc})")
        self.returned_keys.add(key)

    def _nack(self, tag: int, multiple: bool) -> None:
        for t in self._settle(tag, multiple):
            self.refused[t] = self.returned.pop(t, _NACKED)

    def wait(self, drain: Callable[[float], object], timeout: float) -> dict[int, str]:
        """Until every message published is confirmed or refused; returns the refused ones'
        tags with why (since the last wait). BusUnavailable after ``timeout`` seconds
        without."""
        deadline = time.monotonic() + timeout
        while self.outstanding:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BusUnavailable(f"The broker did not confirm {len(self.outstanding)} "
                                     f"messages within {timeout:g} s")
            try:
                drain(left)
            except socket.timeout:
                continue
        refused, self.refused = self.refused, {}
        return refused


def _confirmed(why: list[str | None], refusals: dict[int, str] | None) -> list[bool]:
    """Per item, whether the broker took it; why it did not, into ``refusals``."""
    if refusals is not None:
        refusals.update((i, reason) for i, reason in enumerate(why) if reason is not None)
    return [reason is None for reason in why]


def _attempts(r: Received) -> int:
    """The attempts a message's header counts (0 when it is missing or not a number)."""
    try:
        return int(r.headers.get(ATTEMPTS, 0) or 0)
    except (TypeError, ValueError):
        return 0


_DELIVERY_TAGS = itertools.count(1)


class _MemoryChannel(memory.Channel):
    """kombu's in-process channel, its delivery tags from a counter of the process (kombu
    draws a random UUID per message, a system call that lets go of the interpreter lock: see
    sip_hub.ids). A tag only has to be unique among the messages a channel has delivered and
    not acknowledged, and every channel of the memory transport is in this process."""

    def _next_delivery_tag(self) -> str:
        return str(next(_DELIVERY_TAGS))


class _MemoryTransport(memory.Transport):
    Channel = _MemoryChannel


class Bus:
    """A client of the broker (a publishing and a consuming connection); use it from one
    thread at a time."""

    def __init__(self, url: str, topology: Topology = Topology(), *,
                 connect_timeout: float = 5.0, requeue_delay: float = 1.0) -> None:
        self.url = url
        self.requeue_delay = requeue_delay
        self.topology = topology
        self.is_memory = url.startswith("memory://")
        # Bounded reconnection: a broker that is down is reported (BusUnavailable), and the
        # caller's loop decides when to try again.
        # In memory the messages stay Python objects: no base64 of every body on the way in
        # and out (kombu's default for its virtual transports, made for text-only stores).
        options: dict[str, Any] = ({"polling_interval": 0.01, "body_encoding": None}
                                   if self.is_memory else {
            "confirm_publish": True, "max_retries": 2, "interval_start": 0,
            "interval_step": 0.5, "interval_max": 1})
        # Two connections: waiting for a publish confirm on a connection with consumers would
        # run their handlers in the middle of the publisher's work (e.g. inside the relay's
        # database transaction). Consumers get a connection of their own.
        transport = _MemoryTransport if self.is_memory else None
        self._conn = Connection(url, transport=transport, transport_options=options,
                                connect_timeout=connect_timeout)
        self._consumer_conn = Connection(url, transport=transport, transport_options=options,
                                         connect_timeout=connect_timeout)
        self._exchange = Exchange(topology.exchange, type="topic", durable=True)
        self._declared: set[str] = set()
        self._queues: dict[str, Queue] = {}
        self._consumer: Consumer | None = None
        self._consuming: set[str] = set()
        self._tag_orgs: dict[str, str] = {}  # consumer tag -> organisation of its queue
        self._producer: Producer | None = None
        self._confirms: _Confirms | None = None
        self._handled = 0
        self._handler: BatchHandler | None = None
        self._batch = 1
        self._pending: list[tuple[Message, Received]] = []
        self._returned: set[str] = set()  # routing keys of single publishes no queue took

    # -- what the transport declares ---------------------------------------------------------
    @property
    def durable(self) -> bool:
        """Whether queued messages outlive this process (not so on the memory transport)."""
        return not self.is_memory

    @property
    def consuming(self) -> bool:
        """Whether this bus consumes any queue (``drain`` has something to wait for)."""
        return self._consumer is not None

    @property
    def retryable_errors(self) -> tuple[type[BaseException], ...]:
        """The errors the transport declares safe to retry (kombu's recoverable errors)."""
        # kombu re-raises the transport's recoverable errors as its OperationalError.
        return (tuple(self._conn.recoverable_connection_errors)
                + tuple(self._conn.recoverable_channel_errors)
                + (OperationalError, socket.timeout, OSError))

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except BusUnavailable:
            raise
        except MessageNacked as exc:  # the broker refused a confirmed publish
            raise BusUnavailable(f"The broker did not accept the message ({what})") from exc
        except (AccessRefused, NotAllowed) as exc:  # wrong user, password or vhost
            raise BusRefused(f"Message broker refused the connection ({what}): "
                             f"{getattr(exc, 'reply_text', '') or exc}") from exc
        except NotFound as exc:  # the exchange or a queue deleted meanwhile: declare again
            self._declared.clear()
            raise BusUnavailable(f"Message broker: {exc} ({what})") from exc
        except self.retryable_errors as exc:
            raise BusUnavailable(f"Message broker unavailable ({what}): {exc}") from exc

    # -- topology -------------------------------------------------------------------------
    def _queue(self, name: str, key: str) -> Queue:
        queue = self._queues.get(name)
        if queue is None:  # made once per name: a publish is otherwise a new Queue each time
            args = None if self.is_memory else {"x-queue-type": "quorum"}
            queue = self._queues[name] = Queue(name, self._exchange, routing_key=key,
                                               durable=True, auto_delete=False,
                                               queue_arguments=args)
        return queue

    def org_queue(self, org: str) -> Queue:
        return self._queue(self.topology.org_queue(org), self.topology.org_key(org))

    def inbox_queue(self, org: str) -> Queue:
        return self._queue(self.topology.inbox_queue(org), self.topology.inbox_key(org))

    def dead_queue(self) -> Queue:
        return self._queue(self.topology.dead_queue, self.topology.dead_key)

    def _declare(self, queue: Queue) -> None:
        if queue.name in self._declared:
            return
        with self._guard(f"declare {queue.name}"):
            queue(self._conn.default_channel).declare()
        self._declared.add(queue.name)

    def declare(self, org: str) -> None:
        """Make sure the organisation's queue exists (messages to an unbound key are lost)."""
        self._declare(self.org_queue(org))

    # -- publishing -------------------------------------------------------------------------
    def _publish(self, env: Envelope, key: str) -> None:
        if self._producer is None:
            self._producer = Producer(self._conn.default_channel, self._exchange)
            if not self.is_memory:  # mandatory: a message no queue takes comes back
                self._producer.channel.events["basic_return"].add(
                    lambda exc, exchange, rkey, message: self._returned.add(rkey))
        self._returned.discard(key)
        self._producer.publish(
            env.body, routing_key=key, content_type=_CONTENT_TYPE, content_encoding="binary",
            headers=dict(env.headers), message_id=env.message_id, delivery_mode="persistent",
            mandatory=not self.is_memory, retry=True, retry_policy=_PUBLISH_RETRY)
        if key in self._returned:  # (returned before the confirm the publish waited for)
            self._forget_declared({key})
            raise BusUnavailable(f"No queue took the message for {key} (its queue is gone)")

    def _forget_declared(self, keys: set[str]) -> None:
        """Queues of these routing keys are to be declared again before the next publish: a
        message to them came back unrouted (the queue or its binding was removed)."""
        self._returned -= keys
        for queue in self._queues.values():
            if queue.routing_key in keys:
                self._declared.discard(queue.name)

    def _forget_consumed(self, keys: set[str]) -> None:
        """Consume afresh when this bus consumes a queue a publish came back from (deleted).
        RabbitMQ need not cancel the consumer of a quorum queue deleted and declared again
        soon after: the consumer stays, attached to nothing, and a message to the new queue
        stayed unacknowledged on the consuming channel, never handled (seen with the relay
        retrying such a delivery 10 ms later). Between rounds only: a handler's publish goes
        to an inbox queue, which this bus does not consume."""
        if self._consumer is not None and any(
                self.topology.org_key(org) in keys for org in self._consuming):
            self._forget_consumer()

    def publish(self, org: str, env: Envelope) -> None:
        """Publish to the organisation's queue; returns once the broker has it."""
        self.declare(org)
        with self._guard(f"publish to {org}"):
            self._publish(env, self.topology.org_key(org))

    def publish_many(self, items: Sequence[tuple[str, Envelope]], *,
                     confirm_timeout: float = 30.0,
                     refusals: dict[int, str] | None = None) -> list[bool]:
        """Publish each (organisation, envelope) in order, then wait for the broker's
        confirms of them all: one round trip for the batch instead of one per message (on
        RabbitMQ a confirm takes milliseconds, and a relay publishing one at a time waited
        for each). Returns, per item, whether the broker confirmed it; one it refused (a
        nack, or returned: no queue took it) is False, and ``refusals`` (when given) gets
        why, by the item's index. Raises BusUnavailable when the broker went away
        meanwhile: which of the batch it took is then unknown, and publishing them again is
        safe (receivers drop duplicates by MessageHeader.id)."""
        why = self._publish_confirmed([(self.org_queue(org), env) for org, env in items],
                                      confirm_timeout)
        return _confirmed(why, refusals)

    def hand_over(self, items: Sequence[tuple[str, Envelope]], *,
                  confirm_timeout: float = 30.0,
                  refusals: dict[int, str] | None = None) -> list[bool]:
        """Publish each (organisation, envelope) to the organisation's own inbox queue, which
        its system consumes (RabbitMQ only), as ``publish_many`` does to the hub's queues
        (one publish per item)."""
        if self.is_memory:
            raise BusUnavailable("An organisation can take its messages from its queue only "
                                 "on RabbitMQ (SIP_HUB_BROKER_URL=amqp://...)")
        why = self._publish_confirmed([(self.inbox_queue(org), env) for org, env in items],
                                      confirm_timeout)
        return _confirmed(why, refusals)

    def _publish_confirmed(self, items: Sequence[tuple[Queue, Envelope]],
                           confirm_timeout: float) -> list[str | None]:
        """Per item, None when the broker confirmed it, else why it did not take it."""
        if not items:
            return []
        for queue in {q.name: q for q, _ in items}.values():
            self._declare(queue)
        if self.is_memory:  # the memory transport stores synchronously: nothing to confirm
            with self._guard("publish"):
                channel = self._conn.default_channel
                for queue, env in items:
                    channel.basic_publish(_prepared(channel, env), exchange=self._exchange.name,
                                          routing_key=queue.routing_key)
            return [None] * len(items)
        try:
            with self._guard("publish"):
                if self._confirms is None:
                    self._confirms = _Confirms(self._conn.channel())
                confirms = self._confirms
                tags = [confirms.publish(env, self._exchange.name, queue.routing_key)
                        for queue, env in items]
                refused = confirms.wait(lambda t: self._conn.drain_events(timeout=t),
                                        confirm_timeout)
        except BaseException:  # which of the batch the broker took is unknown
            self._drop_confirms()
            self._declared.clear()  # (a queue or the exchange may be gone: declare again)
            raise
        if confirms.returned_keys:
            self._forget_declared(confirms.returned_keys)
            self._forget_consumed(confirms.returned_keys)
            confirms.returned_keys = set()
        return [refused.get(t) for t in tags]

    def _drop_confirms(self) -> None:
        """Forget the confirming channel (its delivery tags no longer count); the next batch
        opens a new one."""
        confirms, self._confirms = self._confirms, None
        if confirms is not None:
            try:
                confirms.channel.close()
            except Exception:  # the connection is gone already  # noqa: BLE001
                pass

    def dead_letter(self, env: Envelope, reason: str, attempts: int) -> None:
        queue = self.dead_queue()
        self._declare(queue)
        headers = {**env.headers, REASON: reason[:1000], ATTEMPTS: attempts}
        with self._guard("dead-letter"):
            if self.is_memory:
                self._make_room(queue)
            self._publish(Envelope(env.body, env.message_id, headers), self.topology.dead_key)

    def _make_room(self, queue: Queue) -> None:
        """Keep the memory transport's dead-letter queue (every Bus of the process shares
        it) at MEMORY_DEAD_MAX at most: when it is full, drop its oldest tenth."""
        channel = self._conn.default_channel
        _, size, _ = channel.queue_declare(queue=queue.name, passive=True)
        if size < MEMORY_DEAD_MAX:
            return
        for _ in range(size - (MEMORY_DEAD_MAX - MEMORY_DEAD_MAX // 10 - 1)):
            if channel.basic_get(queue.name, no_ack=True) is None:
                break

    # -- consuming --------------------------------------------------------------------------
    def consume(self, orgs: Iterable[str], handler: Handler, *, prefetch: int = 10) -> None:
        """Consume the organisations' queues with ``handler``, a message at a time (call
        again to add queues; the latest handler handles every queue)."""
        self._handler, self._batch = (lambda ms: [handler(ms[0])]), 1
        self._subscribe(orgs, prefetch)

    def consume_batches(self, orgs: Iterable[str], handler: BatchHandler, *,
                        batch: int = 32) -> None:
        """Like ``consume``, but ``handler`` takes the messages that have arrived together, up
        to ``batch`` (what one transaction can settle), and each is acknowledged only after
        it returned."""
        self._handler, self._batch = handler, batch
        self._subscribe(orgs, batch)

    def _subscribe(self, orgs: Iterable[str], prefetch: int) -> None:
        new = [o for o in dict.fromkeys(orgs) if o not in self._consuming]
        if not new:
            return
        queues = [self.org_queue(o) for o in new]
        for q in queues:
            self._declare(q)
        with self._guard("consume"):
            if self._consumer is None:
                self._consumer = Consumer(self._consumer_conn.default_channel, queues=queues,
                                          on_message=self._on_message,
                                          on_decode_error=self._undecodable,
                                          prefetch_count=prefetch, auto_declare=False)
                self._consumer.consume()
            else:
                for q in queues:
                    self._consumer.add_queue(q)
                self._consumer.consume()
        self._consuming.update(new)

    def drain(self, timeout: float = 0.1, max_messages: int = 1000,
              gather: float | None = None) -> int:
        """Handle the messages that arrive until none has come for ``timeout`` seconds. With
        ``gather``, a batch not yet full is handled once no further message came within
        ``gather`` seconds (without, at the end of the drain)."""
        if self._consumer is None:
            return 0
        self._handled = 0
        try:
            self._drain(timeout, max_messages, gather)
        except BusUnavailable:
            self._forget_consumer()
            raise
        return self._handled

    def _forget_consumer(self) -> None:
        """After a failed wait (the connection lost, or the broker cancelled the consumer:
        its queue was deleted): the consuming channel is closed, so that what it took and did
        not settle goes back to the queues, and the next ``consume`` declares the queues and
        consumes them again."""
        self._consumer = None
        self._consuming.clear()
        self._tag_orgs.clear()
        self._declared.clear()
        try:
            self._consumer_conn.release()
        except Exception:  # the connection is gone already  # noqa: BLE001
            pass

    def _drain(self, timeout: float, max_messages: int, gather: float | None) -> None:
        with self._guard("drain"):
            try:
                while self._handled < max_messages:
                    gathering = gather is not None and bool(self._pending)
                    try:
                        self._consumer_conn.drain_events(
                            timeout=gather if gathering else timeout)
                    except socket.timeout:
                        if not gathering:
                            break
                        self._settle_pending()
            finally:
                self._pending, pending = [], self._pending
            # What was taken and not yet handled (a batch not yet full). When the wait failed
            # instead, it stays unacknowledged and the broker delivers it again.
            self._settle_all(pending)

    def _org_of(self, message: Message) -> tuple[str | None, str | None]:
        """The organisation whose queue held the message, and that queue's name. A message
        published to several queues at once carries the first one's routing key: the queue
        is told by the consumer tag it came with (RabbitMQ), else (the memory transport,
        which names no tag and publishes once per queue) by the routing key."""
        info = message.delivery_info or {}
        tag = info.get("consumer_tag")
        if tag is not None:
            org = self._tag_orgs.get(tag)
            if org is None and self._consumer is not None:
                # kombu's Consumer notes a queue's tag before it asks the broker to consume
                # it, and messages of the queues consumed before may arrive meanwhile.
                prefix = self.topology.org_queue("")
                self._tag_orgs = {t: name[len(prefix):] for name, t in
                                  self._consumer._active_tags.items()
                                  if name.startswith(prefix)}
                org = self._tag_orgs.get(tag)
        else:
            key = info.get("routing_key", "")
            org = key[4:] if isinstance(key, str) and key.startswith("org.") else None
        return org, (self.topology.org_queue(org) if org is not None else None)

    def _received(self, message: Message) -> Received:
        """The message as handlers see it, whatever another publisher put on the queue: a
        body py-amqp decoded to text (a ``content_encoding`` it knows) is encoded back, and
        headers that are not tables are left out."""
        props = message.properties or {}
        org, queue = self._org_of(message)
        headers = dict(message.headers or {}) if isinstance(message.headers, dict) else {}
        to = headers.pop(_TO, None)
        if isinstance(to, dict):  # one publish for several queues (before 2026-12-06): its own
            own = to.get(queue)
            if isinstance(own, dict):
                headers.update(own)
        body = message.body
        if isinstance(body, str):
            body = body.encode(props.get("content_encoding") or "utf-8", "surrogateescape")
        return Received(bytes(body or b""), str(props.get("message_id") or ""), headers, org,
                        bool((message.delivery_info or {}).get("redelivered")))

    def _on_message(self, message: Message) -> None:
        try:
            received = self._received(message)
        except Exception as exc:  # noqa: BLE001 (whatever another publisher put there)
            self._undecodable(message, exc)
            return
        self._handled += 1
        self._pending.append((message, received))
        if len(self._pending) >= self._batch:
            self._settle_pending()

    def _undecodable(self, message: Message, exc: Exception) -> None:
        """A message kombu or ``_received`` cannot decode (e.g. a ``compression`` header
        whose body is not so compressed: kombu undoes it as it takes the message, before
        ``_on_message``): dead-lettered as it came, with the reason, logged and counted; the
        queue goes on. Before, the error escaped the drain, the message went back to the
        queue and came again, for ever, and every message behind it waited."""
        self._handled += 1
        info = message.delivery_info or {}
        props = message.properties or {}
        headers = dict(message.headers) if isinstance(message.headers, dict) else {}
        compression = headers.pop(_COMPRESSION, None)  # (the dead copy would not decode)
        headers.pop(_TO, None)
        body = message.body
        if isinstance(body, str):
            body = body.encode("utf-8", "surrogateescape")
        org, _ = self._org_of(message)
        received = Received(body if isinstance(body, bytes) else b"",
                            str(props.get("message_id") or ""), headers, org,
                            bool(info.get("redelivered")))
        why = f"{type(exc).__name__}: {exc}"[:300]
        if compression is not None:
            why = f"compression {str(compression)[:100]!r}: {why}"
        reason = f"Not an outbox delivery: the message cannot be decoded ({why})"
        log.warning("message %s on the queue of %s dead-lettered: %s",
                    received.message_id[:200], org, reason)
        self._settle(message, received, DeadLetter(reason, _attempts(received)))
        DEAD_LETTERS.labels(UNKNOWN).inc()

    def _settle_pending(self) -> None:
        """Handle the batch taken so far."""
        self._pending, pending = [], self._pending
        self._settle_all(pending)

    def _settle_all(self, pending: list[tuple[Message, Received]]) -> None:
        if not pending:
            return
        received = [r for _, r in pending]
        outcomes = self._outcomes(received)
        settle = list(zip(pending, outcomes))
        # Dead letters first: a broker lost meanwhile then fails on what matters most (the
        # message must reach the dead-letter queue), and every message left unacknowledged
        # comes again, to be settled by what the outbox says then.
        settle.sort(key=lambda item: not isinstance(item[1], DeadLetter))
        requeued = False
        for (message, r), outcome in settle:
            if isinstance(outcome, Requeue) and not requeued:
                time.sleep(outcome.delay)  # do not spin while the cause lasts (once a batch)
                requeued = True
            self._settle(message, r, outcome)

    def _outcomes(self, received: list[Received]) -> list[Outcome]:
        """The handler's outcomes of the batch. When it fails on the batch for a reason it
        does not say is retryable (a bug, or one message it chokes on), nothing tells which
        message is at fault: each is then handled on its own, and only one that fails alone
        is dead-lettered with the error (before, one malformed message dead-lettered the
        genuine deliveries taken with it, under its reason)."""
        assert self._handler is not None
        try:
            outcomes = self._handler(received)
            assert len(outcomes) == len(received), "one outcome per message"
            return outcomes
        except SipHubError as err:
            if err.retryable:
                return [Requeue(self.requeue_delay) for _ in received]
            failure: str = err.diagnostics
            if len(received) == 1:
                return [DeadLetter(failure, _attempts(received[0]))]
        except Exception as exc:  # a bug must not stop the consumer or lose the messages
            log.exception("handler failed on messages %s",
                          [r.message_id[:200] for r in received])
            failure = f"{type(exc).__name__}: {exc}"
            if len(received) == 1:
                return [DeadLetter(failure, _attempts(received[0]))]
        # (a retryable failure of one of them requeues that one alone)
        return [o for r in received for o in self._outcomes([r])]

    def _settle(self, message: Message, received: Received, outcome: Outcome) -> None:
        if isinstance(outcome, Requeue):
            message.requeue()
        elif isinstance(outcome, DeadLetter):
            self.dead_letter(received.envelope(), outcome.reason, outcome.attempts)
            message.ack()
        else:
            message.ack()

    # -- the dead-letter queue ------------------------------------------------------------------
    def take_dead(self, select: Callable[[Received], bool] | None = None,
                  limit: int = 10_000) -> list[Received]:
        """Remove the dead letters ``select`` picks (all without it) and return them; the
        others stay in the queue."""
        queue = self.dead_queue()
        self._declare(queue)
        taken: list[Received] = []
        kept: list[Message] = []
        with self._guard("read dead letters"):
            channel = self._conn.default_channel
            # Hold every message unacknowledged while scanning, so none is seen twice;
            # then acknowledge the taken ones and give the others back. (Not kombu's
            # Queue.get: it raises on a message it cannot decode, which stayed in the queue
            # and failed every replay after it.)
            for _ in range(limit):
                message = channel.basic_get(queue=queue.name, no_ack=False)
                if message is not None:
                    message = channel.message_to_python(message)
                if message is None:
                    break
                received = self._received(message)
                if select is None or select(received):
                    taken.append(received)
                    message.ack()
                else:
                    kept.append(message)
            for message in kept:
                message.requeue()
        return taken

    def queue_size(self, org: str | None = None) -> int:
        """Messages ready in the organisation's queue (the dead-letter queue without org)."""
        queue = self.org_queue(org) if org else self.dead_queue()
        self._declare(queue)
        with self._guard("queue size"):
            _, count, _ = queue(self._conn.default_channel).queue_declare(passive=True)
        return int(count)

    def delete(self, orgs: Iterable[str] = ()) -> None:
        """Remove the organisations' queues (the hub's and their inboxes), the dead-letter
        queue and the exchange (tests, decommissioning)."""
        with self._guard("delete"):
            channel = self._conn.default_channel
            orgs = list(orgs)
            queues = [self.org_queue(o) for o in orgs] + [self.dead_queue()]
            if not self.is_memory:
                queues += [self.inbox_queue(o) for o in orgs]
            for queue in queues:
                queue(channel).delete()
                self._declared.discard(queue.name)
            try:
                self._exchange(channel).delete()
            except KeyError:  # the memory transport: never declared
                pass

    def close(self) -> None:
        try:
            if self._consumer is not None:
                self._consumer.cancel()
        except Exception:  # closing anyway; the broker cleans up the channel  # noqa: BLE001
            pass
        self._consumer = None
        self._consuming.clear()
        self._tag_orgs.clear()
        self._drop_confirms()
        self._consumer_conn.release()
        self._conn.release()

    def __enter__(self) -> "Bus":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def shown_url(url: str) -> str:
    """A broker URL as it may be shown (the console): its passwords masked. kombu's sanitizer
    masks the first URL of a list to fail over to (``url1;url2``) and shows the others'
    passwords, so each is masked on its own."""
    return ";".join(maybe_sanitize_url(part) for part in url.split(";"))
