"""Search statements are built once per shape of query and kept; every search binds its own
values. Two searches of one shape must each find their own matches (a value of one never
leaks into the other), and the second must reuse the first one's statement."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from sip_hub.fhir.search import parse
from sip_hub.store import Store
from sip_hub.store import search as sql_search

Json = dict[str, Any]


def patient(rid: str, family: str, born: str, pnr: str, gender: str) -> Json:
    return {"resourceType": "Patient", "id": rid, "gender": gender, "birthDate": born,
            "name": [{"family": family, "given": ["Test"]}],
            "identifier": [{"system": "http://electronichealth.se/identifier/personnummer",
                            "value": pnr}]}


def appointment(rid: str, start: str, patient_id: str) -> Json:
    return {"resourceType": "Appointment", "id": rid, "status": "booked", "start": start,
            "end": start.replace("T09", "T10"),
            "participant": [{"actor": {"reference": f"Patient/{patient_id}"},
                             "status": "accepted"}]}


PATIENTS = [patient("p-ann", "Andersson", "1950-01-01", "195001019802", "female"),
            patient("p-bo", "Bergström", "1960-06-15", "196006159808", "male"),
            patient("p-cilla", "Carlsson_50%", "1970-12-31", "197012319801", "female")]
APPOINTMENTS = [appointment("a-1", "2026-03-01T09:00:00+01:00", "p-ann"),
                appointment("a-2", "2026-04-01T09:00:00+02:00", "p-bo"),
                appointment("a-3", "2026-05-01T09:00:00+02:00", "p-cilla")]

# Pairs of searches of one shape with different values, and what each must find.
SAME_SHAPE = [
    ("Patient", [("_id", "p-ann,p-bo")], {"p-ann", "p-bo"},
     [("_id", "p-cilla")], {"p-cilla"}),
    ("Patient", [("identifier", "http://electronichealth.se/identifier/personnummer|"
                                "195001019802")], {"p-ann"},
     [("identifier", "http://electronichealth.se/identifier/personnummer|196006159808")],
     {"p-bo"}),
    ("Patient", [("gender", "female")], {"p-ann", "p-cilla"}, [("gender", "male")], {"p-bo"}),
    ("Patient", [("gender:not", "female")], {"p-bo"}, [("gender:not", "male")],
     {"p-ann", "p-cilla"}),
    ("Patient", [("family", "and")], {"p-ann"}, [("family", "berg")], {"p-bo"}),
    ("Patient", [("family:exact", "Andersson")], {"p-ann"}, [("family:exact", "Carlsson_50%")],
     {"p-cilla"}),
    ("Patient", [("family:contains", "_50%")], {"p-cilla"}, [("family:contains", "gströ")],
     {"p-bo"}),
    ("Patient", [("birthdate", "lt1955")], {"p-ann"}, [("birthdate", "lt1965")],
     {"p-ann", "p-bo"}),
    ("Patient", [("birthdate", "1960-06-15")], {"p-bo"}, [("birthdate", "1970-12-31")],
     {"p-cilla"}),
    ("Appointment", [("patient", "Patient/p-ann")], {"a-1"}, [("patient", "Patient/p-bo")],
     {"a-2"}),
    ("Appointment", [("date", "ge2026-04-01"), ("status", "booked")], {"a-2", "a-3"},
     [("date", "ge2026-05-01"), ("status", "booked")], {"a-3"}),
    ("Appointment", [("patient.family", "andersson")], {"a-1"},
     [("patient.family", "carlsson")], {"a-3"}),
    ("Appointment", [("patient.birthdate", "gt1955")], {"a-2", "a-3"},
     [("patient.birthdate", "gt1965")], {"a-3"}),
]


@pytest.fixture
def filled(store: Store) -> Store:
    with store.begin() as tx:
        for res in PATIENTS + APPOINTMENTS:
            tx.create(dict(res), res["id"])
    return store


def found(store: Store, rtype: str, items: list[tuple[str, str]]) -> set[str]:
    query = parse(rtype, items, default_count=50, max_count=100)
    with store.begin(write=False) as tx:
        matches, total = tx.search(query)
    assert total == len(matches)
    return {m.id for m in matches}


@pytest.mark.parametrize("rtype,first,first_ids,second,second_ids", SAME_SHAPE,
                         ids=[" ".join(k for k, _ in s[1]) for s in SAME_SHAPE])
def test_searches_of_one_shape_each_find_their_own(
        filled: Store, rtype: str, first: list[tuple[str, str]], first_ids: set[str],
        second: list[tuple[str, str]], second_ids: set[str]) -> None:
    assert found(filled, rtype, first) == first_ids
    built = sql_search._page.cache_info().misses
    assert found(filled, rtype, second) == second_ids
    assert sql_search._page.cache_info().misses == built  # the first one's statement
    assert found(filled, rtype, first) == first_ids  # and back


def test_paging_values_are_bound_per_search(filled: Store) -> None:
    def page(offset: str) -> list[str]:
        query = parse("Patient", [("_sort", "birthdate"), ("_count", "1"),
                                  ("_offset", offset)], default_count=50, max_count=100)
        with filled.begin(write=False) as tx:
            return [m.id for m in tx.search(query)[0]]
    assert [page("0"), page("1"), page("2"), page("3")] == [["p-ann"], ["p-bo"], ["p-cilla"], []]


def test_the_statements_kept_are_bounded(filled: Store) -> None:
    """A client can make ever new shapes (here the same six criteria in another order each
    time): the hub keeps the statements of the latest SHAPES_KEPT only, and every search
    still finds what it should."""
    criteria = [("gender", "female"), ("family", "and"), ("birthdate", "1950-01-01"),
                ("given", "test"), ("name", "andersson"),
                ("identifier", "http://electronichealth.se/identifier/personnummer|"
                               "195001019802")]
    shapes = itertools.islice(itertools.permutations(criteria), sql_search.SHAPES_KEPT + 10)
    for items in shapes:
        assert found(filled, "Patient", list(items)) == {"p-ann"}
    for cached in (sql_search._conditions, sql_search._total, sql_search._page):
        assert cached.cache_info().currsize <= sql_search.SHAPES_KEPT


def _plan_of_page(store: Store, items: list[tuple[str, str]]) -> tuple[list[Any], list[str]]:
    """How the database runs the statement of a search's first page: PostgreSQL's plan as
    run (EXPLAIN ANALYZE, JSON), or SQLite's steps (id, parent, detail)."""
    query = parse("Patient", items, default_count=50, max_count=100)
    shape, params = sql_search._shape(query, None)
    params.update(page_limit=query.count + 1, page_offset=0)
    statement = sql_search._page(shape, tuple(query.sort)).params(params)
    with store.engine.connect() as conn:
        compiled = statement.compile(conn)
        if conn.dialect.name == "postgresql":
            plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + str(compiled),
                                        compiled.params).scalar_one()
            return plan, []
        args = tuple(compiled.params[k] for k in compiled.positiontup or ())
        steps = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + str(compiled), args).all()
        return [], [f"{r[0]} {r[1]} {r[3]}" for r in steps]


def _history_rows_read(node: Json) -> float:
    own = node.get("Actual Rows", 0) * node.get("Actual Loops", 1) \
        if node.get("Relation Name") == "resource_history" else 0
    return own + sum(_history_rows_read(child) for child in node.get("Plans", []))


def test_a_page_reads_the_stored_versions_of_its_own_resources_only(store: Store) -> None:
    """A search matching many resources orders their keys and reads the stored version of
    the page's only: read before the order was decided, every match's content went through
    the sort (a search matching 70,000 plans took 0.4 s a page on SQLite to keep ten)."""
    with store.begin() as tx:
        for k in range(300):
            tx.create({**PATIENTS[k % 3], "id": f"p-{k}"}, f"p-{k}")
    items = [("gender", "female"), ("_count", "5")]
    with store.begin(write=False) as tx:
        page, total = tx.search(parse("Patient", items, default_count=50, max_count=100))
    assert len(page) == 5 and total == 200
    plan, steps = _plan_of_page(store, items)
    if plan:
        assert _history_rows_read(plan[0]["Plan"]) <= 6, plan
        return
    # SQLite: the page is made (ordered and cut) first; the versions are read from it.
    made = next(s for s in steps if "page" in s and ("MATERIALIZE" in s or "CO-ROUTINE" in s))
    history = next(s for s in steps if "resource_history" in s)
    assert history.split()[1] != made.split()[0], steps  # not a step inside the page's making
    assert any(s.split(" ", 2)[2].startswith("SCAN page") for s in steps), steps
