"""The search index rebuild an upgrade runs (``index_state.rebuild_if_changed``) finishes
whatever the store holds, so that the hub starts after every upgrade: a stored version it
cannot read as a resource is passed over and named in the log (it cannot be searched; the
rest of the store is), not a traceback from `sip-hub migrate` and every start after it; and
on PostgreSQL it is not cut by the statement timeout the hub gives requests (on a large store
its deletes of every index row, or its wait for writes in progress, take longer)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from sqlalchemy import Engine, MetaData, text

from sip_hub.fhir.indexing import fingerprint
from sip_hub.store import Store
from sip_hub.store.migrate import upgrade

SOC = "SE2120000142-SOC1"
T0 = 1_760_000_000_000_000

# (resource type, id, stored content): the hub of revision 0017 stored them (one version
# each). The last three cannot be read as the resource of their row.
ROWS: list[tuple[str, str, bytes]] = [
    ("Patient", "gosta", orjson.dumps({"resourceType": "Patient", "id": "gosta"})),
    ("CarePlan", "gosta-plan", orjson.dumps({
        "resourceType": "CarePlan", "id": "gosta-plan", "status": "draft", "intent": "plan",
        "subject": {"reference": "Patient/gosta"}})),
    ("Consent", "gosta-sip", b"\x00not json{"),
    ("Goal", "a-list", b"[1, 2]"),
    ("Goal", "no-type", orjson.dumps({"id": "no-type", "lifecycleStatus": "active"})),
    # (its compartment is that of the records it targets: read while it is indexed)
    ("Provenance", "on-the-damaged", orjson.dumps({
        "resourceType": "Provenance", "id": "on-the-damaged",
        "target": [{"reference": "Consent/gosta-sip"}, {"reference": "Goal/a-list"},
                   {"reference": "CarePlan/gosta-plan"}],
        "recorded": "2026-11-01T10:00:00+01:00", "agent": [{"who": {"display": "someone"}}]})),
]
UNREADABLE = ["Consent/gosta-sip", "Goal/a-list", "Goal/no-type"]


def _seed_as_0017(engine: Engine) -> None:
    tables = MetaData()
    tables.reflect(engine)
    with engine.begin() as conn:
        for i, (rtype, rid, content) in enumerate(ROWS):
            key = {"res_type": rtype, "res_id": rid, "version_id": 1, "last_updated": T0 + i}
            conn.execute(tables.tables["resource_history"].insert(),
                         {**key, "method": "PUT", "content": content})
            conn.execute(tables.tables["resource"].insert(),
                         {**key, "deleted": False, "owner_org": SOC, "withheld": False})


def _cli(engine: Engine, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    url = engine.url.render_as_string(hide_password=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIP_HUB_")}
    env.update(SIP_HUB_DATABASE_URL=url.replace("postgresql+psycopg://", "postgresql://"),
               SIP_HUB_DATA_DIR=str(tmp_path))
    return subprocess.run([sys.executable, "-m", "sip_hub.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120)


def _indexed(engine: Engine, rtype: str, rid: str) -> int:
    with engine.connect() as conn:
        return conn.execute(text("SELECT count(*) FROM idx_token WHERE res_type = :t AND "
                                 "res_id = :i"), {"t": rtype, "i": rid}).scalar_one()


def test_sip_hub_migrate_passes_over_and_names_rows_it_cannot_read(
        fresh: Engine, tmp_path: Path) -> None:
    """Migrations 0018 and 0019 pass over such rows; the rebuild raised
    orjson.JSONDecodeError out of `sip-hub migrate` (exit 1, a traceback) on every run: the
    schema was at head, the index's definitions never recorded, and the hub never started.
    Once the rebuild has passed over them the index is current: the next run has nothing
    to rebuild (and nothing to name)."""
    upgrade(fresh, "0017")
    _seed_as_0017(fresh)
    fresh.dispose()
    first = _cli(fresh, tmp_path, "migrate")
    assert first.returncode == 0 and "Traceback" not in first.stderr, first.stderr[-1500:]
    for name in UNREADABLE:
        assert name in first.stderr, first.stderr[-1500:]
    assert "cannot be searched" in first.stderr
    again = _cli(fresh, tmp_path, "migrate")
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-1500:]
    assert "database at head" in again.stdout
    with fresh.connect() as conn:
        assert conn.execute(text("SELECT fingerprint FROM search_index_state")).scalar() \
            == fingerprint()
    # the rest of the store is indexed: found by its search parameters
    assert _indexed(fresh, "CarePlan", "gosta-plan") > 0
    with fresh.connect() as conn:  # in Gösta's compartment through his plan
        assert conn.execute(text(
            "SELECT count(*) FROM idx_reference WHERE res_type = 'Provenance' AND "
            "target_type = 'Patient' AND target_id = 'gosta'")).scalar_one() == 1
    assert _indexed(fresh, "Consent", "gosta-sip") == 0
    with Store(fresh).begin(write=False) as tx:
        assert tx.current("Patient", "gosta") is not None
    fresh.dispose()


@pytest.mark.postgres
def test_the_index_rebuild_is_not_cut_by_the_hubs_statement_timeout() -> None:
    """migrate.upgrade lifts the requests' statement timeout for the migrations; the index
    rebuild it then runs (its own transaction) kept it, so `sip-hub migrate`, and every
    start after it, failed with "canceling statement due to statement timeout" on a large
    store. Here a statement that takes longer than requests may: the rebuild's DELETE
    waiting for an index table another session holds."""
    from conftest import pg_schema
    from pgwait import upgrade_while_locked
    with pg_schema() as engine:
        upgrade(engine)
        store = Store(engine)
        with store.begin() as tx:
            tx.create({"resourceType": "Patient", "id": "gosta", "gender": "male"}, "gosta",
                      owner=SOC)
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM search_index_state"))
        upgrade_while_locked(engine, "LOCK TABLE idx_token IN SHARE MODE")
        with engine.connect() as conn:
            assert conn.execute(text("SELECT fingerprint FROM search_index_state")).scalar() \
                == fingerprint()
        assert _indexed(engine, "Patient", "gosta") > 0
