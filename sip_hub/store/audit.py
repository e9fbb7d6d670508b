"""The access log's SQL: AuditEvents appended to a table of their own.

Every read and search of personal data writes an AuditEvent, so the log is written far more
often than anything else. Stored as ordinary versioned resources, each event cost a resource
row, a history row and a dozen generic index rows (and more CPU than the read it recorded).
Here an event is one row with the columns it is searched by, plus one ``audit_ref`` row per
entity (its patients among them: ``patient`` searches the entities of type Patient), entity
identifier and agent identifier. Events are never changed: version 1 is the only one.

Searched by: ``_id``, ``_lastUpdated`` and ``date`` (recorded), ``patient`` and ``entity``
(references), ``agent:identifier``, ``entity:identifier`` (the X-Request-ID of the request an
event happened in), ``action``, ``outcome``, ``subtype`` and ``type``; sorted by recorded time
(newest first unless ``_sort`` says otherwise) or ``_id``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import (ColumnElement, Connection, and_, bindparam, false, func, insert, or_,
                        select, true)

from ..errors import BadRequest
from ..fhir.dates import parse_range
from ..fhir.indexing import split_reference
from ..fhir.search import Criterion, DateValue, ReferenceValue, SearchQuery, TokenValue
from .driver import DriverStatement
from .records import Stored
from .schema import audit_event, audit_ref
from .search import date_cond

AUDIT_TYPE = "AuditEvent"
_A = audit_event.c
_F = audit_ref.c
# Written on every read of personal data: run on the driver's cursor (see .driver).
_INSERT_EVENT = DriverStatement(insert(audit_event))
_INSERT_REF = DriverStatement(insert(audit_ref))
_GET = select(_A.id, _A.recorded, _A.content).where(_A.id == bindparam("i"))
_REF_PARAMS = ("patient", "entity")
_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_SUBTYPE_SYSTEM = "http://hl7.org/fhir/restful-interaction"


@dataclass(frozen=True, slots=True)
class Entry:
    """An AuditEvent to append (without id and meta), with what it is searched by."""
    event: dict[str, Any]
    recorded: int  # UTC microseconds, ``event["recorded"]``
    refs: tuple[tuple[str, str, str], ...]  # (search parameter, system, value)


def refs_of(event: dict[str, Any]) -> list[tuple[str, str, str]]:
    """What an AuditEvent is searched by: its entities (a patient is an entity of type
    Patient: ``patient`` searches those), their identifiers and its agents' identifiers."""
    refs: list[tuple[str, str, str]] = []
    for entity in event.get("entity", []):
        what = entity.get("what") or {}
        ident = what.get("identifier") or {}
        if isinstance(ident.get("value"), str):
            refs.append(("entity:identifier", ident.get("system") or "", ident["value"]))
        target = split_reference(what.get("reference", ""))
        if target is None:
            continue
        refs.append(("entity", target[0], target[1]))  # ``patient``: those of Patients
    for agent in event.get("agent", []):
        ident = (agent.get("who") or {}).get("identifier") or {}
        if isinstance(ident.get("value"), str):
            refs.append(("agent:identifier", ident.get("system") or "", ident["value"]))
    return refs


def entry(event: dict[str, Any]) -> Entry:
    """The entry of an AuditEvent given as JSON (its own id and meta are replaced)."""
    event = {k: v for k, v in event.items() if k not in ("id", "meta")}
    return Entry(event, parse_range(event["recorded"])[0], tuple(refs_of(event)))


def event_rows(event: dict[str, Any], rid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stored form of an AuditEvent (with ``id`` and ``meta`` set): its row and its
    reference rows."""
    e = entry(event)
    return _row(e, rid, orjson.dumps(event)), _ref_rows(e, rid)


def _row(e: Entry, rid: str, content: bytes) -> dict[str, Any]:
    subtype = next((c.get("code", "") for c in e.event.get("subtype", [])), "")
    return {"id": rid, "recorded": e.recorded, "action": e.event.get("action", ""),
            "outcome": e.event.get("outcome", ""), "subtype": subtype, "content": content}


def _ref_rows(e: Entry, rid: str) -> list[dict[str, Any]]:
    return [{"audit_id": rid, "recorded": e.recorded, "param": param, "system": system,
             "value": value} for param, system, value in e.refs]


def append(conn: Connection, events: list[tuple[str, Entry]]) -> list[Stored]:
    """Store (id, entry) pairs in the caller's transaction: one bulk insert per table."""
    rows, refs, out = [], [], []
    for rid, e in events:
        meta = {"versionId": "1", "lastUpdated": e.event["recorded"]}
        content = orjson.dumps({"resourceType": AUDIT_TYPE, "id": rid, "meta": meta, **e.event})
        rows.append(_row(e, rid, content))
        refs += _ref_rows(e, rid)
        out.append(Stored(AUDIT_TYPE, rid, 1, e.recorded, False, content, "POST"))
    _INSERT_EVENT.many_later(conn, rows)  # new ids: nothing here can fail on its data
    _INSERT_REF.many_later(conn, refs)
    return out


def _stored(row: Any) -> Stored:
    return Stored(AUDIT_TYPE, row.id, 1, row.recorded, False, bytes(row.content), "POST")


def get(conn: Connection, rid: str) -> Stored | None:
    row = conn.execute(_GET, {"i": rid}).first()
    return _stored(row) if row else None


# -- search ---------------------------------------------------------------------------------

def _unsupported(cr: Criterion, what: str) -> BadRequest:
    return BadRequest(f"AuditEvent search does not support {what} on '{cr.name}'",
                      expression=cr.name)


def _refs(param: str, cond: ColumnElement[bool]) -> ColumnElement[bool]:
    return _A.id.in_(select(_F.audit_id).where(_F.param == param, cond))


def _read_as(param: str) -> tuple[str, str | None]:
    """The rows a reference parameter reads, and the type its references must have (None:
    any). ``patient`` reads the entities of type Patient: an event keeps one row for each
    (events stored before kept a second, ``patient``, row: still there, never read)."""
    return ("entity", "Patient") if param == "patient" else (param, None)


def _token(cr: Criterion, column: Any, system: str) -> ColumnElement[bool]:
    """``column`` holds the code; ``system`` is the one its codes are from. A constant
    ``column`` (a str) is compared here."""
    conds: list[ColumnElement[bool]] = []
    for v in cr.values:
        code = v.code if isinstance(v, TokenValue) else str(v)
        v_system = v.system if isinstance(v, TokenValue) else None
        if v_system not in (None, system):
            conds.append(false())
        elif code is None:
            conds.append(true())
        elif isinstance(column, str):
            conds.append(true() if code == column else false())
        else:
            conds.append(column == code)
    return or_(*conds)


def criterion_cond(cr: Criterion) -> ColumnElement[bool]:
    if cr.missing is not None or cr.chain is not None:
        raise _unsupported(cr, ":missing or chaining")
    if cr.kind == "id":
        return _A.id.in_([str(v) for v in cr.values])
    if cr.kind == "lastUpdated" or cr.name == "date":
        return or_(*[date_cond(_A.recorded, _A.recorded, v.prefix, v.low, v.high)
                     for v in cr.values
                     if isinstance(v, DateValue)])
    if cr.name in ("agent", "entity") and cr.modifier == "identifier":
        conds = []
        for v in cr.values:
            assert isinstance(v, TokenValue)
            parts = [] if v.code is None else [_F.value == v.code]
            if v.system is not None:
                parts.append(_F.system == v.system)
            conds.append(and_(*parts) if parts else true())
        return _refs(f"{cr.name}:identifier", or_(*conds))
    if cr.name in _REF_PARAMS and cr.modifier is None:
        stored, implied = _read_as(cr.name)
        conds = []
        for v in cr.values:
            assert isinstance(v, ReferenceValue)
            rtype = implied or v.type
            if v.type is not None and v.type != rtype:
                conds.append(false())
            else:
                conds.append(and_(_F.value == v.id, _F.system == rtype) if rtype
                             else _F.value == v.id)
        return _refs(stored, or_(*conds))
    if cr.modifier is None:
        if cr.name == "action":
            return _token(cr, _A.action, "http://hl7.org/fhir/audit-event-action")
        if cr.name == "outcome":
            return _token(cr, _A.outcome, "http://hl7.org/fhir/audit-event-outcome")
        if cr.name == "subtype":
            return _token(cr, _A.subtype, _SUBTYPE_SYSTEM)
        if cr.name == "type":
            return _token(cr, "rest", _TYPE_SYSTEM)  # every event is a RESTful operation
    raise _unsupported(cr, f"the modifier ':{cr.modifier}'" if cr.modifier else "this parameter")


def search(conn: Connection, query: SearchQuery) -> tuple[list[Stored], int | None]:
    conds = [criterion_cond(cr) for cr in query.criteria]
    total = None
    if query.total or query.summary_count:
        total = conn.execute(select(func.count()).select_from(audit_event)
                             .where(*conds)).scalar_one()
    if query.summary_count or query.count == 0:
        return [], total
    order = []
    for name, desc in query.sort:
        if name in ("date", "_lastUpdated"):
            order.append(_A.recorded.desc() if desc else _A.recorded.asc())
        elif name == "_id":
            order.append(_A.id.desc() if desc else _A.id.asc())
        else:
            raise BadRequest(f"AuditEvent search sorts by date, _lastUpdated or _id, not "
                             f"'{name}'", expression="_sort")
    order += [_A.recorded.desc(), _A.id]
    q = (select(_A.id, _A.recorded, _A.content).where(*conds)
         .order_by(*order).limit(query.count).offset(query.offset))
    return [_stored(r) for r in conn.execute(q)], total


def history(conn: Connection, rid: str | None, *, since: int | None, at: int | None,
            count: int, offset: int) -> tuple[list[Stored], int]:
    """Type or instance history: each event is its own only version."""
    conds = []
    if rid:
        conds.append(_A.id == rid)
    if since is not None:
        conds.append(_A.recorded >= since)
    if at is not None:
        conds.append(_A.recorded <= at)
    total = conn.execute(select(func.count()).select_from(audit_event).where(*conds)
                         ).scalar_one()
    rows = conn.execute(select(_A.id, _A.recorded, _A.content).where(*conds)
                        .order_by(_A.recorded.desc(), _A.id).limit(count).offset(offset))
    return [_stored(r) for r in rows], total


def include_keys(param: str, target_type: str | None, matches: Iterable[Stored]
                 ) -> list[tuple[str, str]]:
    """``_include=AuditEvent:<param>``: the references, read from the events themselves."""
    if param not in _REF_PARAMS:
        raise BadRequest(f"_include=AuditEvent:{param}: the access log includes through "
                         f"{' and '.join(sorted(_REF_PARAMS))} only", expression="_include")
    stored, implied = _read_as(param)
    keys = []
    for m in matches:
        keys += [(system, value) for p, system, value in refs_of(m.json())
                 if p == stored and system == (implied or system)
                 and (target_type is None or system == target_type)]
    return keys


def revinclude_keys(conn: Connection, param: str, target_type: str, ids: list[str],
                    limit: int | None = None) -> list[tuple[str, str]]:
    """``_revinclude=AuditEvent:<param>``: the events that refer to the matches (at most
    ``limit``)."""
    if param not in _REF_PARAMS:
        raise BadRequest(f"_revinclude=AuditEvent:{param}: the access log is found through "
                         f"{' and '.join(sorted(_REF_PARAMS))} only", expression="_revinclude")
    stored, implied = _read_as(param)
    if implied is not None and target_type != implied:
        return []
    rows = conn.execute(select(_F.audit_id).where(
        _F.param == stored, _F.system == target_type, _F.value.in_(ids)).limit(limit))
    return [(AUDIT_TYPE, r.audit_id) for r in rows]
