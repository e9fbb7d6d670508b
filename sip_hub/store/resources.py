"""Versioned resources: every write a new version, history kept, delete a tombstone.

Search index rows are written in the same transaction as the version they describe.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import Counter
from contextlib import contextmanager
from datetime import datetime
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, TypeVar

from sqlalchemy import (Connection, Engine, and_, bindparam, case, delete, event,
                        func, insert, or_, select, text, tuple_, update)
from sqlalchemy.exc import OperationalError

from ..ids import uuid7
from ..errors import ConcurrentChange, Conflict, PreconditionFailed
from ..fhir import compartment, exact
from ..fhir.dates import format_instant, from_us, now_utc, to_us
from ..fhir.indexing import extract, index_kinds
from ..fhir.search import MAX_ITERATE, SearchQuery
from . import audit as sql_audit
from . import search as sql_search
from . import wakeup
from .engine import companion, make_engine
from .filelock import AVAILABLE as FILE_LOCKS, WriterLock, try_lock
from .group import GroupCommit
from .driver import (CONCURRENT_ERRORS, DriverStatement, any_of, any_row,
                     insert_into, lazy_commit as _lazy_commit, numbered, savepoint as _savepoint,
                     unavailable)
from .records import (COLUMNS as _COLUMNS, CURRENT_COLUMNS, Stored, current_to_stored,
                      row_to_stored as _row)
from .schema import INDEX_TABLES, access_grant, resource, resource_history
from .search import Grant, Visibility, VisibilityFor

log = logging.getLogger("sip_hub.store")
_H = resource_history.c
_R = resource.c
AUDIT_TYPE = sql_audit.AUDIT_TYPE
_UNSEEN = object()
_SETTLED = float("inf")  # (Tx._grants_read: no later read of resources makes them stale)

def current_select(*columns: Any) -> Any:
    """``columns`` of every resource's current version (its row joined to that version's)."""
    return select(*columns).join_from(resource, resource_history, and_(
        _H.res_type == _R.res_type, _H.res_id == _R.res_id, _H.version_id == _R.version_id))


# Hot-path statements built once: SQLAlchemy then reuses their compiled form directly.
_CURRENT = DriverStatement(current_select(*CURRENT_COLUMNS).where(
    _R.res_type == bindparam("t"), _R.res_id == bindparam("i")))
_VERSION = select(*_COLUMNS).where(_H.res_type == bindparam("t"), _H.res_id == bindparam("i"),
                                   _H.version_id == bindparam("v"))
_VERSION_OF = select(_R.version_id, _R.deleted).where(
    _R.res_type == bindparam("t"), _R.res_id == bindparam("i"))
_CURRENT_VERSION = DriverStatement(_VERSION_OF)
_CURRENT_VERSION_LOCKED = DriverStatement(_VERSION_OF.with_for_update())
# Several resources by (type, id) in one statement, up to _KEYS_MAX at a time: the rules of
# a write resolve about half a dozen references, a statement each (a round trip each on
# PostgreSQL, and on SQLite each statement gives up the interpreter lock).
_KEYS_MAX = 32
# ``Resources.includes``: its statements find at most this many times what is left of its
# limit (room for what the caller may not see or has met already), and it reads them this
# many more than is left at a time.
_INCLUDE_SLACK, _INCLUDE_PART = 4, 100


@lru_cache(maxsize=_KEYS_MAX)
def _current_of(n: int) -> DriverStatement:
    return DriverStatement(current_select(*CURRENT_COLUMNS)
                           .where(any_of(n, t=_R.res_type, i=_R.res_id)))


@lru_cache(maxsize=_KEYS_MAX)
def _versions_of(n: int) -> DriverStatement:
    return DriverStatement(select(_R.res_type, _R.res_id, _R.version_id, _R.deleted)
                           .where(any_of(n, t=_R.res_type, i=_R.res_id)))


def _key_rows(keys: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"t": rtype, "i": rid} for rtype, rid in keys]


# Writes take their values as parameters, so each is compiled once and reused; a new
# resource's row is claimed with ON CONFLICT DO NOTHING (no savepoint round trips).
# The write path runs on the driver's cursor too (see .driver): a create is two dozen
# statements, and SQLAlchemy's per-statement work cost more than SQLite's.
_CLAIM_COLUMNS = ("res_type", "res_id", "version_id", "last_updated", "deleted", "owner_org",
                  "withheld")
_CLAIM = DriverStatement.on_conflict(lambda ins: ins(resource).values(
    {c: bindparam(c) for c in _CLAIM_COLUMNS})
    .on_conflict_do_nothing(index_elements=[_R.res_type, _R.res_id]).returning(_R.version_id))
_ADVANCE = DriverStatement(
    update(resource)
    .where(_R.res_type == bindparam("t"), _R.res_id == bindparam("i"),
           _R.version_id == bindparam("prev"))
    .values(version_id=bindparam("v"), last_updated=bindparam("ts"), deleted=bindparam("del")))
# An update's new version, numbered and claimed in one statement (the row locked on
# PostgreSQL until the transaction ends, as ``FOR UPDATE`` would): reading the version first
# and then advancing it was a second statement in every update, on both databases.
# Stamped once it holds the row, never before the version it replaces (an update that
# waited for the row took its time before the wait: lastUpdated went backwards, and history's
# order with it).
_NEXT_VERSION = update(resource).where(
    _R.res_type == bindparam("t"), _R.res_id == bindparam("i")).values(
    version_id=_R.version_id + 1, deleted=False,
    # A version after a tombstone is a new resource's: its writer's, as a create's (a
    # deleted record re-created by another organisation stayed the first one's).
    owner_org=case((_R.deleted.is_(True), bindparam("o")), else_=_R.owner_org),
    # Withheld once, withheld: an update withholds (``w``) a record its writer moves into the
    # compartment of a person whose consent does not cover it.
    withheld=case((_R.deleted.is_(True), bindparam("w")),
                  else_=or_(_R.withheld, bindparam("w"))),
    last_updated=case((_R.last_updated >= bindparam("ts"), _R.last_updated + 1),
                      else_=bindparam("ts"))).returning(_R.version_id, _R.last_updated,
                                                        _R.owner_org, _R.withheld)
_BUMP = DriverStatement(_NEXT_VERSION)
_BUMP_IF = DriverStatement(_NEXT_VERSION.where(_R.version_id == bindparam("m")))
_INSERT_HISTORY = insert_into(resource_history, "res_type", "res_id", "version_id",
                              "last_updated", "method", "content")
# The columns of each index table's rows after (res_type, res_id), in ``IndexRows`` order.
_INDEX_COLUMNS = {"token": ("param", "system", "code"),
                  "reference": ("param", "target_type", "target_id"),
                  "date": ("param", "low", "high"),
                  "string": ("param", "value_norm", "value")}
_INSERT_INDEX = {kind: insert_into(INDEX_TABLES[kind], "res_type", "res_id", *columns)
                 for kind, columns in _INDEX_COLUMNS.items()}
_CLEAR_INDEX = {kind: DriverStatement(delete(table).where(table.c.res_type == bindparam("t"),
                                                          table.c.res_id == bindparam("i")))
                for kind, table in INDEX_TABLES.items()}
# Every copy of one row (a token's system may be absent: compared null-safe).
_DELETE_INDEX_ROW = {kind: DriverStatement(delete(table).where(
    table.c.res_type == bindparam("res_type"), table.c.res_id == bindparam("res_id"),
    *(table.c[c].is_not_distinct_from(bindparam(c)) if table.c[c].nullable
      else table.c[c] == bindparam(c) for c in _INDEX_COLUMNS[kind])))
    for kind, table in INDEX_TABLES.items()}
_G = access_grant.c
# The resources of a ``compartment.RESOLVED`` type whose reference parameter ``p`` names a
# resource (the Provenances of a record): the index's own lookup by value.
_I = INDEX_TABLES["reference"].c
_RESOLVING = DriverStatement(select(_I.res_id).distinct().where(
    _I.res_type == bindparam("r"), _I.param == bindparam("p"), _I.target_id == bindparam("i"),
    _I.target_type == bindparam("t")))


# Read by every write's access rules (one patient, or a delivery batch's): on the driver's
# cursor.
@lru_cache(maxsize=_KEYS_MAX)
def _grants_of(n: int) -> DriverStatement:
    return DriverStatement(select(_G.patient_id, _G.org_hsa_id, _G.role, _G.reads, _G.valid_until,
                                  _G.valid_from).where(any_of(n, p=_G.patient_id)))


_DELETE_GRANTS = delete(access_grant).where(access_grant.c.patient_id == bindparam("p"))
_INSERT_GRANTS = insert(access_grant)
# (PostgreSQL) The advisory locks of several keys in one statement, taken in the order of
# their hashes: the same order in every transaction.
_SERIALISE_ALL = DriverStatement(text(
    "SELECT count(pg_advisory_xact_lock(h)) FROM (SELECT DISTINCT hashtextextended(k, 0) "
    "AS h FROM unnest(CAST(:keys AS text[])) AS k ORDER BY h) AS ordered"))


def lock_file_base(engine: Engine) -> str | None:
    """Where the lock files of an SQLite database file go (``<base>-<name>.lock``); None when
    processes cannot share one (not SQLite, in memory, or no POSIX file locks)."""
    db = engine.url.database
    if engine.dialect.name != "sqlite" or not FILE_LOCKS or not db or db == ":memory:" \
            or db.startswith("file:"):
        return None
    return db


def _index_params(kind: str, rtype: str, rid: str, rows: Iterable[tuple[Any, ...]]
                  ) -> list[dict[str, Any]]:
    columns = _INDEX_COLUMNS[kind]
    return [{"res_type": rtype, "res_id": rid, **dict(zip(columns, row))} for row in rows]


def stamp_meta(res: dict[str, Any], rid: str, version_id: int, instant: str) -> dict[str, Any]:
    """The resource as stored: id and meta first, the rest in the client's order."""
    meta = dict(res.get("meta") or {})
    meta["versionId"] = str(version_id)
    meta["lastUpdated"] = instant
    out = {"resourceType": res["resourceType"], "id": rid, "meta": meta}
    for k, v in res.items():
        if k not in out:
            out[k] = v
    return out


class Moved(ConcurrentChange):
    """The version a write was decided on is no longer current: another request replaced it
    while this one decided (on PostgreSQL, where writes run side by side). Nothing of this
    write was applied; decided again on the version now current, it can succeed."""


class Tx:
    """One database transaction; every store operation runs inside one.

    It remembers the current versions and grants it has read: one write's rules look up the
    same Patient, CareTeam and grants several times, and within the transaction only its own
    writes (which forget what they change) can change them.

    ``per_statement``: its statements do not share one snapshot of the database (PostgreSQL's
    READ COMMITTED, reads in autocommit among them; SQLite without BEGIN). Whether a caller
    may read what it read is then decided on grants read no earlier than that (see
    ``readable_patients``): judged by grants read before it, a version written after a
    consent was withdrawn was shown to an organisation the withdrawal had shut out. (SQLite
    within BEGIN needs none of this: its read transaction sees one snapshot of the WAL file
    from its first read to its end, and a write's holds the one write lock.)"""

    def __init__(self, conn: Connection, *, per_statement: bool = False) -> None:
        self.conn = conn
        self._seen: dict[tuple[str, str], Stored | None] = {}
        self._grants: dict[str, list[Grant]] = {}
        # (per_statement) The statements that read resources so far, and how many had run
        # when each patient's grants were read (_SETTLED: no other transaction changes them
        # before this one ends: it wrote them, or holds their lock).
        self._per_statement = per_statement
        self._read_statements = 0
        self._grants_read: dict[str, float] = {}
        self._locked_patients: set[str] = set()
        # Whether this transaction wrote a resource of a ``compartment.RESOLVED`` type (a
        # Provenance): a record it creates after one may be what that one targets.
        self._wrote_resolved = False
        # It leaves work for the messaging workers, who are woken when it commits (.wakeup).
        self.leaves_work = False
        self._committed: list[Callable[[], None]] = []

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once this transaction has committed (``Store.begin``, after SQLite's
        write lock is released), not if what registered it is undone: a metric counts only
        what was stored, and holds no lock while it does."""
        self._committed.append(fn)

    def committed(self) -> None:
        """The transaction committed: what waited for that runs (in registration order).
        One that fails is logged, and neither stops the others nor reaches the caller, whose
        write is stored."""
        todo, self._committed = self._committed, []
        for fn in todo:
            try:
                fn()
            except Exception:  # noqa: BLE001 (after the commit: nothing to undo)
                log.exception("after the commit of a transaction")

    def lazy_commit(self) -> None:
        """Its COMMIT need not wait for the disk (PostgreSQL; see ``driver.lazy_commit``):
        for bookkeeping a crash of the database server may lose as a whole, to be done again
        (the relay's round)."""
        _lazy_commit(self.conn)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Undo what the block writes when it raises, in the database and in what this
        transaction remembers having read and waits to do after its commit."""
        seen, grants, work = dict(self._seen), dict(self._grants), self.leaves_work
        grants_read = dict(self._grants_read)
        locked = set(self._locked_patients)  # (a lock taken in it goes with it)
        pending = len(self._committed)
        try:
            with _savepoint(self.conn):
                yield
        except BaseException:
            # (A NOTIFY in the savepoint went with it: the next announcement sends another.)
            self._seen, self._grants, self.leaves_work = seen, grants, work
            self._grants_read, self._locked_patients = grants_read, locked
            del self._committed[pending:]
            raise

    # reads -------------------------------------------------------------------------------
    def current(self, rtype: str, rid: str) -> Stored | None:
        key = (rtype, rid)
        if key in self._seen:
            return self._seen[key]
        if rtype == AUDIT_TYPE:
            return sql_audit.get(self.conn, rid)
        self._read_statements += 1
        row = _CURRENT.first(self.conn, {"t": rtype, "i": rid})
        found = None if row is None else current_to_stored(row)
        self._seen[key] = found
        return found

    def load(self, keys: Iterable[tuple[str, str]]) -> None:
        """Read the current versions of ``keys`` at once (what is absent as absent), for
        ``current`` to find: one statement instead of one per key."""
        todo = [k for k in dict.fromkeys(keys) if k not in self._seen and k[0] != AUDIT_TYPE]
        self._read_statements += bool(todo)
        for n, params in numbered(_key_rows(todo), _KEYS_MAX, pad=True):
            for row in _current_of(n).all(self.conn, params):
                self._seen[(row[0], row[1])] = current_to_stored(row)
        for key in todo:
            self._seen.setdefault(key, None)

    def adopt(self, seen: dict[tuple[str, str], Stored | None]) -> bool:
        """Whether every resource of ``seen`` (read in another transaction) is still at the
        version read, or still absent; if so, they count as read in this one. Adopted once,
        they are taken again without a statement (a write adopts its preparation before it
        reads what it replaces, and again when it takes the preparation)."""
        keys = list(seen)
        if any(rtype == AUDIT_TYPE for rtype, _ in keys):
            return False
        if all(self._seen.get(key, _UNSEEN) is then for key, then in seen.items()):
            return True
        now: dict[tuple[str, str], tuple[int, bool]] = {}
        self._read_statements += 1
        for n, params in numbered(_key_rows(keys), _KEYS_MAX, pad=True):
            for rtype, rid, version, deleted in _versions_of(n).all(self.conn, params):
                now[(rtype, rid)] = (version, bool(deleted))
        for key, then in seen.items():
            row = now.get(key)
            if (row is None) != (then is None) or then is not None and row is not None and (
                    row[0] != then.version_id or row[1] != then.deleted):
                return False
        for key, then in seen.items():
            self._seen.setdefault(key, then)
        return True

    def version(self, rtype: str, rid: str, version_id: int) -> Stored | None:
        if rtype == AUDIT_TYPE:
            return sql_audit.get(self.conn, rid) if version_id == 1 else None
        self._read_statements += 1
        row = self.conn.execute(_VERSION, {"t": rtype, "i": rid, "v": version_id}).first()
        return _row(row) if row else None

    def deleted_before(self, rtype: str, rid: str, version_id: int) -> int:
        """The version of the resource's last deletion before ``version_id`` (0: none): its
        versions after it are the resource's present life, written again after a delete."""
        found = self.conn.execute(select(func.max(_H.version_id)).where(
            _H.res_type == rtype, _H.res_id == rid, _H.version_id < version_id,
            _H.method == "DELETE")).scalar()
        return int(found or 0)

    def current_many(self, keys: list[tuple[str, str]],
                     visibility: VisibilityFor | None = None) -> list[Stored]:
        """The current versions of ``keys`` (skipping deleted ones and, with ``visibility``,
        those the caller may not see)."""
        if not keys:
            return []
        self._read_statements += 1
        by_type: dict[str, list[str]] = {}
        for t, i in keys:
            by_type.setdefault(t, []).append(i)
        out: dict[tuple[str, str], Stored] = {}
        for t, ids in by_type.items():
            if t == AUDIT_TYPE:
                if visibility is None or visibility(t) is None:
                    found = (sql_audit.get(self.conn, i) for i in ids)
                    out.update({(t, s.id): s for s in found if s is not None})
                continue
            conds = [_R.res_type == t, _R.res_id.in_(ids), _R.deleted.is_(False)]
            params: dict[str, Any] = {}
            if visibility is not None:
                vis = visibility(t)
                if vis is False:
                    continue
                if vis is not None:
                    conds.append(sql_search.visibility_cond(t, vis))
                    params = sql_search.visibility_params(vis)
            q = current_select(*_COLUMNS, _R.owner_org, _R.withheld).where(*conds)
            for row in self.conn.execute(q, params):
                out[(row.res_type, row.res_id)] = _row(row, False)
        return [out[k] for k in dict.fromkeys(keys) if k in out]

    # writes ------------------------------------------------------------------------------
    def create(self, res: dict[str, Any], rid: str | None = None, *,
               owner: str | None = None, withheld: bool = False) -> Stored:
        """``owner``: the creating organisation; ``withheld``: kept from everyone but it."""
        rid = rid or uuid7()
        return self._write(res, rid, 1, None, "POST", owner, withheld=withheld)

    def update(self, res: dict[str, Any], rid: str, *, if_match: int | None = None,
               expect: int | None = None, method: str = "PUT", owner: str | None = None,
               withheld: bool = False) -> tuple[Stored, bool]:
        """Write a new version; returns (stored, created). A stale ``if_match`` is a 412.
        ``expect``: the version the caller decided on, which this must replace (``Moved``
        when another write replaced it meanwhile). ``owner`` and ``withheld`` are the
        resource's when this creates it (as ``create``); an update keeps the owner of the
        version it replaces, and its withholding unless ``withheld`` (it is then withheld)."""
        rtype = res["resourceType"]
        now = now_utc()
        params = {"t": rtype, "i": rid, "ts": to_us(now), "o": owner, "w": withheld}
        guard = if_match if if_match is not None else expect
        bumped = _BUMP.first(self.conn, params) if guard is None else \
            _BUMP_IF.first(self.conn, {**params, "m": guard})
        if bumped is not None:  # advanced: the common case, one statement
            version = int(bumped[0])
            if int(bumped[1]) != params["ts"]:  # (after a version stamped later)
                now = from_us(int(bumped[1]))
            return self._write(res, rid, version, version - 1, method, bumped[2], now=now,
                               advanced=True, withheld=bool(bumped[3])), False
        cur = self._current_version(rtype, rid)  # nothing advanced: absent, or not If-Match
        if cur is None and expect is None:
            if if_match is not None:
                raise PreconditionFailed(
                    f"{rtype}/{rid} does not exist (If-Match: W/\"{if_match}\")")
            return self._write(res, rid, 1, None, method, owner, withheld=withheld), True
        if if_match is not None and (cur is None or if_match != cur[0]):
            raise PreconditionFailed(
                f"Version conflict: {rtype}/{rid} is at version {cur and cur[0]}, "
                f"If-Match asked for {if_match}")
        if expect is not None:
            self._seen.pop((rtype, rid), None)
            raise Moved()
        raise Conflict(f"{rtype}/{rid} was changed concurrently; retry")

    def lock_resource(self, rtype: str, rid: str) -> None:
        """Until this transaction ends no other writes the resource, and what this one reads
        of it next is its latest committed version. For a write decided on what it reads (a
        delete): read unlocked, the resource could be deleted or changed by another request
        between the read and the write. On PostgreSQL the row is locked (waiting for a writer
        holding it); SQLite's one writer holds every row already."""
        if self.conn.dialect.name != "postgresql":
            return
        now = self._current_version(rtype, rid)  # (FOR UPDATE)
        key = (rtype, rid)
        if key in self._seen:
            then = self._seen[key]
            if (None if then is None else (then.version_id, then.deleted)) != now:
                del self._seen[key]  # read again, as it is now

    def delete(self, rtype: str, rid: str) -> Stored | None:
        """Write a tombstone; None when there is nothing current to delete."""
        cur = self._current_version(rtype, rid)
        if cur is None or cur[1]:
            return None
        version = cur[0] + 1
        ts = to_us(now_utc())
        self._advance(rtype, rid, version, cur[0], ts, deleted=True)
        _INSERT_HISTORY.run_later(self.conn, {
            "res_type": rtype, "res_id": rid, "version_id": version, "last_updated": ts,
            "method": "DELETE", "content": None})
        self._clear_index(rtype, rid)
        if compartment.resolved_through(rtype):
            self._resolve_again(rtype, rid)
        return Stored(rtype, rid, version, ts, True, None, "DELETE")

    def _current_version(self, rtype: str, rid: str) -> tuple[int, bool] | None:
        q = _CURRENT_VERSION_LOCKED if self.conn.dialect.name == "postgresql" else \
            _CURRENT_VERSION
        row = q.first(self.conn, {"t": rtype, "i": rid})
        return (row[0], bool(row[1])) if row else None

    def _advance(self, rtype: str, rid: str, version: int, previous: int | None, ts: int,
                 *, deleted: bool, owner: str | None = None, withheld: bool = False) -> None:
        self._seen.pop((rtype, rid), None)
        if previous is None:
            claimed = _CLAIM.first(self.conn, {
                "res_type": rtype, "res_id": rid, "version_id": version, "last_updated": ts,
                "deleted": deleted, "owner_org": owner, "withheld": withheld})
            if claimed is None:
                raise Conflict(f"{rtype}/{rid} was created concurrently; retry")
            return
        done = _ADVANCE.run(self.conn, {"t": rtype, "i": rid, "prev": previous,
                                        "v": version, "ts": ts, "del": deleted})
        if done != 1:
            raise Conflict(f"{rtype}/{rid} was changed concurrently; retry")

    def _write(self, res: dict[str, Any], rid: str, version: int, previous: int | None,
               method: str, owner: str | None, *, now: datetime | None = None,
               advanced: bool = False, withheld: bool = False) -> Stored:
        """``advanced``: the resource's row is at ``version`` already (``update``), stamped
        ``now``."""
        rtype = res["resourceType"]
        now = now or now_utc()
        ts = to_us(now)
        final = stamp_meta(res, rid, version, format_instant(now))
        content = exact.dumps(final)
        old = self._seen.get((rtype, rid)) if previous is not None else None
        if rtype in compartment.RESOLVED:
            self._wrote_resolved = True
        moved = compartment.resolved_through(rtype) and self._moves(rtype, old, previous, final)
        if advanced:
            self._seen.pop((rtype, rid), None)
        else:
            self._advance(rtype, rid, version, previous, ts, deleted=False, owner=owner,
                          withheld=withheld)
        _INSERT_HISTORY.run_later(self.conn, {
            "res_type": rtype, "res_id": rid, "version_id": version, "last_updated": ts,
            "method": method, "content": content})
        if old is not None and old.version_id == previous and \
                rtype not in compartment.RESOLVED:
            # The version replaced, as this transaction read it: its rows are what the index
            # holds (a tombstone has none), so only the difference is written. (A type whose
            # rows are resolved through other resources holds rows its content does not
            # tell: they are written anew.)
            self._replace_index(rtype, rid, old, final)
        elif previous is not None:
            self._clear_index(rtype, rid)
            self._write_index(rtype, rid, final)
        else:
            self._write_index(rtype, rid, final)
        # Its parsed content is what was just serialised (its notifications and audit record
        # read it in the write transaction; parsing the bytes back cost a 3.5 kB plan ~20 us
        # of the write lock).
        if previous is not None and (old is None or old.version_id != previous):
            stored = Stored(rtype, rid, version, ts, False, content, method, owner, withheld,
                            final)
        else:
            if old is not None and not old.deleted:
                # An update keeps the resource's owner, its creator (after a tombstone: the
                # writer's, as the row has it; withheld: the row's, which an update may set).
                owner = old.owner
            # This transaction's current version now (what it notifies and audits reads it).
            stored = self._seen[(rtype, rid)] = Stored(rtype, rid, version, ts, False,
                                                       content, method, owner, withheld, final)
        if moved:  # (resolved against the version just written)
            self._resolve_again(rtype, rid)
        return stored

    def _moves(self, rtype: str, old: Stored | None, previous: int | None,
               new: dict[str, Any]) -> bool:
        """Whether a write may change whose compartment the resource is in (``old``: the
        version this transaction read, which it replaces if its version is ``previous``). A
        create is looked up only after this transaction wrote a Provenance (one written before
        its target in a Bundle): no statement for the creates of every other write (a
        Provenance stored earlier naming a record not yet written gets its person at the
        record's next change, or a rebuild)."""
        if previous is None:
            return self._wrote_resolved
        if old is None or old.version_id != previous:
            return True  # (unknown: the lookup decides)
        was = old.doc() if old is not None and old.content is not None else None
        return compartment.patients_of(rtype, was) != compartment.patients_of(rtype, new)

    def _resolve_again(self, rtype: str, rid: str) -> None:
        """The index rows of the resources whose compartment this one's gives (the
        Provenances of a record that changed person or was deleted) resolved anew, as they
        were written and as a rebuild writes them: else a search by the first person kept
        finding what its parties may no longer read, and the second's found nothing."""
        for resolved, param in compartment.RESOLVED_THROUGH.items():
            for (pid,) in _RESOLVING.all(self.conn, {"r": resolved, "p": param, "t": rtype,
                                                     "i": rid}):
                # (locked first: a concurrent update of it, which resolved this record as it
                # was, is committed before its rows are written anew, not after)
                self.lock_resource(resolved, pid)
                cur = self.current(resolved, pid)
                if cur is not None and not cur.deleted and cur.content is not None:
                    self._clear_index(resolved, pid)
                    self._write_index(resolved, pid, cur.doc())

    def _content(self, rtype: str, rid: str) -> dict[str, Any] | None:
        """A resource's current content as this transaction reads it (None: none)."""
        cur = self.current(rtype, rid)
        return cur.doc() if cur is not None and cur.content is not None else None

    def append_audit(self, events: list[sql_audit.Entry | dict[str, Any]]) -> list[Stored]:
        """Append AuditEvents to the access log (new server ids), in bulk."""
        return sql_audit.append(self.conn, [
            (uuid7(), e if isinstance(e, sql_audit.Entry) else sql_audit.entry(e))
            for e in events])

    def _clear_index(self, rtype: str, rid: str) -> None:
        for kind in index_kinds(rtype):  # the tables its type writes to: no other has its rows
            _CLEAR_INDEX[kind].run_later(self.conn, {"t": rtype, "i": rid})

    def _write_index(self, rtype: str, rid: str, res: dict[str, Any],
                     resolve: Callable[[str, str], dict[str, Any] | None] | None = None
                     ) -> None:
        rows = extract(res)
        if rtype in compartment.RESOLVED:
            rows.reference += compartment.index_rows(rtype, res, resolve or self._content)
        for kind in _INDEX_COLUMNS:
            _INSERT_INDEX[kind].many_later(self.conn, _index_params(kind, rtype, rid,
                                                                    getattr(rows, kind)))

    def _replace_index(self, rtype: str, rid: str, old: Stored, new: dict[str, Any]) -> None:
        """The index rows of ``old`` (what the index holds for the resource) made those of
        ``new``: rows in both stay; a row whose count differs is deleted (every copy) and
        written again as often as ``new`` has it. An update that changes a date writes two
        statements instead of clearing and rewriting every table."""
        before, after = old.index_rows(), extract(new)
        for kind in _INDEX_COLUMNS:
            was, now = Counter(getattr(before, kind)), Counter(getattr(after, kind))
            if was == now:
                continue
            changed = [row for row in was.keys() | now.keys() if was[row] != now[row]]
            _DELETE_INDEX_ROW[kind].many_later(self.conn, _index_params(
                kind, rtype, rid, [row for row in changed if was[row]]))
            _INSERT_INDEX[kind].many_later(self.conn, _index_params(
                kind, rtype, rid, [row for row in changed for _ in range(now[row])]))

    @staticmethod
    def _readable(rtype: str, content: bytes | None) -> dict[str, Any] | None:
        """A stored version's content if it is a resource of ``rtype`` (None: a tombstone,
        or not JSON, or not such an object)."""
        try:
            res = exact.loads(content) if content is not None else None
        except ValueError:  # (orjson.JSONDecodeError is one)
            return None
        return res if isinstance(res, dict) and res.get("resourceType") == rtype else None

    def rebuild_index(self, batch: int = 1000) -> int:
        """Every current resource's index rows derived again from its content (after the
        search parameters changed); how many resources. Run alone, in one transaction.

        A stored version that is not the resource of its row (not JSON, or not an object of
        its type: damaged outside the hub) is passed over, named in the log: stopping here
        stopped every upgrade, and so every start, over one row, where the rest of the store
        can be searched (the migrations pass over such rows too)."""
        def resolve(rtype: str, rid: str) -> dict[str, Any] | None:
            # (what a Provenance targets: such a version as none, its person unknown)
            cur = self.current(rtype, rid)
            return self._readable(rtype, cur.content) if cur is not None else None

        for kind in _INDEX_COLUMNS:
            self.conn.execute(delete(INDEX_TABLES[kind]))
        done, skipped, after = 0, 0, ("", "")
        key = tuple_(_R.res_type, _R.res_id)
        while True:
            rows = self.conn.execute(
                current_select(_R.res_type, _R.res_id, _H.content)
                .where(_R.deleted.is_(False), key > tuple_(*after))
                .order_by(_R.res_type, _R.res_id).limit(batch)).all()
            for rtype, rid, content in rows:
                res = self._readable(rtype, content)
                if res is None:
                    log.error("The stored content of %s/%s is not a %s resource: it is not "
                              "indexed (it cannot be searched)", rtype, rid, rtype)
                    skipped += 1
                    continue
                self._write_index(rtype, rid, res, resolve)
            # (what a Provenance's rows were resolved with: kept, it would hold every plan
            # of the store by the end; this transaction writes nothing else)
            self._seen.clear()
            done += len(rows)
            if len(rows) < batch:
                return done - skipped
            after = (rows[-1][0], rows[-1][1])

    # history and search ------------------------------------------------------------------
    def history(self, rtype: str | None = None, rid: str | None = None, *,
                since: int | None = None, at: tuple[int, int] | None = None,
                count: int = 50, offset: int = 0, first: int = 1, last: int | None = None
                ) -> tuple[list[Stored], int]:
        """Versions newest first. The access log has its own (each event one version) and is
        not part of the system-wide history. ``at`` (low, high): the versions current at some
        point of that time, FHIR's ``_at`` (not every version written before its end).
        ``first``: no version before this one (a resource's present life); ``last``: none
        after this one (the version the caller's access was checked on)."""
        if rtype == AUDIT_TYPE:
            return sql_audit.history(self.conn, rid, since=since,
                                     at=at[1] if at is not None else None, count=count,
                                     offset=offset)
        conds = []
        if rtype:
            conds.append(_H.res_type == rtype)
        if rid:
            conds.append(_H.res_id == rid)
        if first > 1:
            conds.append(_H.version_id >= first)
        if last is not None:
            conds.append(_H.version_id <= last)
        if since is not None:
            conds.append(_H.last_updated >= since)
        if at is not None:
            # Written by its end, and not replaced by its start.
            nxt = resource_history.alias("next_version")
            conds.append(_H.last_updated <= at[1])
            conds.append(~any_row(
                nxt.c.res_type == _H.res_type, nxt.c.res_id == _H.res_id,
                nxt.c.version_id == _H.version_id + 1, nxt.c.last_updated <= at[0]))
        self._read_statements += 1
        rows = [_row(r) for r in self.conn.execute(
            select(*_COLUMNS).where(*conds)
            .order_by(_H.last_updated.desc(), _H.version_id.desc(), _H.res_id)
            .limit(count).offset(offset))]
        return rows, sql_search.page_total(len(rows), count, offset, lambda: self.conn.execute(
            select(func.count()).select_from(resource_history).where(*conds)).scalar_one())

    def search(self, query: SearchQuery, visibility: Visibility | None = None
               ) -> tuple[list[Stored], int | None]:
        if query.resource_type == AUDIT_TYPE:
            # Only callers who see everything read the access log (sip_hub.access).
            return sql_audit.search(self.conn, query) if visibility is None else ([], 0)
        self._read_statements += 1
        return sql_search.run(self.conn, query, visibility)

    def includes(self, query: SearchQuery, matches: list[Stored],
                 visibility: VisibilityFor | None = None, limit: int = 1000
                 ) -> tuple[list[Stored], bool]:
        """What the query's ``_include`` and ``_revinclude`` add to ``matches``, each once,
        among what ``visibility`` lets the caller see: the plain ones from the matches, the
        ``:iterate`` ones from the matches and then from what each round added, for at most
        ``MAX_ITERATE`` rounds more (a resource the caller may not see is not gone through).
        At most ``limit`` of them, and whether more were left out: a page of one match may
        otherwise bring thousands (every Goal of a patient), and each round of ``:iterate``
        more from those, all read, held and answered at once. The statements that find them
        stop a few times past what is left of ``limit`` (what the caller may not see, or
        has met already, is dropped after them), and they are read a part at a time."""
        left = limit
        more = False
        keys = sql_search.include_keys(self.conn, query.includes, query.revincludes, matches,
                                       _INCLUDE_SLACK * left + 1)
        for inc in query.includes:
            if inc.source_type == AUDIT_TYPE:
                keys += sql_audit.include_keys(inc.param.name, inc.target_type, matches)
        for inc in query.revincludes:
            if inc.source_type == AUDIT_TYPE:
                keys += sql_audit.revinclude_keys(self.conn, inc.param.name,
                                                  query.resource_type, [m.id for m in matches],
                                                  _INCLUDE_SLACK * left + 1)
        seen = {(m.type, m.id) for m in matches}

        def take(keys: list[tuple[str, str]]) -> list[Stored]:
            """Those of ``keys`` not met before, as far as the caller may see them, until
            ``limit`` is reached (``more`` when one more is there, or may be: the statements
            stopped short of all there are)."""
            nonlocal left, more
            cut = len(keys) > _INCLUDE_SLACK * left
            fresh = [k for k in dict.fromkeys(keys) if k not in seen]
            out: list[Stored] = []
            while fresh and not more:
                part, fresh = fresh[:left + _INCLUDE_PART], fresh[left + _INCLUDE_PART:]
                seen.update(part)
                got = self.current_many(part, visibility)
                more = len(got) > left
                out += got[:left]
                left -= len(got[:left])
            more = more or cut
            return out

        added = take(keys)
        found = list(added)
        includes = [i for i in query.includes if i.iterate]
        revincludes = [i for i in query.revincludes if i.iterate]
        for _ in range(MAX_ITERATE if includes or revincludes else 0):
            if not added or more:
                break
            added = take(sql_search.include_keys(self.conn, includes, revincludes, added,
                                                 _INCLUDE_SLACK * left + 1))
            found += added
        return found, more

    # access grants -----------------------------------------------------------------------
    def lock_patient(self, patient_id: str) -> None:
        """Serialise the decisions on one patient's grants (who coordinates, who may read)
        and their refreshes (SQLite serialises all writes already). Grants this transaction
        read before it held the lock are read again: another may have changed them."""
        if patient_id in self._locked_patients:
            return
        self.serialise(f"grants:{patient_id}")
        self._locked_patients.add(patient_id)
        if self.conn.dialect.name == "postgresql":
            self._grants.pop(patient_id, None)

    def serialise(self, key: str) -> None:
        """Until this transaction ends, other transactions asking for ``key`` wait, and then see
        what it committed (PostgreSQL: an advisory transaction lock; a write on SQLite holds
        the one write lock already)."""
        if self.conn.dialect.name == "postgresql":
            self.conn.execute(select(func.pg_advisory_xact_lock(
                func.hashtextextended(key, 0))))

    def serialise_all(self, keys: Iterable[str]) -> None:
        """``serialise`` on every key, all at once and in one order (their hashes'): two
        transactions that take overlapping keys one by one in different orders could each
        hold one the other waits for, a deadlock. Sent with the next statement (PostgreSQL),
        so that it costs no round trip of its own."""
        keys = sorted(set(keys))
        if keys and self.conn.dialect.name == "postgresql":
            _SERIALISE_ALL.run_later(self.conn, {"keys": keys})

    def replace_grants(self, patient_id: str, grants: list[Grant]) -> None:
        """The patient's grants, all of them: an organisation may hold several (one per
        period a consent covers it), numbered in order of their start."""
        self.conn.execute(_DELETE_GRANTS, {"p": patient_id})
        if grants:
            seq: Counter[str] = Counter()
            rows = []
            for g in sorted(grants, key=lambda g: (g.org, g.valid_from is not None,
                                                   g.valid_from or 0)):
                rows.append({"patient_id": patient_id, "org_hsa_id": g.org, "role": g.role,
                             "reads": g.reads, "valid_until": g.valid_until,
                             "valid_from": g.valid_from, "seq": seq[g.org]})
                seq[g.org] += 1
            self.conn.execute(_INSERT_GRANTS, rows)
        self._grants[patient_id] = list(grants)
        self._grants_read[patient_id] = _SETTLED  # (under its lock: see refresh_grants)

    def load_grants(self, patient_ids: Iterable[str]) -> None:
        """Read the grants of several patients at once, for ``grants`` to find."""
        todo = [p for p in dict.fromkeys(patient_ids) if p not in self._grants]
        for p in todo:
            self._grants[p] = []
            self._grants_read[p] = _SETTLED if p in self._locked_patients \
                else self._read_statements
        for n, params in numbered([{"p": p} for p in todo], _KEYS_MAX, pad=True):
            for p, org, role, reads, until, since in _grants_of(n).all(self.conn, params):
                self._grants[p].append(Grant(org, role, bool(reads), until, since))

    def grants(self, patient_id: str) -> list[Grant]:
        self.load_grants([patient_id])
        return list(self._grants[patient_id])

    def readable_patients(self, org: str, patient_ids: list[str], now: int) -> set[str]:
        """The patients for whom one of ``org``'s grants is live at ``now`` (it may hold one
        per period a consent covers it). From their grants as this transaction knows them
        (``load_grants``: read once; a message's write checks access more than once and
        routes by the same grants), not a statement per check; read again when resources
        were read since (``per_statement``): what the caller reads is decided on grants
        read no earlier than it (a consent withdrawn meanwhile then counts), as a point read
        is, which reads the resource first and then its grants."""
        if self._per_statement:
            for p in patient_ids:
                if self._grants_read.get(p, _SETTLED) < self._read_statements:
                    self._grants.pop(p, None)
        self.load_grants(patient_ids)
        return {p for p in patient_ids
                if any(g.org == org and g.reads_at(now) for g in self._grants[p])}


T = TypeVar("T")
_READ_ENGINES: weakref.WeakKeyDictionary[Engine, Engine] = weakref.WeakKeyDictionary()


def _read_engine(engine: Engine) -> Engine | None:
    """The autocommit pool beside a PostgreSQL engine (one per engine, however many stores
    use it; its connections go with the engine's); None on SQLite."""
    if engine.dialect.name != "postgresql":
        return None
    return companion(engine, _READ_ENGINES, lambda: make_engine(
        engine.url, pool_size=engine.pool.size(), autocommit=True),  # type: ignore[attr-defined]
        Engine.dispose)


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._lock_base = lock_file_base(engine)
        # PostgreSQL reads run without BEGIN and COMMIT: two round trips fewer, and the same
        # consistency (READ COMMITTED takes a snapshot per statement anyway: see Tx's
        # ``per_statement`` for what access decisions then read again). Their own pool
        # of connections in autocommit for good: switching a connection of the write pool to
        # autocommit and back at every read cost a sixth of a point read's time.
        self._reads = _read_engine(engine)
        # Several processes' writers take turns on one SQLite file: each process groups the
        # writes its threads ask for at the same time (see .group).
        self._group = GroupCommit(self.begin) if self._lock_base is not None else None
        self._writer_lock = None if self._lock_base is None else \
            WriterLock(f"{self._lock_base}-writer.lock")
        if self._writer_lock is not None:  # (its descriptor goes with the engine's files)
            event.listen(engine, "engine_disposed",
                         lambda _engine, lock=self._writer_lock: lock.close())
        # Set when a transaction that leaves work for the messaging workers commits in this
        # process (and, for a worker listening on PostgreSQL, in any: see .wakeup).
        self.work_committed = threading.Event()
        self._notifier = wakeup.notifier(engine)

    @contextmanager
    def begin(self, *, write: bool = True, snapshot: bool = True) -> Iterator[Tx]:
        """A transaction. ``snapshot=False`` (reads only): its statements need not see one
        snapshot of the database (a point read), so SQLite runs them without BEGIN/COMMIT.
        A database error is a 503 (``driver.unavailable``); one at the COMMIT of a write on
        PostgreSQL says that whether it was applied is not known (the server's answer may be
        all that was lost). SQLite's COMMIT, in this process, applies all or nothing."""
        body_done = False
        try:
            if not write and self._reads is not None:
                with self._reads.connect() as conn:
                    tx = Tx(conn, per_statement=True)
                    yield tx
                tx.committed()
                return
            # The connection is taken from the pool before SQLite's write lock, and goes
            # back after it: the lock is held from BEGIN to COMMIT only.
            with self.engine.connect() as conn:
                conn = conn.execution_options(
                    sip_write=write, **({} if write or snapshot else {"sip_no_begin": True}))
                with self._writer(write), conn.begin():
                    # (READ COMMITTED on PostgreSQL: a snapshot per statement, writes too)
                    tx = Tx(conn, per_statement=not self.embedded or not (write or snapshot))
                    yield tx
                    body_done = True
            if tx.leaves_work:  # committed
                self.work_committed.set()
                if self._notifier is not None:
                    self._notifier.poke()
            tx.committed()
        except OperationalError as exc:
            if isinstance(exc.orig, CONCURRENT_ERRORS):  # (a conflict; no internals shown)
                raise ConcurrentChange() from exc
            raise unavailable(exc.orig, committing=body_done and write and not self.embedded
                              ) from exc

    def write(self, fn: Callable[[Tx], T]) -> T:
        """``fn`` in a write transaction, committed when this returns. On an SQLite file the
        transaction may be shared with other threads' writes (group commit): ``fn``'s writes
        are still all or nothing and its exception reaches only its caller."""
        if self._group is None:
            with self.begin() as tx:
                return fn(tx)
        return self._group.run(fn)

    @contextmanager
    def _writer(self, write: bool) -> Iterator[None]:
        """SQLite has one writer at a time: its processes take turns on an OS file lock (see
        .filelock), which wakes the next writer at once."""
        if not write or self._writer_lock is None:
            yield
            return
        with self._writer_lock.held():
            yield

    @contextmanager
    def exclusive(self, job: str) -> Iterator[bool]:
        """Whether this caller runs ``job`` now: True while it holds the job's lock across
        every process on the database, False (at once) when another holds it."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as conn:
                key = func.hashtextextended(f"job:{job}", 0)
                got = bool(conn.execute(select(func.pg_try_advisory_lock(key))).scalar())
                conn.commit()
                try:
                    yield got
                finally:
                    if got:
                        conn.execute(select(func.pg_advisory_unlock(key)))
                        conn.commit()
            return
        if self._lock_base is None:  # one process only (an in-memory database)
            yield True
            return
        with try_lock(f"{self._lock_base}-{job}.lock") as got:
            yield got

    @property
    def embedded(self) -> bool:
        """SQLite in this process: no network between the hub and its data."""
        return self.engine.dialect.name == "sqlite"

    def ping(self) -> None:
        with self.begin(write=False) as tx:
            tx.conn.execute(select(1))

    def read(self, rtype: str, rid: str) -> Stored | None:
        with self.begin(write=False, snapshot=False) as tx:
            return tx.current(rtype, rid)
