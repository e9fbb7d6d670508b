"""SQL for FHIR search: every criterion becomes an indexed sub-select on ``res_id``.

A search's SQL depends on the query's shape (the type; each criterion's parameter, modifier,
and kind of value; date prefixes; the sort; the caller's visibility rule), not on the values
searched for, which are bound parameters. Building a statement with SQLAlchemy costs several
times more than running it on an index, so statements are built once per shape (``_shape``
names the structure and collects the values) and kept; each search binds its own values.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Literal

from sqlalchemy import (BigInteger, ColumnElement, Connection, Integer, Select, String, and_,
                        bindparam, false, func, not_, or_, select, true)

from ..fhir.indexing import other_param
from ..fhir.search import (Criterion, DateValue, Include, ReferenceValue, SearchQuery,
                           TokenValue)
from ..fhir.search_params import params_for
from .driver import any_row
from .records import row_to_stored as _row
from .schema import (access_grant, idx_date, idx_reference, idx_string, idx_token, resource,
                     resource_history)

_R = resource.c
_H = resource_history.c
_TABLES = {"token": idx_token, "uri": idx_token, "reference": idx_reference, "date": idx_date,
           "string": idx_string}
# Statements kept (least recently used dropped): the shapes a client can make are many, those
# in use at a time few.
SHAPES_KEPT = 512

Shape = tuple[Any, ...]
Params = dict[str, Any]


def date_cond(low: Any, high: Any, prefix: str, v_low: Any, v_high: Any) -> ColumnElement[bool]:
    """Whether the stored range [low, high] matches the searched one [v_low, v_high] under
    ``prefix`` (columns, values or bound parameters)."""
    inside = and_(low >= v_low, high <= v_high)
    match prefix:
        case "eq":
            return inside
        case "ne":
            return not_(inside)
        case "gt":
            return high > v_high
        case "lt":
            return low < v_low
        case "ge":
            return or_(high > v_high, inside)
        case "le":
            return or_(low < v_low, inside)
        case "sa":
            return low > v_high
        case "eb":
            return high < v_low
        case _:  # ap: overlap
            return and_(low <= v_high, high >= v_low)


# --------------------------------------------------------------------------- shapes and values
def _value_shape(kind: str, modifier: str | None, v: Any, key: str, params: Params) -> Shape:
    """One searched value: what its SQL depends on; its literals go into ``params`` under
    names starting with ``key`` (those ``_value_cond`` binds for that shape)."""
    if isinstance(v, TokenValue):
        if v.code is not None:
            params[key + "c"] = v.code
        if v.system:
            params[key + "s"] = v.system
        return ("token", None if v.system is None else bool(v.system), v.code is not None)
    if isinstance(v, ReferenceValue):
        params[key + "i"] = v.id
        if v.type:
            params[key + "t"] = v.type
        return ("reference", bool(v.type))
    if isinstance(v, DateValue):
        params[key + "l"], params[key + "h"] = v.low, v.high
        return ("date", v.prefix)
    s = str(v)
    if kind != "string" or modifier == "exact":
        params[key] = s
        return ("equal",)
    if modifier == "contains":
        escaped = s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params[key] = f"%{escaped}%"
        return ("contains",)
    # A prefix match as a range, so that it uses the index on both databases.
    params[key], params[key + "h"] = s, s + "\U0010ffff"
    return ("prefix",)


def _criterion_shape(cr: Criterion, key: str, params: Params) -> Shape:
    if cr.kind == "id":
        params[key] = [str(v) for v in cr.values]
        return ("id",)
    if cr.missing is not None:
        return (cr.kind, cr.name, "missing", cr.missing)
    if cr.chain is not None:
        assert cr.chain_type is not None
        vis = cr.chain_visibility
        seen: Shape = ("all",) if vis is None else ("none",) if vis is False else \
            ("visible", vis.compartment)
        if isinstance(vis, Visibility):
            params.update(visibility_params(vis))  # (the caller's: the same as its type's)
        return (cr.kind, cr.name, "chain", cr.chain_type,
                _criterion_shape(cr.chain, key + "c", params), seen)
    return (cr.kind, cr.name, cr.modifier,
            tuple(_value_shape(cr.kind, cr.modifier, v, f"{key}_{j}", params)
                  for j, v in enumerate(cr.values)))


def _shape(query: SearchQuery, visibility: Visibility | None) -> tuple[Shape, Params]:
    """The query's shape (the key its statements are kept by) and its bound values."""
    params = visibility_params(visibility)
    criteria = tuple(_criterion_shape(cr, f"c{i}", params)
                     for i, cr in enumerate(query.criteria))
    seen = ("all",) if visibility is None else ("visible", visibility.compartment)
    return (query.resource_type, criteria, seen), params


# --------------------------------------------------------------------------- SQL of a shape
def _value_cond(kind: str, shape: Shape, key: str) -> ColumnElement[bool] | None:
    """The condition on ``kind``'s index row for one value (None: the value does not apply)."""
    match shape:
        case ("token", system, has_code) if kind in ("token", "uri", "reference"):
            c = idx_token.c
            parts = [c.code == bindparam(key + "c")] if has_code else []
            if system is False:
                parts.append(c.system.is_(None))
            elif system:
                parts.append(c.system == bindparam(key + "s"))
            return and_(*parts) if parts else true()
        case ("reference", typed) if kind == "reference":
            c = idx_reference.c
            same = c.target_id == bindparam(key + "i")
            return and_(same, c.target_type == bindparam(key + "t")) if typed else same
        case ("date", prefix) if kind == "date":
            c = idx_date.c
            return date_cond(c.low, c.high, prefix, bindparam(key + "l"), bindparam(key + "h"))
        case ("equal",) if kind in ("token", "uri"):
            return idx_token.c.code == bindparam(key)
        case ("equal",) if kind == "string":
            return idx_string.c.value == bindparam(key)
        case ("contains",):
            return idx_string.c.value_norm.like(bindparam(key), escape="\\")
        case ("prefix",):
            c = idx_string.c
            return and_(c.value_norm >= bindparam(key), c.value_norm < bindparam(key + "h"))
    return None


def _ids(table: Any, rtype: str, param: str, cond: ColumnElement[bool]) -> Select[Any]:
    c = table.c
    return select(c.res_id).where(c.res_type == rtype, c.param == param, cond)


def _in_tokens(rtype: str, *names: str) -> ColumnElement[bool]:
    c = idx_token.c
    return _R.res_id.in_(select(c.res_id).where(c.res_type == rtype, c.param.in_(names)))


def _missing_cond(rtype: str, kind: str, name: str, missing: bool) -> ColumnElement[bool]:
    """``:missing``: whether the resource has no value for the parameter. A token's or a
    reference's value may have its row under another name in the token table: a reference
    given by its identifier alone, or a value the index has no row of its own for
    (``indexing.OTHER``: another server's reference, a display or a CodeableConcept's text
    alone, which counted as missing)."""
    if kind in ("token", "uri"):
        present = _in_tokens(rtype, name, other_param(name))
    elif kind == "reference":
        present = or_(_R.res_id.in_(_ids(idx_reference, rtype, name, true())),
                      _in_tokens(rtype, f"{name}:identifier", other_param(name)))
    else:
        present = _R.res_id.in_(_ids(_TABLES[kind], rtype, name, true()))
    return not_(present) if missing else present


def _criterion_cond(rtype: str, shape: Shape, key: str) -> ColumnElement[bool]:
    """A condition on ``resource.res_id`` for the resources of ``rtype`` matching a criterion
    of this shape."""
    if shape[0] == "id":
        return _R.res_id.in_(bindparam(key, expanding=True))
    kind, name, how = shape[0], shape[1], shape[2]
    if kind == "lastUpdated":
        return or_(*[date_cond(_R.last_updated, _R.last_updated, v[1],
                               bindparam(f"{key}_{j}l"), bindparam(f"{key}_{j}h"))
                     for j, v in enumerate(shape[3]) if v[0] == "date"])
    table = _TABLES[kind]
    if how == "missing":
        return _missing_cond(rtype, kind, name, shape[3])
    if how == "chain":
        target_type, chain, seen = shape[3], shape[4], shape[5]
        if seen[0] == "none":
            return false()
        visible = [_visibility_shape(seen[1])] if seen[0] == "visible" else []
        targets = select(_R.res_id).where(_R.res_type == target_type, _R.deleted.is_(False),
                                          _criterion_cond(target_type, chain, key + "c"),
                                          *visible)
        c = idx_reference.c
        return _R.res_id.in_(_ids(idx_reference, rtype, name, and_(
            c.target_type == target_type, c.target_id.in_(targets))))
    if kind == "reference" and how == "identifier":
        table, name = idx_token, f"{name}:identifier"
    conds = [cond for j, v in enumerate(shape[3])
             if (cond := _value_cond(kind, v, f"{key}_{j}")) is not None]
    if kind == "string" and how == "contains":
        # A long string's parts beyond the column's width are in the rows of its windows
        # (``indexing.contains_windows``).
        c = idx_string.c
        return _R.res_id.in_(select(c.res_id).where(
            c.res_type == rtype, c.param.in_((name, f"{name}:contains")), or_(*conds)))
    sub = _R.res_id.in_(_ids(table, rtype, name, or_(*conds)))
    return not_(sub) if how == "not" and kind in ("token", "uri") else sub


@dataclass(frozen=True, slots=True)
class Grant:
    """One organisation's role in a person's SIP and, when it reads, one period a consent
    covers it: an organisation several consents cover at times apart holds one per period
    (with the same role); one no consent covers holds one that reads nothing."""

    org: str
    role: str  # coordinator | participant
    reads: bool
    valid_until: int | None
    # From when the consent covers (a consent dated to start later); None: already.
    valid_from: int | None = None

    def reads_at(self, now: int) -> bool:
        """A live reading grant at ``now`` (what ``Visibility``'s SQL asks of a row)."""
        return self.reads and (self.valid_until is None or self.valid_until > now) and \
            (self.valid_from is None or self.valid_from <= now)


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
    for (one of its grants for the patient, one per period a consent covers it, is live).
    Checked per candidate row (correlated EXISTS, probing the organisation's grants for the
    patient by index), so the cost follows the rows the criteria match, not the number of
    patients the organisation can see. The organisation and the time are bound parameters
    (``vis_org``, ``vis_now``: see ``visibility_params``), so the condition is built once
    per type."""
    return _visibility_shape(vis.compartment)


def visibility_params(vis: Visibility | None) -> Params:
    return {} if vis is None else {"vis_org": vis.org, "vis_now": vis.now}


@lru_cache(maxsize=None)
def _visibility_shape(compartment: str | None) -> ColumnElement[bool]:
    g = access_grant.c
    org, now = bindparam("vis_org", type_=String), bindparam("vis_now", type_=BigInteger)
    live = and_(g.org_hsa_id == org, g.reads.is_(True),
                or_(g.valid_until.is_(None), g.valid_until > now),
                or_(g.valid_from.is_(None), g.valid_from <= now))
    owned = _R.owner_org == org
    if compartment is None:
        return owned
    shared = _R.withheld.is_(False)
    if compartment == "_self":
        return or_(owned, and_(shared, any_row(g.patient_id == _R.res_id, live)))
    c = idx_reference.c
    granted = any_row(
        c.res_type == _R.res_type, c.res_id == _R.res_id, c.param == compartment,
        c.target_type == "Patient", g.patient_id == c.target_id, live)
    return or_(owned, and_(shared, granted))


@lru_cache(maxsize=SHAPES_KEPT)
def _conditions(shape: Shape) -> tuple[ColumnElement[bool], ...]:
    rtype, criteria, seen = shape
    conds = [_R.res_type == rtype, _R.deleted.is_(False)]
    conds += [_criterion_cond(rtype, s, f"c{i}") for i, s in enumerate(criteria)]
    if seen[0] == "visible":
        conds.append(_visibility_shape(seen[1]))
    return tuple(conds)


@lru_cache(maxsize=SHAPES_KEPT)
def _matching(shape: Shape) -> Select[Any]:
    return select(_R.res_id).where(*_conditions(shape))


def base_select(query: SearchQuery, visibility: Visibility | None = None) -> Select[Any]:
    """The ids of the resources matching ``query``'s criteria, its values bound (to run, or
    to use inside another statement)."""
    shape, params = _shape(query, visibility)
    return _matching(shape).params(params)


def _sort_key(rtype: str, name: str, desc: bool) -> ColumnElement[Any]:
    """What a resource is sorted by: of several values (or a range), the lowest ascending and
    the highest descending (FHIR's rule; a date's start, or its end)."""
    if name == "_lastUpdated":
        return _R.last_updated
    if name == "_id":
        return _R.res_id
    p = params_for(rtype)[name]
    table, col = {"date": (idx_date, "high" if desc else "low"),
                  "string": (idx_string, "value_norm"),
                  "token": (idx_token, "code"), "uri": (idx_token, "code")}[p.type]
    c = table.c
    pick = func.max if desc else func.min
    return (select(pick(c[col])).where(c.res_type == _R.res_type, c.res_id == _R.res_id,
                                       c.param == name).scalar_subquery())


@lru_cache(maxsize=SHAPES_KEPT)
def _total(shape: Shape) -> Select[Any]:
    return select(func.count()).select_from(resource).where(*_conditions(shape))


Sort = tuple[tuple[str, bool], ...]


def _seek_keys(rtype: str, sort: Sort) -> list[tuple[ColumnElement[Any], bool, bool]]:
    """The page order's keys, each (expression, descending, may be NULL): the ``_sort``
    keys, then the tiebreakers that make the order total (lastUpdated, newest first, then
    the id, unique within the type)."""
    keys = [(_sort_key(rtype, name, desc), desc, name not in ("_id", "_lastUpdated"))
            for name, desc in sort]
    return keys + [(_R.last_updated, True, False), (_R.res_id, False, False)]


def _by_keys(keys: list[Any], sort: Sort) -> list[Any]:
    """The ORDER BY terms of the ``_sort`` keys' columns. A resource without the value comes
    last either way, on SQLite as on PostgreSQL (whose NULLs came first descending, SQLite's
    first ascending)."""
    return [(key.desc() if desc else key.asc()).nulls_last()
            for key, (_, desc) in zip(keys, sort)]


def _by_values(sort: Sort) -> bool:
    """Whether the order has a key that is a search parameter's value (a sub-select of
    its index rows), not a column of the resource's row (``_id``, ``_lastUpdated``)."""
    return any(name not in ("_id", "_lastUpdated") for name, _ in sort)


def _in_order(shape: Shape, sort: Sort, nulls: tuple[bool, ...] | None = None
              ) -> Select[Any]:
    """The matches' keys in the search's order (with ``nulls``: those after a position,
    see ``_after``), a page of them (``page_limit``), with the position of each row in it
    (``seek_lu`` and ``sk<i>``: what a next page continues after, see ``position``)."""
    keys = [_sort_key(shape[0], name, desc).label(f"sk{i}")
            for i, (name, desc) in enumerate(sort)]
    matched = select(_R.res_type, _R.res_id, _R.version_id, _R.owner_org, _R.withheld,
                     _R.last_updated.label("seek_lu"), *keys).where(*_conditions(shape))
    if not _by_values(sort):
        # "+ 0" keeps the planner from walking the whole (res_type, last_updated) index in
        # order when the criteria match few rows (SQLite would otherwise scan every resource
        # of the type).
        beyond = [] if nulls is None else [_after(_seek_keys(shape[0], sort), nulls)]
        return (matched.where(*beyond)
                .order_by(*_by_keys(keys, sort),
                          (_R.last_updated + 0).desc(), _R.res_id)
                .limit(bindparam("page_limit", type_=Integer)))
    # Sorted by a parameter's value: the matches and their keys first, in a sub-select that
    # the planner may not merge into the sorting one (its OFFSET), then the order and the
    # page over its columns. Merged, SQLite 3.40 answered a page of a search whose criteria
    # drive the lookup (an IN over index rows) and whose order has a correlated sub-select
    # with the wrong rows: a page of 3 missed the match with the lowest key.
    m = matched.offset(0).subquery("matched")
    sort_keys = [m.c[f"sk{i}"] for i in range(len(sort))]
    seek = [(k, desc, name not in ("_id", "_lastUpdated"))
            for k, (name, desc) in zip(sort_keys, sort)]
    beyond = [] if nulls is None else [
        _after(seek + [(m.c.seek_lu, True, False), (m.c.res_id, False, False)], nulls)]
    return (select(*m.c).where(*beyond)
            .order_by(*_by_keys(sort_keys, sort), m.c.seek_lu.desc(), m.c.res_id)
            .limit(bindparam("page_limit", type_=Integer)))


def _with_content(keys: Select[Any], sort: Sort) -> Select[Any]:
    """The page of ``keys`` (``_in_order``) with each resource's stored version, in its
    order. The versions are joined to the page only: joined before the order was decided,
    every match's content was carried through the sort (a search matching 70,000 plans took
    0.4 s a page on SQLite, sorting their JSON to keep ten)."""
    page = keys.subquery("page")
    p = page.c
    sort_keys = [p[f"sk{i}"] for i in range(len(sort))]
    return (select(_H.res_type, _H.res_id, _H.version_id, _H.last_updated, _H.method,
                   _H.content, p.owner_org, p.withheld, p.seek_lu, *sort_keys)
            .join_from(page, resource_history, and_(
                _H.res_type == p.res_type, _H.res_id == p.res_id,
                _H.version_id == p.version_id))
            .order_by(*_by_keys(sort_keys, sort), p.seek_lu.desc(), p.res_id))


@lru_cache(maxsize=SHAPES_KEPT)
def _page(shape: Shape, sort: Sort) -> Select[Any]:
    """A first page, or one at an ``_offset``."""
    # 64-bit: an offset past 2**31 is a valid (empty) page, not an int4 overflow.
    return _with_content(_in_order(shape, sort).offset(
        bindparam("page_offset", type_=BigInteger)), sort)


def _after(keys: list[tuple[ColumnElement[Any], bool, bool]], nulls: tuple[bool, ...]
           ) -> ColumnElement[bool]:
    """The rows after a position in the order (keyset paging) of ``keys`` (``_seek_keys``):
    ``seek_<i>`` holds the position's value of key i, ``nulls[i]`` whether it is NULL (the
    statement differs). Row i of the OR: equal on every key before i, beyond on key i (NULLs
    last)."""
    alternatives, equal = [], []
    for i, ((expr, desc, nullable), null) in enumerate(zip(keys, nulls)):
        if null:  # nothing is beyond NULL on this key: only ties, ordered by the next keys
            equal.append(expr.is_(None))
            continue
        value = bindparam(f"seek_{i}")
        beyond = expr < value if desc else expr > value
        alternatives.append(and_(*equal, or_(beyond, expr.is_(None)) if nullable else beyond))
        equal.append(expr == value)
    return or_(*alternatives)


@lru_cache(maxsize=SHAPES_KEPT)
def _seek(shape: Shape, sort: Sort, nulls: tuple[bool, ...]) -> Select[Any]:
    """A page after a position (``SearchQuery.after``): the rows others write or delete
    before that position meanwhile move no row after it into, or out of, the page."""
    return _with_content(_in_order(shape, sort, nulls), sort)


def position(row: Any, sort: Sort) -> tuple[Any, ...]:
    """A row's position in the order of ``_in_order``: its sort keys, lastUpdated and id."""
    return (*(getattr(row, f"sk{i}") for i in range(len(sort))), row.seek_lu, row.res_id)


def run(conn: Connection, query: SearchQuery,
        visibility: Visibility | None = None) -> tuple[list[Any], int | None]:
    """The page of matches and Bundle.total (None when not asked for). Sets ``query.keyset``
    and ``query.next_after``: the position a next page continues after (None: no more).
    One row beyond the page is read to tell whether more follow."""
    shape, params = _shape(query, visibility)
    if query.summary_count or query.count == 0:
        total = conn.execute(_total(shape), params).scalar_one() if (
            query.total or query.summary_count) else None
        return [], total
    sort = tuple(query.sort)
    params["page_limit"] = query.count + 1
    if query.after is None:
        params["page_offset"] = query.offset
        statement = _page(shape, sort)
    else:
        nulls = tuple(v is None for v in query.after)
        params.update({f"seek_{i}": v for i, v in enumerate(query.after) if v is not None})
        statement = _seek(shape, sort, nulls)
    found = conn.execute(statement, params).all()
    page = found[:query.count]
    query.keyset = True
    query.next_after = position(page[-1], sort) if len(found) > query.count else None
    rows = [_row(r, False) for r in page]
    if not query.total:
        return rows, None

    def counted() -> int:
        return conn.execute(_total(shape), params).scalar_one()
    if query.after is not None:
        # Where the page starts among the matches is not known: counted.
        return rows, max(counted(), len(rows))
    # (the row read beyond the page tells too: a page exactly full ends the matches without it)
    return rows, page_total(len(found), query.count + 1, query.offset, counted)


def page_total(found: int, count: int, offset: int, counted: Callable[[], int]) -> int:
    """Bundle.total beside a page of ``found`` of at most ``count`` matches from ``offset``.
    A page that is not full ends the matches: the total is told by it, in its snapshot (no
    count; on PostgreSQL, whose reads see a snapshot per statement, a separate count could
    disagree with the page under concurrent writes). Otherwise counted, and never less
    than a page that shows matches tells (an empty one beyond the end tells nothing)."""
    if found < count and (found or not offset):
        return offset + found
    return max(counted(), offset + found) if found else counted()


def include_keys(conn: Connection, includes: list[Include], revincludes: list[Include],
                 found: list[Any], limit: int | None = None) -> list[tuple[str, str]]:
    """The (type, id) of what ``includes`` reach from ``found`` (stored resources of any
    types) and of what refers to them by ``revincludes``, in the index of references; at
    most ``limit`` by each include (what one page may hold is bounded: ``Resources.includes``)."""
    if not found:
        return []
    by_type: dict[str, list[str]] = {}
    for s in found:
        by_type.setdefault(s.type, []).append(s.id)
    c = idx_reference.c
    keys: list[tuple[str, str]] = []
    for inc in includes:
        ids = by_type.get(inc.source_type)
        if not ids:
            continue
        q = select(c.target_type, c.target_id).where(
            c.res_type == inc.source_type, c.param == inc.param.name, c.res_id.in_(ids))
        if inc.target_type:
            q = q.where(c.target_type == inc.target_type)
        keys += [(r.target_type, r.target_id) for r in conn.execute(q.limit(limit))]
    for inc in revincludes:
        for rtype, ids in by_type.items():
            if inc.param.targets and rtype not in inc.param.targets:
                continue
            q = select(c.res_type, c.res_id).where(
                c.res_type == inc.source_type, c.param == inc.param.name,
                c.target_type == rtype, c.target_id.in_(ids))
            keys += [(r.res_type, r.res_id) for r in conn.execute(q.limit(limit))]
    return list(dict.fromkeys(keys))


__all__ = ["run", "date_cond", "visibility_params", "include_keys", "base_select",
           "visibility_cond", "Visibility", "VisibilityFor", "Grant", "SHAPES_KEPT"]
