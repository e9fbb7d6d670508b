"""The search index rows the store holds for a resource, against those this release derives
from its current version (what an update compares its own rows with:
``Tx._replace_index``), with the rows a Provenance's compartment resolves to
(``compartment.index_rows``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sqlalchemy import Engine, text

from sip_hub.fhir import compartment
from sip_hub.fhir.indexing import extract
from sip_hub.service import tx_resolver
from sip_hub.store import Store, Tx

KINDS = {"token": ("param", "system", "code"), "reference": ("param", "target_type", "target_id"),
         "date": ("param", "low", "high"), "string": ("param", "value_norm", "value")}


def index_rows(engine: Engine, rtype: str, rid: str) -> dict[str, Counter]:
    out = {}
    with engine.connect() as conn:
        for kind, columns in KINDS.items():
            rows = conn.execute(text(
                f"SELECT {', '.join(columns)} FROM idx_{kind} "
                "WHERE res_type = :t AND res_id = :i"), {"t": rtype, "i": rid}).all()
            out[kind] = Counter(tuple(r) for r in rows)
    return out


def _wanted(tx: Tx, res: dict[str, Any] | None) -> dict[str, Counter]:
    rows = extract(res) if res is not None else None
    if rows is not None and res is not None and res["resourceType"] in compartment.RESOLVED:
        rows.reference += compartment.index_rows(res["resourceType"], res, tx_resolver(tx))
    return {kind: Counter(getattr(rows, kind)) if rows else Counter() for kind in KINDS}


def index_is_exact(store: Store, keys: list[tuple[str, str]]) -> None:
    for rtype, rid in keys:
        with store.begin(write=False) as tx:
            cur = tx.current(rtype, rid)
            want = _wanted(tx, cur.json() if cur is not None and not cur.deleted else None)
        assert index_rows(store.engine, rtype, rid) == want, (rtype, rid)
