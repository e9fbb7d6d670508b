"""Search paging by position (keyset): a client paging through a search by its ``next``
links sees every resource that matched throughout exactly once, and none twice, while
others create and delete matching resources before and after its position. Through the
real app over HTTP, on SQLite and (SIP_HUB_TEST_DATABASE_URL) PostgreSQL.

The page token (``_cursor``) is checked: a tampered or malformed one, or one of another
search, is a 400 OperationOutcome; and it grants nothing: the search runs again with the
caller's own access conditions.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest

from fhirhttp import body
from sip_hub.fhir import search as fhir_search
from sip_hub.store import statistics

ORG_A, ORG_B = "SE2321000016-PGA1", "SE2321000016-PGB1"
BASE = "http://hub.test"


def patient(k: int, *, family: str | None = None) -> dict[str, Any]:
    """Patient ``pg-<k>``: its family name sorts as its number; every fourth has no birth
    date (a NULL sort key), the others one a year apart; genders alternate."""
    res: dict[str, Any] = {"resourceType": "Patient", "id": f"pg-{k:04d}",
                           "gender": "female" if k % 2 else "male",
                           "name": [{"family": family or f"Pag{k:04d}", "given": ["Test"]}]}
    if k % 4:
        res["birthDate"] = f"{1900 + k % 97:04d}-01-{1 + k % 28:02d}"
    return res


def put(client: Any, res: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    r = client.put(f"/fhir/Patient/{res['id']}", **body(res) | (
        {"headers": body(res)["headers"] | headers} if headers else {}))
    assert r.status_code in (200, 201), r.text


def delete(client: Any, rid: str) -> None:
    assert client.delete(f"/fhir/Patient/{rid}").status_code == 200


def get(client: Any, url: str, headers: dict[str, str] | None = None) -> Any:
    return client.get(url.removeprefix(BASE), headers=headers)


def page(client: Any, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = get(client, url, headers)
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["resourceType"] == "Bundle" and b["type"] == "searchset"
    return b


def ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((x["url"] for x in bundle["link"] if x["relation"] == relation), None)


def with_param(url: str, key: str, value: str | None) -> str:
    """``url`` with ``key`` set to ``value`` (None: removed)."""
    parts = urlsplit(url)
    items = [(k, v) for k, v in parse_qsl(parts.query) if k != key]
    if value is not None:
        items.append((key, value))
    return f"{parts.path}?{urlencode(items)}"


def paged_and_whole(client: Any, sort: str, count: int, total: int
                    ) -> tuple[list[str], list[str]]:
    """The ids of Patient?_sort=``sort`` page by page (``count`` a page, following next
    links, each page telling ``total``) and in one page."""
    sort_part = f"&_sort={sort}" if sort else ""
    whole = ids(page(client, f"/fhir/Patient?_count=100{sort_part}"))
    assert len(whole) == total
    url: str | None = f"/fhir/Patient?_count={count}{sort_part}"
    paged: list[str] = []
    while url is not None:
        b = page(client, url)
        assert b["total"] == total
        paged += ids(b)
        url = link(b, "next")
    return paged, whole


def cursor_of(url: str) -> str:
    return dict(parse_qsl(urlsplit(url).query))["_cursor"]


SORTS = ["", "_id", "-_id", "family", "-family", "birthdate", "-birthdate", "_lastUpdated",
         "gender,-_id", "-birthdate,family"]


@pytest.mark.parametrize("sort", SORTS, ids=[s or "default" for s in SORTS])
def test_every_lasting_match_is_seen_once_while_others_write(client, sort):
    initial = list(range(100, 1300, 100))  # pg-0100 .. pg-1200
    for k in initial:
        put(client, patient(k))
    sort_part = f"&_sort={sort}" if sort else ""
    url: str | None = f"/fhir/Patient?family=pag&_count=3{sort_part}"
    seen: list[str] = []
    deleted: set[str] = set()
    existing = {f"pg-{k:04d}" for k in initial}
    pages = 0
    while url is not None:
        b = page(client, url)
        pages += 1
        assert b["total"] == len(existing)  # (Bundle.total: every match, counted)
        assert len(ids(b)) <= 3
        seen += ids(b)
        url = link(b, "next")
        if url is None:
            break
        assert "_cursor=" in url and "_offset" not in url
        assert link(b, "previous") is None
        if pages > 4:  # (ascending by lastUpdated, what is new comes last: it would not end)
            continue
        # Before the next page: new matches on both sides of the position in the order
        # (low numbers sort before it, high ones after), and a deletion of one already
        # seen (an offset would skip a lasting one) and of one not yet seen.
        for k in (pages, 5000 + pages, 50 + pages):
            put(client, patient(k))
            existing.add(f"pg-{k:04d}")
        gone = [i for i in seen if i not in deleted][:1] + \
            [f"pg-{k:04d}" for k in initial if f"pg-{k:04d}" not in seen
             and f"pg-{k:04d}" not in deleted][-1:]
        for rid in gone:
            delete(client, rid)
            deleted.add(rid)
            existing.discard(rid)
    lasting = {f"pg-{k:04d}" for k in initial} - deleted
    assert len(seen) == len(set(seen)), f"seen twice: {sorted(seen)}"
    assert lasting <= set(seen), f"missed: {sorted(lasting - set(seen))}"
    assert not set(seen) & {i for i in deleted if i not in seen}  # (trivially)
    assert pages >= 4


@pytest.mark.parametrize("sort", ["", "family", "-birthdate"])
def test_pages_without_writes_are_the_whole_result_in_order(client, sort):
    for k in range(1, 12):
        put(client, patient(k))
    paged, whole = paged_and_whole(client, sort, 2, 11)
    assert paged == whole
    # An exactly full last page has no next link (the hub reads one match ahead).
    b = page(client, "/fhir/Patient?_count=11")
    assert len(ids(b)) == 11 and link(b, "next") is None


def test_an_explicit_offset_still_works_and_its_next_link_continues_by_position(client):
    for k in range(1, 8):
        put(client, patient(k))
    b = page(client, "/fhir/Patient?_sort=_id&_count=2&_offset=2")
    assert ids(b) == ["pg-0003", "pg-0004"] and b["total"] == 7
    assert "_offset=0" in link(b, "previous") or "_offset" not in link(b, "previous")
    nxt = link(b, "next")
    assert nxt is not None and "_cursor=" in nxt and "_offset" not in nxt
    assert ids(page(client, nxt)) == ["pg-0005", "pg-0006"]


def test_a_tampered_or_foreign_page_token_is_a_400(client):
    for k in range(1, 8):
        put(client, patient(k))
    first = page(client, "/fhir/Patient?family=pag&_sort=family&_count=2")
    nxt = link(first, "next")
    assert nxt is not None
    token = cursor_of(nxt)
    data, mac = token.split(".")
    flipped = data[:-1] + ("A" if data[-1] != "A" else "B")
    forged_types = fhir_search.page_token("Patient", [("family", "pag"), ("_sort", "family")],
                                          (12, "x", "pg-0001"))  # an int where a string goes
    forged_nul = fhir_search.page_token("Patient", [("family", "pag"), ("_sort", "family")],
                                        ("pag\x00", 1, "pg-0001"))
    forged_short = fhir_search.page_token("Patient", [("family", "pag"), ("_sort", "family")],
                                          ("pag",))
    bad = [flipped + "." + mac, data + "." + mac[::-1], data, token + "x", token[:-1], "",
           "abc.def", "%%%", "." * 20, "A" * 20000 + "." + mac, "eyJ9." + "A" * 16,
           forged_types, forged_nul, forged_short, "\u00e5" * 10]
    for value in bad:
        r = get(client, with_param(nxt, "_cursor", value))
        assert r.status_code == 400, (value[:60], r.text)
        assert r.json()["resourceType"] == "OperationOutcome"
    # The token of one search is not one of another (other criteria, another sort).
    for other in (with_param(nxt, "family", "pag0"), with_param(nxt, "_sort", "-family"),
                  with_param(nxt, "_sort", None), with_param(nxt, "gender", "male")):
        r = get(client, other)
        assert r.status_code == 400, r.text
        assert r.json()["resourceType"] == "OperationOutcome"
    # Not with an offset, not twice, not on the access log.
    assert get(client, with_param(nxt, "_offset", "1")).status_code == 400
    assert get(client, nxt + "&_cursor=" + token).status_code == 400
    r = client.get(f"/fhir/AuditEvent?_cursor={token}")
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"
    # As the link gives it, and with another page size, it is a page.
    assert ids(page(client, nxt)) == ["pg-0003", "pg-0004"]
    assert ids(page(client, with_param(nxt, "_count", "3"))) == ["pg-0003", "pg-0004",
                                                                  "pg-0005"]
    # POST _search takes it as GET does.
    r = client.post("/fhir/Patient/_search", data=dict(parse_qsl(urlsplit(nxt).query)))
    assert r.status_code == 200 and ids(r.json()) == ["pg-0003", "pg-0004"]


def test_a_page_token_does_not_widen_access(client, as_org):
    a, b = as_org(ORG_A), as_org(ORG_B)
    for k in range(1, 7):
        put(client, patient(k), a)  # A's own: pg-0001 .. pg-0006
    for k in (20, 30):
        put(client, patient(k), b)  # B's own: pg-0020, pg-0030
    first = page(client, "/fhir/Patient?_sort=_id&_count=2", a)
    assert ids(first) == ["pg-0001", "pg-0002"] and first["total"] == 6
    nxt = link(first, "next")
    assert nxt is not None
    # B follows A's link: the search runs with B's access: only B's own after the position.
    theirs = page(client, nxt, b)
    assert ids(theirs) == ["pg-0020", "pg-0030"] and theirs["total"] == 2
    assert link(theirs, "next") is None
    # A token made by hand for a position anywhere tells B nothing more either.
    for after in (("", 0, ""), ("pg-0000", 0, "pg-0000"), ("pg-0003", 0, "pg-0003")):
        token = fhir_search.page_token("Patient", [("_sort", "_id")], after)
        got = page(client, f"/fhir/Patient?_sort=_id&_count=10&_cursor={token}", b)
        assert set(ids(got)) <= {"pg-0020", "pg-0030"}
    # A, with its own link, pages on through its own; the admin, through everything.
    rest = page(client, nxt, a)
    assert ids(rest) == ["pg-0003", "pg-0004"]
    everything = page(client, nxt)
    assert ids(everything) == ["pg-0003", "pg-0004"]
    assert ids(page(client, link(everything, "next"))) == ["pg-0005", "pg-0006"]


TIES = ["Ek", "Ek", "ek", "Ék", "O'Neil", "Oneil", "de la Cruz", "Östberg", "Östberg", "Ek"]
MANY_KEYS = "gender,-birthdate,given,family,-name,identifier,_lastUpdated,-_id"


@pytest.mark.parametrize("sort", ["", "family", "-family", "birthdate", MANY_KEYS])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_pages_split_ties_in_the_sort_keys(client, sort, count):
    """Resources equal in every sort key (one family name, no birth date, one transaction's
    lastUpdated) are ordered by id: a page boundary among them loses and repeats none."""
    entries = [{"resource": patient(k, family=family),
                "request": {"method": "PUT", "url": f"Patient/pg-{k:04d}"}}
               for k, family in zip(range(4, 44, 4), TIES)]  # (no birth dates: k % 4 == 0)
    r = client.post("/fhir", **body({"resourceType": "Bundle", "type": "transaction",
                                     "entry": entries}))
    assert r.status_code == 200, r.text
    for k in (1, 2, 3):
        put(client, patient(k, family="Ek"))
    paged, whole = paged_and_whole(client, sort, count, 13)
    assert paged == whole


def test_a_first_page_is_one_statement_and_a_next_page_one_more_for_its_total(client, store):
    """Keyset paging costs the common case nothing: a first page that ends the matches is
    one statement (its total told by the page); a page after a position, one, plus the count
    when Bundle.total is asked for."""
    from sqlalchemy import event

    for k in range(1, 6):
        put(client, patient(k))
    statements: list[str] = []
    engine = getattr(store, "_reads", None) or store.engine  # (what reads run on)

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    def run(items: list[tuple[str, str]]) -> tuple[list[str], int | None, Any]:
        query = fhir_search.parse("Patient", items, default_count=50, max_count=100)
        event.listen(engine, "before_cursor_execute", seen)
        try:
            with store.begin(write=False) as tx:
                statements.clear()
                rows, total = tx.search(query)
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        return [r.id for r in rows], total, query

    assert run([("_sort", "_id")])[:2] == (
        ["pg-0001", "pg-0002", "pg-0003", "pg-0004", "pg-0005"], 5)
    assert len(statements) == 1
    first, total, query = run([("_sort", "_id"), ("_count", "2"), ("_total", "none")])
    assert first == ["pg-0001", "pg-0002"] and total is None and len(statements) == 1
    token = fhir_search.page_token("Patient", [("_sort", "_id")], query.next_after)
    after = [("_sort", "_id"), ("_count", "2"), ("_cursor", token)]
    assert run(after)[:2] == (["pg-0003", "pg-0004"], 5) and len(statements) == 2
    assert run(after + [("_total", "none")])[:2] == (["pg-0003", "pg-0004"], None)
    assert len(statements) == 1
    # A page exactly full that ends the matches tells the total too (the row read beyond the
    # page is what says no more follow); a full page with more after it is counted.
    assert run([("_sort", "_id"), ("_count", "5")])[:2] == (first + [
        "pg-0003", "pg-0004", "pg-0005"], 5) and len(statements) == 1
    assert run([("_sort", "_id"), ("_count", "4")])[1] == 5 and len(statements) == 2


def test_a_sort_key_given_again_is_sorted_by_once(client):
    """``_sort=family,-birthdate,-family`` orders as ``family,-birthdate`` (a repeat cannot
    break a tie its first place left): the statement sorts by each key once."""
    q = fhir_search.parse("Patient", [("_sort", "family,-birthdate,-family,_id,birthdate")],
                          default_count=10, max_count=100)
    assert q.sort == [("family", False), ("birthdate", True), ("_id", False)]
    for k in range(1, 8):
        put(client, patient(k, family="Ek" if k % 2 else "Al"))
    once = ids(page(client, "/fhir/Patient?_sort=family,-birthdate&_count=100"))
    paged, whole = paged_and_whole(client, "family,-birthdate,-family,birthdate", 2, 7)
    assert paged == whole == once


def organization(k: int) -> dict[str, Any]:
    """Organization ``po-<k>``, all with one identifier; a third without a type, a third of
    one type, a third of two (sorted by the lowest up, the highest down); four names."""
    res: dict[str, Any] = {"resourceType": "Organization", "id": f"po-{k:02d}",
                           "name": f"Org {'DCBA'[k % 4]}",
                           "identifier": [{"system": "urn:test:paging", "value": "shared"}]}
    codes = [[], ["m"], ["a", "z"]][k % 3]
    if codes:
        res["type"] = [{"coding": [{"system": "urn:test:kind", "code": c}]} for c in codes]
    return res


@pytest.mark.parametrize("sort", ["type", "-type", "name", "-name", "type,-name"])
@pytest.mark.parametrize("count", [2, 3])
def test_pages_sorted_by_a_value_of_an_indexed_lookup_are_the_whole_result(client, store,
                                                                          sort, count):
    """The criterion (a token, whose index rows drive the lookup) with an order by a
    parameter's value: SQLite 3.40 answered such a page with the wrong rows (a page of 3
    missed the match with the lowest key) until the matches were selected apart from the
    order (``store.search._in_order``), as the statistics of a hub that has run had it
    plan (a fresh store's plan did not show it)."""
    for k in range(12):
        r = client.put(f"/fhir/Organization/po-{k:02d}", **body(organization(k)))
        assert r.status_code in (200, 201), r.text
    statistics.analyze_filled(store.engine)
    search = f"/fhir/Organization?identifier=urn:test:paging|shared&_sort={sort}"
    whole = ids(page(client, f"{search}&_count=100"))
    assert sorted(whole) == [f"po-{k:02d}" for k in range(12)]
    url: str | None = f"{search}&_count={count}"
    paged: list[str] = []
    while url is not None:
        b = page(client, url)
        assert b["total"] == 12
        paged += ids(b)
        url = link(b, "next")
    assert paged == whole
    first = sort.split(",")[0]
    key = {"type": lambda r: min((c["coding"][0]["code"] for c in r.get("type", [])),
                                 default=None),
           "-type": lambda r: max((c["coding"][0]["code"] for c in r.get("type", [])),
                                  default=None),
           "name": lambda r: r["name"].lower(), "-name": lambda r: r["name"].lower()}[first]
    values = [key(organization(int(i[3:]))) for i in whole]
    present = [v for v in values if v is not None]
    assert values == present + [None] * (len(values) - len(present))  # (missing last)
    assert present == sorted(present, reverse=first.startswith("-"))
