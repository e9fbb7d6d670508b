"""Shared fixtures: every store test runs on SQLite and, when configured, PostgreSQL.

PostgreSQL comes from SIP_HUB_TEST_DATABASE_URL; without it those tests skip, unless
SIP_HUB_REQUIRE_SERVICES=1 (CI), where a missing service fails the run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text

from sip_hub import clients
from sip_hub.app import create_app
from sip_hub.service import FhirService
from sip_hub.settings import Settings
from sip_hub.store import Store
from sip_hub.store.engine import make_engine
from sip_hub.store.migrate import upgrade
from sip_hub.store.schema import metadata

REQUIRE = os.environ.get("SIP_HUB_REQUIRE_SERVICES") == "1"
# Hundreds of tests register clients; the production Argon2 cost would dominate the run.
clients.use_hash_cost(time_cost=1, memory_cost_kib=1024)
PG_URL = os.environ.get("SIP_HUB_TEST_DATABASE_URL", "")


def need_service(name: str, url: str) -> None:
    if not url:
        if REQUIRE:
            pytest.fail(f"{name} is required (SIP_HUB_REQUIRE_SERVICES=1) but not configured")
        pytest.skip(f"{name} not configured")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (migrating per test is slow)."""
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@contextmanager
def pg_schema() -> Iterator[Engine]:
    """An engine on an empty PostgreSQL schema of its own, dropped afterwards."""
    need_service("PostgreSQL", PG_URL)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    engine = make_engine(f"{PG_URL}{sep}options=-csearch_path%3D{schema}")
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[Engine]:
    with pg_schema() as engine:
        upgrade(engine)
        yield engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def fresh(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An empty database (not the migrated template), for migrations to run on."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'var' / 'hub.sqlite3'}")
        yield engine
        engine.dispose()
        return
    with pg_schema() as engine:
        yield engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        db = tmp_path / "hub.sqlite3"
        shutil.copy(request.getfixturevalue("sqlite_template"), db)
        engine = make_engine(f"sqlite:///{db}")
        yield Store(engine)
        engine.dispose()
    else:
        engine = request.getfixturevalue("pg_engine")
        with engine.begin() as conn:
            names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names}"))
        yield Store(engine)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(env="test", data_dir=tmp_path, base_url="http://hub.test",
                    auto_migrate=False)


ADMIN_ORG = "SE2321000016-ADM1"


def issue_token(c: TestClient, store: Store, org: str, scope: str = "system/*.cruds",
                role: str = "organization", personal_data: bool = False) -> str:
    """Register a client of ``org`` and get a token for it through /auth/token."""
    creds = clients.create_client(store, org=org, scope=scope, role=role,
                                  personal_data=personal_data)
    r = c.post("/auth/token", data={"grant_type": "client_credentials"},
               auth=(creds["client_id"], creds["client_secret"]))
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


@pytest.fixture
def anonymous(store: Store, settings: Settings) -> Iterator[TestClient]:
    """A client with no token; its app is the same hub the other fixtures talk to."""
    app = create_app(settings, store=store)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def client(anonymous: TestClient, store: Store) -> TestClient:
    """An admin client with personal-data access: sees everything, as the hub's operators."""
    token = issue_token(anonymous, store, ADMIN_ORG, role="admin", personal_data=True)
    anonymous.headers["Authorization"] = f"Bearer {token}"
    return anonymous


@pytest.fixture
def as_org(anonymous: TestClient, store: Store):
    """``as_org(hsa, scope=..., role=...)`` -> headers with a token for that client."""
    def make(org: str, scope: str = "system/*.cruds", role: str = "organization",
             personal_data: bool = False) -> dict[str, str]:
        token = issue_token(anonymous, store, org, scope, role, personal_data)
        return {"Authorization": f"Bearer {token}"}
    return make


@pytest.fixture
def portal(as_org) -> dict[str, str]:
    """The national portal (1177): reads the citizen view of approved plans."""
    return as_org("SE2321000016-1177", scope="system/CarePlan.rs", role="portal")


@pytest.fixture
def soc(as_org) -> dict[str, str]:
    """The demo SIP's coordinator, the social services (``sip_process.SOC``)."""
    return as_org("SE2120000142-SOC1")


@pytest.fixture
def service(store: Store) -> FhirService:
    svc = FhirService(store)
    svc.seed_definitions()
    return svc


# -- the independent FHIR validators (Node) in the shared folder beside the repository --------

SHARED_VALIDATOR = Path(__file__).resolve().parents[2] / "shared" / "tools" / "fhir-validate"
_FHIRPATH_CONSTRAINTS_JS = """
const fs = require('fs');
const { evalFhirPathTyped, toTypedValue } = require('@medplum/core');
const [defsDir, casesFile] = process.argv.slice(2);
const constraints = [];
for (const f of fs.readdirSync(defsDir)) {
  const sd = JSON.parse(fs.readFileSync(defsDir + '/' + f));
  if (sd.resourceType !== 'StructureDefinition') continue;
  for (const el of sd.differential.element)
    for (const c of el.constraint || [])
      constraints.push({ type: sd.type, path: el.path, key: c.key, expr: c.expression });
}
const out = [];
for (const resource of JSON.parse(fs.readFileSync(casesFile))) {
  const root = toTypedValue(resource);
  const failed = [];
  for (const c of constraints) {
    if (c.type !== resource.resourceType) continue;
    const rel = c.path.split('.').slice(1).join('.');
    const nodes = rel ? evalFhirPathTyped(rel, [root]) : [root];
    const ok = nodes.every(n => {
      const r = evalFhirPathTyped(c.expr, [n], { '%resource': root, '%context': n });
      return r.length === 1 && r[0].value === true;
    });
    if (!ok) failed.push(c.key);
  }
  out.push(failed);
}
console.log(JSON.stringify(out));
"""


@dataclass(frozen=True)
class NodeTool:
    node: str
    folder: Path

    def validate(self, *files: Path | str) -> subprocess.CompletedProcess[str]:
        return self.run(self.folder / "validate.js", *files)

    def validate_resources(self, workdir: Path, resources: list[dict]) -> None:
        """Assert that both validators accept every resource (written to ``workdir``)."""
        files = []
        for i, res in enumerate(resources):
            path = workdir / f"emitted-{i}.json"
            path.write_text(json.dumps(res), "utf-8")
            files.append(path)
        done = self.validate(*files)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]

    def failing_constraints(self, workdir: Path, definitions: Path,
                            resources: list[dict]) -> list[list[str]]:
        """For each resource, the keys of our published StructureDefinition constraints that
        Medplum's FHIRPath engine finds broken (so the published invariants and the Python
        enforcement can be shown to agree)."""
        script = workdir / "fhirpath.js"
        script.write_text(_FHIRPATH_CONSTRAINTS_JS, "utf-8")
        data = workdir / "cases.json"
        data.write_text(json.dumps(resources), "utf-8")
        done = self.run(script, definitions, data)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def run(self, script: Path | str, *args: Path | str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "NODE_PATH": str(self.folder / "node_modules")}
        return subprocess.run([self.node, str(script), *map(str, args)], capture_output=True,
                              text=True, timeout=300, check=False, env=env)


@pytest.fixture(scope="session")
def fhir_validator() -> NodeTool:
    node = shutil.which("node")
    if node is None or not (SHARED_VALIDATOR / "node_modules").is_dir():
        reason = (f"the independent validators need node and {SHARED_VALIDATOR}/node_modules "
                  f"(make test installs them)")
        if REQUIRE:
            pytest.fail(reason)
        pytest.skip(reason)
    return NodeTool(node, SHARED_VALIDATOR)


# -- RabbitMQ (messaging) -----------------------------------------------------------------------

BROKER_URL = os.environ.get("SIP_HUB_TEST_BROKER_URL", "")


@pytest.fixture(scope="session")
def broker_url() -> str:
    """RabbitMQ from SIP_HUB_TEST_BROKER_URL; skips without it (fails when services are
    required)."""
    need_service("RabbitMQ", BROKER_URL)
    return BROKER_URL


_LOGGERS = ("", "sip_hub", "uvicorn", "uvicorn.error", "uvicorn.access")


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """``sip-hub`` commands run in-process (``cli.main``) configure this process's logging as
    the program does; each test starts from, and leaves, the configuration pytest set up."""
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate)
             for lg in (logging.getLogger(name) for name in _LOGGERS)]
    yield
    for lg, handlers, level, propagate in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate
