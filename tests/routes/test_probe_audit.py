"""Probes of the access log as a privacy officer reads it (Patientdatalagen 4 kap. 3 §,
8 kap. 5 §): every way personal data leaves or enters the hub names the person, the caller,
the action and the outcome; the log itself pages correctly, is never changed through the API,
is valid FHIR, and loses nothing on shutdown.

The demo SIP (Alva) is coordinated by the social services (SOC); BUP takes part; an outsider
organisation does not.
"""

from __future__ import annotations

import sys
import threading
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body
from sip_hub.audit import AuditLog, AuditRecord
from sip_hub.auth import Principal
from sip_hub.fhir import search as fhir_search

SOC, BUP, OUTSIDER = "SE2120000142-SOC1", "SE2321000016-15CQ", "SE2321000016-OUT1"


@pytest.fixture
def world(client, as_org):
    h = {org: as_org(org) for org in (SOC, BUP, OUTSIDER)}
    entries = [{"resource": r, "request": {"method": "PUT",
                                           "url": f"{r['resourceType']}/{r['id']}"}}
               for r in f.demo_case()]
    r = client.post("/fhir", content=orjson.dumps({"resourceType": "Bundle",
                                                   "type": "transaction", "entry": entries}),
                    headers=JSON_HEADERS | h[SOC])
    assert r.status_code == 200, r.text
    return h


def _flush(client) -> None:
    client.app.state.audit.flush()


def _log(client, query: str = "patient=alva") -> list[dict[str, Any]]:
    """Every AuditEvent the query finds (all pages), as the admin reads them."""
    _flush(client)
    r = client.get(f"/fhir/AuditEvent?{query}&_count=1000")
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", [])]


def _org(event: dict[str, Any]) -> str | None:
    for a in event["agent"]:
        ident = a["who"].get("identifier", {})
        if ident.get("system") == "urn:oid:1.2.752.29.4.19":
            return ident["value"]
    return None


def _events(client, org: str, request_id: str, query: str = "patient=alva"
            ) -> list[dict[str, Any]]:
    """The events of one request (by its X-Request-ID) of ``org`` in a person's log."""
    return [e for e in _log(client, f"{query}&entity:identifier={request_id}")
            if _org(e) == org]


def _patients(event: dict[str, Any]) -> set[str]:
    return {e["what"]["reference"] for e in event.get("entity", [])
            if e.get("what", {}).get("reference", "").startswith("Patient/")}


def _entities(event: dict[str, Any]) -> set[str]:
    return {e["what"]["reference"] for e in event.get("entity", [])
            if "reference" in e.get("what", {})}


def _get(client, url: str, headers: dict[str, str], rid: str, **kw: Any):
    return client.get(url, headers=headers | {"X-Request-ID": rid}, **kw)


# -- every way data leaves the hub is in the person's log -------------------------------------

@pytest.mark.parametrize("url,subtype,action", [
    ("/fhir/CarePlan/alva-sip", "read", "R"),
    ("/fhir/CarePlan/alva-sip?_format=xml", "read", "R"),
    ("/fhir/CarePlan/alva-sip/_history/1", "vread", "R"),
    ("/fhir/CarePlan/alva-sip/_history", "history-instance", "R"),
    ("/fhir/Goal?patient=alva", "search-type", "E"),
    ("/fhir/CarePlan?patient.identifier=201103142384", "search-type", "E"),
])
def test_each_read_names_the_person_caller_action_and_request(client, world, url, subtype,
                                                                action):
    r = _get(client, url, world[BUP], "probe-read-1")
    assert r.status_code == 200, r.text
    [event] = _events(client, BUP, "probe-read-1")
    assert event["subtype"][0]["code"] == subtype and event["action"] == action
    assert event["outcome"] == "0"
    assert _patients(event) == {"Patient/alva"}


def test_included_patients_are_named_in_the_search_event(client, world):
    r = _get(client, "/fhir/CarePlan?_id=alva-sip&_include=CarePlan:patient"
                     "&_include=CarePlan:care-team", world[BUP], "probe-inc")
    kinds = {e["resource"]["resourceType"] for e in r.json()["entry"]}
    assert kinds == {"CarePlan", "Patient", "CareTeam"}
    [event] = _events(client, BUP, "probe-inc")
    assert {"Patient/alva", "CarePlan/alva-sip", "CareTeam/alva-sip"} <= _entities(event)


def test_revincluded_resources_are_in_the_search_event(client, world):
    r = _get(client, "/fhir/Patient?_id=alva&_revinclude=CarePlan:patient", world[BUP],
             "probe-revinc")
    assert r.json()["total"] == 1 and len(r.json()["entry"]) == 2
    [event] = _events(client, BUP, "probe-revinc")
    assert {"Patient/alva", "CarePlan/alva-sip"} <= _entities(event)


def test_a_next_page_is_audited_with_what_it_returns(client, world):
    first = _get(client, "/fhir/Goal?patient=alva&_count=1", world[BUP], "probe-p1").json()
    nxt = next(link["url"] for link in first["link"] if link["relation"] == "next")
    parts = urlsplit(nxt)
    page = _get(client, f"{parts.path}?{parts.query}", world[BUP], "probe-p2").json()
    [second] = [e["resource"]["id"] for e in page["entry"]]
    [event] = _events(client, BUP, "probe-p2")
    assert f"Goal/{second}" in _entities(event) and _patients(event) == {"Patient/alva"}


def test_post_search_is_audited(client, world):
    r = client.post("/fhir/Goal/_search", data={"patient": "alva"},
                    headers=world[BUP] | {"X-Request-ID": "probe-post-search"})
    assert r.status_code == 200 and r.json()["total"] >= 1
    [event] = _events(client, BUP, "probe-post-search")
    assert _patients(event) == {"Patient/alva"}


def test_type_history_of_personal_data_is_audited(client, world):
    r = _get(client, "/fhir/CarePlan/_history", {}, "probe-type-history")
    assert r.status_code == 200 and r.json()["total"] >= 1
    events = _events(client, "SE2321000016-ADM1", "probe-type-history")
    assert [e["subtype"][0]["code"] for e in events] == ["history-type"]


def test_delete_is_audited_with_action_d_and_the_person(client, world):
    goal = f.sip_goal(id="probe-goal")
    r = client.put("/fhir/Goal/probe-goal", **body(goal) | {
        "headers": JSON_HEADERS | world[SOC]})
    assert r.status_code in (200, 201), r.text
    r = client.delete("/fhir/Goal/probe-goal", headers=world[SOC] | {"X-Request-ID": "probe-del"})
    assert r.status_code == 200, r.text
    [event] = _events(client, SOC, "probe-del")
    assert event["action"] == "D" and event["outcome"] == "0"
    assert "Goal/probe-goal" in _entities(event) and _patients(event) == {"Patient/alva"}


def test_conditional_create_that_finds_the_resource_audits_the_read(client, world):
    goal = {k: v for k, v in f.sip_goal().items() if k != "id"}
    r = client.post("/fhir/Goal", content=orjson.dumps(goal),
                    headers=JSON_HEADERS | world[SOC] | {"If-None-Exist": "_id=alva-mal-skola",
                                                         "X-Request-ID": "probe-cc"})
    assert r.status_code == 200 and r.json()["id"] == "alva-mal-skola"
    [event] = _events(client, SOC, "probe-cc")
    assert event["action"] == "R" and "Goal/alva-mal-skola" in _entities(event)


def _tx(client, headers, rid, entries, btype="transaction"):
    return client.post("/fhir", content=orjson.dumps({"resourceType": "Bundle", "type": btype,
                                                      "entry": entries}),
                       headers=JSON_HEADERS | headers | {"X-Request-ID": rid})


@pytest.mark.parametrize("btype", ["transaction", "batch"])
def test_bundle_get_entries_are_audited(client, world, btype):
    r = _tx(client, world[BUP], f"probe-{btype}-get", [
        {"request": {"method": "GET", "url": "CarePlan/alva-sip"}},
        {"request": {"method": "GET", "url": "Goal?patient=alva"}}], btype)
    assert r.status_code == 200, r.text
    events = _events(client, BUP, f"probe-{btype}-get")
    assert sorted(e["subtype"][0]["code"] for e in events) == ["read", "search-type"]
    assert all(_patients(e) == {"Patient/alva"} for e in events)


def test_transaction_conditional_create_that_finds_the_resource_audits_the_read(client, world):
    goal = {k: v for k, v in f.sip_goal().items() if k != "id"}
    r = _tx(client, world[SOC], "probe-tx-cc", [
        {"resource": goal, "request": {"method": "POST", "url": "Goal",
                                       "ifNoneExist": "_id=alva-mal-skola"}}])
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["resource"]["id"] == "alva-mal-skola"  # the data left
    events = _events(client, SOC, "probe-tx-cc")
    assert any("Goal/alva-mal-skola" in _entities(e) for e in events)


def test_a_failed_transaction_leaves_no_success_read_in_the_log(client, world):
    r = client.put("/fhir/Patient/tolvan", **body(f.patient()))
    assert r.status_code in (200, 201), r.text
    other = "tolvan"
    r = _tx(client, world[BUP], "probe-tx-fail", [
        {"request": {"method": "GET", "url": "CarePlan/alva-sip"}},
        {"request": {"method": "GET", "url": f"Patient/{other}"}}])
    assert r.status_code == 403, r.text
    assert "alva-sip" not in r.text
    events = _events(client, BUP, "probe-tx-fail")
    assert [e for e in events if e["outcome"] == "0"] == [], "nothing was returned"


# -- refusals are in the person's log ----------------------------------------------------------

@pytest.mark.parametrize("url", ["/fhir/CarePlan/alva-sip", "/fhir/CarePlan/alva-sip/_history",
                                 "/fhir/CarePlan/alva-sip/_history/1"])
def test_refused_reads_are_logged_as_refusals(client, world, url):
    r = _get(client, url, world[OUTSIDER], "probe-refused")
    assert r.status_code == 403
    [event] = _events(client, OUTSIDER, "probe-refused")
    assert event["outcome"] == "4" and _patients(event) == {"Patient/alva"}


def test_refused_write_is_logged_as_a_refusal(client, world):
    plan = client.get("/fhir/CarePlan/alva-sip", headers=world[SOC]).json()
    r = client.put("/fhir/CarePlan/alva-sip", content=orjson.dumps(plan),
                   headers=JSON_HEADERS | world[OUTSIDER] | {"X-Request-ID": "probe-rw"})
    assert r.status_code == 403
    [event] = _events(client, OUTSIDER, "probe-rw")
    assert event["outcome"] == "4" and event["action"] == "U"


def test_refused_transaction_entry_is_logged_although_the_transaction_rolls_back(client, world):
    r = _tx(client, world[OUTSIDER], "probe-tx-refused", [
        {"request": {"method": "DELETE", "url": "Goal/alva-mal-skola"}}])
    assert r.status_code == 403
    [event] = _events(client, OUTSIDER, "probe-tx-refused")
    assert event["outcome"] == "4" and event["action"] == "D"


@pytest.mark.parametrize("url", [
    "/fhir/Goal?patient=alva", "/fhir/CarePlan?subject=Patient/alva",
    "/fhir/CarePlan?patient:Patient=http://hub.test/fhir/Patient/alva&_summary=count",
    "/fhir/Consent?patient=other,alva"])
def test_a_search_for_a_person_the_caller_may_not_see_is_in_the_persons_log(client, world,
                                                                              url):
    r = _get(client, url, world[OUTSIDER], "probe-outsider-search")
    assert r.status_code == 200 and "entry" not in r.json()  # the consent filters it all
    [event] = _events(client, OUTSIDER, "probe-outsider-search")
    assert "Patient/alva" in _patients(event)


def test_a_count_of_a_persons_data_is_in_the_persons_log(client, world):
    r = _get(client, "/fhir/Goal?patient=Patient/alva&_summary=count", world[BUP],
             "probe-count")
    assert r.json()["total"] >= 1
    [event] = _events(client, BUP, "probe-count")
    assert _patients(event) == {"Patient/alva"}


# -- the log itself ----------------------------------------------------------------------------

@pytest.mark.parametrize("method,url,payload", [
    ("POST", "/fhir/AuditEvent", True),
    ("PUT", "/fhir/AuditEvent?_id=x", True),
    ("PUT", "/fhir/AuditEvent/{id}", True),
    ("DELETE", "/fhir/AuditEvent/{id}", False),
])
def test_the_log_cannot_be_written_through_the_api(client, world, method, url, payload):
    [first, *_] = _log(client)
    before = len(_log(client, "_id=" + first["id"]))
    content = orjson.dumps({**first, "outcome": "8"}) if payload else None
    r = client.request(method, url.format(id=first["id"]), content=content,
                       headers=JSON_HEADERS)
    assert r.status_code == 403, r.text
    [again] = _log(client, "_id=" + first["id"])
    assert before == 1 and again["outcome"] == first["outcome"]


@pytest.mark.parametrize("btype", ["transaction", "batch"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_the_log_cannot_be_written_through_a_bundle(client, world, btype, method):
    [first, *_] = _log(client)
    count = len(_log(client, "date=gt2000-01-01"))
    entry: dict[str, Any] = {"request": {"method": method, "url": "AuditEvent" + (
        "" if method == "POST" else f"/{first['id']}")}}
    if method != "DELETE":
        entry["resource"] = {**first, "outcome": "8"}
    r = _tx(client, {}, f"probe-log-{btype}", [entry], btype)
    if btype == "transaction":
        assert r.status_code == 403, r.text
    else:
        assert r.json()["entry"][0]["response"]["status"].startswith("403"), r.text
    [again] = _log(client, "_id=" + first["id"])
    assert again["outcome"] == first["outcome"]
    # (the log grew by the reads of it only: no event of the bundle's own making)
    assert not [e for e in _log(client, "date=gt2000-01-01")[:len(_log(
        client, "date=gt2000-01-01")) - count] if e["subtype"][0]["code"] == "create"]


def test_paging_through_a_persons_log_sees_each_event_once(client, world):
    for _ in range(12):
        assert client.get("/fhir/CarePlan/alva-sip", headers=world[BUP]).status_code == 200
    _flush(client)
    existing = {e["id"] for e in _log(client, "patient=alva&date=gt2000-01-01")}
    seen: list[str] = []
    url = "/fhir/AuditEvent?patient=alva&_count=5"
    while url:
        page = client.get(url).json()
        seen += [e["resource"]["id"] for e in page.get("entry", [])]
        _flush(client)  # the admin's read of the log is itself logged (and newest first)
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        url = "{0.path}?{0.query}".format(urlsplit(nxt[0])) if nxt else ""
    assert len(seen) == len(set(seen)), "an event was shown on two pages"
    assert existing <= set(seen), "an event was never shown"


def test_a_person_with_many_events_pages_through_all_of_them(client, world, store):
    log = AuditLog(store)
    p = Principal("client-x", BUP, "organization", (), False, "system/*.rs")
    log._write([AuditRecord("read", p, (("CarePlan", "alva-sip"),), frozenset({"alva"}),
                            at=1_700_000_000_000_000 + i) for i in range(1200)])
    page = client.get("/fhir/AuditEvent?patient=alva&date=lt2023-11-15&_total=accurate"
                      "&_count=1000").json()
    assert page["total"] == 1200 and len(page["entry"]) == 1000
    nxt = next(link["url"] for link in page["link"] if link["relation"] == "next")
    rest = client.get("{0.path}?{0.query}".format(urlsplit(nxt))).json()
    ids = {e["resource"]["id"] for e in page["entry"] + rest["entry"]}
    assert len(ids) == 1200


def test_date_filters_select_the_day_of_the_access(client, world, store):
    log = AuditLog(store)
    p = Principal("client-x", BUP, "organization", (), False, "system/*.rs")
    day = 1_700_000_000_000_000  # 2023-11-14T22:13:20Z
    log._write([AuditRecord("read", p, (), frozenset({"alva"}), at=day),
                AuditRecord("read", p, (), frozenset({"alva"}), at=day + 86_400_000_000)])
    assert len(_log(client, "patient=alva&date=2023-11-14")) == 1
    assert len(_log(client, "patient=alva&date=ge2023-11-14&date=lt2023-11-16")) == 2
    assert len(_log(client, "patient=alva&date=2023-11-15T22:13:20Z")) == 1
    assert len(_log(client, f"patient=alva&agent:identifier=urn:oid:1.2.752.29.4.19|{BUP}"
                            "&date=lt2023-11-16")) == 2


def test_audit_events_are_valid_fhir_r4(client, world, fhir_validator, tmp_path):
    _get(client, "/fhir/CarePlan/alva-sip", world[BUP], "v1")
    _get(client, "/fhir/Goal?patient=alva", world[BUP], "v2")
    _get(client, "/fhir/CarePlan/alva-sip", world[OUTSIDER], "v3")
    events = _log(client)
    kinds = {(e["subtype"][0]["code"], e["outcome"]) for e in events}
    assert {("read", "0"), ("search-type", "0"), ("read", "4")} <= kinds
    hub = AuditRecord("update", None, (("CarePlan", "alva-sip"),), frozenset({"alva"}),
                      request=None).to_fhir()
    fhir_validator.validate_resources(tmp_path, events[:40] + [hub])


# -- nothing is lost on shutdown ------------------------------------------------------------

def test_records_queued_while_the_log_stops_are_all_stored(store):
    """Reads finishing while the app shuts down: each record is stored, none is left in the
    queue after ``stop`` (the process exits then, and a record queued is a record lost)."""
    p = Principal("client-x", BUP, "organization", (), False, "system/*.rs")
    sent = 0
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # (thread switches often: the window between two lines)
    try:
        for _ in range(15):
            log = AuditLog(store, linger=0.001)
            log.start()
            go = threading.Event()

            def reader(log: AuditLog = log, go: threading.Event = go) -> None:
                go.wait()
                for _ in range(100):
                    log.later(AuditRecord("read", p, (), frozenset({"shutdown"})))

            threads = [threading.Thread(target=reader) for _ in range(8)]
            for t in threads:
                t.start()
            go.set()
            log.stop()
            for t in threads:
                t.join()
            sent += 800
            assert log._queue.qsize() == 0, "records left in the queue of a stopped log"
    finally:
        sys.setswitchinterval(interval)
    with store.begin(write=False) as tx:
        q = fhir_search.parse("AuditEvent", [("patient", "shutdown"), ("_summary", "count")],
                              default_count=1, max_count=1)
        assert tx.search(q)[1] == sent


def test_a_conditional_reference_that_finds_the_person_is_in_the_persons_log(client, world):
    """``Patient?identifier=<personnummer>`` in a transaction tells the caller which Patient
    that is (the stored reference names it): a search of the person's data, logged."""
    task = {"resourceType": "Task", "status": "requested", "intent": "order",
            "for": {"reference": f"Patient?identifier={f.DEMO_PNR}"}}
    r = _tx(client, world[SOC], "probe-cond-ref", [
        {"resource": task, "request": {"method": "POST", "url": "Task"}}])
    assert r.status_code == 200, r.text
    events = _events(client, SOC, "probe-cond-ref")
    lookups = [e for e in events if e["subtype"][0]["code"] == "search-type"]
    assert lookups and all(_patients(e) == {"Patient/alva"} for e in lookups)


def test_a_refused_read_of_a_deleted_resource_is_in_the_log(client, world):
    """A non-owner's read of a deleted resource is refused (nothing about it is told);
    the refusal was the one not logged."""
    goal = {k: v for k, v in f.sip_goal().items() if k != "id"}
    r = client.post("/fhir/Goal", content=orjson.dumps(goal), headers=JSON_HEADERS | world[SOC])
    assert r.status_code == 201, r.text
    gid = r.json()["id"]
    assert client.delete(f"/fhir/Goal/{gid}", headers=world[SOC]).status_code == 200
    r = _get(client, f"/fhir/Goal/{gid}", world[BUP], "probe-deleted")
    assert r.status_code == 403
    _flush(client)
    r = client.get("/fhir/AuditEvent?entity:identifier=probe-deleted&_count=100")
    events = [e for e in r.json().get("entry", []) if _org(e["resource"]) == BUP]
    assert [e["resource"]["outcome"] for e in events] == ["4"]
