"""Adversarial probes of keyset paging (``_cursor`` next links), through the real app over
HTTP, on SQLite and (SIP_HUB_TEST_DATABASE_URL) PostgreSQL: links followed with other result
parameters, with writes between pages, with odd sort values, and tokens edited or replayed.
Never a 5xx; a token the hub did not issue for the search is a 400 OperationOutcome; a link
the hub issued always works."""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from hypothesis import HealthCheck, settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from fhirhttp import body
from sip_hub.fhir import search as fhir_search

BASE = "http://hub.test"


def put(client: Any, res: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    r = client.put(f"/fhir/{res['resourceType']}/{res['id']}", **body(res) | (
        {"headers": body(res)["headers"] | headers} if headers else {}))
    assert r.status_code in (200, 201), r.text


def get(client: Any, url: str, headers: dict[str, str] | None = None) -> Any:
    r = client.get(url.removeprefix(BASE), headers=headers)
    assert r.status_code < 500, (url[:200], r.text[:500])
    return r


def page(client: Any, url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = get(client, url, headers)
    assert r.status_code == 200, (url[:200], r.text[:500])
    b = r.json()
    assert b["resourceType"] == "Bundle" and b["type"] == "searchset"
    for x in b.get("link", []):
        well_formed(x["url"])
    return b


def bad(client: Any, url: str, headers: dict[str, str] | None = None) -> None:
    r = get(client, url, headers)
    assert r.status_code == 400, (url[:200], r.text[:300])
    assert r.json()["resourceType"] == "OperationOutcome"


_URL_SAFE = re.compile(r"[A-Za-z0-9_.~%+=&-]*")


def well_formed(url: str) -> None:
    """An absolute link under the base whose query is encoded (nothing raw but what a query
    may hold) and whose ``_cursor`` (one at most) is URL-safe as it stands."""
    assert url.startswith(BASE + "/fhir/"), url[:200]
    parts = urlsplit(url)
    assert _URL_SAFE.fullmatch(parts.query), url[:300]
    cursors = [v for k, v in parse_qsl(parts.query) if k.split(":")[0] == "_cursor"]
    assert len(cursors) <= 1
    for c in cursors:
        assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", c), c[:100]
        assert f"_cursor={c}" in parts.query  # (not escaped: it needed none)


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])
            if e.get("search", {}).get("mode") == mode]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((x["url"] for x in bundle.get("link", []) if x["relation"] == relation), None)


def walk(client: Any, url: str, headers: dict[str, str] | None = None,
         limit: int = 200) -> tuple[list[str], list[dict[str, Any]]]:
    seen: list[str] = []
    bundles = []
    next_url: str | None = url
    while next_url is not None:
        b = page(client, next_url, headers)
        bundles.append(b)
        seen += ids(b)
        next_url = link(b, "next")
        assert len(bundles) <= limit
    return seen, bundles


def patient(rid: str, family: str | None = None, birth: str | None = None,
            gender: str | None = None, **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Patient", "id": rid, **extra}
    if family is not None:
        res["name"] = [{"family": family, "given": ["Probe"]}]
    if birth is not None:
        res["birthDate"] = birth
    if gender is not None:
        res["gender"] = gender
    return res


def people(client: Any, n: int = 9) -> list[str]:
    out = []
    for k in range(n):
        rid = f"pp-{k:03d}"
        put(client, patient(rid, f"Probe{k % 4}", f"19{50 + k % 5}-02-0{1 + k % 3}"
                            if k % 3 else None, "female" if k % 2 else "male"))
        out.append(rid)
    return out


# ------------------------------------------------------------------ result parameters on links

def goal(rid: str, patient_id: str) -> dict[str, Any]:
    return {"resourceType": "Goal", "id": rid, "lifecycleStatus": "active",
            "description": {"text": "x"}, "subject": {"reference": f"Patient/{patient_id}"}}


def test_include_and_revinclude_on_every_page(client):
    """Included resources come with the page of their match, on later pages too."""
    for k in range(6):
        put(client, patient(f"pi-{k}", "Inc", "1970-01-01"))
        put(client, goal(f"gi-{k}", f"pi-{k}"))
    seen, bundles = walk(client, "/fhir/Goal?_include=Goal:subject&_sort=_id&_count=2")
    assert seen == [f"gi-{k}" for k in range(6)] and len(bundles) == 3
    for n, b in enumerate(bundles):
        assert ids(b, "include") == [f"pi-{2 * n}", f"pi-{2 * n + 1}"]
    seen, bundles = walk(client, "/fhir/Patient?family=inc&_revinclude=Goal:subject"
                                 "&_sort=-_id&_count=4")
    assert seen == [f"pi-{k}" for k in range(5, -1, -1)]
    assert sorted(ids(bundles[1], "include")) == ["gi-0", "gi-1"]
    for b in bundles:
        assert "_include" in link(b, "self") or "_revinclude" in link(b, "self")


@pytest.mark.parametrize("total", ["accurate", "estimate", "none"])
def test_total_and_summary_with_a_cursor(client, total):
    ps = people(client)
    first = page(client, f"/fhir/Patient?_sort=family&_count=4&_total={total}")
    nxt = link(first, "next")
    assert nxt is not None and f"_total={total}" in nxt
    second = page(client, nxt)
    assert ("total" in second) == (total != "none")
    if total != "none":
        assert second["total"] == len(ps)
    # _summary=count and _count=0 with the token: a count, no entries, no next link.
    for extra in ("&_summary=count", "&_count=0"):
        r = get(client, nxt + extra)
        if r.status_code == 200:
            b = r.json()
            assert not b.get("entry") and link(b, "next") is None
        else:
            assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_count_changed_between_pages_and_zero(client):
    ps = people(client, 10)
    whole = ids(page(client, "/fhir/Patient?_sort=-birthdate,family&_count=100"))
    assert sorted(whole) == ps
    url: str | None = "/fhir/Patient?_sort=-birthdate,family&_count=1"
    seen: list[str] = []
    sizes = iter([3, 1, 2, 5, 4, 7, 1, 1, 1, 1])
    while url is not None:
        b = page(client, url)
        seen += ids(b)
        url = link(b, "next")
        if url is not None:
            size = next(sizes)
            url = re.sub(r"_count=\d+", f"_count={size}", url)
    assert seen == whole
    b = page(client, "/fhir/Patient?_sort=family&_count=2")
    zero = page(client, re.sub(r"_count=\d+", "_count=0", link(b, "next")))
    assert not zero.get("entry") and link(zero, "next") is None and zero["total"] == 10


def test_post_search_then_get_next_links(client):
    ps = people(client)
    r = client.post("/fhir/Patient/_search?_count=2",
                    data={"family": "probe", "_sort": "family,_id"})
    assert r.status_code == 200, r.text
    b = r.json()
    seen = ids(b)
    rest, _ = walk(client, link(b, "next"))
    assert sorted(seen + rest) == ps and len(seen + rest) == len(ps)
    # And the token of a GET page POSTed, with its criteria in the body.
    nxt = link(page(client, "/fhir/Patient?family=probe&_sort=family,_id&_count=2"), "next")
    form = dict(parse_qsl(urlsplit(nxt).query))
    r = client.post("/fhir/Patient/_search", data=form)
    assert r.status_code == 200 and ids(r.json()) == rest[:2]


def test_xml_links(client):
    people(client, 5)
    r = get(client, "/fhir/Patient?_sort=family&_count=2&_format=xml&family=pro%26be")
    assert r.status_code == 200
    r = get(client, "/fhir/Patient?_sort=family&_count=2&_format=xml")
    assert r.status_code == 200 and "xml" in r.headers["content-type"]
    found = re.findall(r'<relation value="next"/>\s*<url value="([^"]+)"/>', r.text)
    assert len(found) == 1
    nxt = found[0].replace("&amp;", "&")
    assert "&" not in found[0].replace("&amp;", "")
    well_formed(nxt)
    r = get(client, nxt)
    assert r.status_code == 200 and "xml" in r.headers["content-type"]
    as_json = page(client, nxt.replace("_format=xml", "_format=json"))
    assert len(ids(as_json)) == 2


def test_lenient_unknown_parameter_and_the_next_link(client):
    ps = people(client)
    lenient = {"Prefer": "handling=lenient"}
    first = page(client, "/fhir/Patient?family=probe&nonsense=1&_sort=_id&_count=4", lenient)
    nxt = link(first, "next")
    assert nxt is not None and "nonsense" not in nxt
    seen = ids(first)
    rest, _ = walk(client, nxt, lenient)
    assert seen + rest == sorted(ps)
    assert ids(page(client, nxt)) == rest[:4]  # (strict: the link has nothing to ignore)
    # The client that keeps its unknown parameter beside the token, leniently: still a page.
    again = page(client, nxt + "&nonsense=1", lenient)
    assert ids(again) == rest[:4]
    bad(client, nxt + "&nonsense=1")  # (strict: the unknown parameter)


def test_chains_and_missing_in_a_cursor_search(client):
    for k in range(4):
        put(client, patient(f"pc-{k}", "Chain" if k % 2 else "Other", "1980-01-01"))
    for k in range(10):
        task: dict[str, Any] = {"resourceType": "Task", "id": f"tc-{k}", "status": "ready",
                                "intent": "order", "for": {"reference": f"Patient/pc-{k % 4}"}}
        if k % 3:
            task["authoredOn"] = f"2020-01-{10 + k}"
        put(client, task)
    seen, _ = walk(client, "/fhir/Task?patient.family=chain&_sort=-authored-on&_count=2")
    assert sorted(seen) == sorted(f"tc-{k}" for k in range(10) if k % 4 in (1, 3))
    seen, _ = walk(client, "/fhir/Task?authored-on:missing=true&_sort=authored-on,-_id"
                           "&_count=1")
    assert seen == [f"tc-{k}" for k in (9, 6, 3, 0)]
    seen, _ = walk(client, "/fhir/Task?authored-on:missing=false&_sort=-authored-on&_count=3")
    assert seen == [f"tc-{k}" for k in (8, 7, 5, 4, 2, 1)]


def test_a_cursor_past_the_end_and_before_the_start(client):
    people(client, 5)
    items = [("_sort", "_id")]
    for after in (("zzzz", 0, "zzzz"), ("\U0010ffff" * 3, 2**62, "x"), ("", 0, "")):
        token = fhir_search.page_token("Patient", items, after)
        b = page(client, f"/fhir/Patient?_sort=_id&_cursor={token}&_count=2")
        assert link(b, "next") is None or after[0] == ""
        assert b["total"] == 5
    last = page(client, "/fhir/Patient?_sort=_id&_count=4")
    end = page(client, link(last, "next"))
    assert ids(end) == ["pp-004"] and link(end, "next") is None


def test_other_systems_paths_take_no_cursor_or_are_refused_cleanly(client):
    """No system-level or compartment search: what they are asked answers without a 5xx."""
    people(client, 3)
    nxt = link(page(client, "/fhir/Patient?_sort=_id&_count=1"), "next")
    token = dict(parse_qsl(urlsplit(nxt).query))["_cursor"]
    for url in (f"/fhir?_type=Patient&_cursor={token}", f"/fhir/?_cursor={token}",
                f"/fhir/Patient/pp-000/Observation?_cursor={token}",
                f"/fhir/Patient/pp-000/*?_cursor={token}",
                f"/fhir/_history?_cursor={token}",
                f"/fhir/Patient/_history?_cursor={token}"):
        r = get(client, url)
        assert r.status_code in (400, 404, 405), (url, r.status_code, r.text[:200])


# ------------------------------------------------------------------ odd keys and odd values

ODD = ["\u00c5ngstr\u00f6m", "a" * 255, "\U0001f600" * 40, "x\u200by", "O'Brien & \"Co\" %2F",
       "+plus+", "\u0130stanbul", "\ufb03ce", "\U00010348" * 255, "a b", "ab",
       "\\back\\slash", "semi;colon", "hash#", "\u00df", "z\U0010ffff", "\ufffd",
       "\u0085\u2028\u2029x", "\x7f", "z\U0010ffffa"]


def test_odd_string_sort_values(client):
    for k, family in enumerate(ODD):
        put(client, patient(f"po-{k:02d}", family))
    for sort in ("family", "-family", "family,-_id", "-given,family"):
        whole = ids(page(client, f"/fhir/Patient?_sort={sort}&_count=100"))
        for count in (1, 4):
            seen, _ = walk(client, f"/fhir/Patient?_sort={sort}&_count={count}")
            assert seen == whole, (sort, count)


def test_a_token_of_the_longest_sort_keys_works(client):
    """The most sort keys, each holding the longest value (astral characters, four bytes
    each): the link's token is within what the hub takes back."""
    astral = "\U00010348" * 300
    for k in range(3):
        put(client, patient(f"pl-{k}", None, "1990-01-01", "female",
                            name=[{"family": astral, "given": [astral]}],
                            identifier=[{"system": "urn:x", "value": astral[:-k or None]}],
                            meta={"tag": [{"system": "urn:t", "code": astral}],
                                  "security": [{"system": "urn:s", "code": astral}],
                                  "profile": ["http://x.test/" + "p" * 300]}))
    keys = ",".join(["family", "-family", "given", "-given", "name", "-name", "identifier",
                     "-identifier", "_tag", "-_tag", "_security", "-_security", "_profile",
                     "-_profile", "birthdate", "-birthdate", "gender", "-gender",
                     "_lastUpdated", "-_id"])
    assert keys.count(",") + 1 == fhir_search.MAX_SORT_KEYS
    seen, bundles = walk(client, f"/fhir/Patient?_sort={quote(keys)}&_count=1")
    assert sorted(seen) == ["pl-0", "pl-1", "pl-2"] and len(bundles) == 3
    token = dict(parse_qsl(urlsplit(link(bundles[0], "next")).query))["_cursor"]
    # (a key given twice is sorted by once: the token holds each of the eleven keys once)
    q = fhir_search.parse("Patient", [("_sort", keys), ("_cursor", token)],
                          default_count=1, max_count=100)
    assert len(q.sort) == 11 and q.after is not None and len(q.after) == 11 + 2
    assert len(token) > 8000


def test_sort_by_a_token_and_uri_with_missing_values(client):
    for k in range(7):
        extra: dict[str, Any] = {}
        if k % 3:
            extra["identifier"] = [{"system": "urn:s", "value": f"v{k % 2}"}]
        put(client, patient(f"pt-{k}", "Tok", **extra))
    for sort in ("identifier", "-identifier", "identifier,_lastUpdated", "gender,identifier"):
        whole = ids(page(client, f"/fhir/Patient?_sort={sort}&_count=100"))
        seen, _ = walk(client, f"/fhir/Patient?_sort={sort}&_count=2")
        assert seen == whole and sorted(whole) == [f"pt-{k}" for k in range(7)]


def test_criteria_with_characters_to_encode_survive_the_links(client):
    """Values holding what a query must encode (``&``, ``=``, ``+``, ``%``, ``#``, spaces,
    escaped commas, non-ASCII) come back from the link as they were sent: the token is
    accepted and the search is the same."""
    families = ["A&B=C", "A&B=C", "1+1 %20", "x#y", "a,b", "\u00c5 \u00f6", "A&B=C"]
    for k, family in enumerate(families):
        put(client, patient(f"pe-{k}", family, gender="other"))
    for value, want in (("A&B=C", 3), ("1+1 %20", 1), ("x#y", 1), ("a\\,b", 1),
                        ("\u00e5 O", 1)):
        url = f"/fhir/Patient?family:exact={quote(value, safe='')}&gender=other&_count=1" \
            if value not in ("\u00e5 O", "a\\,b") else \
            f"/fhir/Patient?family={quote(value, safe='')}&_count=1&_sort=-_id"
        seen, bundles = walk(client, url)
        assert len(seen) == want and len(set(seen)) == want, (value, seen)
        if len(bundles) > 1:
            again = page(client, link(bundles[1], "self"))  # (the self link is that page)
            assert ids(again) == ids(bundles[1])


def test_a_token_of_another_type_or_its_self_link(client):
    people(client, 4)
    nxt = link(page(client, "/fhir/Patient?_sort=_id&_count=1"), "next")
    bad(client, nxt.replace("/fhir/Patient?", "/fhir/Goal?"))
    bad(client, nxt.replace("/fhir/Patient?", "/fhir/Practitioner?"))
    second = page(client, nxt)
    assert ids(second) == ["pp-001"] and ids(page(client, link(second, "self"))) == ["pp-001"]


# ------------------------------------------------------------------ tokens edited or replayed

def test_cursor_parameter_spellings(client):
    people(client, 6)
    nxt = link(page(client, "/fhir/Patient?_sort=_id&_count=2"), "next")
    token = dict(parse_qsl(urlsplit(nxt).query))["_cursor"]
    # A modifier on a result parameter: refused, or a page whose own next link works.
    for key in ("_cursor:x", "_count:x", "_offset:x", "_sort:x"):
        url = nxt.replace("_cursor=", f"{key}=2&_cursor=") if key != "_cursor:x" else \
            nxt.replace("_cursor=", "_cursor:x=")
        r = get(client, url)
        assert r.status_code in (200, 400), (key, r.text)
        if r.status_code == 200:
            following = link(r.json(), "next")
            if following is not None:
                page(client, following)
    # The token percent-encoded as a whole is the same token.
    assert ids(page(client, nxt.replace(token, quote(token, safe="")))) == ["pp-002", "pp-003"]
    enc = "".join(f"%{b:02X}" for b in token.encode())
    assert ids(page(client, nxt.replace(token, enc))) == ["pp-002", "pp-003"]
    # Edited JSON inside the token (its checksum recomputed for another search) is a 400.
    data = json.dumps([1, {"a": 1}, 0, "x"]).encode()
    forged = fhir_search._b64(data) + "." + fhir_search._b64(
        fhir_search._token_mac("Patient", [("_sort", "_id")], data))
    bad(client, f"/fhir/Patient?_sort=_id&_cursor={forged}")
    for payload in ([1, "pp-001", 2**63, "pp-001"], [1, "pp-001", -2**63 - 1, "pp-001"],
                    [1, "pp-001", 1.5, "pp-001"], [1, "pp-001", True, "pp-001"],
                    [2, "pp-001", 0, "pp-001"], [1, "\ud800", 0, "x"], [1, None, 0, "x"],
                    [1, "a", 0, None], {"1": 2}, "x", [1] * 3000):
        data = json.dumps(payload).encode()
        forged = fhir_search._b64(data) + "." + fhir_search._b64(
            fhir_search._token_mac("Patient", [("_sort", "_id")], data))
        r = get(client, f"/fhir/Patient?_sort=_id&_cursor={forged}")
        assert r.status_code == 400, (str(payload)[:40], r.text[:200])


def test_a_token_replayed_with_a_narrower_scope(client, as_org):
    org = "SE2321000016-PPA1"
    mine = as_org(org)
    for k in range(4):
        put(client, patient(f"ps-{k}", "Scope"), mine)
    nxt = link(page(client, "/fhir/Patient?_sort=_id&_count=1"), "next")
    # A client whose scopes do not cover Patient: refused, token or not.
    narrow = as_org("SE2321000016-PPB1", scope="system/Goal.rs")
    r = get(client, nxt, narrow)
    assert r.status_code in (401, 403) and r.json()["resourceType"] == "OperationOutcome"
    other = as_org("SE2321000016-PPC1")
    b = page(client, nxt, other)
    assert ids(b) == [] and b.get("total", 0) == 0


def test_tokens_after_the_last_match_changed_or_was_deleted(client):
    for k in range(6):
        put(client, patient(f"pu-{k}", f"Upd{k}"))
    first = page(client, "/fhir/Patient?_sort=family&_count=2")
    assert ids(first) == ["pu-0", "pu-1"]
    nxt = link(first, "next")
    put(client, patient("pu-1", "Upd9"))  # the position's resource moves to the end
    assert ids(page(client, nxt)) == ["pu-2", "pu-3"]
    client.delete("/fhir/Patient/pu-1")
    b = page(client, nxt)
    assert ids(b) == ["pu-2", "pu-3"]
    rest, _ = walk(client, link(b, "next"))
    assert rest == ["pu-4", "pu-5"]
    # Every match after the position deleted: an empty page without a next link.
    for k in range(2, 6):
        client.delete(f"/fhir/Patient/pu-{k}")
    end = page(client, nxt)
    assert ids(end) == [] and link(end, "next") is None and end["total"] == 1


# ------------------------------------------------------------------ the stateful probe

SORT_ORDERS = ["", "family", "-family", "birthdate", "-birthdate", "gender", "_lastUpdated",
               "-_lastUpdated", "_id", "-_id", "gender,-family", "-birthdate,family,-_id",
               "identifier", "-identifier,given", "_tag,-_security,-birthdate"]
FAMILIES = ["Sm", "Sm", "sm", "Sma", "S\u00e9", "Sz", None, "Sm\u00e5", "\U0001f600"]


def _probe_patient(rid: str, data: Any, matching: bool) -> dict[str, Any]:
    family, birth, gender, ident = data
    res = patient(rid, family, birth, gender)
    if ident is not None:
        res["identifier"] = [{"system": "urn:p", "value": ident}]
    res["meta"] = {"tag": [{"system": "urn:probe", "code": "yes" if matching else "no"}]}
    return res


PATIENT_DATA = st.tuples(st.sampled_from(FAMILIES),
                         st.sampled_from([None, "1950", "1950-01", "1950-01-01", "1960-05-05",
                                          "2000-12-31"]),
                         st.sampled_from([None, "male", "female", "other"]),
                         st.sampled_from([None, "a", "a", "b", "Z"]))


class PagingMachine(RuleBasedStateMachine):
    """Pages of a search by a tag under one ``_sort``, interleaved with creates,
    updates and deletes of matching and non-matching patients. Whatever matched and was
    left alone from the first page to the last is seen exactly once; nothing is seen twice
    (except one whose update moved it, as a new version)."""

    client: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.n = 0
        self.matching: set[str] = set()
        self.other: set[str] = set()
        self.touched: set[str] = set()
        self.seen: list[str] = []
        self.url: str | None = None
        self.started = False
        self.done = False
        self.pages = 0

    def _new(self, data: Any, matching: bool) -> str:
        self.n += 1
        rid = f"m{self._run}-{self.n}"
        put(self.client, _probe_patient(rid, data, matching))
        (self.matching if matching else self.other).add(rid)
        if self.started:
            self.touched.add(rid)
        return rid

    @initialize(sort=st.sampled_from(SORT_ORDERS), count=st.integers(1, 3),
                start=st.lists(PATIENT_DATA, min_size=3, max_size=8))
    def setup(self, sort: str, count: int, start: list[Any]) -> None:
        PagingMachine._runs += 1
        self._run = PagingMachine._runs
        for data in start:
            self._new(data, True)
        self._new(start[0], False)
        self.sort_part = f"&_sort={sort}" if sort else ""
        self.count = count
        self.url = f"/fhir/Patient?_tag=urn:probe|yes{self.sort_part}&_count={count}"
        self.lasting: set[str] = set()

    @precondition(lambda self: not self.done)
    @rule()
    def next_page(self) -> None:
        assert self.url is not None
        b = page(self.client, self.url)
        if not self.started:  # (what matches when the search starts)
            self.lasting = set(self.matching)
            self.started = True
        self.pages += 1
        got = [i for i in ids(b) if i.startswith(f"m{self._run}-")]
        self.seen += got
        self.url = link(b, "next")
        if self.url is None:
            self.done = True

    @rule(data=PATIENT_DATA, matching=st.booleans())
    def create(self, data: Any, matching: bool) -> None:
        self._new(data, matching)

    @precondition(lambda self: self.matching or self.other)
    @rule(data=PATIENT_DATA, matching=st.booleans(), pick=st.integers(0, 1000))
    def update(self, data: Any, matching: bool, pick: int) -> None:
        pool = sorted(self.matching | self.other)
        rid = pool[pick % len(pool)]
        put(self.client, _probe_patient(rid, data, matching))
        self.matching.discard(rid)
        self.other.discard(rid)
        (self.matching if matching else self.other).add(rid)
        if self.started:
            self.touched.add(rid)

    @precondition(lambda self: self.matching or self.other)
    @rule(pick=st.integers(0, 1000))
    def delete(self, pick: int) -> None:
        pool = sorted(self.matching | self.other)
        rid = pool[pick % len(pool)]
        assert self.client.delete(f"/fhir/Patient/{rid}").status_code == 200
        self.matching.discard(rid)
        self.other.discard(rid)
        if self.started:
            self.touched.add(rid)

    @invariant()
    def nothing_twice(self) -> None:
        twice = {i for i in self.seen if self.seen.count(i) > 1} - self.touched
        assert not twice, (twice, self.seen)
        assert not set(self.seen) - self.lasting - self.touched

    def teardown(self) -> None:
        while not self.done and self.pages < 200:
            self.next_page()
        if self.done:
            lasting = self.lasting - self.touched
            missed = lasting - set(self.seen)
            assert not missed, (missed, self.seen, self.sort_part)
            assert all(self.seen.count(i) == 1 for i in lasting)


PagingMachine._runs = 0  # type: ignore[attr-defined]


def test_stateful_paging_under_writes(client):
    # (the tag would find the patients of the runs before: they are deleted after each)
    PagingMachine.client = client
    PagingMachine._runs = 0  # type: ignore[attr-defined]

    class Machine(PagingMachine):
        def teardown(self) -> None:
            try:
                super().teardown()
            finally:
                for rid in sorted(self.matching):
                    self.client.delete(f"/fhir/Patient/{rid}")
    Machine.TestCase.settings = settings(
        max_examples=70, stateful_step_count=20, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck))
    Machine.TestCase().runTest()
