"""Probing the operational surface: settings, the command line, /healthz and /metrics. A
setting, file or argument the hub cannot use stops the command with one line naming it
(exit 2), a service that is down is a failure (exit 1), never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sip_hub import cli
from sip_hub.app import create_app
from sip_hub.settings import Settings
from sip_hub.store import Store
from sip_hub.store.engine import make_engine


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SIP_HUB_DATA_DIR", str(tmp_path))
    for name in [n for n in os.environ if n.startswith("SIP_HUB_")
                 and not n.startswith("SIP_HUB_TEST_") and n != "SIP_HUB_DATA_DIR"]:
        monkeypatch.delenv(name)
    return tmp_path


def sip_hub(tmp_path: Path, *args: str, timeout: float = 60,
            **settings: str) -> subprocess.CompletedProcess[str]:
    """``python -m sip_hub.cli ARGS`` with these settings on the embedded default."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SIP_HUB_")}
    environ.update({"SIP_HUB_DATA_DIR": str(tmp_path), **settings})
    return subprocess.run([sys.executable, "-m", "sip_hub.cli", *args], env=environ,
                          capture_output=True, text=True, timeout=timeout, check=False)


def refused(done: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sip-hub"), done.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# -- settings -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, value", [
    ("SIP_HUB_DATABASE_URL", "not a url"),
    ("SIP_HUB_DATABASE_URL", "mysql://hub@db/sip"),
    ("SIP_HUB_DATABASE_URL", "postgresql://hub@db:port/sip"),
    ("SIP_HUB_BROKER_URL", "rabbitmq"),
    ("SIP_HUB_BROKER_URL", "amqp://"),
    ("SIP_HUB_BASE_URL", "sip.region.se"),
    ("SIP_HUB_BASE_URL", "ftp://sip.region.se"),
    ("SIP_HUB_PORT", "99999"),
    ("SIP_HUB_PORT", "-5"),
    ("SIP_HUB_WORKERS", "0"),
    ("SIP_HUB_MESSAGE_MAX_ATTEMPTS", "many"),
    ("SIP_HUB_MESSAGE_RETRY_BASE_SECONDS", "-1"),
    ("SIP_HUB_MESSAGE_METRICS_PORT", "70000"),
    ("SIP_HUB_MESSAGE_RELAY_BATCH", ""),
    ("SIP_HUB_MESSAGE_HUB_HSA_ID", "the hub"),
])
def test_a_setting_the_hub_cannot_use_is_refused_by_name(
        env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    assert cli.main(["migrate"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sip-hub: invalid settings: ") and f"{name}: " in err
    assert len(err.strip().splitlines()) == 1
    assert not (env / "sip_hub.sqlite3").exists()  # nothing was done


@pytest.mark.parametrize("value", ["", "sqlite:///x.sqlite3", "postgresql://hub@db:5432/sip",
                                   "postgresql+psycopg://hub@db/sip"])
def test_database_urls_the_hub_can_use_are_taken(value: str) -> None:
    assert Settings(database_url=value).database_url


def test_the_hubs_own_hsa_id_is_normalised_as_those_it_is_compared_with() -> None:
    """Messages' destinations and senders are normalised HSA-ids: a lower-case setting
    matched none of them (the hub's own address taken for an organisation outside the
    consent)."""
    from sip_hub.messaging.config import MessagingSettings
    assert MessagingSettings(hub_hsa_id=" se2321000016-hub1 ").hub_hsa_id == \
        "SE2321000016-HUB1"


def test_a_bad_messaging_setting_stops_the_worker_at_start(tmp_path: Path) -> None:
    """It was read at the worker's start-up only, a traceback."""
    refused(sip_hub(tmp_path, "worker", SIP_HUB_MESSAGE_MAX_ATTEMPTS="x"), 2,
            "SIP_HUB_MESSAGE_MAX_ATTEMPTS")


def test_an_unreadable_signing_key_file_or_key_is_refused(tmp_path: Path) -> None:
    refused(sip_hub(tmp_path, "serve", "--port", "1", SIP_HUB_JWT_KEYS_FILE=str(
        tmp_path / "no-such-keys.json")), 2, "SIP_HUB_JWT_KEYS_FILE", "no-such-keys.json")
    refused(sip_hub(tmp_path, "serve", "--port", "1",
                    SIP_HUB_JWT_KEYS='[{"kid": "k1", "pem": "not a key"}]'), 2, "k1")


# -- the endpoints file at start --------------------------------------------------------

@pytest.mark.parametrize("command", [["worker"], ["serve", "--port", "1"]])
def test_an_endpoints_file_the_hub_cannot_read_stops_serve_and_worker(
        tmp_path: Path, command: list[str]) -> None:
    bad = tmp_path / "endpoints.json"
    bad.write_text('{"endpoints": [')
    refused(sip_hub(tmp_path, *command, SIP_HUB_MESSAGE_ENDPOINTS_FILE=str(bad)), 2,
            str(bad), "not a valid endpoints file")


def test_an_endpoints_file_named_but_missing_is_refused(tmp_path: Path) -> None:
    """Read as no endpoints, it dead-lettered every message."""
    missing = tmp_path / "endpionts.json"
    refused(sip_hub(tmp_path, "worker", SIP_HUB_MESSAGE_ENDPOINTS_FILE=str(missing)), 2,
            "SIP_HUB_MESSAGE_ENDPOINTS_FILE", str(missing))


# -- the command line -------------------------------------------------------------------

def test_migrate_against_a_database_that_is_down_fails_in_one_line(tmp_path: Path) -> None:
    refused(sip_hub(tmp_path, "migrate",
                    SIP_HUB_DATABASE_URL="postgresql://hub@127.0.0.1:1/sip"), 1,
            "database unavailable", "Connection refused")


def test_replay_with_the_broker_down_is_a_failure_not_a_usage_error(tmp_path: Path) -> None:
    refused(sip_hub(tmp_path, "messages", "replay", "--all",
                    SIP_HUB_BROKER_URL="amqp://hub:x@127.0.0.1:1//"), 1, "broker unavailable")


@pytest.mark.parametrize("args", [["messages", "replay"], ["messages", "replay", "--all", "d1"],
                                  ["serve", "--port", "0"], ["serve", "--port", "http"],
                                  ["serve", "--workers", "-2"]])
def test_usage_errors_exit_2(env: Path, capsys: pytest.CaptureFixture[str],
                             args: list[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main(args)
    assert stopped.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_replaying_an_unknown_delivery_fails_naming_it(tmp_path: Path) -> None:
    done = sip_hub(tmp_path, "messages", "replay", "sip-no-such-delivery")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "sip-no-such-delivery" in done.stderr


@pytest.mark.parametrize("command", [[], ["serve"], ["worker"], ["migrate"], ["deadlines"],
                                     ["messages"], ["messages", "replay"], ["client"],
                                     ["client", "create"], ["client", "list"],
                                     ["client", "disable"], ["client", "enable"]])
def test_every_command_has_help(capsys: pytest.CaptureFixture[str],
                                command: list[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        cli.main([*command, "--help"])
    assert stopped.value.code == 0 and "usage: sip-hub" in capsys.readouterr().out


# -- /healthz and /metrics --------------------------------------------------------------

def test_healthz_with_the_database_down_is_503_and_names_no_internals(
        store: Store, settings: Settings) -> None:
    app = create_app(settings, store=store)
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/healthz").status_code == 200
        app.state.store = Store(make_engine("postgresql://hub@127.0.0.1:1/sip"))
        try:
            r = c.get("/healthz")
        finally:
            app.state.store.engine.dispose()
            app.state.store = store
    assert r.status_code == 503 and r.json()["status"] == "unavailable"
    assert "127.0.0.1" not in r.text and "hub" not in r.text.replace("sip_hub", "")


def test_the_dead_letter_alert_metric_is_exposed_from_the_start() -> None:
    """At 0 before the first dead letter, so that its first rise is a rise to Prometheus."""
    page = subprocess.run(
        [sys.executable, "-c", "from prometheus_client import generate_latest; "
         "from sip_hub.metrics import REGISTRY; print(generate_latest(REGISTRY).decode())"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    assert 'sip_hub_message_dead_letters_total{kind="notification"} 0.0' in page
    assert 'sip_hub_message_deliveries_total{outcome="dead"} 0.0' in page
