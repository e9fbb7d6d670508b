"""The access log's SQL: AuditEvents appended to a table of their own.

Every read and search of personal data writes an AuditEvent, so the log is written far more
often than anything else. Stored as ordinary versioned resources, each event cost a resource
row, a history row and a dozen generic index rows (and more CPU than the read it recorded).
Here an event is one row with the columns it is searched by, plus one ``audit_ref`` row per
patient, entity and agent identifier. Events are never changed: version 1 is the only one.

Searched by: ``_id``, ``_lastUpdated`` and ``date`` (recorded), ``patient`` and ``entity``
(references), ``agent:identifier``, ``action``, ``outcome``, ``subtype`` and ``type``; sorted
by recorded time (newest first unless ``_sort`` says otherwise) or ``_id``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from sqlalchemy import (ColumnElement, Connection, and_, bindparam, false, func, insert, or_,
                        select, true)

from ..errors import BadRequest
from ..fhir.dates import parse_range
from ..fhir.indexing import split_reference
from ..fhir.search import Criterion, DateValue, ReferenceValue, SearchQuery, TokenValue
from .records import Stored
from .schema import audit_event, audit_ref
from .search import date_cond

AUDIT_TYPE = "AuditEvent"
_A = audit_event.c
_F = audit_ref.c
_INSERT_EVENT = insert(audit_event)
_INSERT_REF = insert(audit_ref)
_GET = select(_A.id, _A.recorded, _A.content).where(_A.id == bindparam("i"))
_REF_PARAMS = ("patient", "entity")
_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-event-type"
_SUBTYPE_SYSTEM = "http://hl7.org/fhir/restful-interaction"


def event_rows(event: dict[str, Any], rid: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The stored form of an AuditEvent (with ``id`` and ``meta`` set): its row and its
    reference rows."""
    recorded = parse_range(event["recorded"])[0]
    subtype = next((c.get("code", "") for c in event.get("subtype", [])), "")
    row = {"id": rid, "recorded": recorded, "action": event.get("action", ""),
           "outcome": event.get("outcome", ""), "subtype": subtype,
           "content": orjson.dumps(event)}
    refs: list[dict[str, Any]] = []
    for entity in event.get("entity", []):
        target = split_reference((entity.get("what") or {}).get("reference", ""))
        if target is None:
            continue
        refs.append({"param": "entity", "system": target[0], "value": target[1]})
        if target[0] == "Patient":
            refs.append({"param": "patient", "system": target[0], "value": target[1]})
    for agent in event.get("agent", []):
        ident = (agent.get("who") or {}).get("identifier") or {}
        if isinstance(ident.get("value"), str):
            refs.append({"param": "agent:identifier", "system": ident.get("system") or "",
                         "value": ident["value"]})
    for r in refs:
        r["audit_id"], r["recorded"] = rid, recorded
    return row, refs


def stamp(event: dict[str, Any], rid: str) -> dict[str, Any]:
    """The event as stored: id and meta first (its one version, last updated when recorded)."""
    meta = {**(event.get("meta") or {}), "versionId": "1", "lastUpdated": event["recorded"]}
    return {"resourceType": AUDIT_TYPE, "id": rid, "meta": meta,
            **{k: v for k, v in event.items() if k not in ("resourceType", "id", "meta")}}


def append(conn: Connection, events: list[tuple[str, dict[str, Any]]]) -> list[Stored]:
    """Store (id, AuditEvent) pairs in the caller's transaction: one bulk insert per table."""
    rows, refs, out = [], [], []
    for rid, event in events:
        final = stamp(event, rid)
        row, event_refs = event_rows(final, rid)
        rows.append(row)
        refs += event_refs
        out.append(Stored(AUDIT_TYPE, rid, 1, row["recorded"], False, row["content"], "POST"))
    if rows:
        conn.execute(_INSERT_EVENT, rows)
    if refs:
        conn.execute(_INSERT_REF, refs)
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
        return or_(*[date_cond(_A.recorded, _A.recorded, v) for v in cr.values
                     if isinstance(v, DateValue)])
    if cr.name == "agent" and cr.modifier == "identifier":
        conds = []
        for v in cr.values:
            assert isinstance(v, TokenValue)
            parts = [] if v.code is None else [_F.value == v.code]
            if v.system is not None:
                parts.append(_F.system == v.system)
            conds.append(and_(*parts) if parts else true())
        return _refs("agent:identifier", or_(*conds))
    if cr.name in _REF_PARAMS and cr.modifier is None:
        conds = []
        for v in cr.values:
            assert isinstance(v, ReferenceValue)
            conds.append(and_(_F.value == v.id, _F.system == v.type) if v.type
                         else _F.value == v.id)
        return _refs(cr.name, or_(*conds))
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
    keys = []
    for m in matches:
        _, refs = event_rows(m.json(), m.id)
        keys += [(r["system"], r["value"]) for r in refs
                 if r["param"] == param and (target_type is None or r["system"] == target_type)]
    return keys


def revinclude_keys(conn: Connection, param: str, target_type: str, ids: list[str]
                    ) -> list[tuple[str, str]]:
    """``_revinclude=AuditEvent:<param>``: the events that refer to the matches."""
    if param not in _REF_PARAMS:
        return []
    rows = conn.execute(select(_F.audit_id).where(
        _F.param == param, _F.system == target_type, _F.value.in_(ids)))
    return [(AUDIT_TYPE, r.audit_id) for r in rows]
