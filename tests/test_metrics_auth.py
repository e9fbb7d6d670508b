"""/metrics for the monitoring system only: with SIP_HUB_METRICS_TOKEN set, a scrape must carry
it as its bearer token (a 401 OperationOutcome otherwise); unset, /metrics stays public."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from conftest import ADMIN_ORG, issue_token
from sip_hub.app import create_app
from sip_hub.metrics import serve_metrics
from sip_hub.settings import Settings
from sip_hub.store import Store

TOKEN = "scraper-0123456789abcdef0123456789abcdef"
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


def _hub(store: Store, tmp_path: Path, **settings: object) -> TestClient:
    return TestClient(create_app(Settings(env="test", data_dir=tmp_path, auto_migrate=False,
                                          base_url="http://hub.test", **settings),
                                 store=store), raise_server_exceptions=False)


@pytest.fixture
def guarded(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    with _hub(store, tmp_path, metrics_token=TOKEN) as c:
        yield c


def _refused(r: httpx.Response, invalid_token: bool) -> None:
    assert r.status_code == 401, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert r.json()["issue"][0]["code"] == "login"
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer realm=")
    assert ('error="invalid_token"' in challenge) is invalid_token
    assert "sip_hub_http_requests_total" not in r.text and TOKEN not in r.text


def test_the_scraper_with_the_token_gets_the_metrics(guarded) -> None:
    r = guarded.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}",
                                         "Accept": PROMETHEUS_ACCEPT})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert "sip_hub_message_dead_letters_total" in r.text
    # The scheme's case is free (RFC 9110 11.1).
    r = guarded.get("/metrics", headers={"Authorization": f"bearer {TOKEN}"})
    assert r.status_code == 200


def test_without_a_token_the_metrics_are_refused(guarded) -> None:
    _refused(guarded.get("/metrics"), invalid_token=False)
    _refused(guarded.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT}),
             invalid_token=False)


@pytest.mark.parametrize("authorization", [
    "Bearer wrong-0123456789abcdef0123456789abcdef",
    f"Bearer {TOKEN[:-1]}",                   # a prefix of it
    f"Bearer {TOKEN}x",                       # more than it
    f"Basic {TOKEN}",                          # another scheme
    TOKEN,                                     # no scheme
    "Bearer ",
])
def test_a_wrong_token_is_refused(guarded, authorization) -> None:
    _refused(guarded.get("/metrics", headers={"Authorization": authorization}),
             invalid_token=True)


def test_a_hub_api_token_is_not_the_metrics_token(guarded, store) -> None:
    api_token = issue_token(guarded, store, ADMIN_ORG, role="admin", personal_data=True)
    _refused(guarded.get("/metrics", headers={"Authorization": f"Bearer {api_token}"}),
             invalid_token=True)


def test_the_token_guards_metrics_only(guarded) -> None:
    assert guarded.get("/healthz").status_code == 200
    assert guarded.get("/fhir/metadata").status_code == 200


def test_a_refused_head_is_a_401_without_body(guarded) -> None:
    r = guarded.head("/metrics")
    assert r.status_code == 401 and r.content == b""
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_unset_the_metrics_stay_public(anonymous) -> None:
    r = anonymous.get("/metrics")
    assert r.status_code == 200 and "sip_hub_http_requests_total" in r.text


@pytest.mark.parametrize("value", ["", " ", "\n"])
def test_empty_is_unset(monkeypatch, tmp_path, value) -> None:
    monkeypatch.setenv("SIP_HUB_METRICS_TOKEN", value)
    assert Settings(data_dir=tmp_path).metrics_token is None


def test_a_token_from_a_file_is_taken_without_its_line_break(monkeypatch, tmp_path,
                                                            store) -> None:
    """A token read from a file keeps the file's last line break (a Kubernetes secret made
    from a file); Prometheus sends the token of its credentials file without it."""
    monkeypatch.setenv("SIP_HUB_METRICS_TOKEN", f" {TOKEN}\r\n")
    with _hub(store, tmp_path) as hub:
        r = hub.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and "sip_hub_http_requests_total" in r.text
        _refused(hub.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"}),
                 invalid_token=True)


@pytest.mark.parametrize("token", ["short", "has a space in it 0123456789", "tökenåäö0123456789"])
def test_a_guessable_or_unsendable_token_is_refused_at_start(monkeypatch, tmp_path,
                                                             token) -> None:
    monkeypatch.setenv("SIP_HUB_METRICS_TOKEN", token)
    with pytest.raises(ValidationError, match="metrics_token"):
        Settings(data_dir=tmp_path)


def test_the_token_is_not_shown_in_the_settings(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path, metrics_token=TOKEN)
    assert TOKEN not in repr(settings) and TOKEN not in str(settings)


# -- a worker's metrics server (serve_metrics) ---------------------------------------------------

def test_the_worker_metrics_server_takes_the_same_token() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop = serve_metrics(port, "127.0.0.1", healthy=lambda: True, token=TOKEN)
    try:
        url = f"http://127.0.0.1:{port}"
        r = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200 and "sip_hub_message_dead_letters_total" in r.text
        r = httpx.get(f"{url}/metrics")
        assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
        assert r.headers["www-authenticate"] == 'Bearer realm="sip_hub metrics"'
        r = httpx.get(f"{url}/metrics", headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and "invalid_token" in r.headers["www-authenticate"]
        assert httpx.get(f"{url}/healthz").status_code == 200  # (the container's check)
    finally:
        stop()
