"""The `sip-hub` command line as IT staff and `make run` use it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from sip_hub import cli, clients
from sip_hub.settings import Settings
from sip_hub.store import Store
from sip_hub.store.clients import get_client
from sip_hub.store.engine import make_engine


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("SIP_HUB_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SIP_HUB_DATABASE_URL", raising=False)
    return tmp_path


def test_migrate_creates_the_database(env, capsys):
    assert cli.main(["migrate"]) == 0
    assert "database at head" in capsys.readouterr().out
    assert (env / "sip_hub.sqlite3").exists()


def test_client_create_prints_credentials_and_stores_only_a_hash(env, capsys):
    code = cli.main(["client", "create", "--org", "se2321000016-15cq",
                     "--scope", "system/CarePlan.rs system/Consent.r", "--name", "COSMIC"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["client_id"] and len(out["client_secret"]) >= 40
    assert out["organization"] == "SE2321000016-15CQ"
    store = Store(make_engine(Settings().database_url))
    rec = get_client(store, out["client_id"])
    assert rec is not None and rec.scope == "system/CarePlan.rs system/Consent.r"
    assert out["client_secret"] not in rec.secret_hash
    assert clients.authenticate(store, out["client_id"], out["client_secret"]) == rec
    assert clients.authenticate(store, out["client_id"], "wrong") is None
    assert clients.authenticate(store, "nobody", out["client_secret"]) is None


def test_client_disable_enable_and_list(env, capsys):
    assert cli.main(["client", "create", "--org", "SE2321000016-15CQ",
                     "--scope", "system/CarePlan.rs", "--name", "COSMIC"]) == 0
    creds = json.loads(capsys.readouterr().out)
    store = Store(make_engine(Settings().database_url))

    def listed() -> list[dict]:
        assert cli.main(["client", "list"]) == 0
        return [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    entry = {"client_id": creds["client_id"], "org": "SE2321000016-15CQ",
             "role": "organization", "scope": "system/CarePlan.rs", "personal_data": False,
             "name": "COSMIC", "disabled": False}
    assert listed() == [entry]
    assert cli.main(["client", "disable", creds["client_id"]]) == 0
    assert json.loads(capsys.readouterr().out) == {"client_id": creds["client_id"],
                                                   "disabled": True}
    assert listed() == [{**entry, "disabled": True}]
    assert clients.authenticate(store, creds["client_id"], creds["client_secret"]) is None
    assert clients.ClientStates(store).disabled(creds["client_id"])
    assert cli.main(["client", "enable", creds["client_id"]]) == 0
    capsys.readouterr()
    assert listed() == [entry]
    assert clients.authenticate(store, creds["client_id"], creds["client_secret"]) is not None
    assert not clients.ClientStates(store).disabled(creds["client_id"])


def test_client_list_says_who_has_personal_data_access(env, capsys):
    """An auditor asking which clients may read people's data gets it from ``sip-hub client
    list``: each client's role and personal-data access (it printed neither, so an admin
    client with personal-data access looked like any other)."""
    assert cli.main(["client", "create", "--org", "SE2321000016-IT01", "--scope",
                     "system/*.rs", "--role", "admin", "--personal-data"]) == 0
    assert cli.main(["client", "create", "--org", "SE2321000016-IT01", "--scope",
                     "system/*.rs", "--role", "admin"]) == 0
    capsys.readouterr()
    assert cli.main(["client", "list"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((c["role"], c["personal_data"]) for c in listed) == [
        ("admin", False), ("admin", True)]


@pytest.mark.parametrize("database, says", [
    (None, "SIP_HUB_DATABASE_URL must point at PostgreSQL, not SQLite"),
    ("postgresql://sip_hub:change-me@127.0.0.1:9/sip_hub",
     "SIP_HUB_DATABASE_URL uses a demo password"),
])
def test_migrate_in_production_refuses_the_database_the_api_would(
        env, capsys, monkeypatch, database, says):
    """``sip-hub migrate`` in production (the compose file's one-shot service) refuses, in one
    line, the database the API refuses to start on, before touching it: it created the schema
    on SQLite or behind a demo password all the same."""
    monkeypatch.setenv("SIP_HUB_ENV", "production")
    if database:
        monkeypatch.setenv("SIP_HUB_DATABASE_URL", database)
    assert cli.main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err == f"sip-hub: Refusing to migrate in production: {says}\n"
    assert not (env / "sip_hub.sqlite3").exists()


@pytest.mark.parametrize("verb", ["disable", "enable"])
def test_disabling_an_unknown_client_fails(env, capsys, verb):
    assert cli.main(["migrate"]) == 0
    capsys.readouterr()
    assert cli.main(["client", verb, "sip-nobody"]) != 0
    captured = capsys.readouterr()
    assert "No API client 'sip-nobody'" in captured.err and captured.out == ""


@pytest.mark.parametrize("args,fragment", [
    (["--org", "not-an-hsa-id", "--scope", "system/CarePlan.rs"], "HSA-id"),
    (["--org", "SE2321000016-15CQ", "--scope", "patient/CarePlan.rs"], "SMART system scope"),
    (["--org", "SE2321000016-15CQ", "--scope", "system/CarePlan.xyz"], "SMART system scope"),
    (["--org", "SE2321000016-15CQ", "--scope", "system/CarePlan.rs system/Foo.rs"],
     "Foo, which this hub does not serve"),
    (["--org", "SE2321000016-15CQ", "--scope", "system/Medication.rs"], "does not serve"),
])
def test_client_create_refuses_bad_input(env, capsys, args, fragment):
    assert cli.main(["client", "create", *args]) == 2
    assert fragment in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_runs_the_hub_on_the_embedded_default(tmp_path):
    port = _free_port()
    env = {**os.environ, "SIP_HUB_DATA_DIR": str(tmp_path),
           "SIP_HUB_MAPPINGS_DIR": str(Path(__file__).resolve().parent.parent / "mappings")}
    for name in ("SIP_HUB_DATABASE_URL", "SIP_HUB_BASE_URL", "SIP_HUB_PORT", "SIP_HUB_HOST"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "sip_hub.cli", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    assert r.status == 200
                    break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("the hub did not start")
                time.sleep(0.2)
        # Without SIP_HUB_BASE_URL the URLs the hub emits name where it listens: the port
        # given on the command line, not the setting's default.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/smart-configuration",
                                    timeout=5) as r:
            assert json.load(r)["token_endpoint"] == f"http://127.0.0.1:{port}/auth/token"
        created = subprocess.run(
            [sys.executable, "-m", "sip_hub.cli", "client", "create", "--org",
             "SE2321000016-15CQ", "--scope", "system/Organization.rs"],
            env=env, capture_output=True, text=True, check=True)
        creds = json.loads(created.stdout)
        form = urllib.parse.urlencode({"grant_type": "client_credentials",
                                       "client_id": creds["client_id"],
                                       "client_secret": creds["client_secret"]}).encode()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/auth/token", form, timeout=5) as r:
            token = json.load(r)["access_token"]
        req = urllib.request.Request(f"http://127.0.0.1:{port}/fhir/Organization?name=region",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.load(r)["total"] == 2  # the demo organisations from mappings/
    finally:
        proc.terminate()
        proc.wait(timeout=15)
        if proc.stdout:
            proc.stdout.close()
    assert (tmp_path / "sip_hub.sqlite3").exists()
