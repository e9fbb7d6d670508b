"""Who may give what in the web console (``/admin/clients``): an operator registers (or enables)
no client with more access than its own client's. An admin client without personal-data access
registered an admin client with ``personal_data=on`` (or an organisation's client for any
HSA-id, or a portal client) and read people's data with it (probe 3, bug 3). The command line
(``sip-hub client create``) stays the way to register any client."""

from __future__ import annotations

import re
from typing import Any

import pytest

from messaging import harness
from messaging.harness import SOC, Hub
from sip_hub import clients
import test_admin_console
from test_admin_console import FORM, admin, sign_in

broker, hub = harness.broker, harness.hub
settings = test_admin_console.settings  # (a disabled client's session ends within 0.05 s)


@pytest.fixture(autouse=True)
def _redirects_seen(hub: Hub) -> None:
    hub.client.follow_redirects = False


def _register(hub: Hub, csrf: str, **fields: str) -> Any:
    return hub.client.post("/admin/clients", data={"csrf": csrf, **fields}, headers=FORM)


def _made(r: Any) -> tuple[str, str]:
    client_id = re.search(r"Client <strong>(sip-[0-9a-f]+)</strong>", r.text)[1]
    return client_id, re.search(r"<code>([^<]+)</code>", r.text.split("shown this once")[1])[1]


def _token(hub: Hub, client_id: str, secret: str) -> str:
    r = hub.client.post("/auth/token", data={"grant_type": "client_credentials"},
                        auth=(client_id, secret))
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


@pytest.mark.parametrize("fields", [
    {"org": "SE2321000016-ADM7", "scope": "system/*.rs", "role": "admin", "personal_data": "on"},
    {"org": SOC, "scope": "system/*.rs", "role": "organization"},
    {"org": SOC, "scope": "system/CarePlan.rs"},  # (organization: the form's default)
    {"org": "SE2321000016-1177", "scope": "system/CarePlan.rs", "role": "portal"},
])
def test_an_operator_without_personal_data_gives_no_client_access_to_it(
        hub: Hub, fields: dict[str, str]) -> None:
    csrf = sign_in(hub)  # (an admin client without personal-data access)
    before = clients.listing(hub.store)
    r = _register(hub, csrf, name="Kvar i formuläret", **fields)
    assert r.status_code == 403, r.text
    assert "personal-data access" in r.text and "sip-hub client create" in r.text
    assert 'value="Kvar i formuläret"' in r.text  # (the form again, as filled in)
    assert clients.listing(hub.store) == before


def test_the_escalation_of_the_probe_no_longer_reads_personal_data(hub: Hub) -> None:
    """The probe's path: the new client's token would have read a Patient (and the operator's
    own is refused it); no such client is made."""
    csrf = sign_in(hub)
    r = _register(hub, csrf, org="SE2321000198-VC01", scope="system/*.cruds", role="admin",
                  personal_data="on")
    assert r.status_code == 403 and "shown this once" not in r.text
    assert not any(c["org"] == "SE2321000198-VC01" for c in clients.listing(hub.store))


def test_an_operator_without_personal_data_registers_admin_clients_within_its_scopes(
        hub: Hub) -> None:
    csrf = sign_in(hub)  # (scopes system/*.rs)
    r = _register(hub, csrf, org="SE2321000016-ADM7", scope="system/Organization.rs",
                  role="admin")
    assert r.status_code == 201, r.text
    client_id, _ = _made(r)
    made = next(c for c in clients.listing(hub.store) if c["client_id"] == client_id)
    assert made["scope"] == "system/Organization.rs"
    for scope in ("system/*.cruds", "system/Organization.cruds", "system/*.rs system/Task.u"):
        r = _register(hub, csrf, org="SE2321000016-ADM8", scope=scope, role="admin")
        assert r.status_code == 403 and "wider than your own client scopes" in r.text, scope


def test_an_operator_with_personal_data_registers_within_its_scopes(hub: Hub) -> None:
    csrf = sign_in(hub, personal_data=True)  # (scopes system/*.rs)
    for fields in ({"org": SOC, "scope": "system/CarePlan.rs", "role": "organization"},
                   {"org": "SE2321000016-1177", "scope": "system/CarePlan.rs", "role": "portal"},
                   {"org": "SE2321000016-ADM7", "scope": "system/*.s", "role": "admin",
                    "personal_data": "on"}):
        r = _register(hub, csrf, **fields)
        assert r.status_code == 201, (fields, r.text)
    r = _register(hub, csrf, org=SOC, scope="system/*.cruds", role="organization")
    assert r.status_code == 403 and "wider than your own client scopes" in r.text


def test_a_client_of_more_access_is_not_enabled_by_an_operator_without_it(hub: Hub) -> None:
    pd = admin(hub, personal_data=True, org="SE2321000016-ADM7")
    org = clients.create_client(hub.store, org=SOC, scope="system/*.cruds")
    mine = clients.create_client(hub.store, org="SE2321000016-ADM8", scope="system/*.rs",
                                 role="admin")
    csrf = sign_in(hub)
    for c in (pd, org, mine):  # (disabling takes access away: any operator may)
        r = hub.client.post(f"/admin/clients/{c['client_id']}/disable", data={"csrf": csrf},
                            headers=FORM)
        assert r.status_code == 303, r.text
    for c in (pd, org):
        r = hub.client.post(f"/admin/clients/{c['client_id']}/enable", data={"csrf": csrf},
                            headers=FORM)
        assert r.status_code == 403 and "sip-hub client create" in r.text, r.text
    r = hub.client.post(f"/admin/clients/{mine['client_id']}/enable", data={"csrf": csrf},
                        headers=FORM)
    assert r.status_code == 303
    state = {c["client_id"]: c["disabled"] for c in clients.listing(hub.store)}
    assert state[pd["client_id"]] and state[org["client_id"]] and not state[mine["client_id"]]
    # An operator with the access enables them again
    hub.client.cookies.clear()
    csrf = sign_in(hub, clients.create_client(hub.store, org="SE2321000016-ADM9",
                                              scope="system/*.cruds", role="admin",
                                              personal_data=True))
    for c in (pd, org):
        r = hub.client.post(f"/admin/clients/{c['client_id']}/enable", data={"csrf": csrf},
                            headers=FORM)
        assert r.status_code == 303, r.text
    _token(hub, org["client_id"], org["client_secret"])
