"""SQL of the deadline scan (``sip_hub.deadlines``): which SIP plans a round must look at.

A round looks at the plans written (or whose SIP was written) since the last completed round,
found through the resource table's ``(res_type, last_updated)`` index and the reference index,
and at the plans whose next deadline has come, kept in ``deadline_due``. ``deadline_scan``
holds when the last completed round started.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import Select, and_, bindparam, delete, func, insert, select

from ..fhir.search import SearchQuery
from .records import COLUMNS, CURRENT_COLUMNS, Stored, current_to_stored, row_to_stored
from .resources import Tx, current_select
from .schema import deadline_due, deadline_scan, idx_reference, resource, resource_history
from .search import base_select

_R = resource.c
_H = resource_history.c
_X = idx_reference.c
_D = deadline_due.c
_CHUNK = 500  # ids per statement (SQLite limits bound parameters)


class Watermark(NamedTuple):
    scanned_at: int  # UTC microseconds: when the last completed round started
    inactive_days: int  # the setting it ran with (the inactivity deadlines depend on it)


def matching(tx: Tx, query: SearchQuery) -> list[str]:
    """The ids of every resource matching ``query``'s criteria (ids only, no paging)."""
    return sorted(tx.conn.execute(base_select(query)).scalars())


def _written(rtype: str, since: int) -> Select[Any]:
    return select(_R.res_id).where(_R.res_type == rtype, _R.last_updated >= since)


def written_since(tx: Tx, rtype: str, since: int) -> list[str]:
    """Resources of ``rtype`` whose current version, or tombstone, was written at or after
    ``since``."""
    return list(tx.conn.execute(_written(rtype, since)).scalars())


def plans_referring(tx: Tx, param: str, rtype: str, since: int) -> set[str]:
    """The CarePlans that refer by ``param`` to a resource of ``rtype`` written (or deleted) at
    or after ``since``: a plan's own index rows stay when what it refers to is deleted."""
    return set(tx.conn.execute(select(_X.res_id).where(
        _X.res_type == "CarePlan", _X.param == param, _X.target_type == rtype,
        _X.target_id.in_(_written(rtype, since)))).scalars())


def plans_of_patients(tx: Tx, rtype: str, since: int, earlier_ids: set[str]) -> set[str]:
    """The CarePlans whose subject is a Patient a resource of ``rtype`` written at or after
    ``since`` refers to by ``patient`` (a Consent: who the SIP is shared with), or one of
    ``earlier_ids`` (those its earlier versions referred to: a deleted one has no index rows)."""
    patients = select(_X.target_id).where(
        _X.res_type == rtype, _X.param == "patient", _X.target_type == "Patient",
        _X.res_id.in_(_written(rtype, since)))
    plans = select(_X.res_id).where(_X.res_type == "CarePlan", _X.param == "patient",
                                    _X.target_type == "Patient")
    found = set(tx.conn.execute(plans.where(_X.target_id.in_(patients))).scalars())
    ids = sorted(earlier_ids)
    for i in range(0, len(ids), _CHUNK):
        found |= set(tx.conn.execute(plans.where(_X.target_id.in_(ids[i:i + _CHUNK])))
                     .scalars())
    return found


def plans_referred(tx: Tx, query: SearchQuery, param: str) -> set[str]:
    """The CarePlans the resources matching ``query`` refer to by ``param``."""
    return set(tx.conn.execute(select(_X.target_id).where(
        _X.res_type == query.resource_type, _X.param == param, _X.target_type == "CarePlan",
        _X.res_id.in_(base_select(query)))).scalars())


@lru_cache(maxsize=None)
def _referring(rtype: str, param: str) -> Select[Any]:
    return (current_select(_X.target_id, *CURRENT_COLUMNS)
            .join(idx_reference, and_(_X.res_type == _R.res_type, _X.res_id == _R.res_id))
            .where(_X.res_type == rtype, _X.param == param, _X.target_type == "CarePlan",
                   _X.target_id.in_(bindparam("plans", expanding=True)),
                   _R.deleted.is_(False)))


def referring(tx: Tx, rtype: str, param: str, plan_ids: list[str]) -> dict[str, list[Stored]]:
    """For each of the CarePlans ``plan_ids``, the current resources of ``rtype`` that refer
    to it by ``param``, newest first (as a search lists them): one statement for many
    plans, where a search per plan would be one each."""
    found: dict[str, dict[str, Stored]] = {}
    for i in range(0, len(plan_ids), _CHUNK):
        for target, *row in tx.conn.execute(_referring(rtype, param),
                                            {"plans": plan_ids[i:i + _CHUNK]}):
            stored = current_to_stored(tuple(row))
            found.setdefault(target, {})[stored.id] = stored
    return {plan: sorted(by_id.values(), key=lambda s: (-s.last_updated, s.id))
            for plan, by_id in found.items()}


def earlier(tx: Tx, rtype: str, since: int) -> list[Stored]:
    """For each resource of ``rtype`` written at or after ``since``, the version that was
    current just before (none when it was created since, or had been deleted already): what
    it referred to then, which the index no longer tells once it changed or was deleted."""
    before = (select(_H.res_id, func.max(_H.version_id).label("v"))
              .where(_H.res_type == rtype, _H.last_updated < since,
                     _H.res_id.in_(_written(rtype, since)))
              .group_by(_H.res_id).subquery())
    rows = tx.conn.execute(
        select(*COLUMNS)
        .join_from(resource_history, before,
                   and_(_H.res_id == before.c.res_id, _H.version_id == before.c.v))
        .where(_H.res_type == rtype, _H.content.is_not(None)))
    return [row_to_stored(r) for r in rows]


def due(tx: Tx, at: int) -> list[str]:
    """The plans whose next deadline has come by ``at``."""
    return list(tx.conn.execute(select(_D.plan_id).where(_D.due <= at)).scalars())


def set_due(tx: Tx, dues: dict[str, int | None]) -> None:
    """Record when each plan next needs a look by time alone (None: not by time)."""
    ids = list(dues)
    for i in range(0, len(ids), _CHUNK):
        tx.conn.execute(delete(deadline_due).where(_D.plan_id.in_(ids[i:i + _CHUNK])))
    rows = [{"plan_id": p, "due": d} for p, d in dues.items() if d is not None]
    if rows:
        tx.conn.execute(insert(deadline_due), rows)


def watermark(tx: Tx) -> Watermark | None:
    row = tx.conn.execute(select(deadline_scan.c.scanned_at,
                                 deadline_scan.c.inactive_days)).first()
    return Watermark(row.scanned_at, row.inactive_days) if row else None


def set_watermark(tx: Tx, mark: Watermark) -> None:
    tx.conn.execute(delete(deadline_scan))
    tx.conn.execute(insert(deadline_scan), {"id": 1, "scanned_at": mark.scanned_at,
                                            "inactive_days": mark.inactive_days})


def clear_watermark(tx: Tx) -> None:
    """Forget the last round: the next one looks at every open plan."""
    tx.conn.execute(delete(deadline_scan))
