"""Probes of the REST API under concurrent use, on SQLite (group commit) and PostgreSQL:
contention never gives a 500 and never loses or corrupts stored data; a conflict is a clear
409/412 OperationOutcome, or the write succeeds after waiting."""

from __future__ import annotations

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from sqlalchemy import text

import sip_factory as f
from fhirhttp import JSON_HEADERS, PNR, body, create, patient
from pgwait import wait_until_blocked
from sip_process import (BUP, SOC, alva_case, day, invitation, phase, post, read, transition,
                         write_case)

OK_CONFLICT = {409, 412}


def put_patient(client, res: dict, if_match: str | None = None):
    headers = dict(body(res)["headers"])
    if if_match is not None:
        headers["if-match"] = if_match
    return client.put(f"/fhir/Patient/{res['id']}", content=orjson.dumps(res), headers=headers)


def history(client, path: str) -> dict:
    r = client.get(f"/fhir/{path}/_history?_count=1000")
    assert r.status_code == 200, r.text
    return r.json()


def is_outcome(r) -> bool:
    return r.json().get("resourceType") == "OperationOutcome"


def no_server_errors(answers) -> None:
    bad = [(r.status_code, r.text[:300]) for r in answers if r.status_code >= 500]
    assert not bad, bad


def run_threads(n: int, fn, *args) -> list:
    """``fn(i, *args)`` in ``n`` threads started together; their results in order."""
    start = threading.Barrier(n, timeout=10)

    def go(i: int):
        start.wait()
        return fn(i, *args)
    with ThreadPoolExecutor(n) as pool:
        return [f.result(timeout=60) for f in [pool.submit(go, i) for i in range(n)]]


def version_of(entry: dict) -> int:
    return int(entry["response"]["etag"].split('"')[1])


def check_history(client, rtype: str, rid: str) -> list[dict]:
    """The instance history, by version: versions 1..n, each once, as many as its total.
    (The order of the history's entries and their stamps are checked on their own, in
    ``test_a_version_is_never_stamped_before_the_version_it_replaced``.)"""
    hist = history(client, f"{rtype}/{rid}")
    entries = sorted(hist.get("entry", []), key=version_of)
    versions = [version_of(e) for e in entries]
    assert versions == list(range(1, len(versions) + 1)), versions
    assert hist["total"] == len(entries)
    return entries


# -- PUT, If-Match, DELETE ---------------------------------------------------------------------

def test_concurrent_unconditional_puts_each_make_one_version(client):
    """Eight threads updating one Patient at once: every write answers (200, or a clear
    409), every one that succeeded is one version of the history, versions contiguous, and
    the current version is the last of them."""
    pid = create(client, patient())["id"]

    def writer(i: int) -> list:
        out = []
        for j in range(5):
            res = patient() | {"id": pid, "name": [{"family": f"W{i}x{j}"}]}
            out.append(put_patient(client, res))
        return out
    answers = [r for rs in run_threads(8, writer) for r in rs]
    no_server_errors(answers)
    assert {r.status_code for r in answers} <= {200} | OK_CONFLICT, \
        Counter(r.status_code for r in answers)
    ok = [r for r in answers if r.status_code == 200]
    assert all(is_outcome(r) for r in answers if r.status_code != 200)
    entries = check_history(client, "Patient", pid)
    assert len(entries) == 1 + len(ok)
    assert sorted(r.headers["etag"] for r in ok) == \
        sorted(e["response"]["etag"] for e in entries[1:])
    by_version = {e["response"]["etag"]: e["resource"] for e in entries}
    for r in ok:  # each answer is the version the history holds
        assert by_version[r.headers["etag"]]["name"] == r.json()["name"]
    now = client.get(f"/fhir/Patient/{pid}").json()
    assert now == entries[-1]["resource"]
    # The search index holds exactly the current version's name.
    for e in entries:
        family = e["resource"]["name"][0]["family"]
        found = client.get(f"/fhir/Patient?family:exact={family}").json()
        assert found["total"] == (1 if e is entries[-1] else 0), family


def test_concurrent_if_match_puts_one_wins_per_version(client):
    """Threads that each read the Patient and write it back with If-Match: for each version
    exactly one write wins; the others answer 412 (or 409), never 200 on a stale version."""
    pid = create(client, patient())["id"]
    won: list[tuple[int, int]] = []
    lock = threading.Lock()

    def writer(i: int) -> list:
        out = []
        for j in range(6):
            cur = client.get(f"/fhir/Patient/{pid}")
            assert cur.status_code == 200, cur.text
            v = int(cur.json()["meta"]["versionId"])
            res = cur.json() | {"name": [{"family": f"M{i}x{j}"}]}
            r = put_patient(client, res, if_match=f'W/"{v}"')
            out.append(r)
            if r.status_code == 200:
                with lock:
                    won.append((v, int(r.json()["meta"]["versionId"])))
        return out
    answers = [r for rs in run_threads(8, writer) for r in rs]
    no_server_errors(answers)
    assert {r.status_code for r in answers} <= {200} | OK_CONFLICT
    assert all(new == old + 1 for old, new in won), won
    assert len({old for old, _ in won}) == len(won), sorted(won)
    entries = check_history(client, "Patient", pid)
    assert len(entries) == 1 + len(won)


def test_concurrent_deletes_and_puts_leave_a_consistent_resource(client):
    """DELETEs and PUTs of one Patient at once: every answer is a 2xx or a clear conflict,
    the history is contiguous, the current state is the history's last entry, and a search
    finds the Patient exactly when it is not deleted."""
    pid = create(client, patient() | {"name": [{"family": "Delputsson"}]})["id"]

    def worker(i: int) -> list:
        out = []
        for j in range(6):
            if (i + j) % 2:
                out.append(client.delete(f"/fhir/Patient/{pid}"))
            else:
                res = patient() | {"id": pid, "name": [{"family": "Delputsson"}]}
                out.append(put_patient(client, res))
        return out
    answers = [r for rs in run_threads(6, worker) for r in rs]
    no_server_errors(answers)
    assert {r.status_code for r in answers} <= {200, 201} | OK_CONFLICT, \
        Counter(r.status_code for r in answers)
    entries = check_history(client, "Patient", pid)
    last_deleted = entries[-1]["request"]["method"] == "DELETE"
    read = client.get(f"/fhir/Patient/{pid}")
    assert read.status_code == (410 if last_deleted else 200), read.text
    found = client.get("/fhir/Patient?family:exact=Delputsson").json()
    assert found["total"] == (0 if last_deleted else 1)
    deletes = [e for e in entries if e["request"]["method"] == "DELETE"]
    # No two tombstones in a row: a DELETE of a deleted resource writes none.
    methods = [e["request"]["method"] for e in entries]
    assert ("DELETE", "DELETE") not in set(zip(methods, methods[1:])), methods
    assert deletes or not last_deleted


def test_concurrent_conditional_creates_make_one_resource(client):
    """Twelve POSTs with the same If-None-Exist at once: one 201, the others 200 with that
    resource; one Patient stored."""
    crit = f"identifier={PNR}|191212121212"

    def post(i: int):
        headers = dict(body(patient())["headers"]) | {"if-none-exist": crit}
        return client.post("/fhir/Patient", content=orjson.dumps(patient()), headers=headers)
    answers = run_threads(12, post)
    no_server_errors(answers)
    codes = Counter(r.status_code for r in answers)
    assert codes == Counter({201: 1, 200: 11}), codes
    assert len({r.json()["id"] for r in answers}) == 1
    assert client.get(f"/fhir/Patient?{crit}").json()["total"] == 1


def test_concurrent_conditional_updates_make_one_resource(client):
    """Conditional updates (PUT Patient?identifier=...) with the same criteria at once, none
    matching yet: one creates, the others update it; one Patient, its versions contiguous."""
    crit = f"identifier={PNR}|191212121212"

    def put(i: int):
        res = patient() | {"name": [{"family": f"C{i}"}]}
        return client.put(f"/fhir/Patient?{crit}", **body(res))
    answers = run_threads(10, put)
    no_server_errors(answers)
    codes = Counter(r.status_code for r in answers)
    assert codes[201] == 1 and set(codes) <= {200, 201} | OK_CONFLICT, codes
    found = client.get(f"/fhir/Patient?{crit}").json()
    assert found["total"] == 1
    pid = found["entry"][0]["resource"]["id"]
    assert len(check_history(client, "Patient", pid)) == codes[200] + 1


def test_concurrent_update_as_create_with_one_client_id(client):
    """PUTs creating Patient/<client id> at once: one creates (201), the others update
    (200) or answer a clear 409; one resource whose history holds each success once."""
    def put(i: int):
        res = patient() | {"id": "race-create", "name": [{"family": f"U{i}"}]}
        return put_patient(client, res)
    answers = run_threads(10, put)
    no_server_errors(answers)
    codes = Counter(r.status_code for r in answers)
    assert codes[201] == 1 and set(codes) <= {200, 201, 409}, codes
    assert all(is_outcome(r) for r in answers if r.status_code == 409)
    assert len(check_history(client, "Patient", "race-create")) == codes[200] + 1


# -- PostgreSQL: races made certain by a transaction of the test's own --------------------------

postgres_only = pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


def lock_row(tx, rtype: str, rid: str) -> None:
    tx.conn.execute(text("SELECT 1 FROM resource WHERE res_type = :t AND res_id = :i "
                         "FOR UPDATE"), {"t": rtype, "i": rid})


@postgres_only
def test_a_version_is_never_stamped_before_the_version_it_replaced(client, store):
    """A PUT that waits for another write of the same Patient: its version comes after that
    write's, so its lastUpdated must not be earlier; the history lists it first, and
    ``_since`` the other write's stamp includes it."""
    pid = create(client, patient())["id"]
    with ThreadPoolExecutor(1) as pool:
        with store.begin() as tx:
            lock_row(tx, "Patient", pid)
            res = patient() | {"id": pid, "name": [{"family": "Waiting"}]}
            answer = pool.submit(put_patient, client, res)
            wait_until_blocked(tx, 1)  # the PUT has stamped its version and waits
            time.sleep(0.01)
            cur = tx.current("Patient", pid)
            tx.update(cur.json() | {"gender": "female"}, pid)  # another writer, committed first
        r = answer.result(timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["meta"]["versionId"] == "3"
    hist = history(client, f"Patient/{pid}")
    versions = [version_of(e) for e in hist["entry"]]
    stamps = {version_of(e): e["response"]["lastModified"] for e in hist["entry"]}
    assert stamps[3] >= stamps[2], stamps
    assert versions == [3, 2, 1], versions  # newest first
    since = client.get(f"/fhir/Patient/{pid}/_history",
                       params={"_since": stamps[2]}).json()
    assert {version_of(e) for e in since.get("entry", [])} >= {2, 3}


# -- the SIP process and a plain PUT of the plan ----------------------------------------------

PLAN = "alva-sip"


@pytest.fixture
def sip(client, as_org):
    """SOC's and BUP's headers, with Alva's SIP written by SOC and moved to kartläggning."""
    headers = {org: as_org(org) for org in (SOC, BUP)}
    write_case(client, headers[SOC], alva_case())
    assert transition(client, headers[SOC], PLAN, "kartlaggning").status_code == 200
    return headers


def plan_put(client, headers: dict, plan: dict, if_match: str | None = None):
    extra = {"if-match": if_match} if if_match else {}
    return client.put(f"/fhir/CarePlan/{plan['id']}", content=orjson.dumps(plan),
                      headers=JSON_HEADERS | headers | extra)


@postgres_only
def test_a_plain_put_waiting_behind_a_transition_does_not_undo_it(client, store, sip):
    """The coordinator PUTs the draft plan (a new description: allowed in kartläggning) while
    $transition moves it to kallelse. Whichever order they commit in, the plan must not
    leave kallelse by a plain PUT: the PUT either applies to the version it was checked
    against (409/412 if that is gone) or is checked again against kallelse."""
    soc = sip[SOC]
    plan = read(client, f"CarePlan/{PLAN}", soc)
    edited = {k: v for k, v in plan.items() if k != "meta"} | {"description": "Ny text"}
    with ThreadPoolExecutor(2) as pool:
        with store.begin() as tx:
            lock_row(tx, "CarePlan", PLAN)
            moved = pool.submit(transition, client, soc, PLAN, "kallelse")
            wait_until_blocked(tx, 1)  # $transition has checked its rules, waits to write
            put = pool.submit(plan_put, client, soc, edited)
            wait_until_blocked(tx, 2)  # the PUT has checked its rules, waits to write
        moved, put = moved.result(timeout=30), put.result(timeout=30)
    assert moved.status_code == 200, moved.text
    assert put.status_code in (200, 409, 412), put.text
    now = read(client, f"CarePlan/{PLAN}", soc)
    assert phase(now) == "kallelse", (put.status_code, phase(now), now["meta"])


@postgres_only
def test_two_organisations_cannot_start_parallel_sips_for_one_person_at_once(
        client, store, as_org):
    """README: a second organisation cannot start a parallel SIP for the same person. SOC
    and BUP each record a SIP consent for Alva at the same moment (no SIP yet): one is
    refused (403, or a conflict), and the person has one coordinating organisation."""
    directory = [r for r in f.demo_case() if r["resourceType"] in (
        "Patient", "RelatedPerson", "Organization", "Practitioner")]
    write_case(client, {}, directory)
    headers = {org: as_org(org) for org in (SOC, BUP)}

    def consent(org: str, org_ref: str) -> dict:
        c = f.sip_consent(start=day(-10), end=day(365), id=f"samtycke-{org_ref.split('/')[1]}")
        c["organization"] = [{"reference": org_ref}]
        return c
    soc_consent, bup_consent = consent(SOC, f.SOCIAL_SERVICES), consent(BUP, f.BUP)

    def post(org: str, res: dict):
        return client.post("/fhir/Consent", content=orjson.dumps(res),
                           headers=JSON_HEADERS | headers[org])
    with ThreadPoolExecutor(2) as pool:
        with store.begin() as tx:
            tx.lock_patient("alva")  # the grants' lock, as a write of Alva's holds it
            first = pool.submit(post, SOC, soc_consent)
            wait_until_blocked(tx, 1)
            second = pool.submit(post, BUP, bup_consent)
            wait_until_blocked(tx, 2)
        answers = [first.result(timeout=30), second.result(timeout=30)]
    no_server_errors(answers)
    codes = sorted(r.status_code for r in answers)
    with store.begin(write=False) as tx:
        coordinators = sorted(g.org for g in tx.grants("alva") if g.role == "coordinator")
    assert codes in ([201, 403], [201, 409]), (codes, coordinators)
    assert len(coordinators) == 1, coordinators


def test_a_second_organisation_is_refused_a_sip_consent_of_its_own(client, as_org):
    """The premise of the race above, one write after the other: BUP's SIP consent for a
    person whose SIP SOC coordinates is refused."""
    directory = [r for r in f.demo_case() if r["resourceType"] in (
        "Patient", "RelatedPerson", "Organization", "Practitioner")]
    write_case(client, {}, directory)
    headers = {org: as_org(org) for org in (SOC, BUP)}
    for org, org_ref, want in ((SOC, f.SOCIAL_SERVICES, 201), (BUP, f.BUP, 403)):
        c = f.sip_consent(start=day(-10), end=day(365), id=f"samtycke-{org_ref.split('/')[1]}")
        c["organization"] = [{"reference": org_ref}]
        r = client.post("/fhir/Consent", content=orjson.dumps(c),
                        headers=JSON_HEADERS | headers[org])
        assert r.status_code == want, r.text


# -- consent and access grants ------------------------------------------------------------------

CONSENT = "alva-sip-samtycke"


@pytest.fixture
def world(client, as_org):
    """The demo SIP (consent active, BUP and the school in the care team) written by SOC."""
    headers = {org: as_org(org) for org in (SOC, BUP)}
    case = [f.sip_consent(start=day(-10), end=day(365)) if r["resourceType"] == "Consent"
            else r for r in f.demo_case()]
    write_case(client, headers[SOC], case)
    return headers


def put_consent(client, headers: dict, status: str, if_match: str | None = None, **kw):
    c = f.sip_consent(start=day(-10), end=day(365), status=status, **kw)
    extra = {"if-match": if_match} if if_match else {}
    return client.put(f"/fhir/Consent/{c['id']}", content=orjson.dumps(c),
                      headers=JSON_HEADERS | headers | extra)


def grants_hold(store) -> bool:
    """Whether the stored grants are what the stored SIP resources give (recomputing them
    changes nothing); the recomputation is rolled back."""
    from sip_hub import access as acl

    class Undo(Exception):
        pass
    changed = None
    try:
        with store.begin() as tx:
            changed = acl.refresh_grants(tx, "alva")
            raise Undo
    except Undo:
        pass
    return changed is False


@postgres_only
def test_a_withdrawal_waiting_behind_a_regrant_ends_access(client, store, world):
    """The consent is withdrawn. SOC then sends two PUTs of it at once: active again, and
    withdrawn again; the withdrawal commits last. The stored consent is withdrawn, so BUP
    must not read the SIP, and the grants must be what the stored resources give."""
    soc, bup = world[SOC], world[BUP]
    assert put_consent(client, soc, "inactive").status_code == 200
    assert client.get(f"/fhir/CarePlan/{PLAN}", headers=bup).status_code == 403
    with ThreadPoolExecutor(2) as pool:
        with store.begin() as tx:
            lock_row(tx, "Consent", CONSENT)
            regrant = pool.submit(put_consent, client, soc, "active")
            wait_until_blocked(tx, 1)
            withdraw = pool.submit(put_consent, client, soc, "inactive")
            wait_until_blocked(tx, 2)
        regrant, withdraw = regrant.result(timeout=30), withdraw.result(timeout=30)
    assert (regrant.status_code, withdraw.status_code) == (200, 200), withdraw.text
    stored = read(client, f"Consent/{CONSENT}", soc)
    assert stored["status"] == "inactive" and stored["meta"]["versionId"] == \
        withdraw.json()["meta"]["versionId"]
    leaked = client.get(f"/fhir/CarePlan/{PLAN}", headers=bup)
    assert leaked.status_code == 403, "BUP reads the SIP after the withdrawal committed"
    assert grants_hold(store)


def test_concurrent_consent_and_careteam_writes_keep_grants_in_step(client, store, world):
    """SOC toggles the consent with If-Match (the safe way) while rewriting the care team:
    after each round the grants are what the stored resources give, and BUP reads exactly
    when the stored consent is active."""
    soc, bup = world[SOC], world[BUP]

    def consent_writer(i: int) -> list:
        out = []
        for j in range(6):
            cur = read(client, f"Consent/{CONSENT}", soc)
            status = "inactive" if cur["status"] == "active" else "active"
            out.append(put_consent(client, soc, status,
                                   if_match=f'W/"{cur["meta"]["versionId"]}"'))
        return out

    def team_writer(i: int) -> list:
        out = []
        for j in range(6):
            reps = ((f.BUP_REPRESENTATIVE, f.BUP),) if j % 2 else (
                (f.BUP_REPRESENTATIVE, f.BUP), (f.SCHOOL_REPRESENTATIVE, f.SCHOOL))
            team = f.sip_careteam(representatives=reps)
            out.append(client.put(f"/fhir/CareTeam/{team['id']}", content=orjson.dumps(team),
                                  headers=JSON_HEADERS | soc))
        return out

    def worker(i: int) -> list:
        return consent_writer(i) if i % 2 else team_writer(i)
    answers = [r for rs in run_threads(4, worker) for r in rs]
    no_server_errors(answers)
    assert {r.status_code for r in answers} <= {200} | OK_CONFLICT
    assert grants_hold(store)
    active = read(client, f"Consent/{CONSENT}", soc)["status"] == "active"
    assert client.get(f"/fhir/CarePlan/{PLAN}", headers=bup).status_code == \
        (200 if active else 403)


# -- reads during writes ----------------------------------------------------------------------

def flip_writer(client, pid: str, stop: threading.Event) -> list:
    """PUT the Patient's family name between Flip and Flop until ``stop``."""
    out, i = [], 0
    while not stop.is_set():
        res = patient() | {"id": pid, "name": [{"family": "Flip" if i % 2 else "Flop"}]}
        out.append(put_patient(client, res))
        i += 1
    return out


def read_while_writing(client, pid: str, reader, seconds: float = 2.0) -> list:
    stop = threading.Event()
    with ThreadPoolExecutor(3) as pool:
        writers = [pool.submit(flip_writer, client, pid, stop) for _ in range(2)]
        deadline, seen = time.monotonic() + seconds, []
        try:
            while time.monotonic() < deadline:
                seen.append(reader())
        finally:
            stop.set()
        answers = [r for w in writers for r in w.result(timeout=30)]
    no_server_errors(answers)
    return seen


def test_a_search_during_writes_finds_only_what_matches(client):
    """Searching family=Flip while two threads flip the name: every entry found has the name
    Flip (the index and the content are one version), and nothing is half written."""
    pid = create(client, patient() | {"name": [{"family": "Flop"}]})["id"]

    def search():
        r = client.get("/fhir/Patient?family:exact=Flip&_total=accurate")
        assert r.status_code == 200, r.text
        return r.json()
    for b in read_while_writing(client, pid, search):
        for e in b.get("entry", []):
            assert e["resource"]["name"][0]["family"] == "Flip", e
            assert e["resource"]["id"] == pid


def totals_while_writing(client, pid: str) -> tuple[list, list]:
    """Searches and instance histories read while the name flips: (search Bundles, history
    Bundles)."""
    searches, histories = [], []

    def reader():
        r = client.get("/fhir/Patient?family:exact=Flip")
        assert r.status_code == 200, r.text
        searches.append(r.json())
        r = client.get(f"/fhir/Patient/{pid}/_history?_count=1000")
        assert r.status_code == 200, r.text
        histories.append(r.json())
    read_while_writing(client, pid, reader, seconds=3.0)
    return searches, histories


def test_a_page_and_its_total_are_of_one_moment(client):
    """Searches and instance histories read while two threads write: on one page that holds
    every match, Bundle.total is the number of entries (a search that says 1 and shows none,
    or a history of 8 entries whose total is 7, is of two moments)."""
    pid = create(client, patient() | {"name": [{"family": "Flop"}]})["id"]
    searches, histories = totals_while_writing(client, pid)
    assert len(searches) > 20
    assert [(b["total"], len(b.get("entry", []))) for b in searches
            if b["total"] != len(b.get("entry", []))] == []
    assert [(b["total"], len(b.get("entry", []))) for b in histories
            if b["total"] != len(b.get("entry", []))] == []


# -- transaction Bundles ----------------------------------------------------------------------

def tx_bundle(*entries: dict) -> dict:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def put_entry(res: dict) -> dict:
    return {"resource": res, "request": {"method": "PUT",
                                         "url": f"{res['resourceType']}/{res['id']}"}}


def test_overlapping_transactions_in_both_orders_and_plain_writes(client):
    """Transactions writing A and B in either entry order, beside plain PUTs of A: each
    answers 200 or a clear 409 (nothing applied); every success is one version of each
    resource it wrote; A and B carry the same Bundle's mark in their versions together."""
    a = create(client, patient())
    b = create(client, patient("200001012384"))
    plain_ok = []

    def worker(i: int) -> list:
        out = []
        for j in range(4):
            mark = f"T{i}x{j}"
            if i >= 6:
                r = put_patient(client, a | {"name": [{"family": mark}]})
                if r.status_code == 200:
                    plain_ok.append(mark)
                out.append(("plain", mark, r))
                continue
            pair = [put_entry(a | {"name": [{"family": mark}]}),
                    put_entry(b | {"name": [{"family": mark}]})]
            if (i + j) % 2:
                pair.reverse()
            out.append(("tx", mark, client.post("/fhir", **body(tx_bundle(*pair)))))
        return out
    results = [x for xs in run_threads(8, worker) for x in xs]
    answers = [r for _, _, r in results]
    no_server_errors(answers)
    assert {r.status_code for r in answers} <= {200, 409}, \
        [(r.status_code, r.text[:200]) for r in answers if r.status_code not in (200, 409)]
    tx_ok = {m for kind, m, r in results if kind == "tx" and r.status_code == 200}
    hist_a = check_history(client, "Patient", a["id"])
    hist_b = check_history(client, "Patient", b["id"])
    marks_a = Counter(e["resource"]["name"][0]["family"] for e in hist_a[1:])
    marks_b = Counter(e["resource"]["name"][0]["family"] for e in hist_b[1:])
    assert marks_b == Counter(tx_ok)
    assert marks_a == Counter(tx_ok) + Counter(plain_ok)
    for kind, m, r in results:
        if kind == "tx" and r.status_code == 200:  # the answer's versions are the stored ones
            for e in r.json()["entry"]:
                v = version_of(e)
                rid = e["fullUrl"].rsplit("/", 1)[1]
                got = client.get(f"/fhir/Patient/{rid}/_history/{v}").json()
                assert got["name"][0]["family"] == m


def test_conditional_creates_in_transactions_and_plain_posts_make_one_patient(client):
    """The same person created if none exists by transaction Bundles and plain POSTs at
    once: one Patient."""
    crit = f"identifier={PNR}|201103142384"

    def worker(i: int):
        res = patient("201103142384")
        if i % 2:
            return client.post("/fhir", **body(tx_bundle(
                {"resource": res, "request": {"method": "POST", "url": "Patient",
                                              "ifNoneExist": crit}})))
        headers = dict(body(res)["headers"]) | {"if-none-exist": crit}
        return client.post("/fhir/Patient", content=orjson.dumps(res), headers=headers)
    answers = run_threads(10, worker)
    no_server_errors(answers)
    assert {r.status_code for r in answers} <= {200, 201}, [r.text for r in answers]
    # (a personnummer searched in another form finds the same Patient)
    found = client.get(f"/fhir/Patient?identifier={PNR}|20110314-2384").json()
    assert found["total"] == 1, found


def test_batches_of_deletes_and_puts_of_one_resource(client):
    """Batch Bundles deleting and recreating one Patient at once: every entry answers 2xx
    or a clear conflict, and the stored state is the history's last version."""
    pid = create(client, patient() | {"name": [{"family": "Batchsson"}]})["id"]

    def worker(i: int):
        entries = [{"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
                   put_entry(patient() | {"id": pid, "name": [{"family": "Batchsson"}]})]
        return [client.post("/fhir", **body({"resourceType": "Bundle", "type": "batch",
                                              "entry": entries[::1 if i % 2 else -1]}))
                for _ in range(3)]
    answers = [r for rs in run_threads(6, worker) for r in rs]
    no_server_errors(answers)
    statuses = Counter(e["response"]["status"].split()[0] for r in answers
                       for e in r.json()["entry"])
    assert set(statuses) <= {"200", "201", "409", "412"}, statuses
    entries = check_history(client, "Patient", pid)
    deleted = entries[-1]["request"]["method"] == "DELETE"
    assert client.get(f"/fhir/Patient/{pid}").status_code == (410 if deleted else 200)
    found = client.get("/fhir/Patient?family:exact=Batchsson").json()
    assert found["total"] == (0 if deleted else 1)


# -- PostgreSQL: deadlocks and lock timeouts ----------------------------------------------------

@pytest.fixture
def impatient(store, settings, tmp_path):
    """A second API process on the same PostgreSQL schema whose statements give up after
    1.5 s (statement_timeout), with an admin client."""
    from fastapi.testclient import TestClient
    from sip_hub.app import create_app
    from sip_hub.store import Store
    from sip_hub.store.engine import make_engine
    from conftest import ADMIN_ORG, issue_token
    url = store.engine.url
    options = url.query.get("options", "")
    engine = make_engine(url.update_query_dict(
        {"options": f"{options} -c statement_timeout=1500".strip()}))
    other = Store(engine)
    app = create_app(settings, store=other)
    with TestClient(app, raise_server_exceptions=False) as c:
        token = issue_token(c, other, ADMIN_ORG, role="admin", personal_data=True)
        c.headers["Authorization"] = f"Bearer {token}"
        yield c
    engine.dispose()


def write_past_the_timeout(client, store, impatient):
    """A PUT (through ``impatient``) waiting for a row the test holds longer than the
    statement timeout: its answer, once nothing of it is applied."""
    pid = create(client, patient())["id"]
    with ThreadPoolExecutor(1) as pool:
        with store.begin() as tx:
            lock_row(tx, "Patient", pid)
            res = patient() | {"id": pid, "name": [{"family": "Late"}]}
            answer = pool.submit(put_patient, impatient, res)
            r = answer.result(timeout=30)  # gives up while the test still holds the row
    assert r.status_code in (409, 503), r.text
    assert is_outcome(r)
    assert client.get(f"/fhir/Patient/{pid}").json()["meta"]["versionId"] == "1"
    return r


@postgres_only
def test_a_write_that_waits_past_the_statement_timeout_shows_no_internals(
        client, store, impatient):
    """A lock wait that runs out is contention, not a fault: a 409/503 OperationOutcome that
    shows nothing of PostgreSQL's internals (as the deadlock's 409 does not)."""
    r = write_past_the_timeout(client, store, impatient)
    diagnostics = r.json()["issue"][0]["diagnostics"]
    for internal in ("tuple", "relation", "CONTEXT", "canceling statement"):
        assert internal not in diagnostics, diagnostics


@postgres_only
def test_a_write_that_waits_past_the_statement_timeout_says_when_to_retry(
        client, store, impatient):
    r = write_past_the_timeout(client, store, impatient)
    assert "retry-after" in r.headers, dict(r.headers)


@postgres_only
def test_a_deadlock_is_a_409_with_retry_after(client, store):
    """The deadlock of tests/routes/test_concurrent_writes.py (a Bundle writing A then B
    while the test holds B and comes to wait for A): its 409 says when to retry."""
    a = create(client, patient())
    b = create(client, patient("200001012384"))
    bundle = tx_bundle(put_entry(a | {"gender": "female"}), put_entry(b | {"gender": "female"}))
    with ThreadPoolExecutor(1) as pool:
        with store.begin() as tx:
            lock_row(tx, "Patient", b["id"])
            answer = pool.submit(client.post, "/fhir", **body(bundle))
            wait_until_blocked(tx, 1)
            lock_row(tx, "Patient", a["id"])
        r = answer.result(timeout=30)
    assert r.status_code == 409 and is_outcome(r), r.text
    assert "retry-after" in r.headers, dict(r.headers)


# -- SIP process operations at once ---------------------------------------------------------------

def test_concurrent_transitions_and_invites_of_one_plan(client, sip):
    """Four $transitions to kallelse at once: one moves the plan, the others answer a clear
    409 (it is no longer in kartläggning, or it changed meanwhile), and one Provenance
    records the move. Then $invites and an If-Match PUT of the plan at once: no 5xx, and
    the plan stays in kallelse."""
    soc = sip[SOC]
    answers = run_threads(4, lambda i: transition(client, soc, PLAN, "kallelse"))
    no_server_errors(answers)
    assert sorted(r.status_code for r in answers) == [200, 409, 409, 409], \
        [r.text[:200] for r in answers]
    prov = read(client, f"Provenance?target=CarePlan/{PLAN}&_count=100", soc)
    targets = Counter(p["resource"]["target"][0]["reference"].rsplit("/", 1)[1]
                      for p in prov.get("entry", []))
    assert all(n == 1 for n in targets.values()), targets  # one Provenance per version
    plan = read(client, f"CarePlan/{PLAN}", soc)
    assert phase(plan) == "kallelse"

    def other(i: int):
        if i == 3:
            edited = {k: v for k, v in plan.items() if k != "meta"} | {"description": "Ny"}
            return plan_put(client, soc, edited, if_match=f'W/"{plan["meta"]["versionId"]}"')
        return post(client, f"CarePlan/{PLAN}/$invite", soc, invitation(f.BUP, f.SCHOOL))
    answers = run_threads(4, other)
    no_server_errors(answers)
    assert {r.status_code for r in answers} <= {200, 409, 412}, [r.text[:200] for r in answers]
    assert any(r.status_code == 200 for r in answers)
    assert phase(read(client, f"CarePlan/{PLAN}", soc)) == "kallelse"
    check_history(client, "CarePlan", PLAN)
