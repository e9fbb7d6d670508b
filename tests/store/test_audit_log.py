"""The access log's own tables: AuditEvents appended in the caller's transaction, read and
searched like any resource, and moved over from the resource tables by migration 0006."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from sip_hub.audit import AuditLog, AuditRecord
from sip_hub.auth import Principal
from sip_hub.errors import BadRequest
from sip_hub.fhir import search as fhir_search
from sip_hub.fhir.dates import to_us
from sip_hub.store import Store
from sip_hub.store.audit import include_keys, revinclude_keys
from sip_hub.store.migrate import upgrade
from sip_hub.store.schema import audit_event, audit_ref, resource, resource_history

SOC, BUP = "SE2120000142-SOC1", "SE2321000016-15CQ"


def _event(interaction: str, org: str, resources: list[tuple[str, str]], patients: set[str],
           outcome: str = "0") -> dict[str, Any]:
    p = Principal(f"client-{org}", org, "organization", (), False, "system/*.rs")
    return AuditRecord(interaction, p, tuple(resources), frozenset(patients),
                       outcome=outcome).to_fhir()


def _search(store: Store, *items: tuple[str, str], count: int = 50) -> tuple[list[str], int]:
    q = fhir_search.parse("AuditEvent", list(items), default_count=count, max_count=1000)
    with store.begin(write=False) as tx:
        found, total = tx.search(q)
    return [s.json()["subtype"][0]["code"] + ":" + s.json()["agent"][1]["who"]["identifier"]
            ["value"] for s in found], total


@pytest.fixture
def log(store: Store) -> Store:
    with store.begin() as tx:
        tx.append_audit([
            _event("read", SOC, [("CarePlan", "alva-sip")], {"alva"}),
            _event("search-type", BUP, [("CarePlan", "alva-sip"), ("Goal", "g1")], {"alva"}),
            _event("update", SOC, [("CarePlan", "gosta-sip")], {"gosta"}),
            _event("read", BUP, [("CarePlan", "gosta-sip")], {"gosta"}, outcome="4"),
        ])
    return store


def test_an_event_is_stored_with_its_id_and_one_version(store: Store) -> None:
    with store.begin() as tx:
        [stored] = tx.append_audit([_event("read", SOC, [("CarePlan", "alva-sip")], {"alva"})])
    with store.begin(write=False) as tx:
        again = tx.current("AuditEvent", stored.id)
        assert again is not None and again.content == stored.content
        body = again.json()
        assert body["id"] == stored.id and body["meta"]["versionId"] == "1"
        assert body["meta"]["lastUpdated"] == body["recorded"]
        assert tx.version("AuditEvent", stored.id, 1) is not None
        assert tx.version("AuditEvent", stored.id, 2) is None
        assert tx.history("AuditEvent", stored.id)[1] == 1


def test_an_event_commits_or_rolls_back_with_its_transaction(store: Store) -> None:
    with pytest.raises(RuntimeError):
        with store.begin() as tx:
            tx.append_audit([_event("update", SOC, [("CarePlan", "x")], {"alva"})])
            raise RuntimeError("the write failed")
    assert _search(store, ("patient", "Patient/alva")) == ([], 0)


def test_search_by_patient_entity_and_agent(log: Store) -> None:
    assert _search(log, ("patient", "Patient/alva")) == (
        [f"search-type:{BUP}", f"read:{SOC}"], 2)  # newest first
    assert _search(log, ("patient", "gosta"))[1] == 2
    assert _search(log, ("entity", "Goal/g1")) == ([f"search-type:{BUP}"], 1)
    assert _search(log, ("entity", "CarePlan/gosta-sip"), ("agent:identifier",
                   f"urn:oid:1.2.752.29.4.19|{BUP}")) == ([f"read:{BUP}"], 1)


def test_search_by_codes_date_and_id(log: Store) -> None:
    assert _search(log, ("subtype", "read"))[1] == 2
    assert _search(log, ("action", "U")) == ([f"update:{SOC}"], 1)
    assert _search(log, ("outcome", "4")) == ([f"read:{BUP}"], 1)
    assert _search(log, ("type", "http://terminology.hl7.org/CodeSystem/audit-event-type|rest")
                   )[1] == 4
    assert _search(log, ("type", "other-system|rest"))[1] == 0
    assert _search(log, ("date", "gt2000-01-01"), ("date", "lt2999-01-01"))[1] == 4
    assert _search(log, ("date", "lt2000-01-01"))[1] == 0
    with log.begin(write=False) as tx:
        q = fhir_search.parse("AuditEvent", [], default_count=1, max_count=10)
        [first], total = tx.search(q)
    assert total == 4
    assert _search(log, ("_id", first.id))[1] == 1


def test_sort_and_pages(log: Store) -> None:
    newest, _ = _search(log, ("_sort", "-date"))
    oldest, _ = _search(log, ("_sort", "date"))
    assert oldest == list(reversed(newest))
    q = fhir_search.parse("AuditEvent", [("_offset", "2")], default_count=2, max_count=10)
    with log.begin(write=False) as tx:
        page, total = tx.search(q)
    assert total == 4 and len(page) == 2


def test_what_the_log_cannot_be_searched_by_is_a_clear_error(log: Store) -> None:
    for items in ([("patient:missing", "true")], [("_sort", "subtype")]):
        with pytest.raises(BadRequest):
            _search(log, *items)


def test_includes_read_the_events_own_references(log: Store) -> None:
    q = fhir_search.parse("AuditEvent", [("entity", "Goal/g1"), ("_include", "AuditEvent:entity")],
                          default_count=10, max_count=10)
    with log.begin(write=False) as tx:
        found, _ = tx.search(q)
        keys = include_keys("entity", None, found)
    assert set(keys) == {("CarePlan", "alva-sip"), ("Goal", "g1"), ("Patient", "alva")}


@pytest.mark.parametrize("principal, request_id", [
    (Principal("client-a", SOC, "organization", (), False, "system/*.rs"), "req-1"),
    (None, None)])
def test_an_events_own_search_rows_are_those_its_json_gives(principal, request_id) -> None:
    """The hub's events are stored with search rows built beside the JSON (no walk back over
    it on every read); events given as JSON get theirs from the JSON. Both must agree, or a
    search finds one kind of event and not the other."""
    from sip_hub.store.audit import refs_of

    rec = AuditRecord("read", principal, (("CarePlan", "alva-sip"), ("Goal", "g1")),
                      frozenset({"alva", "gosta"}), query="patient=alva", request=request_id)
    e = rec.entry()
    assert sorted(e.refs) == sorted(refs_of(e.event))
    assert len(e.refs) == 4 + (3 if principal else 0)  # entities (+ request id and agents)


def test_patient_is_searched_and_included_through_the_events_patient_entities(
        log: Store) -> None:
    """``patient`` reads the rows of the entities of type Patient (an event keeps one row per
    patient); an entity of another type with the same id is no patient."""
    with log.begin() as tx:
        tx.append_audit([_event("read", SOC, [("Goal", "alva")], set())])  # id, not patient
    assert _search(log, ("patient", "alva"))[1] == 2
    assert _search(log, ("patient", "Patient/alva"))[1] == 2
    assert _search(log, ("entity", "alva"))[1] == 3
    q = fhir_search.parse("AuditEvent", [("patient", "alva")], default_count=10, max_count=10)
    with log.begin(write=False) as tx:
        found, _ = tx.search(q)
        assert set(include_keys("patient", None, found)) == {("Patient", "alva")}
        assert set(include_keys("entity", "Goal", found)) == {("Goal", "g1")}
        back = revinclude_keys(tx.conn, "patient", "Patient", ["alva", "gosta"])
        assert len(back) == 4 and {k[0] for k in back} == {"AuditEvent"}
        assert revinclude_keys(tx.conn, "patient", "Goal", ["alva"]) == []


def test_events_stored_with_a_patient_row_of_their_own_are_found_once(log: Store) -> None:
    """Events stored before kept a second row per patient (param ``patient``): still found,
    each once."""
    with log.begin() as tx:
        [old] = tx.append_audit([_event("read", SOC, [("CarePlan", "old-sip")], {"olle"})])
        tx.conn.execute(audit_ref.insert(), {"audit_id": old.id, "recorded": old.last_updated,
                                             "param": "patient", "system": "Patient",
                                             "value": "olle"})
    assert _search(log, ("patient", "olle")) == ([f"read:{SOC}"], 1)


# -- migration 0006 ------------------------------------------------------------------------



def test_migration_moves_stored_events_into_the_log(fresh: Engine) -> None:
    upgrade(fresh, "0005")
    store = Store(fresh)
    # This release's store writes a column of a later migration (0014): there for the
    # write, gone again before the migrations run.
    with fresh.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE resource ADD COLUMN withheld BOOLEAN NOT NULL "
                             "DEFAULT false")
    with store.begin() as tx:  # how 0005 stored them: as versioned, indexed resources
        old = [tx.create(_event("read", SOC, [("CarePlan", f"p{i}")], {f"pat{i % 3}"}))
               for i in range(7)]
        tx.create({"resourceType": "Patient", "id": "keep"}, "keep")
    with fresh.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE resource DROP COLUMN withheld")
    upgrade(fresh)
    with fresh.connect() as conn:
        assert conn.execute(select(func.count()).select_from(resource).where(
            resource.c.res_type == "AuditEvent")).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(resource_history).where(
            resource_history.c.res_type == "AuditEvent")).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(audit_event)).scalar_one() == 7
    assert _search(store, ("patient", "pat1"))[1] == 2  # p1, p4
    with store.begin(write=False) as tx:
        moved = tx.current("AuditEvent", old[0].id)
        assert moved is not None and moved.json() == old[0].json()
        assert tx.current("Patient", "keep") is not None


def test_an_event_records_when_the_access_happened_not_when_the_writer_stored_it(
        store: Store) -> None:
    p = Principal("client-soc", SOC, "organization", (), False, "system/*.rs")
    record = AuditRecord("read", p, (("CarePlan", "alva-sip"),), frozenset({"alva"}))
    time.sleep(0.05)  # the background writer stores records after a linger, or after retries
    AuditLog(store).later(record)  # no writer thread: stored at once, here
    with store.begin(write=False) as tx:
        [event] = tx.search(fhir_search.parse("AuditEvent", [("patient", "Patient/alva")],
                                              default_count=10, max_count=10))[0]
    assert event.last_updated == record.at
    assert event.json()["recorded"] == event.json()["meta"]["lastUpdated"]
    assert to_us(datetime.fromisoformat(event.json()["recorded"])) == record.at


def test_events_of_one_caller_do_not_share_mutable_parts(store: Store) -> None:
    first = _event("read", SOC, [("CarePlan", "a")], {"alva"})
    first["agent"][0]["who"]["identifier"]["value"] = "changed"
    second = _event("read", SOC, [("CarePlan", "b")], {"alva"})
    assert second["agent"][0]["who"]["identifier"]["value"] == f"client-{SOC}"
