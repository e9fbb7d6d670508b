"""The store's guarantees: versions, atomicity, concurrency, indexed search, schema drift."""

from __future__ import annotations

import threading

import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from sip_hub.errors import Conflict, PreconditionFailed
from sip_hub.fhir import search as fhir_search
from sip_hub.store.schema import metadata
from sip_hub.store.search import base_select

PAT = {"resourceType": "Patient", "name": [{"family": "Tolvansson"}]}


def test_migrations_match_the_schema_module(store):
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []


def test_write_and_index_are_one_transaction(store):
    with pytest.raises(RuntimeError):
        with store.begin() as tx:
            tx.create(dict(PAT), "p1")
            raise RuntimeError("crash after the write")
    assert store.read("Patient", "p1") is None
    with store.begin(write=False) as tx:
        q = fhir_search.parse("Patient", [("name", "tolv")], default_count=10, max_count=10)
        assert tx.search(q)[1] == 0


def test_versions_increase_and_history_is_complete(store):
    with store.begin() as tx:
        tx.create(dict(PAT), "p1")
    for family in ("A", "B"):
        with store.begin() as tx:
            tx.update({**PAT, "name": [{"family": family}]}, "p1")
    with store.begin() as tx:
        tx.delete("Patient", "p1")
    with store.begin(write=False) as tx:
        rows, total = tx.history("Patient", "p1")
        assert total == 4
        assert [r.version_id for r in rows] == [4, 3, 2, 1]
        assert rows[0].deleted and rows[0].content is None
        assert tx.version("Patient", "p1", 2).json()["name"][0]["family"] == "A"


def test_a_write_leaves_its_version_current_in_its_transaction(store):
    """What a write goes on to read of what it wrote (its notifications, its audit record)
    is the version it wrote, with the resource's owner (its creator: an update by another
    organisation does not change it), without reading it back."""
    patient = {"resourceType": "Patient", "name": [{"family": "Ek"}]}
    with store.begin() as tx:
        created = tx.create(patient, "p-own", owner="SE-ORG-A")
        assert tx.current("Patient", "p-own") is created
        assert created.owner == "SE-ORG-A" and created.version_id == 1
        updated, was_created = tx.update({**patient, "gender": "female"}, "p-own",
                                         owner="SE-ORG-B")
        assert not was_created
        now = tx.current("Patient", "p-own")
        assert now is updated and now.version_id == 2 and now.owner == "SE-ORG-A"
        assert now.doc()["gender"] == "female"
        # Read without parsing the bytes back: the document it serialised, meta and all.
        assert now.doc() == orjson.loads(now.content)
        assert created.doc() == orjson.loads(created.content)
        assert list(now.doc())[:3] == ["resourceType", "id", "meta"]
    with store.begin(write=False) as tx:
        stored = tx.current("Patient", "p-own")
        assert (stored.version_id, stored.owner, stored.json()) == (2, "SE-ORG-A", now.json())


def test_if_match_checks_the_current_version(store):
    with store.begin() as tx:
        tx.create(dict(PAT), "p1")
    with pytest.raises(PreconditionFailed):
        with store.begin() as tx:
            tx.update(dict(PAT), "p1", if_match=2)
    with store.begin(write=False) as tx:  # the refused update changed nothing
        assert tx.current("Patient", "p1").version_id == 1
        assert tx.history("Patient", "p1")[1] == 1
    with store.begin() as tx:
        stored, created = tx.update(dict(PAT), "p1", if_match=1)
    assert stored.version_id == 2 and not created
    with store.begin(write=False) as tx:
        now = tx.current("Patient", "p1")
        assert (now.version_id, now.last_updated) == (2, stored.last_updated)
    with pytest.raises(PreconditionFailed, match="does not exist"):
        with store.begin() as tx:
            tx.update(dict(PAT), "p2", if_match=1)
    with store.begin(write=False) as tx:
        assert tx.current("Patient", "p2") is None
    with store.begin() as tx:  # a deleted resource is updated (brought back) as any other
        tx.delete("Patient", "p1")
    with store.begin() as tx:
        stored, created = tx.update(dict(PAT), "p1", if_match=3)
    assert (stored.version_id, stored.deleted, created) == (4, False, False)
    with store.begin(write=False) as tx:
        assert not tx.current("Patient", "p1").deleted


def test_concurrent_updates_lose_nothing(store):
    """Parallel writers to one resource: every successful write is its own version."""
    with store.begin() as tx:
        tx.create(dict(PAT), "p1")
    done: list[int] = []
    refused: list[Exception] = []

    def writer(n: int) -> None:
        for i in range(10):
            try:
                with store.begin() as tx:
                    s, _ = tx.update({**PAT, "name": [{"family": f"w{n}-{i}"}]}, "p1")
                    done.append(s.version_id)
            except Conflict as exc:
                refused.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) + len(refused) == 40
    assert sorted(done) == list(range(2, 2 + len(done)))  # no version written twice
    with store.begin(write=False) as tx:
        assert tx.current("Patient", "p1").version_id == 1 + len(done)
        assert tx.history("Patient", "p1")[1] == 1 + len(done)


@pytest.mark.parametrize("how", ["create", "conditional update"])
def test_concurrent_conditional_writes_with_the_same_criteria_create_once(store, how):
    """If-None-Exist (and a conditional update that creates) is how a client says "this
    Patient once": eight at once with the same criteria make exactly one resource, and the
    others find it (on PostgreSQL both used to find nothing and both create)."""
    from sip_hub import interactions as ix
    ctx = ix.Context("http://hub.test")
    org = {"resourceType": "Organization", "name": "Skolan",
           "identifier": [{"system": "urn:test", "value": "once"}]}
    start = threading.Barrier(8)
    statuses: list[int] = []
    errors: list[Exception] = []

    def writer() -> None:
        start.wait()
        try:
            if how == "create":
                result = store.write(lambda tx: ix.create(
                    tx, ctx, "Organization", dict(org), if_none_exist="identifier=urn:test|once"))
            else:
                result = store.write(lambda tx: ix.conditional_update(
                    tx, ctx, "Organization", [("identifier", "urn:test|once")], dict(org)))
            statuses.append(result.status)
        except Exception as exc:  # noqa: BLE001 (the assertion below shows it)
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert statuses.count(201) == 1 and len(statuses) == 8
    with store.begin(write=False) as tx:
        query = fhir_search.parse("Organization", [("identifier", "urn:test|once")],
                                  default_count=10, max_count=10)
        assert len(tx.search(query)[0]) == 1


@pytest.mark.parametrize("query", [
    [("patient", "Patient/p1")],
    [("status", "active")],
    [("date", "ge2024-01-01")],
    [("patient.identifier", "191212121212")],
    [("_lastUpdated", "gt2024-01-01")],
])
def test_supported_searches_use_indexes_not_scans(store, query):
    q = fhir_search.parse("CarePlan", query, default_count=10, max_count=10)
    sql = base_select(q).compile(store.engine, compile_kwargs={"literal_binds": True})
    with store.engine.connect() as conn:
        if store.engine.dialect.name == "sqlite":
            plan = [r[-1] for r in conn.execute(text(f"EXPLAIN QUERY PLAN {sql}"))]
            scans = [p for p in plan if p.startswith("SCAN")]
        else:
            # On tiny tables PostgreSQL prefers a scan; forbid it to see whether an index
            # could serve the query at all.
            conn.execute(text("SET enable_seqscan = off"))
            plan = [r[0] for r in conn.execute(text(f"EXPLAIN {sql}"))]
            scans = [p for p in plan if "Seq Scan" in p]
    assert scans == [], plan



@pytest.mark.postgres
def test_start_up_takes_statistics_of_the_tables_that_hold_rows_only():
    """Statistics of an empty table would make PostgreSQL plan the statements prepared before
    autovacuum looks again as sequential scans (kept while the table fills); a table never
    analyzed is planned as one of some size. Tables with rows are analyzed at start-up, so
    a restored database's searches use their indexes from the first request."""
    from conftest import pg_schema
    from sip_hub.store import Store
    from sip_hub.store.migrate import upgrade

    with pg_schema() as engine:
        upgrade(engine)   # a new hub: every table empty

        def reltuples() -> dict[str, float]:
            with engine.connect() as conn:
                return dict(conn.exec_driver_sql(
                    "SELECT relname, reltuples FROM pg_class WHERE relkind = 'r' "
                    "AND relnamespace = current_schema()::regnamespace").all())
        assert {t: n for t, n in reltuples().items() if t != "alembic_version"} == {
            t.name: 1 if t.name == "search_index_state" else -1   # (its one row: the index's
            for t in metadata.sorted_tables}                       # fingerprint)
        with Store(engine).begin() as tx:
            tx.create(dict(PAT), "p1")
        upgrade(engine)   # the next start
        after = reltuples()
        assert after["resource"] == 1 and after["resource_history"] == 1
        assert after["message_inbox"] == -1 and after["outbox_delivery"] == -1


@pytest.mark.postgres
def test_tables_that_outgrow_their_statistics_are_analyzed_again():
    """A table that has doubled since its statistics (by at least GROWN_ROWS rows) is analyzed
    by the worker (beside its rounds), so that statements prepared while it was small are
    planned again; one that grew less, or whose rows only changed in place, is left to
    autovacuum."""

    from sqlalchemy import insert

    from conftest import pg_schema
    from pgwait import counted
    from sip_hub.store import Store
    from sip_hub.store.migrate import upgrade
    from sip_hub.store.schema import message_inbox
    from sip_hub.store.statistics import GROWN_ROWS, refresh_grown

    def cached(start: int, stop: int) -> list[dict]:
        return [{"sender_org": "SE2321000016-1SOC", "header_id": f"h-{k}", "bundle_id": f"b-{k}",
                 "event": "ev", "state": "done", "received": k, "expires": k} for k in
                range(start, stop)]

    def refreshed(engine, rows: list[dict]) -> list[str]:
        """Insert the rows, wait until the statistics collector counts them, refresh."""
        with engine.connect() as conn:
            conn.execute(insert(message_inbox), rows)
            conn.commit()
            counted(conn, "message_inbox", "n_tup_ins", int(rows[-1]["header_id"][2:]) + 1)
        return refresh_grown(Store(engine))

    with pg_schema() as engine:
        upgrade(engine)
        assert refreshed(engine, cached(0, GROWN_ROWS - 1)) == []   # too few to matter
        assert refreshed(engine, cached(GROWN_ROWS - 1, 2 * GROWN_ROWS)) == ["message_inbox"]
        with engine.connect() as conn:
            estimate = conn.exec_driver_sql("SELECT reltuples FROM pg_class "
                                            "WHERE oid = 'message_inbox'::regclass").scalar_one()
        assert estimate == 2 * GROWN_ROWS
        # Half again is not double: autovacuum's business.
        assert refreshed(engine, cached(2 * GROWN_ROWS, 3 * GROWN_ROWS)) == []
        assert refreshed(engine, cached(3 * GROWN_ROWS, 5 * GROWN_ROWS)) == ["message_inbox"]
        # Rows changed in place, twice each, are no growth: autovacuum's business too.
        with engine.connect() as conn:
            for _ in range(2):
                conn.execute(text("UPDATE message_inbox SET expires = expires + 1"))
                conn.commit()
            changed = counted(conn, "message_inbox", "n_mod_since_analyze", 10 * GROWN_ROWS)
        assert changed >= 10 * GROWN_ROWS   # (twice the rows the statistics counted)
        assert refresh_grown(Store(engine)) == []


@pytest.mark.postgres
def test_postgres_stores_large_contents_compressed_with_lz4():
    """Versions, outgoing messages, access events and cached responses of more than ~2 kB
    are compressed with lz4 (migration 0011), and read back byte for byte."""
    from conftest import pg_schema
    from sip_hub.store import Store
    from sip_hub.store.migrate import upgrade

    big = {**PAT, "name": [{"family": "Tolvansson", "given": [f"Namn{i}" for i in range(400)]}]}
    with pg_schema() as engine:
        upgrade(engine)
        store = Store(engine)
        with store.begin() as tx:
            stored = tx.create(dict(big), "p1")
        assert len(stored.content) > 4000
        with engine.connect() as conn:
            methods = dict(conn.exec_driver_sql(
                "SELECT attrelid::regclass::text || '.' || attname, attcompression "
                "FROM pg_attribute WHERE attname IN ('content', 'response', 'request') "
                "AND attrelid IN ('resource_history'::regclass, 'outbox_message'::regclass, "
                "'audit_event'::regclass, 'message_inbox'::regclass)").all())
            used = conn.exec_driver_sql("SELECT pg_column_compression(content) FROM "
                                        "resource_history WHERE res_id = 'p1'").scalar_one()
        assert methods == {"resource_history.content": "l", "outbox_message.content": "l",
                           "audit_event.content": "l", "message_inbox.response": "l",
                           "message_inbox.request": "l"}
        assert used == "lz4"
        with store.begin(write=False) as tx:
            assert tx.current("Patient", "p1").content == stored.content


@pytest.mark.postgres
def test_postgres_reads_see_committed_writes_and_close_with_the_engine():
    """Reads on PostgreSQL run on their own connections, in autocommit (no BEGIN, no COMMIT,
    no transaction left open): they see each committed write at once, and disposing of the
    engine (shutdown, a forked child) closes them too."""
    from conftest import pg_schema
    from sip_hub.store import Store
    from sip_hub.store.engine import make_engine
    from sip_hub.store.migrate import upgrade

    with pg_schema() as engine:
        upgrade(engine)
        store = Store(engine)
        with store.begin() as tx:
            tx.create(dict(PAT), "p1")
        with store.begin(write=False) as tx:
            assert tx.current("Patient", "p1").version_id == 1
            # Each statement its own transaction: this one started with the statement.
            own = tx.conn.exec_driver_sql(
                "SELECT pid, xact_start = query_start FROM pg_stat_activity "
                "WHERE pid = pg_backend_pid()").one()
            reader_pid = own[0]
            assert own[1] is True
        with store.begin() as tx:
            tx.update(dict(PAT, name=[{"family": "Ny"}]), "p1")
        with store.begin(write=False) as tx:
            assert tx.current("Patient", "p1").version_id == 2
        engine.dispose()
        probe = make_engine(engine.url, pool_size=1)
        try:
            with probe.connect() as conn:
                alive = conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = %s",
                    (reader_pid,)).scalar_one()
        finally:
            probe.dispose()
        assert alive == 0


def test_a_stored_versions_content_is_parsed_once_to_read_and_anew_to_change(store):
    with store.begin() as tx:
        stored = tx.create(dict(PAT), "p1")
    shared = stored.doc()
    assert stored.doc() is shared and shared["name"] == [{"family": "Tolvansson"}]
    mine = stored.json()
    mine["name"][0]["family"] = "Changed"
    assert stored.json()["name"] == [{"family": "Tolvansson"}]  # a caller's copy is its own
    assert stored.doc()["name"] == [{"family": "Tolvansson"}]
    assert stored == store.read("Patient", "p1")  # the parsed copy is no part of equality


def _statements(store):
    """Count the SQL statements the store's SQLite connections run (None on PostgreSQL)."""
    if store.engine.dialect.name != "sqlite":
        return None
    seen: list[str] = []
    from sqlalchemy import event

    @event.listens_for(store.engine, "connect")
    def _trace(dbapi_conn, _record):  # new connections
        dbapi_conn.set_trace_callback(seen.append)
    store.engine.dispose()
    return seen


def test_many_resources_are_read_at_once_as_they_are_one_by_one(store):
    with store.begin() as tx:
        for i in range(40):  # more than one statement takes
            tx.create({**PAT, "name": [{"family": f"F{i}"}]}, f"p{i}")
        tx.delete("Patient", "p3")
    keys = [("Patient", f"p{i}") for i in range(45)] + [("Organization", "p1")]
    with store.begin(write=False) as tx:
        one_by_one = {k: tx.current(*k) for k in keys}
    assert one_by_one[("Patient", "p3")].deleted and one_by_one[("Patient", "p44")] is None
    statements = _statements(store)
    with store.begin(write=False) as tx:
        tx.load(keys + keys[:5])
        if statements is not None:
            loaded_with = len(statements)
        at_once = {k: tx.current(*k) for k in keys}
        if statements is not None:  # nothing read again
            assert len(statements) == loaded_with and 1 <= loaded_with <= 4, statements
    assert at_once == one_by_one


def test_a_preparation_is_adopted_only_while_everything_it_read_is_unchanged(store):
    with store.begin() as tx:
        for i in range(40):
            tx.create(dict(PAT), f"p{i}")
    keys = [("Patient", f"p{i}") for i in range(40)] + [("Patient", "absent")]
    with store.begin(write=False) as tx:
        basis = {k: tx.current(*k) for k in keys}
    with store.begin() as tx:
        assert tx.adopt(basis)
    for change in ("update", "delete", "appear"):
        with store.begin() as tx:
            if change == "update":
                tx.update(dict(PAT), "p39")
            elif change == "delete":
                tx.delete("Patient", "p0")
            else:
                tx.create(dict(PAT), "absent")
        with store.begin() as tx:
            assert not tx.adopt(basis), change
        with store.begin(write=False) as tx:
            basis = {k: tx.current(*k) for k in keys}


def test_the_grants_of_many_patients_are_read_at_once_as_one_by_one(store):
    from sip_hub.store.search import Grant
    with store.begin() as tx:
        for i in range(35):
            tx.replace_grants(f"p{i}", [Grant("SE1-A", "coordinator", True, None),
                                        Grant(f"SE1-{i}", "participant", i % 2 == 0, i)][:1 + i % 2])
    patients = [f"p{i}" for i in range(37)]
    with store.begin(write=False) as tx:
        one_by_one = {p: sorted(tx.grants(p), key=repr) for p in patients}
    with store.begin(write=False) as tx:
        tx.load_grants(patients)
        at_once = {p: sorted(tx.grants(p), key=repr) for p in patients}
    assert at_once == one_by_one and one_by_one["p36"] == [] and len(one_by_one["p1"]) == 2


def test_a_write_clears_only_index_tables_its_type_can_have_rows_in():
    """An update or delete clears the old version's index rows from the tables of its type's
    parameters only: every row any resource of the type yields lies in one of them."""
    import json
    from pathlib import Path

    import sip_factory as f
    from sip_hub.fhir.indexing import extract, index_kinds
    examples = [json.loads(p.read_text()) for p in
                sorted((Path(__file__).parent.parent / "fixtures" / "r4-examples").glob("*.json"))]
    resources = examples + f.demo_case() + f.discharge_case() + [
        f.organization(), f.practitioner(), f.related_person(), f.kartlaggning(),
        {"resourceType": "Appointment", "status": "booked", "start": "2026-01-01T10:00:00Z",
         "participant": [{"actor": {"reference": "Patient/p"}, "status": "accepted"}]},
        {"resourceType": "Task", "status": "requested", "intent": "order",
         "for": {"reference": "Patient/p"}, "owner": {"identifier": {"value": "x"}},
         "authoredOn": "2026-01-01", "meta": {"tag": [{"code": "t"}]}}]
    assert len({r["resourceType"] for r in resources}) >= 11
    for res in resources:
        rows = extract(res)
        used = {kind for kind in ("token", "reference", "date", "string") if getattr(rows, kind)}
        assert used <= index_kinds(res["resourceType"]), res["resourceType"]


def test_an_update_leaves_no_index_row_of_the_old_version(store):
    with store.begin() as tx:
        tx.create({**PAT, "birthDate": "1990-01-01",
                   "identifier": [{"system": "urn:x", "value": "1"}]}, "p1")
        tx.update({"resourceType": "Patient"}, "p1")
    with store.begin(write=False) as tx:
        for table in ("idx_token", "idx_date", "idx_string", "idx_reference"):
            n = tx.conn.execute(text(f"SELECT count(*) FROM {table} WHERE res_id = 'p1' "
                                     "AND param NOT LIKE '\\_%' ESCAPE '\\'")).scalar()
            assert n == 0, table


def test_a_failed_statement_keeps_its_values_out_of_its_error(store):
    """An error's text reaches log lines and dead letters' reasons; the values of the
    statement (resources' content: personal data) must not be in it."""
    from sqlalchemy.exc import IntegrityError

    from sip_hub.store.schema import resource

    row = {"res_type": "Patient", "res_id": "p-secret", "version_id": 1, "deleted": False,
           "last_updated": 0,
           "owner_org": "Anna Andersson 19121212-1212"}
    with store.engine.begin() as conn:
        conn.execute(resource.insert(), row)
    with pytest.raises(IntegrityError) as failed, store.engine.begin() as conn:
        conn.execute(resource.insert(), row)  # the same key again
    text_of_error = str(failed.value)
    assert "INSERT INTO resource" in text_of_error  # what failed is still said
    assert "19121212" not in text_of_error and "Anna" not in text_of_error
    assert "hidden" in text_of_error
