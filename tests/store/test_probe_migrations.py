"""The database across releases and operations: upgrades from every earlier revision with data
in it, downgrades, `sip-hub migrate` as operators run it (twice, two at once, on a database of
a newer release, where it cannot be made), the search index rebuild, the SQLite file's
permissions."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, select, text

from conftest import pg_schema
from indexrows import index_is_exact
from pgwait import upgrade_while_locked
from sip_hub import cli
from sip_hub.fhir.indexing import fingerprint
from sip_hub.store import Store, Tx
from sip_hub.store.engine import make_engine
from sip_hub.store.index_state import rebuild_if_changed
from sip_hub.store.migrate import MIGRATIONS, upgrade
from sip_hub.store.schema import metadata

REVISIONS = [s.revision for s in reversed(list(
    ScriptDirectory(str(MIGRATIONS)).walk_revisions()))]
HEAD = REVISIONS[-1]
BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
T0 = 1_760_000_000_000_000  # UTC microseconds




# -- realistic data, as an earlier release stored it ---------------------------------------

def _patient(rid: str, family: str, version: int) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": rid,
            "meta": {"versionId": str(version), "lastUpdated": "2025-10-09T08:00:00Z"},
            "identifier": [{"system": "http://electronichealth.se/identifier/personnummer",
                            "value": f"19121212{rid[-1]}12{version}"}],
            "name": [{"family": family, "given": ["Tolva"]}], "birthDate": "1912-12-12"}


def _careplan(rid: str) -> dict[str, Any]:
    return {"resourceType": "CarePlan", "id": rid,
            "meta": {"versionId": "1", "lastUpdated": "2025-10-09T08:00:00Z"},
            "status": "active", "intent": "plan", "subject": {"reference": "Patient/p1"},
            "period": {"start": "2025-10-01", "end": "2026-03-31"},
            "title": "SIP Tolva"}


# (res_type, res_id) -> the versions' contents (None: a tombstone)
HISTORY: dict[tuple[str, str], list[dict[str, Any] | None]] = {
    ("Patient", "p1"): [_patient("p1", "Tolvansson", 1), _patient("p1", "Svensson", 2)],
    ("Patient", "p2"): [_patient("p2", "Gone", 1), None],
    ("CarePlan", "c1"): [_careplan("c1")],
}


def _rows() -> dict[str, list[dict[str, Any]]]:
    """Every table's rows as this release names their columns; an earlier revision's tables
    take the columns they have."""
    resource, history = [], []
    for (rtype, rid), versions in HISTORY.items():
        for v, content in enumerate(versions, start=1):
            history.append({"res_type": rtype, "res_id": rid, "version_id": v,
                            "last_updated": T0 + v, "method": "PUT" if content else "DELETE",
                            "content": orjson.dumps(content) if content else None})
        resource.append({"res_type": rtype, "res_id": rid, "version_id": len(versions),
                         "last_updated": T0 + len(versions), "deleted": versions[-1] is None,
                         "owner_org": "SE2321000016-15CQ", "withheld": False})
    return {
        "resource": resource, "resource_history": history,
        # What an older release derived: to be replaced by this release's rows.
        "idx_token": [{"res_type": "Patient", "res_id": "p1", "param": "identifier",
                       "system": "urn:old", "code": "stale"}],
        "idx_string": [{"res_type": "Patient", "res_id": "p2", "param": "family",
                        "value_norm": "gone", "value": "Gone"}],
        "idx_reference": [], "idx_date": [],
        "api_client": [{"client_id": "cosmic", "secret_hash": "$argon2id$x", "org_hsa_id":
                        "SE2321000016-15CQ", "scope": "system/*.rs", "name": "COSMIC",
                        "created": T0, "active": True, "role": "organization",
                        "personal_data": False, "disabled_at": None}],
        "access_grant": [{"patient_id": "p1", "org_hsa_id": "SE2321000016-15CQ",
                          "role": "coordinator", "reads": True, "valid_until": None,
                          "valid_from": None, "seq": 0},
                         {"patient_id": "p1", "org_hsa_id": "SE2321000016-ABCD",
                          "role": "participant", "reads": False, "valid_until": T0 + 10**12,
                          "valid_from": None, "seq": 0}],
        "outbox_message": [{"message_id": "m1", "event": "sip-plan-updated",
                            "kind": "notification", "patient_id": "p1", "careplan_id": "c1",
                            "created": T0, "content": b'{"resourceType": "Bundle"}'}],
        "outbox_delivery": [{"id": f"d{i}", "message_id": "m1", "dest_org": org,
                             "patient_id": "p1", "careplan_id": "c1", "seq": 1, "state": st,
                             "attempts": i, "next_attempt_at": T0 + i, "published_at": None,
                             "updated": T0, "last_error": "HTTP 500" if st == "dead" else None,
                             "endpoint_url": None}
                            for i, (org, st) in enumerate((("SE2321000016-ABCD", "pending"),
                                                           ("SE2321000016-EFGH", "dead")))],
        "outbox_stream": [{"patient_id": "p1", "careplan_id": "c1", "dest_org": org,
                           "last_seq": 1} for org in ("SE2321000016-ABCD",
                                                      "SE2321000016-EFGH")],
        "message_inbox": [{"sender_org": "SE2321000016-ABCD", "header_id": f"h{i}",
                           "bundle_id": f"b{i}", "event": "sip-plan-updated", "state": "done",
                           "received": T0, "expires": T0 + 10**11, "response_code": "ok",
                           "response": b"{}", "request": None, "caller": None,
                           "response_url": None} for i in range(3)],
        "audit_event": [{"id": "ae1", "recorded": T0, "action": "R", "outcome": "0",
                         "subtype": "read", "content": b'{"resourceType": "AuditEvent"}'}],
        "audit_ref": [{"audit_id": "ae1", "param": "entity", "system": "Patient",
                       "value": "p1", "recorded": T0}],
        "deadline_due": [{"plan_id": "c1", "due": T0 + 10**10}],
        "deadline_scan": [{"id": 1, "scanned_at": T0, "inactive_days": 90}],
    }


def _seed(engine: Engine) -> dict[str, set[str]]:
    """Write ``_rows`` into the tables the database has; the columns written, by table."""
    old = MetaData()
    old.reflect(engine)
    written: dict[str, set[str]] = {}
    with engine.begin() as conn:
        for name, rows in _rows().items():
            if name not in old.tables or not rows:
                continue
            table = old.tables[name]
            have = {c.name for c in table.columns}
            conn.execute(table.insert(), [{k: v for k, v in r.items() if k in have}
                                          for r in rows])
            written[name] = have
    return written


def _table_rows(engine: Engine, name: str, columns: set[str]) -> set[tuple]:
    table = metadata.tables[name]
    cols = [table.c[c] for c in sorted(columns)]
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(select(*cols))}


def _expected(name: str, columns: set[str]) -> set[tuple]:
    return {tuple(r[c] for c in sorted(columns)) for r in _rows()[name]}


def _drift(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True,
                                                     "compare_server_default": True})
        return compare_metadata(ctx, metadata)


# The last deadline round, forgotten by 0020 (the next round is a full one, which records
# every plan's next deadline again by the Swedish days): a watermark, not data.
FORGOTTEN = "deadline_scan"
# Columns dropped since: an outbox stream is a person's to a destination (0022), its counter
# the highest of the plans' (one plan per person and destination here: the same numbers).
DROPPED = {"outbox_stream": {"careplan_id"}}


def _kept(name: str, columns: set[str]) -> set[str]:
    return columns - DROPPED.get(name, set())


# -- upgrades ------------------------------------------------------------------------------

@pytest.mark.parametrize("start", REVISIONS[:-1])
def test_upgrading_from_every_revision_keeps_every_row_and_its_meaning(
        fresh: Engine, start: str) -> None:
    upgrade(fresh, start)
    written = _seed(fresh)
    upgrade(fresh)
    assert _drift(fresh) == []
    for name, columns in written.items():
        if name.startswith("idx_") or name == FORGOTTEN:
            continue  # derived (rebuilt below), or forgotten
        columns = _kept(name, columns)
        assert _table_rows(fresh, name, columns) == _expected(name, columns), name
    # (forgotten by 0020: kept when the database was there already)
    assert _table_rows(fresh, FORGOTTEN, {"id"}) == (
        _expected(FORGOTTEN, {"id"}) if start >= "0020" else set())
    # Columns added since keep the meaning the rows had: no client became admin or was given
    # personal data or counts as disabled, no resource became withheld, no grant starts later.
    with fresh.connect() as conn:
        assert set(conn.execute(text("SELECT role, personal_data FROM api_client"))) == \
            ({("organization", False)} if "api_client" in written else set())
        assert set(conn.execute(text("SELECT disabled_at FROM api_client")).scalars()) \
            <= {None}
        assert set(conn.execute(text("SELECT withheld FROM resource")).scalars()) == {False}
        assert set(conn.execute(text("SELECT valid_from FROM access_grant")).scalars()) \
            <= {None}
        assert list(conn.execute(text("SELECT fingerprint FROM search_index_state"))
                    .scalars()) == [fingerprint()]
    store = Store(fresh)
    index_is_exact(store, list(HISTORY))
    with store.begin(write=False) as tx:
        p1 = tx.current("Patient", "p1")
        assert p1 is not None and p1.version_id == 2 and p1.json()["name"][0]["family"] == \
            "Svensson"
        assert tx.current("Patient", "p2").deleted


def test_a_client_disabled_at_the_upgrade_keeps_its_console_sessions_ended(
        fresh: Engine) -> None:
    """0021 notes when a client was disabled, so that its console sessions stay ended once it
    is enabled again: a client disabled at the upgrade counts as disabled then."""
    upgrade(fresh, "0020")
    row = {k: v for k, v in _rows()["api_client"][0].items() if k != "disabled_at"}
    with fresh.begin() as conn:
        conn.execute(metadata.tables["api_client"].insert(), [
            row, {**row, "client_id": "gone", "active": False}])
    before = int(time.time())
    upgrade(fresh)
    with fresh.connect() as conn:
        noted = {r[0]: r[1] for r in conn.execute(text(
            "SELECT client_id, disabled_at FROM api_client"))}
    assert noted["cosmic"] is None and before <= noted["gone"] <= time.time()


def test_the_schema_at_head_is_the_models(fresh: Engine) -> None:
    upgrade(fresh)
    assert _drift(fresh) == []
    with fresh.connect() as conn:
        assert MigrationContext.configure(conn).get_current_heads() == (HEAD,)


def test_the_latest_migrations_go_down_and_up_again_with_the_data(fresh: Engine) -> None:
    upgrade(fresh, "0009")
    written = _seed(fresh)
    upgrade(fresh)
    cfg = _alembic(fresh)
    from alembic import command
    with fresh.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0009")
    upgrade(fresh)
    assert _drift(fresh) == []
    for name, columns in written.items():
        if not name.startswith("idx_") and name != FORGOTTEN:
            columns = _kept(name, columns)
            assert _table_rows(fresh, name, columns) == _expected(name, columns), name
    assert _table_rows(fresh, FORGOTTEN, {"id"}) == set()


def _alembic(engine: Engine):  # noqa: ANN202
    from alembic.config import Config
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


@pytest.mark.parametrize("below, holding", [
    ("0013", "UPDATE resource SET withheld = true WHERE res_id = 'c1'"),
    ("0012", f"UPDATE access_grant SET valid_from = {(time.time_ns() // 1000) + 10**12} "
             "WHERE role = 'participant'"),
])
def test_a_downgrade_that_would_share_what_is_kept_from_organisations_is_refused(
        fresh: Engine, below: str, holding: str) -> None:
    """Dropping ``withheld`` (0014) or ``valid_from`` (0013) would let organisations read
    what the person's consent keeps from them: refused, as 0006 refuses to drop the log."""
    from alembic import command
    upgrade(fresh)
    _seed(fresh)
    with fresh.begin() as conn:
        conn.execute(text(holding))
    cfg = _alembic(fresh)
    with pytest.raises(RuntimeError, match="downgrading below"):
        with fresh.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, below)
    with fresh.connect() as conn:
        assert MigrationContext.configure(conn).get_current_heads() == (HEAD,)
    assert _drift(fresh) == []


# -- `sip-hub migrate` as operators run it ------------------------------------------------

def _cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("SIP_HUB_")}
    return subprocess.Popen([sys.executable, "-m", "sip_hub.cli", *args],
                            env={**full, **env}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _env_of(fresh: Engine, tmp_path: Path) -> dict[str, str]:
    url = fresh.url.render_as_string(hide_password=False)
    return {"SIP_HUB_DATABASE_URL": url.replace("postgresql+psycopg://", "postgresql://"),
            "SIP_HUB_DATA_DIR": str(tmp_path)}


def test_two_processes_migrating_at_once_both_succeed(fresh: Engine, tmp_path: Path) -> None:
    """Two API processes (or `migrate` and `serve`) started together on an empty database:
    SQLite failed one with "database is locked", PostgreSQL with a traceback (both created
    alembic_version)."""
    env = _env_of(fresh, tmp_path)
    procs = [_cli(env, "migrate") for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    assert all("Traceback" not in err for _, err in outs)
    assert _drift(fresh) == []
    again = _cli(env, "migrate")
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0 and "database at head" in out, err


def test_a_database_of_a_newer_release_is_refused_in_one_line(
        fresh: Engine, tmp_path: Path) -> None:
    upgrade(fresh)
    with fresh.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
        conn.execute(text("CREATE TABLE newer_release (id INTEGER)"))
    for args in (["migrate"], ["client", "list"], ["serve", "--port", "1"]):
        p = _cli(_env_of(fresh, tmp_path), *args)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 2, (args, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert "0099" in err and "newer release" in err
    with fresh.connect() as conn:  # left as it was
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0099"
        conn.execute(text("SELECT id FROM newer_release")).all()


def test_a_process_that_does_not_migrate_refuses_a_database_behind_its_release(
        fresh: Engine, tmp_path: Path) -> None:
    """With SIP_HUB_AUTO_MIGRATE=false (the deployment runs `sip-hub migrate` first) a
    process started on a database an upgrade has not yet migrated ran on tables its code
    does not match; it now stops at start, in one line, and starts once migrated."""
    upgrade(fresh, "0013")
    env = {**_env_of(fresh, tmp_path), "SIP_HUB_AUTO_MIGRATE": "false"}
    p = _cli(env, "client", "list")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert err.count("\n") == 1 and "0013" in err and "sip-hub migrate" in err, err
    upgrade(fresh)
    p = _cli(env, "client", "list")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err


@pytest.mark.parametrize("where", ["a-file/hub.sqlite3", "/proc/sip-hub/hub.sqlite3"])
def test_an_sqlite_file_where_none_can_be_made_is_one_line_exit_1(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        where: str) -> None:
    (tmp_path / "a-file").write_text("not a directory")
    path = where if where.startswith("/") else str(tmp_path / where)
    monkeypatch.setenv("SIP_HUB_DATABASE_URL", f"sqlite:///{path}")
    assert cli.main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("sip-hub: cannot create the database") and err.count("\n") == 1, err
    assert path in err


def test_the_sqlite_database_and_its_directory_are_for_their_owner_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """It holds personal data (SIP plans, the access log). As `make run` makes it."""
    monkeypatch.delenv("SIP_HUB_DATABASE_URL", raising=False)
    monkeypatch.setenv("SIP_HUB_DATA_DIR", str(tmp_path / "var"))
    old = os.umask(0o022)
    try:
        assert cli.main(["migrate"]) == 0
        engine = make_engine(f"sqlite:///{tmp_path / 'var' / 'sip_hub.sqlite3'}")
        with Store(engine).begin() as tx:  # (the -wal and -shm files now exist)
            tx.create(_patient("p9", "Svensson", 1), "p9")
            files = sorted((tmp_path / "var").iterdir())
            modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
        engine.dispose()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "var").stat().st_mode) == 0o700
    data = {n: m for n, m in modes.items() if n.endswith(("sqlite3", "-wal", "-shm"))}
    assert len(data) == 3 and set(data.values()) == {0o600}, modes
    with make_engine(f"sqlite:///{tmp_path / 'var' / 'sip_hub.sqlite3'}").connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


@pytest.mark.postgres
def test_a_migration_is_not_cut_by_the_hubs_statement_timeout() -> None:
    """A migration statement that takes longer than requests may (a large table indexed
    again, here one waiting for a table another session holds) completes."""
    with pg_schema() as engine:
        upgrade(engine, "0012")
        upgrade_while_locked(engine, "LOCK TABLE access_grant IN ACCESS SHARE MODE")
        assert _drift(engine) == []


# -- the search index rebuild -------------------------------------------------------------

def _migrated(fresh: Engine) -> Store:
    upgrade(fresh)
    return Store(fresh)


def _stale(store: Store) -> None:
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE search_index_state SET fingerprint = 'an older release'"))


def test_the_rebuild_reaches_every_resource_past_a_batch_and_once(fresh: Engine) -> None:
    store = _migrated(fresh)
    keys = [("Patient", f"p{i:04d}") for i in range(1205)]
    with store.begin() as tx:
        for _, rid in keys:
            tx.create(_patient(rid, f"Fam{rid}", 1), rid)
    with fresh.begin() as conn:
        conn.execute(text("DELETE FROM idx_string"))
    _stale(store)
    assert rebuild_if_changed(fresh) == 1205
    assert rebuild_if_changed(fresh) is None  # idempotent
    index_is_exact(store, keys[:3] + keys[999:1002] + keys[-3:])
    with fresh.connect() as conn:
        per = conn.execute(text("SELECT res_id, COUNT(*) FROM idx_string WHERE param = 'family' "
                                "GROUP BY res_id")).all()
    assert len(per) == 1205 and {n for _, n in per} == {1}


def test_a_rebuild_that_fails_half_way_leaves_the_index_and_runs_again(
        fresh: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _migrated(fresh)
    with store.begin() as tx:
        for i in range(30):
            tx.create(_patient(f"p{i}", "Svensson", 1), f"p{i}")
    _stale(store)
    real, calls = Tx._write_index, []

    def dies_half_way(self: Tx, *args: Any) -> None:
        calls.append(1)
        if len(calls) == 15:
            raise KeyboardInterrupt  # (the process stopped)
        real(self, *args)
    monkeypatch.setattr(Tx, "_write_index", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        rebuild_if_changed(fresh)
    monkeypatch.setattr(Tx, "_write_index", real)
    index_is_exact(store, [("Patient", f"p{i}") for i in range(30)])  # as it was
    assert rebuild_if_changed(fresh) == 30
    index_is_exact(store, [("Patient", f"p{i}") for i in range(30)])


def test_a_write_while_the_index_is_rebuilt_leaves_it_exact(
        fresh: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first process of a new release rebuilds the index while another, started with
    SIP_HUB_AUTO_MIGRATE=false, already writes. SQLite: the rebuild failed ("database is
    locked"). PostgreSQL: the update's removal of its old rows ran before the rebuild wrote
    them again from the old version, and the resource stayed found by its old name."""
    store = _migrated(fresh)
    with store.begin() as tx:
        tx.create(_patient("p1", "Tolvansson", 1), "p1")
        for i in range(5):
            tx.create(_patient(f"q{i}", "Other", 1), f"q{i}")
    _stale(store)
    paused, go = threading.Event(), threading.Event()
    real = Tx._write_index

    def pausing(self: Tx, *args: Any) -> None:
        if threading.current_thread().name == "rebuild" and not paused.is_set():
            paused.set()
            go.wait(10)
        real(self, *args)
    monkeypatch.setattr(Tx, "_write_index", pausing)
    errors: list[BaseException] = []

    def run(fn: Any) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def update() -> None:
        with store.begin() as tx:
            tx.current("Patient", "p1")
            tx.update(_patient("p1", "Svensson", 2), "p1")

    rebuild = threading.Thread(target=run, args=(lambda: rebuild_if_changed(fresh),),
                               name="rebuild")
    writer = threading.Thread(target=run, args=(update,), name="writer")
    rebuild.start()
    assert paused.wait(10)
    writer.start()
    time.sleep(0.7)  # the writer gets as far as it can
    go.set()
    rebuild.join(30)
    writer.join(30)
    assert errors == []
    index_is_exact(store, [("Patient", "p1")] + [("Patient", f"q{i}") for i in range(5)])
    assert rebuild_if_changed(fresh) is None


def test_the_rebuild_waits_for_a_write_in_progress(fresh: Engine) -> None:
    """A write transaction open when the rebuild starts: the rebuild waits for it and then
    indexes what it wrote, once."""
    store = _migrated(fresh)
    _stale(store)
    done: list[Any] = []
    with store.begin() as tx:
        tx.create(_patient("p1", "Tolvansson", 1), "p1")
        t = threading.Thread(target=lambda: done.append(rebuild_if_changed(fresh)))
        t.start()
        time.sleep(0.5)
    t.join(30)
    assert done and done[0] is not None
    index_is_exact(store, [("Patient", "p1")])
