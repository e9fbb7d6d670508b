"""Probe 5 (operations): commands refused on one line, not with a traceback: `serve` on a
database not migrated to this release (SIP_HUB_AUTO_MIGRATE=false), the broker refusing
the login or the virtual host (`worker`, `messages replay`)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from conftest import pg_schema
from sip_hub import cli
from sip_hub.store.engine import make_engine
from sip_hub.store.migrate import _config, upgrade


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIP_HUB_")}
    endpoints = tmp_path / "endpoints.json"  # an organisation's queue for the worker to consume
    endpoints.write_text('{"endpoints": [{"organization": "SE2120000142-SKO7", '
                         '"url": "http://127.0.0.1:9/"}]}')
    env.update({"SIP_HUB_DATA_DIR": str(tmp_path), "SIP_HUB_PORT": str(_free_port()),
                "SIP_HUB_MESSAGE_ENDPOINTS_FILE": str(endpoints), **extra})
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sip_hub.cli", "serve"], env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL of an empty PostgreSQL schema of its own, dropped afterwards."""
    with pg_schema() as engine:
        yield engine.url.render_as_string(hide_password=False)


def _refused(done: subprocess.CompletedProcess[str], revision: str) -> None:
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"sip-hub: the database is at schema revision {revision}, this release "
                     f"needs {_head()}: run `sip-hub migrate` first (SIP_HUB_AUTO_MIGRATE is "
                     "false)"]


def _head() -> str:
    return ScriptDirectory.from_config(_config(make_engine("sqlite://"))).get_current_head()


def test_serve_without_auto_migrate_refuses_an_empty_sqlite_database(tmp_path: Path) -> None:
    _refused(_serve(_env(tmp_path, SIP_HUB_AUTO_MIGRATE="false")), "none (empty)")


@pytest.mark.postgres
def test_serve_without_auto_migrate_refuses_an_empty_postgres_schema(
        tmp_path: Path, pg_url: str) -> None:
    _refused(_serve(_env(tmp_path, SIP_HUB_AUTO_MIGRATE="false",
                         SIP_HUB_DATABASE_URL=pg_url)), "none (empty)")


@pytest.mark.postgres
def test_serve_without_auto_migrate_refuses_a_postgres_schema_of_an_older_release(
        tmp_path: Path, pg_url: str) -> None:
    engine = make_engine(pg_url)
    upgrade(engine)
    older = ScriptDirectory.from_config(_config(engine)).get_revision(_head()).down_revision
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": older})
    engine.dispose()
    _refused(_serve(_env(tmp_path, SIP_HUB_AUTO_MIGRATE="false",
                         SIP_HUB_DATABASE_URL=pg_url)), str(older))


# -- the broker refusing the login or the virtual host -----------------------------------------

def _refusing_urls() -> list[str]:
    url = os.environ.get("SIP_HUB_TEST_BROKER_URL", "")
    if not url:
        return []
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 5672
    return [f"amqp://nobody{uuid.uuid4().hex[:6]}:wrong@{host}:{port}//",
            parts._replace(path=f"/novhost{uuid.uuid4().hex[:6]}").geturl()]


@pytest.fixture(params=["login", "vhost"])
def refusing_url(request: pytest.FixtureRequest, broker_url: str) -> str:
    return _refusing_urls()[0 if request.param == "login" else 1]


@pytest.mark.rabbitmq
def test_replay_with_a_broker_that_refuses_the_login_or_vhost_stops_on_one_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        refusing_url: str) -> None:
    monkeypatch.setenv("SIP_HUB_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("SIP_HUB_DATABASE_URL", raising=False)
    monkeypatch.setenv("SIP_HUB_BROKER_URL", refusing_url)
    monkeypatch.setenv("SIP_HUB_MESSAGE_EXCHANGE", f"p5c{uuid.uuid4().hex[:8]}")
    monkeypatch.setenv("SIP_HUB_MESSAGE_QUEUE_PREFIX", f"p5c{uuid.uuid4().hex[:8]}")
    assert cli.main(["messages", "replay", "--all"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sip-hub: Message broker refused the connection") and \
        err.count("\n") == 1, err
    assert "ACCESS_REFUSED" in err or "NOT_ALLOWED" in err
    assert "wrong" not in err  # (no password)


@pytest.mark.rabbitmq
def test_a_worker_on_a_broker_that_refuses_the_login_warns_on_one_line_and_goes_on(
        tmp_path: Path, refusing_url: str) -> None:
    env = _env(tmp_path, SIP_HUB_BROKER_URL=refusing_url,
               SIP_HUB_MESSAGE_EXCHANGE=f"p5c{uuid.uuid4().hex[:8]}",
               SIP_HUB_MESSAGE_QUEUE_PREFIX=f"p5c{uuid.uuid4().hex[:8]}",
               SIP_HUB_MESSAGE_POLL_SECONDS="0.2")
    proc = subprocess.Popen([sys.executable, "-m", "sip_hub.cli", "worker"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(4)
        assert proc.poll() is None, "the worker goes on trying"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert "Traceback" not in out, out[-3000:]
    warnings = [line for line in out.splitlines() if "refused the connection" in line]
    assert len(warnings) >= 2, out[-3000:]
    assert all("reconnecting" in line for line in warnings)
