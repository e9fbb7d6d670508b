"""Authentication: tokens, scopes, roles, and the hub's refusal of demo secrets in production."""

from __future__ import annotations

import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from conftest import issue_token
from fhirhttp import body, outcome_text, patient
from sip_hub import auth, clients
from sip_hub.app import ConfigurationError, check_settings, create_app
from sip_hub.settings import Settings

ORG = "SE2321000016-15CQ"


def test_unauthenticated_fhir_request_is_401_with_challenge(anonymous):
    r = anonymous.get("/fhir/CarePlan")
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["resourceType"] == "OperationOutcome"
    assert anonymous.post("/fhir/Patient", **body(patient())).status_code == 401


def test_metadata_and_smart_configuration_stay_public(anonymous):
    meta = anonymous.get("/fhir/metadata")
    assert meta.status_code == 200
    security = meta.json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    oauth = security["extension"][0]["extension"][0]
    assert oauth["url"] == "token" and oauth["valueUri"] == "http://hub.test/auth/token"
    conf = anonymous.get("/.well-known/smart-configuration").json()
    assert conf["token_endpoint"].endswith("/auth/token")
    assert "client_credentials" in conf["grant_types_supported"]
    assert anonymous.get("/fhir/.well-known/smart-configuration").status_code == 200
    jwks = anonymous.get("/auth/jwks").json()
    assert jwks["keys"][0]["kty"] == "EC" and "d" not in jwks["keys"][0]


def test_token_with_basic_and_with_form_post(anonymous, store):
    creds = clients.create_client(store, org=ORG, scope="system/CarePlan.rs")
    basic = anonymous.post("/auth/token", data={"grant_type": "client_credentials"},
                           auth=(creds["client_id"], creds["client_secret"]))
    assert basic.status_code == 200
    assert basic.json()["token_type"] == "Bearer" and basic.json()["expires_in"] == 300
    assert basic.headers["cache-control"] == "no-store"
    form = anonymous.post("/auth/token", data={
        "grant_type": "client_credentials", "client_id": creds["client_id"],
        "client_secret": creds["client_secret"]})
    assert form.status_code == 200


@pytest.mark.parametrize("data,auth,status,error", [
    ({"grant_type": "client_credentials"}, ("nobody", "x"), 401, "invalid_client"),
    ({"grant_type": "password"}, None, 400, "unsupported_grant_type"),
    ({"grant_type": "client_credentials"}, None, 401, "invalid_client"),
    # Ids no client can have (a NUL reached PostgreSQL's key lookup: a 5xx)
    ({"grant_type": "client_credentials"}, ("a\u0000b", "x"), 401, "invalid_client"),
    ({"grant_type": "client_credentials", "client_id": "\u0000", "client_secret": "x"}, None,
     401, "invalid_client"),
    ({"grant_type": "client_credentials"}, ("x" * 65, "x"), 401, "invalid_client"),
    ({"grant_type": "client_credentials"}, ("\u00e5", "x"), 401, "invalid_client"),
])
def test_token_errors_follow_oauth2(anonymous, data, auth, status, error):
    r = anonymous.post("/auth/token", data=data, auth=auth)
    assert r.status_code == status
    assert r.json()["error"] == error


def test_wrong_secret_is_refused(anonymous, store):
    creds = clients.create_client(store, org=ORG, scope="system/CarePlan.rs")
    r = anonymous.post("/auth/token", data={"grant_type": "client_credentials"},
                       auth=(creds["client_id"], "not-the-secret"))
    assert r.status_code == 401


def test_a_disabled_clients_tokens_are_refused_and_enabling_it_lets_it_in(store, settings):
    # The hub's view of the disabled clients, refreshed every 0.1 s here (5 s by default).
    app = create_app(settings.model_copy(update={"client_state_seconds": 0.1}), store=store)
    with TestClient(app, raise_server_exceptions=False) as anonymous:
        _disable_and_enable(anonymous, store)


def _disable_and_enable(anonymous, store):
    creds = clients.create_client(store, org=ORG, scope="system/CarePlan.rs")
    auth = (creds["client_id"], creds["client_secret"])

    def token() -> dict:
        return anonymous.post("/auth/token", data={"grant_type": "client_credentials"},
                              auth=auth).json()

    def search(access_token: str) -> int:
        return anonymous.get("/fhir/CarePlan", headers={
            "Authorization": f"Bearer {access_token}"}).status_code

    issued = token()["access_token"]
    assert search(issued) == 200
    clients.set_disabled(store, creds["client_id"], True)
    assert token()["error"] == "invalid_client"
    time.sleep(0.15)
    r = anonymous.get("/fhir/CarePlan", headers={"Authorization": f"Bearer {issued}"})
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
    assert "client has been disabled" in outcome_text(r)
    clients.set_disabled(store, creds["client_id"], False)
    time.sleep(0.15)
    assert search(issued) == 200
    assert search(token()["access_token"]) == 200


def test_the_client_state_is_read_at_most_once_per_bound(store):
    """Between reads the answer comes from the process's memory, not the database."""
    creds = clients.create_client(store, org=ORG, scope="system/CarePlan.rs")
    states = clients.ClientStates(store, max_age=3600)
    assert not states.disabled(creds["client_id"])
    clients.set_disabled(store, creds["client_id"], True)
    assert not states.disabled(creds["client_id"])  # (as read an hour ago at most)
    assert clients.ClientStates(store).disabled(creds["client_id"])


def test_scope_can_be_narrowed_not_widened(anonymous, store):
    creds = clients.create_client(store, org=ORG, scope="system/CarePlan.rs")
    narrow = anonymous.post("/auth/token", data={"grant_type": "client_credentials",
                                                 "scope": "system/CarePlan.r"},
                            auth=(creds["client_id"], creds["client_secret"]))
    assert narrow.status_code == 200 and narrow.json()["scope"] == "system/CarePlan.r"
    wide = anonymous.post("/auth/token", data={"grant_type": "client_credentials",
                                               "scope": "system/*.cruds"},
                          auth=(creds["client_id"], creds["client_secret"]))
    assert wide.status_code == 400 and wide.json()["error"] == "invalid_scope"


def test_scope_limits_types_and_actions(anonymous, store):
    token = issue_token(anonymous, store, ORG, scope="system/Organization.rs")
    h = {"Authorization": f"Bearer {token}"}
    assert anonymous.get("/fhir/Organization", headers=h).status_code == 200
    r = anonymous.post("/fhir/Organization", content=json.dumps(
        {"resourceType": "Organization", "name": "X"}),
        headers=h | {"content-type": "application/fhir+json"})
    assert r.status_code == 403 and "system/Organization.rs" in outcome_text(r)
    assert anonymous.get("/fhir/CarePlan", headers=h).status_code == 403


@pytest.mark.parametrize("header", ["Bearer not-a-jwt", "Basic abc", "Bearer "])
def test_bad_tokens_are_401(anonymous, header):
    r = anonymous.get("/fhir/CarePlan", headers={"Authorization": header})
    assert r.status_code == 401


def test_token_from_another_hubs_key_is_refused(anonymous, store, tmp_path):
    other = create_app(Settings(env="test", data_dir=tmp_path / "other", auto_migrate=False),
                       store=store)
    with TestClient(other) as c:
        token = issue_token(c, store, ORG)
    r = anonymous.get("/fhir/Organization", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


def test_key_rotation_keeps_old_tokens_valid(store, tmp_path):
    first = Settings(env="test", data_dir=tmp_path, auto_migrate=False)
    with TestClient(create_app(first, store=store)) as c:
        old_token = issue_token(c, store, ORG)
    old_keys = json.loads((tmp_path / "jwt-keys.json").read_text())
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    rotated = Settings(env="test", data_dir=tmp_path, auto_migrate=False,
                       jwt_keys=json.dumps([{"kid": "new", "pem": pem}] + old_keys))
    with TestClient(create_app(rotated, store=store)) as c:
        assert c.get("/fhir/Organization",
                      headers={"Authorization": f"Bearer {old_token}"}).status_code == 200
        new_token = issue_token(c, store, ORG)
        assert jwt.get_unverified_header(new_token)["kid"] == "new"


def test_production_refuses_demo_secrets_and_embedded_stores(tmp_path):
    bad = Settings(env="production", data_dir=tmp_path,
                   broker_url="amqp://guest:guest@localhost//")
    with pytest.raises(ConfigurationError) as err:
        create_app(bad)
    text = str(err.value)
    assert "SIP_HUB_JWT_KEYS" in text and "SQLite" in text and "demo password" in text


def test_production_accepts_real_settings():
    good = Settings(env="production", database_url="postgresql://hub:Xk29dq@db/sip",
                    broker_url="amqp://hub:Pq81x@mq//", jwt_keys='[{"kid": "k", "pem": "x"}]')
    assert good.production_problems() == []


@pytest.mark.parametrize("broker", [
    "amqp://mq.region.se:5672//", "amqp://guest@mq.region.se//", "amqps://mq.region.se/sip",
    "amqp://hub@mq//", "amqp://hub:guest@mq//", "amqp://hub:Pq81x@mq1//;amqp://mq2//"])
def test_production_refuses_a_broker_url_that_logs_in_with_rabbitmqs_default_guest(
        broker: str) -> None:
    """A broker URL without a password makes kombu (py-amqp) log in with RabbitMQ's default
    ``guest`` as the password (and user, if none is named): the demo login, which the check
    for the text ``guest:guest`` let start in production. Each URL of a failover list is
    checked; the refusal names the setting, never the URL."""
    settings = Settings(env="production", database_url="postgresql://hub:Xk29dq@db/sip",
                        broker_url=broker, jwt_keys='[{"kid": "k", "pem": "x"}]')
    (problem,) = settings.production_problems()
    assert problem.startswith("SIP_HUB_BROKER_URL logs in with RabbitMQ's default password")
    assert "Pq81x" not in problem
    failover = "amqp://hub:Pq81x@mq1//;amqps://hub:Pq81x@mq2/sip"
    assert settings.model_copy(update={"broker_url": failover}).production_problems() == []


def test_production_needs_the_hubs_hsa_id_and_organisation_endpoints(tmp_path, monkeypatch):
    good = Settings(env="production", database_url="postgresql://hub:Xk29dq@db/sip",
                    broker_url="amqp://hub:Pq81x@mq//", jwt_keys='[{"kid": "k", "pem": "x"}]',
                    mappings_dir=tmp_path)
    (tmp_path / "endpoints.json").write_text('{"endpoints": []}')
    with pytest.raises(ConfigurationError) as err:
        check_settings(good)
    assert "SIP_HUB_MESSAGE_HUB_HSA_ID" in str(err.value)
    assert "no organisation endpoints" in str(err.value)
    monkeypatch.setenv("SIP_HUB_MESSAGE_HUB_HSA_ID", "SE2321000016-HUB1")
    (tmp_path / "endpoints.json").write_text(
        '{"endpoints": [{"organization": "SE2321000016-15CQ", '
        '"url": "https://bup.example.se/fhir/$process-message"}]}')
    check_settings(good)


def test_admin_without_personal_data_sees_directory_only(anonymous, store, client):
    client.post("/fhir/Patient", **body(patient()))
    token = issue_token(anonymous, store, ORG, role="admin")
    h = {"Authorization": f"Bearer {token}"}
    assert anonymous.get("/fhir/Organization", headers=h).status_code == 200
    r = anonymous.get("/fhir/Patient", headers=h)
    assert r.status_code == 403 and "personal data" in outcome_text(r)


def test_portal_client_cannot_use_the_generic_api(anonymous, store):
    token = issue_token(anonymous, store, ORG, scope="system/CarePlan.rs", role="portal")
    r = anonymous.get("/fhir/CarePlan", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403 and "citizen" in outcome_text(r)


def test_audit_events_cannot_be_written_through_the_api(client):
    r = client.post("/fhir/AuditEvent", **body({"resourceType": "AuditEvent"}))
    assert r.status_code == 403


# -- clock skew between the API processes -------------------------------------------------------

def _clock(monkeypatch, offset: float) -> None:
    """The token issuer's clock (``sip_hub.auth.time``) ``offset`` seconds off this one's:
    another machine's (``monkeypatch.undo`` sets it back)."""

    class Clock:
        @staticmethod
        def time() -> float:
            return time.time() + offset

    monkeypatch.setattr("sip_hub.auth.time", Clock)


def _issued_with_clock(monkeypatch, anonymous, store, offset: float) -> str:
    """A token issued by a process whose clock is ``offset`` seconds off this one's."""
    _clock(monkeypatch, offset)
    token = issue_token(anonymous, store, ORG)
    monkeypatch.undo()
    return token


def test_a_token_from_a_process_whose_clock_is_a_second_or_two_ahead_is_accepted(
        anonymous, store, monkeypatch):
    """Any number of API processes on any machines share the keys: a token one issues the
    others accept, also when its clock is a little ahead (its iat and nbf, to the second,
    lie in this machine's future: RFC 7519 leeway), not 401 depending on which process the
    load balancer picked."""
    token = _issued_with_clock(monkeypatch, anonymous, store, 2)
    r = anonymous.get("/fhir/Organization", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text


def test_a_token_issued_minutes_ahead_is_not_yet_valid(anonymous, store, monkeypatch):
    """The leeway is for clock skew (a minute), not for tokens dated later."""
    token = _issued_with_clock(monkeypatch, anonymous, store, 120)
    r = anonymous.get("/fhir/Organization", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and "not yet valid" in outcome_text(r)


def test_a_token_is_refused_once_it_has_expired_by_this_clock(anonymous, store, monkeypatch,
                                                              settings):
    """The leeway is not added to the token's lifetime: a token that expired a second ago
    by this process's clock is refused (the lifetime is as stated)."""
    token = _issued_with_clock(monkeypatch, anonymous, store,
                               -settings.token_lifetime_seconds - 1)
    r = anonymous.get("/fhir/Organization", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401 and "expired" in outcome_text(r)


def test_a_console_session_from_a_process_whose_clock_is_ahead_is_accepted(settings,
                                                                           monkeypatch):
    """A console session is signed as the tokens are, and any API process serves the
    console: one signed by a process a second or two ahead is taken too; one expired by
    this clock is not."""
    tokens = auth.TokenService(auth.load_keys(settings), "http://hub.test", 300)

    def session(offset: float, lifetime: int = 600) -> str:
        _clock(monkeypatch, offset)
        try:
            return tokens.issue_session(client_id="ops", org=ORG, personal_data=False,
                                        lifetime=lifetime)
        finally:
            monkeypatch.undo()

    assert tokens.verify_session(session(2)).principal.client_id == "ops"
    with pytest.raises(auth.Unauthorized, match="expired"):
        tokens.verify_session(session(-2, lifetime=1))
