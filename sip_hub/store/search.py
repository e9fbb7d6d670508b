"""SQL for FHIR search: every criterion becomes an indexed sub-select on ``res_id``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Literal

from sqlalchemy import (BigInteger, ColumnElement, Connection, Select, String, and_, bindparam,
                        exists, func, not_, or_, select, true)

from ..fhir.search import Criterion, DateValue, ReferenceValue, SearchQuery, TokenValue
from ..fhir.search_params import params_for
from .records import row_to_stored as _row
from .schema import (access_grant, idx_date, idx_reference, idx_string, idx_token, resource,
                     resource_history)

_R = resource.c
_H = resource_history.c


def date_cond(low: Any, high: Any, v: DateValue) -> ColumnElement[bool]:
    inside = and_(low >= v.low, high <= v.high)
    match v.prefix:
        case "eq":
            return inside
        case "ne":
            return not_(inside)
        case "gt":
            return high > v.high
        case "lt":
            return low < v.low
        case "ge":
            return or_(high > v.high, inside)
        case "le":
            return or_(low < v.low, inside)
        case "sa":
            return low > v.high
        case "eb":
            return high < v.low
        case _:  # ap: overlap
            return and_(low <= v.high, high >= v.low)


def _ids(table: Any, rtype: str, param: str, cond: ColumnElement[bool]) -> Select[Any]:
    c = table.c
    return select(c.res_id).where(c.res_type == rtype, c.param == param, cond)


def _token_cond(v: TokenValue) -> ColumnElement[bool]:
    c = idx_token.c
    parts = []
    if v.code is not None:
        parts.append(c.code == v.code)
    if v.system == "":
        parts.append(c.system.is_(None))
    elif v.system is not None:
        parts.append(c.system == v.system)
    return and_(*parts) if parts else true()


def _string_cond(v: str, modifier: str | None) -> ColumnElement[bool]:
    c = idx_string.c
    if modifier == "exact":
        return c.value == v
    if modifier == "contains":
        escaped = v.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return c.value_norm.like(f"%{escaped}%", escape="\\")
    # Prefix match as a range so that it uses the index on both databases.
    return and_(c.value_norm >= v, c.value_norm < v + "\U0010ffff")


def criterion_cond(rtype: str, cr: Criterion) -> ColumnElement[bool]:
    """A condition on ``resource.res_id`` for the resources of ``rtype`` matching ``cr``."""
    if cr.kind == "id":
        return _R.res_id.in_([str(v) for v in cr.values])
    if cr.kind == "lastUpdated":
        return or_(*[date_cond(_R.last_updated, _R.last_updated, v)
                     for v in cr.values if isinstance(v, DateValue)])
    name = cr.name
    table = {"token": idx_token, "uri": idx_token, "reference": idx_reference,
             "date": idx_date, "string": idx_string}[cr.kind]
    if cr.missing is not None:
        present = _R.res_id.in_(_ids(table, rtype, name, true()))
        return not_(present) if cr.missing else present
    if cr.chain is not None:
        assert cr.chain_type is not None
        targets = select(_R.res_id).where(_R.res_type == cr.chain_type, _R.deleted.is_(False),
                                          criterion_cond(cr.chain_type, cr.chain))
        c = idx_reference.c
        return _R.res_id.in_(_ids(idx_reference, rtype, name, and_(
            c.target_type == cr.chain_type, c.target_id.in_(targets))))
    if cr.kind == "reference" and cr.modifier == "identifier":
        conds = [_token_cond(v) for v in cr.values if isinstance(v, TokenValue)]
        return _R.res_id.in_(_ids(idx_token, rtype, f"{name}:identifier", or_(*conds)))
    if cr.kind in ("token", "uri"):
        conds = [_token_cond(v) if isinstance(v, TokenValue) else idx_token.c.code == v
                 for v in cr.values]
        sub = _R.res_id.in_(_ids(idx_token, rtype, name, or_(*conds)))
        return not_(sub) if cr.modifier == "not" else sub
    if cr.kind == "reference":
        c = idx_reference.c
        conds = []
        for v in cr.values:
            assert isinstance(v, ReferenceValue)
            conds.append(and_(c.target_id == v.id, c.target_type == v.type) if v.type
                         else c.target_id == v.id)
        return _R.res_id.in_(_ids(idx_reference, rtype, name, or_(*conds)))
    if cr.kind == "date":
        c = idx_date.c
        conds = [date_cond(c.low, c.high, v) for v in cr.values if isinstance(v, DateValue)]
        return _R.res_id.in_(_ids(idx_date, rtype, name, or_(*conds)))
    conds = [_string_cond(str(v), cr.modifier) for v in cr.values]
    return _R.res_id.in_(_ids(idx_string, rtype, name, or_(*conds)))


@dataclass(frozen=True, slots=True)
class Grant:
    org: str
    role: str  # coordinator | participant
    reads: bool
    valid_until: int | None


@dataclass(frozen=True, slots=True)
class Visibility:
    """What an organisation may see of one resource type: what it owns, plus the resources
    in the compartments of the patients it holds a live grant for."""

    org: str
    now: int
    # The reference search parameter that puts a resource in a patient's compartment;
    # "_self" for Patient itself; None when only owned resources are visible.
    compartment: str | None


# Per type: a Visibility, None (no restriction) or False (nothing visible).
VisibilityFor = Callable[[str], "Visibility | None | Literal[False]"]


def visibility_cond(rtype: str, vis: Visibility) -> ColumnElement[bool]:
    """Owned, or in the compartment of a patient the organisation holds a live reading grant
    for. Checked per candidate row (correlated EXISTS), so the cost follows the rows the
    criteria match, not the number of patients the organisation can see. The organisation
    and the time are bound parameters (``vis_org``, ``vis_now``: see ``visibility_params``),
    so the condition is built once per type."""
    return _visibility_shape(vis.compartment)


def visibility_params(vis: Visibility | None) -> dict[str, Any]:
    return {} if vis is None else {"vis_org": vis.org, "vis_now": vis.now}


@lru_cache(maxsize=None)
def _visibility_shape(compartment: str | None) -> ColumnElement[bool]:
    g = access_grant.c
    org, now = bindparam("vis_org", type_=String), bindparam("vis_now", type_=BigInteger)
    live = and_(g.org_hsa_id == org, g.reads.is_(True),
                or_(g.valid_until.is_(None), g.valid_until > now))
    owned = _R.owner_org == org
    if compartment is None:
        return owned
    if compartment == "_self":
        return or_(owned, exists().where(g.patient_id == _R.res_id, live))
    c = idx_reference.c
    granted = exists().where(
        c.res_type == _R.res_type, c.res_id == _R.res_id, c.param == compartment,
        c.target_type == "Patient", g.patient_id == c.target_id, live)
    return or_(owned, granted)


def _conditions(query: SearchQuery, visibility: Visibility | None) -> list[ColumnElement[bool]]:
    rtype = query.resource_type
    conds = [_R.res_type == rtype, _R.deleted.is_(False)]
    conds += [criterion_cond(rtype, cr) for cr in query.criteria]
    if visibility is not None:
        conds.append(visibility_cond(rtype, visibility))
    return conds


def base_select(query: SearchQuery, visibility: Visibility | None = None) -> Select[Any]:
    return select(_R.res_id).where(*_conditions(query, visibility))


def _sort_key(query: SearchQuery, name: str) -> ColumnElement[Any]:
    if name == "_lastUpdated":
        return _R.last_updated
    if name == "_id":
        return _R.res_id
    p = params_for(query.resource_type)[name]
    table, col = {"date": (idx_date, "low"), "string": (idx_string, "value_norm"),
                  "token": (idx_token, "code"), "uri": (idx_token, "code")}[p.type]
    c = table.c
    return (select(func.min(c[col])).where(c.res_type == _R.res_type, c.res_id == _R.res_id,
                                           c.param == name).scalar_subquery())


def run(conn: Connection, query: SearchQuery,
        visibility: Visibility | None = None) -> tuple[list[Any], int | None]:
    conds = _conditions(query, visibility)
    params = visibility_params(visibility)
    total = None
    if query.total or query.summary_count:
        total = conn.execute(select(func.count()).select_from(resource).where(*conds),
                             params).scalar_one()
    if query.summary_count or query.count == 0:
        return [], total
    order = []
    for name, desc in query.sort:
        key = _sort_key(query, name)
        order.append(key.desc() if desc else key.asc())
    # "+ 0" keeps the planner from walking the whole (res_type, last_updated) index in order
    # when the criteria match few rows (SQLite would otherwise scan every resource of the type).
    order += [(_R.last_updated + 0).desc(), _R.res_id]
    q = (select(_H.res_type, _H.res_id, _H.version_id, _H.last_updated, _H.method, _H.content,
                _R.owner_org)
         .join_from(resource, resource_history, and_(
             _H.res_type == _R.res_type, _H.res_id == _R.res_id, _H.version_id == _R.version_id))
         .where(*conds)
         .order_by(*order).limit(query.count).offset(query.offset))
    return [_row(r, False) for r in conn.execute(q, params)], total


def include_keys(conn: Connection, query: SearchQuery, matches: list[Any]) -> list[tuple[str, str]]:
    if not matches:
        return []
    ids = [m.id for m in matches]
    c = idx_reference.c
    keys: list[tuple[str, str]] = []
    for inc in query.includes:
        q = select(c.target_type, c.target_id).where(
            c.res_type == inc.source_type, c.param == inc.param.name, c.res_id.in_(ids))
        if inc.target_type:
            q = q.where(c.target_type == inc.target_type)
        keys += [(r.target_type, r.target_id) for r in conn.execute(q)]
    for inc in query.revincludes:
        q = select(c.res_type, c.res_id).where(
            c.res_type == inc.source_type, c.param == inc.param.name,
            c.target_type == query.resource_type, c.target_id.in_(ids))
        keys += [(r.res_type, r.res_id) for r in conn.execute(q)]
    return list(dict.fromkeys(keys))


__all__ = ["run", "date_cond", "visibility_params", "include_keys", "base_select", "criterion_cond", "visibility_cond",
           "Visibility", "VisibilityFor", "Grant"]
