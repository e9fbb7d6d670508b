"""``$process-message``: receive a message, apply it atomically, route it by consent, answer.

Synchronous (``async`` absent or false): the answer is 200 with the response message, an
``acknowledgement`` whose ``response.code`` is ``ok``, ``transient-error`` (try again; nothing
was stored and nothing is remembered) or ``fatal-error`` (refused: nothing was stored or
routed; the OperationOutcome entry says why; do not resend unchanged).

Asynchronous (``async=true``): the identity checks and the reliable-messaging checks run at once
and the answer is 202; the worker processes the message later (``process_accepted``) and the
response goes to the sender through the outbox: to its configured endpoint, or to
``response-url`` when given (which must lie on that endpoint).

Reliable messaging, per sender organisation, for ``cache_minutes``:

* Bundle.id and MessageHeader.id both seen: the original response is sent again; nothing is
  processed again.
* MessageHeader.id seen with a new Bundle.id: a resubmission; answered with the original
  response, without a second effect.
* Bundle.id seen with a new MessageHeader.id: the sender reuses ids; refused with 409.

The message's resources are applied as one transaction of PUTs by id (POSTs for resources
without one) through ``sip_hub.bundles``, with the caller's Context: the access rules,
profiles, the process rules and audit all apply. Its effects, its cache entry and the
notifications it causes commit together; a refused message leaves nothing behind (a savepoint
is rolled back and only the fatal-error response is remembered). Errors name the message's
own entries (``Bundle.entry[n]``, the MessageHeader being entry 0).

* A resource carried with ``meta.versionId`` is the version the sender changed: written only
  while the hub still holds that version (its If-Match), else refused as a version conflict
  (the message was made from a stale copy and would undo what changed since).
* A message's event says what it changes: a write that means another event (a consent
  narrowed in an insats-status-changed message), or the event with another sub-code (a
  consent narrowed told as granted), refuses the message.
* Its destinations must take part in the SIP (as its coordinator or in its care team, before
  or after the message); it is sent on only to those the consent covers once it is applied,
  as every notification is.
* Messages are sent by organisations' clients (not the portal's or an admin's), and only
  about a SIP whose plan, and person when the message is sent on, the sender may read (its
  scopes and the consent, as for a REST read). The stored resources its focus names go
  with it: each must be one the sender may read, of that person alone.

An event that is a SIP process operation (invitation, invitation-response, plan-established,
follow-up-done, sip-closed, plan-revision-proposed, revision-approved) is applied through the
operation instead, whose own writes tell the participants: see ``operations``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Callable

import orjson

from .. import bundles, cpu, process as sp
from ..audit import AuditLog
from ..auth import Principal, parse_scopes
from ..errors import (BadRequest, Conflict, Forbidden, NotFound, PreconditionFailed,
                      SipHubError, TransientError)
from ..fhir import exact
from ..fhir.dates import now_utc, to_us
from ..fhir.indexing import localise_references, reference_targets, split_reference
from ..fhir.outcome import from_error, information
from ..interactions import Context
from ..access import Access, patients_of
from ..metrics import MESSAGES_RECEIVED
from ..service import Prepared, Prevalidated, ahead_pays, prepare, tx_resolver
from ..store import Store, Stored, Tx
from ..store import inbox
from ..store.schema import message_inbox
from . import builder, operations, parser, vocabulary as vocab
from .events import Fact, applying_message
from .http import url_problem
from .outbox import RESPONSE, SipKey, enqueue
from .runtime import Messaging

Json = dict[str, Any]
_US_PER_MINUTE = 60_000_000


class ReusedBundleId(Conflict):
    code = "duplicate"


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Json | bytes  # bytes: a remembered response, sent again exactly as it was


@dataclass(frozen=True, slots=True)
class _Handled:
    code: str
    response: Json
    sip: SipKey | None


class _Concurrent(Exception):
    """A copy of the message (its ids) was received by a concurrent request that committed
    first: this one's work is undone, and it is answered as that one was (only on PostgreSQL:
    on SQLite the write lock makes such requests take turns, and the second finds the first
    in its lookup)."""


class _Uncached(Exception):
    """Leave the transaction without committing: this answer must not be remembered."""

    def __init__(self, reply: Reply) -> None:
        super().__init__()
        self.reply = reply


def reliable_cache_minutes(messaging: Messaging) -> int:
    """How long received messages are remembered (CapabilityStatement.messaging.reliableCache)."""
    return messaging.config.cache_minutes


def _now() -> int:
    return to_us(now_utc())


def _authenticate(ctx: Context, env: parser.Envelope) -> None:
    principal = ctx.access.principal
    if principal is not None and principal.role != "organization":
        # A message is sent on with the person's SIP: the national portal's client (citizen
        # views only) and admin clients (the hub's operators) send none, whatever their
        # HSA-id.
        raise Forbidden(f"Messages are sent by organisations' clients; this client's role "
                        f"is {principal.role}")
    if principal is not None and principal.org != env.sender_org:
        raise Forbidden(f"MessageHeader.sender is {env.sender_org}, but the caller is "
                        f"authenticated for {principal.org}; an organisation sends its own "
                        "messages only", expression="Bundle.entry[0].resource.sender")


def process(store: Store, ctx: Context, body: Any, messaging: Messaging, *,
            asynchronous: bool = False, response_url: str | None = None) -> Reply:
    """Handle one ``$process-message`` request (see the module docstring)."""
    env = parser.envelope(body)
    _authenticate(ctx, env)
    waiting = messaging.backlog.over(store)
    if waiting is not None:  # nothing stored or remembered: the same message may come again
        MESSAGES_RECEIVED.labels(vocab.TRANSIENT_ERROR).inc()
        busy = TransientError(f"{waiting} or more deliveries are waiting to go out; the hub "
                              "takes new messages again when they are delivered: resend "
                              "this one later", headers={"Retry-After": "1"})
        if asynchronous:  # not accepted: an HTTP error, as for any async refusal
            raise busy
        return Reply(200, _response(ctx, env, messaging, vocab.TRANSIENT_ERROR, busy, None))
    with cpu.turn(store):  # (see sip_hub.cpu)
        parsed = None if asynchronous else _parse(body, ctx.base_url)
    if response_url is not None:
        if not asynchronous:
            raise BadRequest("response-url goes with async=true", expression="response-url")
        _check_url_text(response_url)
        messaging.endpoints.check_response_url(env.sender_org, response_url)
    with cpu.turn(store):
        ahead = _prepare_ahead(store, parsed, base=ctx.base_url) \
            if ahead_pays(store) and isinstance(parsed, parser.Message) else None
    now = _now()

    def work(tx: Tx) -> Reply:
        earlier = _earlier(tx, ctx, env, messaging, now, asynchronous)
        if earlier is not None:
            return earlier
        expires = now + messaging.config.cache_minutes * _US_PER_MINUTE

        def receipt(**entry: Any) -> None:
            try:
                inbox.claim(tx, sender_org=env.sender_org, header_id=env.header_id,
                            bundle_id=env.bundle_id, event=_known_event(env), now=now,
                            expires=expires, **entry)
            except Conflict:
                raise _Concurrent from None

        if asynchronous:
            receipt(state=inbox.ACCEPTED, request=exact.dumps(body), caller=_caller(ctx),
                    response_url=response_url)
            return Reply(202, information(
                f"Message {env.header_id} accepted; the response will be sent to "
                f"{response_url or 'your organisation’s message endpoint'}"))
        assert parsed is not None
        handled = _handle(tx, ctx, parsed, env, messaging, _header(body), ahead)
        if handled.code == vocab.TRANSIENT_ERROR:
            MESSAGES_RECEIVED.labels(handled.code).inc()
            raise _Uncached(Reply(200, handled.response))
        # Recorded with its response in one statement, once handled (where a concurrent copy
        # that committed first makes this one's work undone, see _Concurrent).
        receipt(state=inbox.DONE, response_code=handled.code,
                response=exact.dumps(handled.response))
        MESSAGES_RECEIVED.labels(handled.code).inc()
        return Reply(200, handled.response)

    try:
        return store.write(work)
    except _Uncached as uncached:
        return uncached.reply
    except _Concurrent:
        pass

    def answered(tx: Tx) -> Reply:
        earlier = _earlier(tx, ctx, env, messaging, now, asynchronous)
        if earlier is None:  # (the copy that came first has been forgotten since)
            raise TransientError("The message was being received concurrently; resend it")
        return earlier
    return store.write(answered)


def _known_event(env: parser.Envelope) -> str:
    """The event as the inbox records it: a SIP event code, else empty. The code as sent is
    unchecked there (an async message is parsed later): a long one or one with a NUL did not
    fit the column, a 5xx on PostgreSQL; an unknown event is answered fatal-error anyway."""
    return env.event if env.event is not None and env.event in vocab.events() else ""


# The inbox keeps an async request's response-url (at most this long) until it is answered.
_MAX_RESPONSE_URL: int = message_inbox.c.response_url.type.length  # type: ignore[attr-defined]


def _check_url_text(url: str) -> None:
    """A response-url the inbox can keep and a request can be sent to: an absolute http(s)
    URL in printable ASCII (``http.url_problem``: a non-ASCII host in its IDNA form, other
    non-ASCII characters percent-encoded; libcurl cannot take other text, and PostgreSQL
    refuses a NUL), no longer than its column (else a 5xx)."""
    problem = url_problem(url) if len(url) <= _MAX_RESPONSE_URL else \
        f"longer than {_MAX_RESPONSE_URL} characters"
    if problem is not None:
        raise BadRequest(f"response-url must be an absolute http(s) URL of at most "
                         f"{_MAX_RESPONSE_URL} characters, in printable ASCII (a host name in "
                         "its IDNA form, xn--..., any other character that is not ASCII "
                         f"percent-encoded as UTF-8); this one is {problem}",
                         expression="response-url")


def _earlier(tx: Tx, ctx: Context, env: parser.Envelope, messaging: Messaging, now: int,
             asynchronous: bool) -> Reply | None:
    """The answer when these ids were seen before; None for a new message."""
    by_header, by_bundle = inbox.lookup(tx, env.sender_org, env.header_id, env.bundle_id, now)
    if by_bundle is not None and by_bundle.header_id != env.header_id:
        raise ReusedBundleId(
            f"Bundle.id {env.bundle_id} was already received with MessageHeader.id "
            f"{by_bundle.header_id}: a new message needs a new Bundle.id", expression="Bundle.id")
    if by_header is None:
        return None
    if by_header.state == inbox.ACCEPTED:
        if asynchronous:
            return Reply(202, information(f"Message {env.header_id} is already accepted and "
                                          "being processed"))
        busy = TransientError(f"Message {env.header_id} was accepted asynchronously and is "
                              "still being processed; its response will be sent")
        return Reply(200, _response(ctx, env, messaging, vocab.TRANSIENT_ERROR, busy, None))
    assert by_header.response is not None
    return Reply(200, by_header.response)


def _parse(body: Any, base: str) -> parser.Message | SipHubError:
    """The checked message, or why it is refused (checked before any transaction opens)."""
    try:
        return parser.parse(body, base)
    except SipHubError as err:
        return err


def _header(body: Any) -> Json:
    """The MessageHeader of a body ``parser.envelope`` has accepted."""
    header: Json = body["entry"][0]["resource"]
    return header


def _handle(tx: Tx, ctx: Context, parsed: parser.Message | SipHubError, env: parser.Envelope,
            messaging: Messaging, header: Json, ahead: _Ahead | None = None) -> _Handled:
    """Apply and route one new message; the response to send and remember (``ahead``: its
    write as prepared before the transaction, see ``_prepare_ahead``)."""
    sip: SipKey | None = None
    try:
        if isinstance(parsed, SipHubError):
            raise parsed
        msg = parsed
        if ahead is None:  # (else what it read is adopted with it, or read as needed)
            tx.load(_named(msg))
        before = _parties_before(tx, msg) if msg.response is None else None
        with tx.savepoint():  # a refused message leaves nothing behind
            done = operations.apply(tx, ctx, msg, header,
                                    inactive_days=messaging.config.sip_inactive_days)
            if done is None:
                with applying_message(msg.event, msg.reason) as untold:
                    written, wrote = _apply(tx, ctx, msg, ahead)
                _require_told(msg, untold, written)
            else:
                written, wrote = done.written, True
            sip = _sip(tx, ctx, msg, written)
            _require_one_person(msg, written, sip)
            if msg.response is None:
                _require_focus_of_person(tx, ctx, msg, sip)
            _require_phase(tx, msg, sip)
            # A message whose resources all stand as it carries them changes nothing: it is
            # not sent on (the receivers would act on a change that did not happen).
            unchanged = not wrote and msg.response is None
            forwarded = _route(tx, ctx, msg, written, sip, messaging, before,
                               forward=done is None and not unchanged)
        note = f"Message {msg.header_id} ({msg.event}) processed" + (
            f" through {done.operation}; the participants are told by its notifications"
            if done is not None else "") + (f"; sent on as {forwarded}" if forwarded else "") + (
            "; it changed nothing (its resources stand as it carries them), so it was not "
            "sent on" if unchanged else "")
        return _Handled(vocab.OK, _response(ctx, env, messaging, vocab.OK, note, sip), sip)
    except SipHubError as err:
        code = vocab.TRANSIENT_ERROR if err.retryable else vocab.FATAL_ERROR
        return _Handled(code, _response(ctx, env, messaging, code, err, sip), sip)


def _named(msg: parser.Message) -> list[tuple[str, str]]:
    """The stored resources a message's handling reads: its entries' own (as they stand),
    its focus and what its resources reference, read at once (a statement each otherwise)."""
    keys = [(f.type, f.id) for f in msg.focus if f.id]
    if msg.patient_id:
        keys.append(("Patient", msg.patient_id))
    if msg.careplan_id:
        keys.append(("CarePlan", msg.careplan_id))
    for e in msg.entries:
        res = e.get("resource") or {}
        if isinstance(res.get("id"), str):
            keys.append((res["resourceType"], res["id"]))
        keys += reference_targets(res)
    return keys


def _same(stored: Stored, res: Json) -> bool:
    a = {k: v for k, v in stored.doc().items() if k != "meta"}
    return a == {k: v for k, v in res.items() if k != "meta"}


def _sort(msg: parser.Message, current: Callable[[str, str], Stored | None],
          readable: Callable[[Stored], bool]) -> tuple[dict[int, Stored], list[tuple[int, Json]]]:
    """The message's entries the hub holds as they are (index -> stored) and those to write.
    What the hub already holds, and the caller may read, is not written again (a message
    carries its context, e.g. the Patient, which the sender may not write)."""
    same: dict[int, Stored] = {}
    todo: list[tuple[int, Json]] = []
    for i, e in enumerate(msg.entries):
        res = e["resource"]
        if res["resourceType"] == "OperationOutcome":
            continue
        rid = res.get("id")
        cur = current(res["resourceType"], rid) if isinstance(rid, str) else None
        if cur is not None and not cur.deleted and _same(cur, res) and readable(cur):
            same[i] = cur
        else:
            todo.append((i, e))
    return same, todo


def _unchanged(msg: parser.Message, same: dict[int, Stored]) -> dict[str, str]:
    """fullUrl -> reference of the entries not written: the others' references to them."""
    return {msg.entries[i]["fullUrl"]: f"{cur.type}/{cur.id}" for i, cur in same.items()}


def _carried_version(res: Json) -> str | None:
    """The version of the hub's resource the sender changed (its ``meta.versionId``)."""
    meta = res.get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def _held(tx: Tx, res: Json) -> Stored | None:
    """What the hub holds of a carried resource (None: nothing, or it has no id)."""
    rid = res.get("id")
    return tx.current(res["resourceType"], rid) if isinstance(rid, str) else None


def _put_or_post(e: Json, res: Json, held: Stored | None = None) -> Json:
    """The transaction entry that writes the message's entry ``e`` as ``res``; guarded by
    the version it carries (``meta.versionId``) when the hub holds the resource (``held``):
    a version of a resource the hub does not hold is the sender's own numbering."""
    rid = res.get("id")
    request = ({"method": "PUT", "url": f"{res['resourceType']}/{rid}"} if rid
               else {"method": "POST", "url": res["resourceType"]})
    version = _carried_version(e["resource"])
    if rid and held is not None and version is not None:
        request["ifMatch"] = f'W/"{version}"'
    return {"fullUrl": e["fullUrl"], "resource": res, "request": request}


def _require_current(tx: Tx, ctx: Context, msg: parser.Message,
                     held: dict[int, Stored | None]) -> None:
    """A carried resource the hub holds, changed from a version (``meta.versionId``) that is
    no longer its current one, would undo what changed since: refused, naming both. A sender
    that may not read the resource is refused that (``_require_read``, audited): it learns
    neither the version the hub holds nor that it is deleted."""
    for i, cur in held.items():
        version = _carried_version(msg.entries[i]["resource"])
        if cur is None or version is None or version == str(cur.version_id):
            continue
        _require_read(tx, ctx, cur)
        holds = f"version {cur.version_id}" + (" (deleted)" if cur.deleted else "")
        raise PreconditionFailed(
            f"Version conflict: the message carries {cur.type}/{cur.id} changed from version "
            f"{version} (meta.versionId), but the hub holds {holds}: it was changed since, and "
            "the message would undo that. Nothing was stored; make the change to the current "
            "version and send it in a new message",
            expression=f"Bundle.entry[{i + 1}].resource.meta.versionId")


def _definition(event: str) -> str:
    """What the event tells, in English (the CodeSystem's definition after the Swedish)."""
    concept = next((c for c in vocab.code_system()["concept"] if c["code"] == event), {})
    text: str = concept.get("definition", "")
    return text.split(" / ")[-1].rstrip(".")


def _require_told(msg: parser.Message, untold: list[tuple[str, str, Fact]],
                  written: dict[int, Stored]) -> None:
    """A message's event says what it changes (the receivers act on it, and the hub tells
    nothing else of its writes): a write that means another event, or the message's event
    with another sub-code (``untold``, as ``applying_message`` collected them), refuses it."""
    if not untold:
        return
    said = msg.event + (f" ({msg.reason})" if msg.reason else "")
    entry = {(s.type, s.id): i for i, s in written.items()}
    rtype, rid, fact = untold[0]
    i = entry.get((rtype, rid))
    means = fact.event + (f" ({fact.reason})" if fact.reason else "")
    at = f"Bundle.entry[{i + 1}]" if i is not None else "Bundle.entry"
    where = f"{at} ({rtype}/{rid}) means {means}"
    if fact.event == msg.event:  # told with another sub-code
        raise sp.business_rule(
            f"{where}, but the message says {said}: MessageHeader.reason says which "
            "(the receivers act on it); nothing was stored", "Bundle.entry[0].resource.reason")
    raise sp.business_rule(
        f"{where}, but the message is {said}: {_definition(msg.event)}. A message's "
        f"event says what it changes: send this change in a {fact.event} message of "
        "its own; nothing was stored", f"{at}.resource" if i is not None else at)


_ENTRY_PREFIX = re.compile(r"Bundle\.entry\[(\d+)\]: ")


def _in_message(err: SipHubError, msg: parser.Message) -> SipHubError:
    """An error of the transaction (its diagnostics begin ``Bundle.entry[n]: ``, n the
    message's entry) with its FHIRPath expressions rooted in the message: ``CarePlan.status``
    of entry n is ``Bundle.entry[n].resource.status``; an issue without one names the
    entry's resource."""
    found = _ENTRY_PREFIX.match(err.diagnostics)
    n = int(found.group(1)) if found else 0
    if not 0 < n <= len(msg.entries):
        return err
    rtype = msg.entries[n - 1]["resource"]["resourceType"]
    root = f"Bundle.entry[{n}].resource"

    def rooted(expr: str) -> str:
        return root + expr[len(rtype):] if expr == rtype or expr.startswith(rtype + ".") \
            else expr
    err.issues = [replace(issue, expression=tuple(rooted(x) for x in issue.expression)
                          or (root,)) for issue in err.issues]
    return err


@dataclass(frozen=True, slots=True)
class _Ahead:
    """A message's write prepared before its write transaction (as REST writes are, see
    ``service.prepare_ahead``), so that the database's write lock is not held while the
    entries are compared with what is stored and checked against the rules.

    ``basis``: every stored resource that went into it, as read (None: absent). It holds in
    the write transaction that still reads each at the same version (``Tx.adopt``) and may
    still read the entries taken as unchanged; else the message is applied from scratch."""
    basis: dict[tuple[str, str], Stored | None]
    same: dict[int, Stored]
    index: int       # the one entry written
    entry: Json      # its transaction entry, its resource Prepared


def _prepare_ahead(store: Store, msg: parser.Message, base: str = "") -> _Ahead | None:
    """``_apply``'s checks for a message that writes one resource by id (the common case: an
    update with its unchanged context) against a read of the store, outside the write lock;
    None for anything else, or when the rules refuse it (the write transaction then refuses
    it, in the order of its checks). One entry only: a second one's rules could read what
    the first one's write causes."""
    if operations.SPECS.get(msg.event) is not None:
        return None  # an operation applies it
    basis: dict[tuple[str, str], Stored | None] = {}
    try:
        with store.begin(write=False, snapshot=False) as tx:
            named = _named(msg)
            tx.load(named)
            for key in named:  # (all of it adopted at once: the write's checks read some)
                basis[key] = tx.current(*key)
            same, todo = _sort(msg, tx.current, lambda cur: True)  # (entries are named)
            if len(todo) != 1 or not isinstance(todo[0][1]["resource"].get("id"), str):
                return None
            (index, e), = todo
            rtype, rid = e["resource"]["resourceType"], e["resource"]["id"]
            held = basis.get((rtype, rid))
            version = _carried_version(e["resource"])
            if held is not None and version is not None and version != str(held.version_id):
                return None  # a stale copy: the write transaction refuses it
            # As _apply and transaction_in do: references to the unchanged entries become
            # theirs, the entry's own fullUrl means itself, and its rules resolve it as written.
            res = bundles.rewrite_refs(e["resource"], {**_unchanged(msg, same),
                                                       e["fullUrl"]: f"{rtype}/{rid}"})
            localise_references(res, base)  # (as prepare would: the original holds it)
            original = exact.dumps(res)
            prepared = prepare(Prevalidated(res), tx_resolver(
                tx, {(rtype, rid): {**res, "id": rid}}, basis=basis), expected_type=rtype)
            old = basis.get((rtype, rid))  # the version it replaces: its index rows here too
            if old is not None:
                old.index_rows()
    except SipHubError:
        return None
    return _Ahead(basis, same, index,
                  _put_or_post(e, Prepared(prepared, {}, original), held))


def _apply(tx: Tx, ctx: Context, msg: parser.Message,
           ahead: _Ahead | None) -> tuple[dict[int, Stored], bool]:
    """Write the message's resources as one transaction; the stored version of each entry,
    and whether any was written (the others stand as the message carries them). Errors name
    the message's entries (``Bundle.entry[i + 1]`` for ``msg.entries[i]``)."""
    if ahead is not None and tx.adopt(ahead.basis) and \
            all(ctx.access.can_read(tx, cur) for cur in ahead.same.values()):
        out, entries, todo = dict(ahead.same), [ahead.entry], [ahead.index]
        held = {ahead.index: _held(tx, msg.entries[ahead.index]["resource"])}
    else:
        out, pairs = _sort(msg, tx.current, lambda cur: ctx.access.can_read(tx, cur))
        if not pairs:
            return out, False
        unchanged = _unchanged(msg, out)
        held = {i: _held(tx, e["resource"]) for i, e in pairs}
        # The parser validated the whole Bundle's structure, entries included; the rewrite
        # builds new containers (the message keeps its own).
        entries = [_put_or_post(e, Prevalidated(bundles.rewrite_refs(e["resource"], unchanged)),
                                held[i]) for i, e in pairs]
        todo = [i for i, _ in pairs]
    _require_current(tx, ctx, msg, held)
    try:
        result = bundles.transaction_in(
            tx, ctx, {"resourceType": "Bundle", "type": "transaction", "entry": entries},
            "minimal", numbers=[i + 1 for i in todo])
    except SipHubError as err:
        raise _in_message(err, msg) from None
    for i, answered in zip(todo, result["entry"]):
        target = split_reference(answered.get("fullUrl", ""), ctx.base_url)
        stored = tx.current(*target) if target else None
        if stored is not None:
            out[i] = stored
    return out, True


def _focus_id(msg: parser.Message, written: dict[int, Stored], rtype: str) -> str | None:
    for f in msg.focus:
        if f.type == rtype:
            stored = written.get(f.entry) if f.entry is not None else None
            return stored.id if stored is not None else f.id
    return None


def _sip(tx: Tx, ctx: Context, msg: parser.Message, written: dict[int, Stored]) -> SipKey:
    """The SIP the message concerns (as stored, after applying it), which the sender must be
    allowed to see."""
    plan = msg.careplan_id or _focus_id(msg, written, "CarePlan")
    patient = _focus_id(msg, written, "Patient")
    rtype, rid = ("CarePlan", plan) if plan else ("Patient", patient)
    cur = tx.current(rtype, rid or "") if rid else None
    if cur is None or cur.deleted:
        raise NotFound(f"The SIP the message concerns, {rtype}/{rid}, is not known here",
                       expression="Bundle.entry[0].resource.focus")
    _require_read(tx, ctx, cur)
    if rtype == "CarePlan":
        subject = split_reference((cur.doc().get("subject") or {}).get("reference", ""))
        of = subject[1] if subject and subject[0] == "Patient" else None
        # Routed by the patient's consent: a Patient in focus that is not the plan's would
        # send the plan to those another person's consent covers (rule 1).
        if patient is not None and of is not None and patient != of:
            raise BadRequest(f"MessageHeader.focus names CarePlan/{rid} of Patient/{of} and "
                             f"Patient/{patient}: a message concerns one person's SIP",
                             expression="Bundle.entry[0].resource.focus")
        patient = patient or of
    if patient is None:
        raise NotFound(f"CarePlan/{rid} names no Patient",
                       expression="Bundle.entry[0].resource.focus")
    return SipKey(patient, plan or "")


def _require_read(tx: Tx, ctx: Context, cur: Stored) -> None:
    """The sender may read ``cur`` as a REST read of it may: its role and scopes
    (``Access.check``), then the consent. A refusal is audited as that read's is (outside
    the transaction)."""
    try:
        ctx.access.check(cur.type, "r")
        ctx.access.require_read(tx, cur)
    except Forbidden as err:
        ctx.refused(_AUDITED_AS, cur, cur.type, err, reads=tx)
        raise


def _require_focus_of_person(tx: Tx, ctx: Context, msg: parser.Message, sip: SipKey) -> None:
    """The stored resources a message names in its focus are sent on with it: each must be
    one its sender may read and of the person whose SIP it concerns (rule 1), or the message
    would pass on what the consent keeps from its sender, or another person's data to those
    this person's consent covers. (Its own entries are checked as written.)"""
    for i, f in enumerate(msg.focus):
        cur = tx.current(f.type, f.id) if f.entry is None and f.id else None
        if cur is None or cur.deleted:
            continue
        _require_read(tx, ctx, cur)
        if patients_of(cur.type, cur.doc(), cur.id, tx_resolver(tx)) != {sip.patient_id}:
            err = Forbidden(
                f"MessageHeader.focus names {cur.type}/{cur.id}, which is not of "
                f"Patient/{sip.patient_id} alone: a message carries the data of the person "
                "whose SIP it concerns only (rule 1); nothing was stored",
                expression=f"Bundle.entry[0].resource.focus[{i}]")
            ctx.refused(_AUDITED_AS, cur, cur.type, err, reads=tx)
            raise err


def _require_one_person(msg: parser.Message, written: dict[int, Stored], sip: SipKey) -> None:
    """A message is routed by the consent of the person whose SIP it concerns, so it may carry
    that person's data only (rule 1)."""
    for i, stored in sorted(written.items()):
        others = patients_of(stored.type, stored.doc(), stored.id) - {sip.patient_id}
        if others:
            raise Forbidden(
                f"The message concerns the SIP of Patient/{sip.patient_id} but carries "
                f"{stored.type}/{stored.id} of Patient/{sorted(others)[0]}: a message carries "
                "the data of the person whose SIP it concerns only (rule 1); nothing was "
                "stored", expression=f"Bundle.entry[{i + 1}].resource")


# Events that say where the SIP's plan stands (as ``events.classify`` emits them): after the
# message is applied the plan must stand there, else the message is out of order (e.g.
# plan-established for a plan still in draft) and is refused rather than sent on.
_PHASES_OF_EVENT: dict[str, frozenset[str]] = {
    vocab.PLAN_ESTABLISHED: frozenset({sp.ESTABLISHED, sp.FOLLOW_UP}),
    vocab.FOLLOW_UP_DONE: frozenset({sp.ESTABLISHED}),
    vocab.INSATS_STATUS_CHANGED: frozenset({sp.ESTABLISHED, sp.FOLLOW_UP}),
    vocab.REVISION_APPROVED: frozenset({sp.ESTABLISHED, sp.FOLLOW_UP}),
    vocab.SIP_CLOSED: frozenset({sp.CLOSED}),
}


def _require_phase(tx: Tx, msg: parser.Message, sip: SipKey) -> None:
    phases = _PHASES_OF_EVENT.get(msg.event)
    plan = tx.current("CarePlan", sip.careplan_id) if phases and sip.careplan_id else None
    if phases is None or plan is None or plan.deleted:
        return
    phase = sp.phase_of(plan.doc())
    if phase not in phases:
        raise sp.business_rule(
            f"The event {msg.event} is out of order: CarePlan/{sip.careplan_id} is in the "
            f"phase '{phase}', not {' or '.join(sorted(phases))}; nothing was stored",
            "Bundle.entry[0].resource.eventCoding")


def _parties_before(tx: Tx, msg: parser.Message) -> tuple[str, set[str]] | None:
    """The person whose SIP the message names, as the hub knows it before the message, and
    the organisations that take part in that SIP then (a grant, reading or not)."""
    patient = msg.patient_id
    if patient is None and msg.careplan_id:
        cur = tx.current("CarePlan", msg.careplan_id)
        if cur is not None and not cur.deleted:
            subject = split_reference((cur.doc().get("subject") or {}).get("reference", ""))
            patient = subject[1] if subject and subject[0] == "Patient" else None
    if patient is None:
        return None
    return patient, {g.org for g in tx.grants(patient)}


def _route(tx: Tx, ctx: Context, msg: parser.Message, written: dict[int, Stored], sip: SipKey,
           messaging: Messaging, before: tuple[str, set[str]] | None = None, *,
           forward: bool = True) -> str | None:
    """Send the message on to the organisations the consent covers once it is applied (the
    others, named as destinations or not, get nothing: rule 1); None for a response, which
    concerns only the hub, and when not ``forward`` (an operation's own writes told them).
    Its destinations must take part in the SIP, before the message (``before``: the person
    and the parties then) or after it: a consent withdrawn or narrowed, or a SIP closed, is
    addressed to the participants as they were."""
    if msg.response is not None:
        return None
    parties = {g.org for g in tx.grants(sip.patient_id)}
    if before is not None and before[0] == sip.patient_id:
        parties |= before[1]
    strangers = set(msg.destinations) - parties - {msg.sender_org, messaging.config.hub_hsa_id}
    if strangers:
        err = Forbidden(f"{', '.join(sorted(strangers))} "
                        f"{'takes' if len(strangers) == 1 else 'take'} no part in the SIP of "
                        f"Patient/{sip.patient_id} (neither its coordinator nor in its care "
                        "team): the message cannot be sent there (rule 1); nothing was stored",
                        expression="Bundle.entry[0].resource.destination")
        # A disclosure refused: in the person's access log (outside the transaction).
        person = tx.current("Patient", sip.patient_id)
        ctx.refused(_AUDITED_AS, person if person and not person.deleted else None,
                    "Patient", err)
        raise err
    if not forward:
        return None
    person = tx.current("Patient", sip.patient_id)
    if person is not None and not person.deleted:
        _require_read(tx, ctx, person)  # (sent on with the message)
    focus = []
    for f in msg.focus:
        stored = written.get(f.entry) if f.entry is not None else None
        focus.append(f"{stored.type}/{stored.id}" if stored else f"{f.type}/{f.id}")
    forwarded = messaging.emitter.emit(
        tx, msg.event, sender_org=msg.sender_org, patient_id=sip.patient_id,
        careplan_id=sip.careplan_id or None, focus=focus,
        resources=[s.doc() for s in written.values()], reason=msg.reason, base=ctx.base_url)
    if forwarded is not None:
        _audit_forward(tx, ctx, msg, written, sip, focus, forwarded)
    return forwarded


# How a message's access to personal data is audited: the $process-message operation (its
# writes are audited as writes, by the pipeline they go through).
_AUDITED_AS = "operation"


def _audit_forward(tx: Tx, ctx: Context, msg: parser.Message, written: dict[int, Stored],
                   sip: SipKey, focus: list[str], forwarded: str) -> None:
    """Audit the message sent on, in its transaction: it carries the SIP's stored plan and
    person (and what the message wrote) to the organisations the consent covers, a
    disclosure of personal data also when the message writes nothing."""
    carried: dict[tuple[str, str], Stored] = {(s.type, s.id): s for s in written.values()}
    refs = focus + ([f"CarePlan/{sip.careplan_id}"] if sip.careplan_id else []) + [
        f"Patient/{sip.patient_id}"]
    for ref in refs:
        target = split_reference(ref)
        if target is None or target in carried:
            continue
        cur = tx.current(*target)
        if cur is not None and not cur.deleted:
            carried[target] = cur
    ctx.record(_AUDITED_AS, list(carried.values()), tx=tx,
               detail=f"$process-message {msg.event} {msg.header_id} from {msg.sender_org}: "
                      f"sent on as message {forwarded} to the organisations the consent "
                      "covers")


def _response(ctx: Context, env: parser.Envelope, messaging: Messaging, code: str,
              detail: str | SipHubError, sip: SipKey | None) -> Json:
    if sip is not None:
        focus = [f"Patient/{sip.patient_id}"] + (
            [f"CarePlan/{sip.careplan_id}"] if sip.careplan_id else [])
    else:  # the SIP as the request named it, by relative reference
        focus = []
        for rtype in ("CarePlan", "Patient"):
            named = next((r for r in env.focus if (t := split_reference(r)) and t[0] == rtype
                          and r == f"{t[0]}/{t[1]}"), None)
            if named:
                focus.append(named)
    outcome = from_error(detail) if isinstance(detail, SipHubError) else information(detail)
    dest = builder.Party(env.sender_org,
                         env.source_endpoint or messaging.endpoints.address(env.sender_org))
    return builder.response(env.header_id, code, fhir_base=ctx.base_url, destination=dest,
                            focus=focus, outcome=outcome,
                            hub_org=messaging.config.hub_hsa_id or None)


# -- asynchronous requests ----------------------------------------------------------------------

def _caller(ctx: Context) -> bytes | None:
    p = ctx.access.principal
    if p is None:
        return orjson.dumps({"base_url": ctx.base_url})
    return orjson.dumps({"base_url": ctx.base_url, "client_id": p.client_id, "org": p.org,
                         "role": p.role, "scope": p.scope_text,
                         "personal_data": p.personal_data})


def _context(caller: bytes | None, audit: AuditLog | None, messaging: Messaging) -> Context:
    data = orjson.loads(caller or b"{}")
    principal = None
    if "org" in data:
        principal = Principal(data["client_id"], data["org"], data["role"],
                              parse_scopes(data["scope"]), data["personal_data"], data["scope"])
    # With the emitter: an operation applied later notifies as it would have at once.
    return Context(data.get("base_url", ""), access=Access.for_principal(principal),
                   audit=audit, messaging=messaging.emitter)


def process_accepted(store: Store, messaging: Messaging, *, audit: AuditLog | None = None,
                     limit: int = 20, waiting: bool | None = None) -> int:
    """Process accepted async requests (each in its own transaction) and queue each response
    to its sender; returns how many were processed. ``waiting``: whether any are, as the
    caller read it (``store.outbox.work_due``); None: read it here."""
    if waiting is None:
        with store.begin(write=False) as tx:
            waiting = inbox.any_accepted(tx)
    if not waiting:
        return 0

    def one(tx: Tx) -> bool | None:
        """Process the oldest accepted request: None when there is none, else whether it
        is to be tried again later (a transient error keeps it accepted)."""
        rows = inbox.claim_accepted(tx, 1)
        if not rows:
            return None
        row = rows[0]
        assert row.request is not None
        ctx = _context(row.caller, audit, messaging)
        body = exact.loads(row.request)
        handled = _handle(tx, ctx, _parse(body, ctx.base_url), parser.envelope(body),
                          messaging, _header(body))
        MESSAGES_RECEIVED.labels(handled.code).inc()
        if handled.code == vocab.TRANSIENT_ERROR:
            return True
        inbox.complete(tx, row.sender_org, row.header_id, handled.code,
                       exact.dumps(handled.response))
        enqueue(tx, handled.response, [row.sender_org], kind=RESPONSE,
                sip=handled.sip or SipKey("", ""), endpoint_url=row.response_url)
        return False

    done = 0
    for _ in range(limit):
        # Each in a write of its own (on SQLite in the group-commit round of the moment).
        if store.write(one) is not False:  # none left, or one to try again later
            break
        done += 1
    return done
