"""FHIR RESTful interactions, independent of HTTP: REST routes and Bundle entries share them.

Every interaction passes the same gates in the same order: the caller's scopes and role
(``Access.check``), the SIP access rules on what it reads or changes, the write pipeline
(``service.prepare``), the grant refresh that keeps access in step with consent, and the audit
record of the access.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import orjson

from . import access as acl, process
from .access import Access
from .audit import AuditLog, AuditRecord
from .errors import (BadRequest, Conflict, Forbidden, Gone, NotFound, PreconditionFailed,
                     SipHubError, Unprocessable)
from .fhir import exact, patch as json_patch, search as fhir_search, subset as fhir_subset
from .fhir.dates import format_instant, now_utc
from .fhir.outcome import information, warning
from .fhir.search_params import params_for
from .fhir.validation import ID_RE, check_id
from .service import Resolve, adopted, check_type, prepare_in, tx_resolver
from .store import Moved, Stored, Tx

if TYPE_CHECKING:
    from .messaging.events import Emitter


@dataclass(frozen=True, slots=True)
class Context:
    base_url: str  # the FHIR base, e.g. http://127.0.0.1:8080/fhir
    default_count: int = 50
    max_count: int = 1000
    lenient: bool = False
    access: Access = field(default_factory=lambda: Access.for_principal(None))
    audit: AuditLog | None = None
    # Writes the notifications a change causes to the outbox, in the change's transaction.
    messaging: Emitter | None = None
    # A transaction Bundle's database transaction: what its entries read is logged in it,
    # so that a transaction that fails leaves no record of reads it never answered with.
    within: Tx | None = None
    # A transaction Bundle's plans written as established and the Provenances that approve
    # them (``process.check_new_plan``).
    approvals: process.Approvals | None = None
    # A transaction Bundle's resources by (type, id), as its entries write them: whose a
    # Provenance written before the record it targets is (``tx_resolver``).
    pending: dict[tuple[str, str], dict[str, Any]] | None = None
    # A transaction Bundle's writes (type, old, new, patients regranted), whose
    # notifications it emits once all its entries are written (``bundles.transaction_in``).
    changes: list[tuple[str, dict[str, Any] | None, dict[str, Any] | None,
                        frozenset[str]]] | None = None
    # The bound of a body (SIP_HUB_MAX_BODY_BYTES), which also bounds what a patch makes.
    max_bytes: int = 5 * 1024 * 1024

    def record(self, interaction: str, stored: list[Stored], *, tx: Tx | None = None,
               outcome: str = "0", query: str | None = None, detail: str | None = None,
               rtype: str | None = None, named: frozenset[str] = frozenset(),
               reads: Tx | None = None) -> None:
        """Audit an access to personal data (only those: directory reads are not logged).
        ``named``: patients the request named besides those of ``stored``. ``reads``: the
        transaction the access read in (else ``tx``), which tells whose a Provenance is
        (the person of the plan it targets, also one its transaction writes after it)."""
        if self.audit is None:
            return
        personal = [s for s in stored if acl.is_personal(s.type)]
        if not personal and not (rtype and acl.is_personal(rtype)):
            return
        patients: set[str] = set(named)
        via = reads or tx or self.within
        resolve = tx_resolver(via, self.pending) if via is not None else None
        for s in personal:
            patients |= acl.patients_of(s.type, s.doc() if s.content else None, s.id,
                                        resolve)
        rec = AuditRecord(interaction, self.access.principal,
                          tuple((s.type, s.id) for s in personal), frozenset(patients),
                          outcome, query, detail)
        tx = tx or (self.within if outcome == "0" else None)
        if tx is not None:
            self.audit.in_tx(tx, rec)
        else:
            self.audit.later(rec)

    def refused(self, interaction: str, stored: Stored | None, rtype: str,
                err: SipHubError, *, named: frozenset[str] = frozenset(),
                reads: Tx | None = None) -> None:
        """Audit a refusal (outside any transaction, which is rolled back). ``named``: the
        patients it was about besides those of ``stored`` (a refused create's); ``reads``:
        the transaction to resolve what they are about in (a Provenance's target)."""
        self.record(interaction, [stored] if stored else [], outcome="4", rtype=rtype,
                    detail=err.diagnostics, named=named, reads=reads)


@dataclass(slots=True)
class Result:
    status: int
    stored: Stored | None = None
    # An OperationOutcome or Bundle to answer with instead of the stored resource.
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


def etag(stored: Stored) -> str:
    return f'W/"{stored.version_id}"'


def not_modified(if_none_match: str | None, since: datetime | None, tag: str,
                 last_updated: int) -> bool:
    """A conditional read (FHIR http.html, "conditional read"; RFC 9110 13.1.2, 13.1.3): the
    client's copy is current when If-None-Match names this version's ETag ``tag`` (weakly
    compared, or ``*``), or, without If-None-Match, when nothing changed since ``since``
    (If-Modified-Since, to the second; None: none, or not a date with its zone). A system
    polling a plan then gets a 304 without the plan. From the headers of a GET, or a
    Bundle entry's ``request.ifNoneMatch`` and ``ifModifiedSince``."""
    if if_none_match is not None:
        wanted = tag.removeprefix("W/")
        return any(t.strip() == "*" or t.strip().removeprefix("W/") == wanted
                   for t in if_none_match.split(","))
    if since is None or since.tzinfo is None:
        return False
    return last_updated // 1_000_000 <= int(since.timestamp())


def parse_etag(value: str) -> int:
    v = value.strip()
    if v.startswith("W/"):
        v = v[2:]
    version = fhir_search.uint(v.strip('"'), fhir_search.MAX_INT)
    if version is None:
        raise BadRequest(f"If-Match must be a version ETag like W/\"3\", not '{value[:40]}'")
    if version > fhir_search.MAX_VERSION:
        # A well-formed version no resource can have: a mismatch, whatever the resource.
        raise PreconditionFailed(f"If-Match asked for version {version}; no version goes "
                                 f"beyond {fhir_search.MAX_VERSION}")
    return version


def expected_version(if_match: str | None, cur: Stored | None, what: str) -> int | None:
    """The version a write guarded by ``If-Match`` must find current (None: unguarded).
    Besides one version ETag, HTTP's ``*`` (any current version: the resource must exist)
    and a list of ETags (any of them) are answered against ``cur``, the version read before
    the write, which the write's version check then holds to."""
    if if_match is None or not if_match.strip():
        return None
    live = cur if cur is not None and not cur.deleted else None
    if if_match.strip() == "*":
        if live is None:
            raise PreconditionFailed(f"If-Match: * and {what} has no current version")
        return live.version_id
    tags = [t for t in (t.strip() for t in if_match.split(",")) if t]
    if len(tags) == 1:
        return parse_etag(tags[0])
    versions = []
    for tag in tags:
        try:
            versions.append(parse_etag(tag))
        except PreconditionFailed:
            continue  # beyond any version: matches nothing, the others may
    if live is None or live.version_id not in versions:
        at = f"is at version {live.version_id}" if live else "has no current version"
        raise PreconditionFailed(f"Version conflict: {what} {at}, If-Match asked for one "
                                 f"of {', '.join(map(str, versions)) or 'none'}")
    return live.version_id


def location(ctx: Context, stored: Stored) -> str:
    return f"{ctx.base_url}/{stored.type}/{stored.id}/_history/{stored.version_id}"


Criteria = str | list[tuple[str, str]]


def _conditional_query(rtype: str, criteria: Criteria, base_url: str
                       ) -> fhir_search.SearchQuery:
    items = parse_qsl(criteria, keep_blank_values=True) if isinstance(criteria, str) else criteria
    items = [(k, v) for k, v in items if not k.startswith("_format")]
    if not items:
        raise BadRequest("A conditional interaction needs search criteria")
    query = fhir_search.parse(rtype, items, default_count=2, max_count=2, base_url=base_url)
    query.count, query.total = 2, False
    return query


def _limit_chains(ctx: Context, query: fhir_search.SearchQuery) -> None:
    """A chain finds through the targets the caller may search and see, and no others."""
    for cr in query.criteria:
        if cr.chain_type is not None:
            ctx.access.check(cr.chain_type, "s")
            cr.chain_visibility = ctx.access.visibility(cr.chain_type)


def _match_key(rtype: str, query: fhir_search.SearchQuery) -> str:
    # Keyed by the criteria as parsed, so that two spellings of one identifier (a
    # personnummer with and without its dash) wait for each other too.
    return f"match:{rtype}?" + "&".join(sorted(map(repr, query.criteria)))


def match_key(rtype: str, criteria: Criteria, base_url: str) -> str | None:
    """The lock ``match`` takes for these criteria (None: they are refused when matched), for
    a caller that takes several at once (``Tx.serialise_all``)."""
    try:
        return _match_key(rtype, _conditional_query(rtype, criteria, base_url))
    except SipHubError:
        return None


def match(tx: Tx, ctx: Context, rtype: str, criteria: Criteria) -> list[Stored]:
    """Up to two matches for a conditional interaction, among what the caller may see
    (``several`` refuses more than one)."""
    query = _conditional_query(rtype, criteria, ctx.base_url)
    # Two conditional creates (or updates) with the same criteria at once would both find
    # nothing and both create: the second waits for the first and then finds its resource.
    tx.serialise(_match_key(rtype, query))
    _limit_chains(ctx, query)
    vis = ctx.access.visibility(rtype)
    if vis is False:
        return []
    return tx.search(query, vis)[0]


def several(ctx: Context, rtype: str, criteria: Criteria, found: list[Stored],
            err: PreconditionFailed, *, reads: Tx | None = None) -> PreconditionFailed:
    """``err``, the refusal of a conditional interaction whose criteria matched several
    resources, audited as the search it was: it told the caller that the person has
    several (as a count would, which is logged). Recorded outside the transaction, which is
    rolled back; ``reads``: the transaction it read in."""
    query = criteria if isinstance(criteria, str) else urlencode(criteria)
    ctx.record("search-type", found, outcome="4", rtype=rtype, query=query,
               detail=err.diagnostics, reads=reads)
    return err


def _guard_deleted(tx: Tx, ctx: Context, cur: Stored, interaction: str) -> None:
    """A deleted record of a person's is the business of its owner (another learns neither
    that it is deleted nor its version); a directory entry's (an Organization) of anyone
    who reads the directory, as it was before. The refusal names the person of the version
    deleted (the tombstone has no content), so that it is in their access log."""
    if acl.is_personal(cur.type) and not ctx.access.unrestricted \
            and cur.owner != ctx.access.org:
        err = Forbidden(acl.NOT_COVERED)
        last = tx.version(cur.type, cur.id, cur.version_id - 1)
        ctx.refused(interaction, last if last and last.content else cur, cur.type, err,
                    reads=tx)
        raise err


def _guard_read(tx: Tx, ctx: Context, stored: Stored, interaction: str) -> None:
    try:
        ctx.access.require_read(tx, stored)
    except Forbidden as err:
        ctx.refused(interaction, stored, stored.type, err, reads=tx)
        raise


def _guard_write(tx: Tx, ctx: Context, rtype: str, old: Stored | None,
                 new: dict[str, Any] | None, interaction: str, *,
                 withheld: bool = False) -> None:
    try:
        ctx.access.require_write(tx, rtype, old, new, withheld=withheld)
    except Forbidden as err:
        # A create has no ``old``: the refusal names the person the new resource is about.
        named = acl.patients_of(rtype, new, resolve=tx_resolver(tx, ctx.pending)) if new \
            else set()
        ctx.refused(interaction, old, rtype, err, named=frozenset(named), reads=tx)
        raise


def _process_refused(tx: Tx, ctx: Context, interaction: str, old: Stored | None, rtype: str,
                     new: dict[str, Any], err: SipHubError) -> None:
    """Audit a write the SIP process rules refused: it was decided on the SIP's state, which
    the refusal tells. A create has no ``old``: the record names the person the new resource
    is about (the plan it would join, say)."""
    named = acl.patients_of(rtype, new, resolve=tx_resolver(tx, ctx.pending)) \
        if old is None else set()
    ctx.refused(interaction, old, rtype, err, named=frozenset(named), reads=tx)


def _changed(tx: Tx, ctx: Context, rtype: str, old: dict[str, Any] | None,
             new: dict[str, Any] | None, *, withheld: bool = False) -> None:
    """What every change sets off, in its own transaction: grants, then notifications (none
    for a withheld resource: no one else is told of it). A transaction Bundle's are noted
    for it to emit at its end (``Context.changes``)."""
    regranted = acl.after_write(tx, rtype, old, new)
    if ctx.messaging is not None and not withheld:
        if ctx.changes is not None:
            ctx.changes.append((rtype, old, new, frozenset(regranted)))
        else:
            ctx.messaging.after_write(tx, ctx, rtype, old, new, regranted)


def _written(tx: Tx, ctx: Context, interaction: str, old: Stored | None, new: Stored) -> None:
    old_json = old.doc() if old is not None and old.content is not None else None
    _changed(tx, ctx, new.type, old_json, new.doc() if new.content else None,
             withheld=new.withheld)
    ctx.record(interaction, [new], tx=tx)


# -- instance and type interactions --------------------------------------------------------

def read(tx: Tx, ctx: Context, rtype: str, rid: str,
         items: list[tuple[str, str]] | None = None) -> Result:
    """``items``: the request's query parameters (``_summary``, ``_elements``)."""
    check_type(rtype)
    ctx.access.check(rtype, "r")
    check_id(rid)
    subset = fhir_search.read_subset(rtype, items, lenient=ctx.lenient) if items else None
    cur = tx.current(rtype, rid)
    if cur is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    if cur.deleted:
        _guard_deleted(tx, ctx, cur, "read")
        raise Gone(f"{rtype}/{rid} was deleted (version {cur.version_id})",
                   headers={"ETag": etag(cur)})
    _guard_read(tx, ctx, cur, "read")
    ctx.record("read", [cur], reads=tx)
    return _subset_result(cur, subset)


def _subset_result(stored: Stored, subset: fhir_subset.Subset | None) -> Result:
    if subset is None:
        return Result(200, stored)
    return Result(200, stored, fhir_subset.apply(stored.doc(), subset))


def vread(tx: Tx, ctx: Context, rtype: str, rid: str, vid: str,
          items: list[tuple[str, str]] | None = None) -> Result:
    check_type(rtype)
    ctx.access.check(rtype, "r")
    check_id(rid)
    subset = fhir_search.read_subset(rtype, items, lenient=ctx.lenient) if items else None
    version = fhir_search.uint(vid)
    cur = tx.current(rtype, rid)
    if cur is None:
        raise NotFound(f"{rtype}/{rid} has no version '{vid[:40]}'")
    if version == cur.version_id:  # (the common case: decided as its read is)
        _guard_read(tx, ctx, cur, "vread")
        ver: Stored | None = cur
    else:
        # (none after ``cur``, on which access is decided: one written since is the next
        # request's, perhaps after a consent was withdrawn or in the resource's next life)
        ver = tx.version(rtype, rid, version) \
            if version is not None and version < cur.version_id else None
        # Decided before a version is found missing: a caller who may not read the record
        # counted its versions by the 404s.
        _guard_version(tx, ctx, cur, ver, "vread")
    if ver is None:
        raise NotFound(f"{rtype}/{rid} has no version '{vid[:40]}'")
    if ver.deleted:
        raise Gone(f"{rtype}/{rid} version {vid} is a deletion", headers={"ETag": etag(ver)})
    ctx.record("vread", [ver], reads=tx)
    return _subset_result(ver, subset)


def _guard_version(tx: Tx, ctx: Context, cur: Stored, ver: Stored | None,
                   interaction: str) -> int:
    """Refuse a read of the version ``ver`` (None: one that does not exist, or the resource's
    history) of the resource now at ``cur`` unless the caller may read the resource as it
    is now (a deleted one as its deletion left it: a withdrawn consent closes old versions
    too) and that version as it was (``Access.can_read_version``). Returns the first
    version of the resource's present life, after its last deletion (1 for a caller who
    reads every version: no statement)."""
    if ctx.access.unrestricted or not acl.is_personal(cur.type):
        return 1
    first = tx.deleted_before(cur.type, cur.id, cur.version_id) + 1
    now = cur
    if cur.deleted:
        now = tx.version(cur.type, cur.id, cur.version_id - 1) or cur
    for judged in (now, ver):
        if judged is not None and not ctx.access.can_read_version(tx, judged, cur, first):
            err = Forbidden(acl.NOT_COVERED)
            ctx.refused(interaction, judged if judged.content else now, cur.type, err,
                        reads=tx)
            raise err
    return first


def create(tx: Tx, ctx: Context, rtype: str, res: Any, *, if_none_exist: str | None = None,
           rid: str | None = None, resolve: Resolve | None = None,
           process_rules: bool = True) -> Result:
    """Create (the store assigns the id, or a transaction's ``rid``). ``process_rules=False``
    is for the SIP process operations, as for ``update``."""
    check_type(rtype, write=True)
    ctx.access.check(rtype, "c")
    if if_none_exist:
        found = match(tx, ctx, rtype, if_none_exist)
        if len(found) > 1:
            raise several(ctx, rtype, if_none_exist, found, PreconditionFailed(
                f"If-None-Exist matched {len(found)} {rtype} resources"), reads=tx)
        if found:
            ctx.record("read", found, reads=tx)
            return Result(200, found[0])
    prepared = prepare_in(tx, res, resolve, rtype, ctx.base_url)
    _guard_write(tx, ctx, rtype, None, prepared, "create")
    if process_rules:
        try:
            process.check_plain_create(tx, ctx, prepared, rid)
        except SipHubError as err:
            _process_refused(tx, ctx, "create", None, rtype, prepared, err)
            raise
    process.check_new_plan(ctx, None, prepared, rid)
    stored = tx.create(prepared, rid, owner=ctx.access.org,
                       withheld=ctx.access.withholds(tx, rtype, prepared, pending=ctx.pending))
    _written(tx, ctx, "create", None, stored)
    return Result(201, stored)


def update(tx: Tx, ctx: Context, rtype: str, rid: str, res: Any, *, if_match: str | None = None,
           resolve: Resolve | None = None, process_rules: bool = True,
           locked: bool = False, interaction: str = "update") -> Result:
    """Update (or create with a client id). ``process_rules=False`` is for the SIP process
    operations, which keep the process rules themselves (see ``process.check_plain_update``).
    ``interaction``: what the access log calls it (a patch is written as an update)."""
    check_type(rtype, write=True)
    ctx.access.check(rtype, "u")
    check_id(rid)
    if isinstance(res, dict) and res.get("id") != rid:
        # (FHIR http.html#update: the body SHALL have the URL's id; one without any was told
        # its id 'None' did not match)
        if res.get("id") is None:
            raise BadRequest(f"The resource has no id: an update's body carries the id of the "
                             f"URL, '{rid}'", expression=f"{rtype}.id")
        raise BadRequest(f"The resource id '{res.get('id')}' does not match the URL id '{rid}'",
                         expression=f"{rtype}.id")
    res = adopted(tx, res, resolve)  # before the read of what it replaces, which it read
    old = tx.current(rtype, rid)
    if old is None or old.deleted:  # (a create, also after a delete)
        ctx.access.check(rtype, "c")
    prepared = prepare_in(tx, res, resolve, rtype, ctx.base_url)
    current = old if old and not old.deleted else None
    # Decided once, with the resources written with it: refused for another organisation's
    # record (``require_write``), stored as decided for the caller's own.
    withheld = ctx.access.withholds(tx, rtype, prepared, current.doc() if current else None,
                                    pending=ctx.pending)
    _guard_write(tx, ctx, rtype, current, prepared, interaction, withheld=withheld)
    if process_rules:
        try:
            process.check_plain_update(tx, ctx, current.doc() if current else None, prepared)
        except SipHubError as err:  # refused on what it read: audited, outside the tx
            _process_refused(tx, ctx, interaction, current, rtype, prepared, err)
            raise
        process.check_new_plan(ctx, current.doc() if current else None, prepared, rid)
    version = expected_version(if_match, old, f"{rtype}/{rid}")
    try:
        # The rules decided on ``old``: the write replaces that version or none (a write
        # that waited behind another replaced a version no rule had checked: a PUT undid a
        # $transition, a withdrawal kept the grants of a re-grant).
        stored, created = tx.update(prepared, rid, if_match=version,
                                    expect=old.version_id if old else None,
                                    owner=ctx.access.org, withheld=withheld)
    except (Moved, Conflict) as exc:
        # (PostgreSQL) decided again on the version now current: another write replaced the
        # one decided on (Moved), or another request created what this one would create
        # (a Conflict of a create: all but one of eight PUTs of one new id answered a 409).
        if locked or (not isinstance(exc, Moved) and old is not None):
            raise
        tx.lock_resource(rtype, rid)
        return update(tx, ctx, rtype, rid, res, if_match=if_match, resolve=resolve,
                      process_rules=process_rules, locked=True, interaction=interaction)
    # A version after a tombstone creates the resource again (FHIR: 201, as a create; its
    # owner and the 'c' scope are a create's, above).
    created = created or (old is not None and old.deleted)
    _written(tx, ctx, "create" if created else interaction, old, stored)
    return Result(201 if created else 200, stored)


def patch(tx: Tx, ctx: Context, rtype: str, rid: str, ops: Any, *,
          if_match: str | None = None) -> Result:
    """FHIR's patch with a JSON Patch: applied to the current version, which is locked first
    (no other write changes it between the patch and its write), then written as an update
    of that version through every rule of one. The caller must be able to read the resource
    (a ``test`` operation would tell what it holds)."""
    check_type(rtype, write=True)
    ctx.access.check(rtype, "u")
    ctx.access.check(rtype, "r")  # (a test operation tells what the resource holds)
    check_id(rid)
    change = json_patch.parse(ops)
    tx.lock_resource(rtype, rid)
    cur = tx.current(rtype, rid)
    if cur is None:
        raise NotFound(f"{rtype}/{rid} is not known: a patch changes a resource that is")
    if cur.deleted:
        _guard_deleted(tx, ctx, cur, "patch")
        raise Gone(f"{rtype}/{rid} was deleted (version {cur.version_id})",
                   headers={"ETag": etag(cur)})
    _guard_read(tx, ctx, cur, "patch")
    # Who may not write it learns nothing from the patch's tests either.
    _guard_write(tx, ctx, rtype, cur, cur.doc(), "patch")
    _held_to(expected_version(if_match, cur, f"{rtype}/{rid}"), cur)
    patched = json_patch.apply(cur.doc(), change, ctx.max_bytes)
    if not isinstance(patched, dict):
        raise Unprocessable("The patch replaces the whole resource with something else")
    return update(tx, ctx, rtype, rid, patched, if_match=etag(cur), locked=True,
                  interaction="patch")


def _held_to(version: int | None, cur: Stored) -> None:
    """A write of the locked version ``cur`` that If-Match asked to find at ``version``."""
    if version is not None and version != cur.version_id:
        raise PreconditionFailed(f"Version conflict: {cur.type}/{cur.id} is at version "
                                 f"{cur.version_id}, If-Match asked for {version}")


def conditional_update(tx: Tx, ctx: Context, rtype: str, criteria: str | list[tuple[str, str]],
                       res: Any, *, if_match: str | None = None,
                       resolve: Resolve | None = None) -> Result:
    check_type(rtype, write=True)
    ctx.access.check(rtype, "u")
    found = match(tx, ctx, rtype, criteria)
    if len(found) > 1:
        raise several(ctx, rtype, criteria, found, PreconditionFailed(
            f"Conditional update matched {len(found)} {rtype} resources"), reads=tx)
    body_id = res.get("id") if isinstance(res, dict) else None
    if found:
        if body_id and body_id != found[0].id:
            raise BadRequest(f"The resource id '{body_id}' is not the id of the matching "
                             f"resource '{found[0].id}'", expression=f"{rtype}.id")
        res = {**res, "id": found[0].id}
        return update(tx, ctx, rtype, found[0].id, res, if_match=if_match, resolve=resolve)
    if body_id:
        check_id(body_id)
        if tx.current(rtype, body_id) is not None:
            raise PreconditionFailed(f"{rtype}/{body_id} exists but does not match the criteria")
        return update(tx, ctx, rtype, body_id, res, resolve=resolve)
    return create(tx, ctx, rtype, res, resolve=resolve)


def delete(tx: Tx, ctx: Context, rtype: str, rid: str, *,
           if_match: str | None = None) -> Result:
    """Delete (a tombstone). A DELETE of what is deleted already, also one that lost a race
    to a concurrent DELETE, answers as a success; a stale ``if_match`` is a 412."""
    check_type(rtype, write=True)
    ctx.access.check(rtype, "d")
    check_id(rid)
    # Locked before it is read: the rules and the tombstone then apply to the version that
    # is current when it is written, not to one another request has just replaced.
    tx.lock_resource(rtype, rid)
    cur = tx.current(rtype, rid)
    if cur is None:
        raise NotFound(f"{rtype}/{rid} is not known")
    # Access first: who may not change it learns neither its version nor that it is deleted.
    if cur.deleted:
        _guard_deleted(tx, ctx, cur, "delete")
    else:
        _guard_write(tx, ctx, rtype, cur, None, "delete")
    version = expected_version(if_match, cur, f"{rtype}/{rid}")
    if not cur.deleted:
        try:
            process.check_plain_delete(ctx, cur.json(), tx)
        except SipHubError as err:
            ctx.refused("delete", cur, rtype, err, reads=tx)
            raise
    _held_to(version, cur)
    if cur.deleted:
        return Result(200, None, information(f"{rtype}/{rid} was already deleted"))
    done = tx.delete(rtype, rid)
    assert done is not None  # (it is locked: nothing else deleted it since it was read)
    _changed(tx, ctx, rtype, cur.json(), None, withheld=cur.withheld)
    ctx.record("delete", [cur], tx=tx)
    return Result(200, None, information(f"Deleted {rtype}/{rid} (version {done.version_id})"),
                  headers={"ETag": etag(done)})


# -- search and history --------------------------------------------------------------------

def _entry(ctx: Context, s: Stored, mode: str | None = None,
           subset: fhir_subset.Subset | None = None) -> dict[str, Any]:
    e: dict[str, Any] = {"fullUrl": f"{ctx.base_url}/{s.type}/{s.id}"}
    if s.content is not None:
        e["resource"] = orjson.Fragment(s.content if subset is None else exact.dumps(
            fhir_subset.apply(s.doc(), subset)))
    if mode:
        e["search"] = {"mode": mode}
    return e


def _links(ctx: Context, path: str, items: list[tuple[str, str]], offset: int, count: int,
           returned: int, total: int | None, *, paged: bool = True,
           query: fhir_search.SearchQuery | None = None) -> list[dict[str, str]]:
    """The Bundle's self link, and next and previous when ``paged`` (not a _summary=count,
    whose answer is its total alone). A search the store paged by position (``query.keyset``)
    links its next page by a ``_cursor`` after the page's last match (stable while others
    write); one paged by offset (history, the access log) by ``_offset``. A page reached by
    a ``_cursor`` has no previous link."""
    # (by the name before a modifier, as the search reads them: a '_cursor:x' kept beside
    # the new token made the next page's token one given twice, a 400)
    paging = ("_offset", "_count", "_cursor")
    base_items = [(k, v) for k, v in items if k.split(":", 1)[0] not in paging]
    cursor = next((v for k, v in items if k.split(":", 1)[0] == "_cursor"), None)

    def url(off: int, after: str | None = None) -> str:
        q = base_items + [("_count", str(count))] + ([("_offset", str(off))] if off else []) \
            + ([("_cursor", after)] if after else [])
        return f"{ctx.base_url}/{path}?{urlencode(q)}"

    links = [{"relation": "self", "url": url(offset, cursor)}]
    if not paged:
        return links
    if query is not None and query.keyset:
        if query.next_after is not None and count:
            token = fhir_search.page_token(query.resource_type, base_items, query.next_after)
            links.append({"relation": "next", "url": url(0, token)})
    else:
        more = (offset + returned < total) if total is not None else returned == count
        if more and count:
            links.append({"relation": "next", "url": url(offset + count)})
    if offset > 0 and cursor is None:
        links.append({"relation": "previous", "url": url(max(0, offset - count))})
    return links


def bundle(btype: str, entries: list[dict[str, Any]], total: int | None = None,
           links: list[dict[str, str]] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": btype,
                           "meta": {"lastUpdated": format_instant(now_utc())}}
    if total is not None:
        out["total"] = total
    if links:
        out["link"] = links
    if entries:
        out["entry"] = entries
    return out


_NAMED_MOST = 10  # identifiers looked up for the record (a search may list more)


def _named_patients(tx: Tx, query: fhir_search.SearchQuery) -> frozenset[str]:
    """The persons a search names, for its audit record whatever it returns (the consent
    may filter their records out, a count returns none, another person's may match): each
    sees in their log that someone asked. Named are a reference to a Patient in any
    parameter (``actor=Patient/x``), a Patient's ``_id``, and a chain into the Patient
    (``patient._id=``, ``patient.identifier=``); an identifier (by personnummer, as the care
    systems look people up: ``patient:identifier=``, ``patient.identifier=``, a Patient
    search by ``identifier``) names the Patients it finds, in one statement, and none is
    made for a search that names no one by identifier."""
    ids: set[str] = set()
    tokens: list[fhir_search.TokenValue] = []
    for cr in query.criteria:
        on_patient = query.resource_type == "Patient"
        if cr.chain is not None:
            if cr.chain_type != "Patient":
                continue
            cr, on_patient = cr.chain, True
        if cr.missing is not None:
            continue
        if on_patient and cr.kind == "id":
            ids |= {v for v in cr.values if isinstance(v, str)}
        elif on_patient and cr.name == "identifier" and cr.modifier is None:
            tokens += [v for v in cr.values if isinstance(v, fhir_search.TokenValue)]
        elif cr.kind == "reference" and cr.param is not None and cr.modifier is None:
            ids |= {v.id for v in cr.values
                    if isinstance(v, fhir_search.ReferenceValue) and v.type == "Patient"}
        elif cr.kind == "reference" and cr.param is not None and \
                cr.modifier == "identifier" and \
                (not cr.param.targets or "Patient" in cr.param.targets):
            tokens += [v for v in cr.values if isinstance(v, fhir_search.TokenValue)]
    found = {i for i in ids if ID_RE.fullmatch(i)}
    # (``system|`` alone names no one: it asks for every identifier of the system)
    tokens = [t for t in tokens if t.code is not None]
    if tokens:
        by_identifier = fhir_search.Criterion(
            "identifier", "token", params_for("Patient")["identifier"], None,
            list(dict.fromkeys(tokens))[:_NAMED_MOST])
        lookup = fhir_search.SearchQuery("Patient", [by_identifier], count=2 * _NAMED_MOST,
                                         total=False)
        found |= {s.id for s in tx.search(lookup)[0]}
    return frozenset(found)


def search(tx: Tx, ctx: Context, rtype: str, items: list[tuple[str, str]]) -> Result:
    check_type(rtype)
    ctx.access.check(rtype, "s")
    query = fhir_search.parse(rtype, items, default_count=ctx.default_count,
                              max_count=ctx.max_count, base_url=ctx.base_url,
                              lenient=ctx.lenient)
    _limit_chains(ctx, query)
    vis = ctx.access.visibility(rtype)
    matches, total = tx.search(query, vis or None) if vis is not False else ([], 0)
    included: list[Stored] = []
    left_out = False
    if query.includes or query.revincludes:
        # (at most as many as a page may have matches: the rest is left out, and said so)
        included, left_out = tx.includes(query, matches, ctx.access.included, ctx.max_count)
    # _summary applies to every resource of the answer (each by its type's definition);
    # _elements names elements of the searched type: its matches only
    sub = query.subset
    entries = [_entry(ctx, s, "match", sub) for s in matches]
    entries += [_entry(ctx, s, "include", sub if sub and sub.summary else None)
                for s in included]
    if query.ignored:
        oo = information("Ignored search parameters: " + "; ".join(query.ignored))
        entries.append({"resource": oo, "search": {"mode": "outcome"}})
    if left_out:
        oo = warning(f"This page includes {len(included)} resources by _include/_revinclude, "
                     "the most a page does (SIP_HUB_MAX_PAGE_SIZE); more may be left out: ask "
                     "for fewer matches a page (_count), or search the included type itself",
                     "too-costly")
        entries.append({"resource": oo, "search": {"mode": "outcome"}})
    ctx.record("search-type", matches + included, rtype=rtype, query=urlencode(items),
               named=_named_patients(tx, query) if acl.is_personal(rtype) else frozenset(),
               reads=tx)
    used = [kv for kv in items if kv not in query.ignored_items] if query.ignored_items \
        else items  # (the self link tells the search that was done)
    links = _links(ctx, rtype, used, query.offset, query.count, len(matches), total,
                   paged=not query.summary_count, query=query)
    return Result(200, None, bundle("searchset", entries, total, links))


def _history_date(raw: str, name: str) -> fhir_search.DateValue:
    """``_since`` (an instant) or ``_at`` (a date, the time it stands for): a point in time
    with no comparison prefix (one was taken for a date and left out: ``_at=gt2026-01-01``
    asked for what was current on that day)."""
    value = fhir_search.date_value(raw, name)
    if raw[:2] in fhir_search.PREFIXES and raw[:2] != "eq":
        raise BadRequest(f"History parameter '{name}' takes a date or time without a "
                         f"prefix ('{raw[:2]}' in '{raw[:40]}')", expression=name)
    return value


def _instance_history(tx: Tx, ctx: Context, cur: Stored, first: int, since: int | None,
                      at: tuple[int, int] | None, count: int, offset: int
                      ) -> tuple[list[Stored], int]:
    """The versions of one resource (now at ``cur``) the caller may read, newest first, and
    how many: those of its present life from ``first`` up to ``cur`` (``_guard_version``
    decided on these; a version written since, after a consent was withdrawn or by the next
    life's owner, is the next request's). Its owner's, and an unrestricted caller's, are
    paged by the store; another reader's are decided one by one on their content
    (``Access.can_read_version``, on grants read after it) and paged here, as a total that
    counted the versions it may not read would tell how many there are."""
    access = ctx.access
    if access.unrestricted or not acl.is_personal(cur.type) or \
            (cur.owner is not None and cur.owner == access.org):
        return tx.history(cur.type, cur.id, since=since, at=at, count=count, offset=offset,
                          first=first, last=cur.version_id)
    rows, _ = tx.history(cur.type, cur.id, since=since, at=at, count=fhir_search.MAX_INT,
                         first=first, last=cur.version_id)
    # (the current version passed the guard: a deletion as the version it deleted)
    kept = [s for s in rows if s.version_id == cur.version_id
            or access.can_read_version(tx, s, cur, first)]
    return kept[offset:offset + count], len(kept)


def history(tx: Tx, ctx: Context, items: list[tuple[str, str]], rtype: str | None = None,
            rid: str | None = None) -> Result:
    if rtype:
        check_type(rtype)
        ctx.access.check(rtype, "r")
    cur, first = None, 1
    if rid:
        check_id(rid)
        cur = tx.current(rtype or "", rid)
        if cur is None:
            raise NotFound(f"{rtype}/{rid} is not known")
        first = _guard_version(tx, ctx, cur, None, "history-instance")
    else:
        ctx.access.check_history(rtype)
    count, offset, since, at = ctx.default_count, 0, None, None
    for k, v in items:
        if k == "_count":
            count = min(fhir_search.nonneg_int(v, k), ctx.max_count)
        elif k == "_offset":
            offset = fhir_search.nonneg_int(v, k)
        elif k == "_since":
            since = _history_date(v, k).low
        elif k == "_at":
            at_value = _history_date(v, k)
            at = (at_value.low, at_value.high)
        elif k not in ("_format", "_pretty"):
            raise BadRequest(f"Unknown history parameter '{k}'", expression=k)
    if cur is not None:
        rows, total = _instance_history(tx, ctx, cur, first, since, at, count, offset)
    else:
        rows, total = tx.history(rtype, since=since, at=at, count=count, offset=offset)
    entries = []
    for s in rows:
        e = _entry(ctx, s)
        url = f"{s.type}/{s.id}" if s.method != "POST" else s.type
        e["request"] = {"method": s.method, "url": url}
        e["response"] = {"status": "410 Gone" if s.deleted else
                         ("201 Created" if s.version_id == 1 else "200 OK"),
                         "etag": etag(s), "lastModified": s.last_updated_instant}
        entries.append(e)
    interaction = "history-instance" if rid else ("history-type" if rtype else "history-system")
    ctx.record(interaction, [s for s in rows if s.content is not None], rtype=rtype,
               reads=tx)
    path = "/".join(p for p in (rtype, rid, "_history") if p)
    return Result(200, None, bundle("history", entries, total,
                                    _links(ctx, path, items, offset, count, len(rows), total)))
