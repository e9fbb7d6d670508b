"""The search index under updates and releases: an update that read the version it replaces
writes only the index rows that changed, and the index always holds exactly the rows the
current version yields; a release whose search parameters differ rebuilds the index when it
migrates the database."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sip_hub.fhir import search as fhir_search
from sip_hub.fhir.indexing import extract, fingerprint
from sip_hub.store import Store, Tx
from sip_hub.store.index_state import rebuild_if_changed
from sip_hub.store.migrate import upgrade

Json = dict[str, Any]
KINDS = {"token": ("param", "system", "code"), "reference": ("param", "target_type", "target_id"),
         "date": ("param", "low", "high"), "string": ("param", "value_norm", "value")}
EXAMPLES = sorted((Path(__file__).parent.parent / "fixtures" / "r4-examples").glob("*.json"))


def stored_rows(tx: Tx, rtype: str, rid: str) -> dict[str, Counter]:
    out = {}
    for kind, columns in KINDS.items():
        rows = tx.conn.execute(text(
            f"SELECT {', '.join(columns)} FROM idx_{kind} WHERE res_type = :t AND res_id = :i"),
            {"t": rtype, "i": rid}).all()
        out[kind] = Counter(tuple(r) for r in rows)
    return out


def wanted_rows(res: Json | None) -> dict[str, Counter]:
    rows = extract(res) if res is not None else None
    return {kind: Counter(getattr(rows, kind)) if rows else Counter() for kind in KINDS}


def index_of(store: Store, rtype: str, rid: str) -> tuple[dict[str, Counter], dict[str, Counter]]:
    """(what the index holds, what the current version yields)."""
    with store.begin(write=False) as tx:
        cur = tx.current(rtype, rid)
        want = wanted_rows(cur.json() if cur is not None and not cur.deleted else None)
        return stored_rows(tx, rtype, rid), want


def update_as_the_api_does(store: Store, res: Json, rid: str) -> None:
    """Read the current version first (as every write path's rules do), then update."""
    with store.begin() as tx:
        tx.current(res["resourceType"], rid)
        tx.update(copy.deepcopy(res), rid)


def appointment(start: str, *actors: str) -> Json:
    return {"resourceType": "Appointment", "status": "booked", "start": start,
            "end": start.replace("10:00", "11:00"),
            "participant": [{"actor": {"reference": a}, "status": "accepted"} for a in actors]}


def patient(*identifiers: tuple[str | None, str], family: str = "Tolvansson") -> Json:
    return {"resourceType": "Patient", "name": [{"family": family}],
            "identifier": [{"value": v, **({"system": s} if s else {})} for s, v in identifiers]}


CHANGES = {
    "a meeting moved": (appointment("2026-05-04T10:00:00Z", "Patient/p", "Organization/o"),
                        appointment("2026-05-11T10:00:00Z", "Patient/p", "Organization/o")),
    "a participant swapped": (appointment("2026-05-04T10:00:00Z", "Patient/p", "Organization/a"),
                              appointment("2026-05-04T10:00:00Z", "Patient/p",
                                          "Organization/b")),
    "a row twice, then once": (patient(("urn:x", "1"), ("urn:x", "1")),
                               patient(("urn:x", "1"))),
    "a row once, then three times": (patient(("urn:x", "1")),
                                     patient(("urn:x", "1"), ("urn:x", "1"), ("urn:x", "1"))),
    "a token without a system": (patient((None, "a"), ("urn:x", "1")),
                                 patient((None, "b"), ("urn:x", "1"))),
    "a name changed": (patient(("urn:x", "1")), patient(("urn:x", "1"), family="Svensson")),
    "everything searchable dropped": (patient(("urn:x", "1")), {"resourceType": "Patient"}),
    "nothing searchable changed": (patient(("urn:x", "1")),
                                   {**patient(("urn:x", "1")), "gender": "unknown"}),
}


@pytest.mark.parametrize("change", CHANGES)
def test_an_update_writes_only_what_changed_and_the_index_matches_it(
        store: Store, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    before, after = CHANGES[change]
    rtype = before["resourceType"]
    with store.begin() as tx:
        tx.create(copy.deepcopy(before), "r1")
        tx.create(copy.deepcopy(before), "r2")  # a neighbour whose rows must stay as they are

    def no_clearing(*_: Any) -> None:
        raise AssertionError("an update that read the old version clears no index table")
    monkeypatch.setattr(Tx, "_clear_index", no_clearing)
    update_as_the_api_does(store, after, "r1")
    held, want = index_of(store, rtype, "r1")
    assert held == want
    assert index_of(store, rtype, "r2")[0] == wanted_rows({**before, "id": "r2"})


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_updated_to_another_keeps_its_index_exact(store: Store, path: Path) -> None:
    """Each R4 example, then the same resource with every other element left out, then the
    example again: the index holds exactly the rows of each version."""
    full = json.loads(path.read_text())
    rtype = full["resourceType"]
    keys = [k for k in full if k not in ("resourceType", "id", "meta")]
    sparse = {"resourceType": rtype, **{k: full[k] for k in keys[::2]}}
    with store.begin() as tx:
        tx.create(copy.deepcopy(full), "x1")
    for version in (sparse, full):
        update_as_the_api_does(store, version, "x1")
        held, want = index_of(store, rtype, "x1")
        assert held == want, rtype


def test_a_write_after_a_delete_indexes_the_new_version_whole(store: Store) -> None:
    with store.begin() as tx:
        tx.create(patient(("urn:x", "1")), "p1")
    with store.begin() as tx:
        tx.delete("Patient", "p1")
    assert index_of(store, "Patient", "p1")[0] == wanted_rows(None)
    update_as_the_api_does(store, patient(("urn:x", "2")), "p1")
    held, want = index_of(store, "Patient", "p1")
    assert held == want and sum(want["token"].values()) >= 1


def test_an_update_without_the_old_version_at_hand_rewrites_the_index(store: Store) -> None:
    with store.begin() as tx:
        tx.create(patient(("urn:x", "1")), "p1")
    with store.begin() as tx:  # not read first: the index is cleared and written whole
        tx.update(patient(("urn:x", "2"), family="Svensson"), "p1")
    held, want = index_of(store, "Patient", "p1")
    assert held == want


def _search(store: Store, rtype: str, items: list[tuple[str, str]]) -> list[str]:
    with store.begin(write=False) as tx:
        q = fhir_search.parse(rtype, items, default_count=50, max_count=50)
        return sorted(s.id for s in tx.search(q)[0])


def test_a_release_with_other_search_parameters_rebuilds_the_index(store: Store) -> None:
    rebuild_if_changed(store.engine)  # as migrating does (the fixture may have emptied it)
    with store.begin() as tx:
        state = tx.conn.execute(text("SELECT fingerprint FROM search_index_state")).scalars()
        assert list(state) == [fingerprint()]
        tx.create(patient(("urn:x", "1")), "p1")
        tx.create(patient(("urn:x", "2"), family="Svensson"), "p2")
        tx.create(patient(("urn:x", "3")), "p3")
        tx.create(appointment("2026-05-04T10:00:00Z", "Patient/p1"), "a1")
    with store.begin() as tx:
        tx.delete("Patient", "p3")
        # What an older release left: rows it derived differently, rows it never wrote.
        tx.conn.execute(text("DELETE FROM idx_string WHERE res_id = 'p1'"))
        tx.conn.execute(text("INSERT INTO idx_token (res_type, res_id, param, system, code) "
                             "VALUES ('Patient', 'p2', 'identifier', 'urn:old', 'stale')"))
        tx.conn.execute(text("UPDATE search_index_state SET fingerprint = 'an older release'"))
    assert _search(store, "Patient", [("name", "tolvansson")]) == []
    upgrade(store.engine)  # what `sip-hub migrate` and every start run
    for rtype, rid in (("Patient", "p1"), ("Patient", "p2"), ("Patient", "p3"),
                       ("Appointment", "a1")):
        held, want = index_of(store, rtype, rid)
        assert held == want, rid
    assert _search(store, "Patient", [("name", "tolvansson")]) == ["p1"]
    assert _search(store, "Patient", [("identifier", "urn:old|stale")]) == []
    with store.begin(write=False) as tx:
        assert list(tx.conn.execute(text("SELECT fingerprint FROM search_index_state"))
                    .scalars()) == [fingerprint()]
    assert rebuild_if_changed(store.engine) is None  # current now: nothing to do
