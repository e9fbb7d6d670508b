"""The web console for IT staff (``/admin``): what it shows and does, apart from HTTP.

Who may use it: the hub's admin clients (``sip-hub client create --role admin``), signed in
with their client id and secret; a session lasts ``SIP_HUB_CONSOLE_SESSION_MINUTES`` and ends
within seconds of the client being disabled (``auth.TokenService.verify_session``).

What it shows holds no personal data: the deliveries' states, destinations, events, attempts
and errors, the API clients and the configured endpoints. A message's content (the Bundle
sent: personal data) is shown only to an admin client with personal-data access, and each
showing is audited as a read of the patient's data. What it does is what the command line
does (``sip-hub messages replay``, ``sip-hub client create|disable|enable``), through the
same functions: a replay is audited there, naming the operator's client.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from . import clients, identifiers
from .audit import AuditRecord
from .auth import ROLES, Principal, parse_scopes
from .bus import shown_url
from .errors import BadRequest, Forbidden, TransientError
from .messaging.runtime import Messaging
from .messaging.replay import replay_dead
from .settings import Settings
from .store import Store
from .store import outbox as sql
from .store.clients import ClientRecord, get_client, list_clients
from .store.engine import shown_database_url

log = logging.getLogger("sip_hub.console")

PAGE = 50  # deliveries a page
REPLAY_AT_ONCE = 500  # dead deliveries of one organisation replayed by one click
# The states an operator looks at, in the order shown (open first, then settled).
STATES = (sql.DEAD, sql.PENDING, sql.PUBLISHED, sql.WITHDRAWN, sql.DELIVERED)


@dataclass(frozen=True, slots=True)
class OrgRow:
    org: str
    endpoint: str  # the URL, "queue", or "" (not configured: its messages go dead)
    open: int
    dead: int


def overview(store: Store, settings: Settings, messaging: Messaging) -> dict[str, Any]:
    """The front page: the hub, its database and bus, deliveries by state and organisation,
    the clients."""
    try:
        store.ping()
        database_ok = True
    except TransientError:  # (its reason is in the log from /healthz; here: up or not)
        database_ok = False
    counts: dict[str, int] = {}
    orgs: list[OrgRow] = []
    if database_ok:
        with store.begin(write=False) as tx:
            counts = sql.counts(tx)
            per_org = sql.counts_by_org(tx)
        orgs = organisations(messaging, per_org)
    records = list_clients(store) if database_ok else []
    return {
        "env": settings.env,
        "database": shown_database_url(store.engine.url),
        "database_ok": database_ok,
        "bus": shown_url(messaging.config.broker_url),
        "counts": [(state, counts.get(state, 0)) for state in STATES],
        "orgs": orgs,
        "clients_active": sum(c.active for c in records),
        "clients_disabled": sum(not c.active for c in records),
    }


def organisations(messaging: Messaging, per_org: dict[str, dict[str, int]]) -> list[OrgRow]:
    """Every organisation with an endpoint or with deliveries open or dead, by HSA-id."""
    endpoints = messaging.endpoints
    out = []
    for org in sorted(endpoints.orgs | set(per_org)):
        e = endpoints.get(org)
        out.append(OrgRow(org, "" if e is None else ("queue" if e.queue else e.url or ""),
                          *_open_dead(per_org.get(org, {}))))
    return out


def _open_dead(states: dict[str, int]) -> tuple[int, int]:
    """An organisation's deliveries on their way (pending or published), and dead."""
    return states.get(sql.PENDING, 0) + states.get(sql.PUBLISHED, 0), states.get(sql.DEAD, 0)


@dataclass(frozen=True, slots=True)
class EndpointRow:
    org: str
    url: str | None  # None: from its queue
    timeout: float
    max_concurrent: int
    authorization_env: str | None
    authorization_set: bool  # (whether the variable holds a value: never the value)
    open: int
    dead: int


def endpoints(store: Store, messaging: Messaging) -> list[EndpointRow]:
    """The configured endpoints (``SIP_HUB_MESSAGE_ENDPOINTS_FILE``) with their organisations'
    open and dead deliveries."""
    with store.begin(write=False) as tx:
        per_org = sql.counts_by_org(tx)
    out = []
    for org in sorted(messaging.endpoints.orgs):
        e = messaging.endpoints.get(org)
        assert e is not None
        out.append(EndpointRow(
            org, e.url, e.timeout or messaging.config.timeout_seconds, e.max_concurrent,
            e.authorization_env, bool(e.headers()), *_open_dead(per_org.get(org, {}))))
    return out


def hsa_id(org: str) -> str:
    """An organisation's HSA-id as typed into a form, as the hub keeps it."""
    try:
        return identifiers.normalise_hsa_id(org)
    except identifiers.InvalidIdentifier as exc:
        raise BadRequest(f"org must be an organisation's HSA-id: {exc.reason}",
                         expression="org") from None


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[sql.Delivery]
    org: str | None  # (as the hub keeps it)
    before: str | None  # of the next page; None: this is the last


def deliveries(store: Store, state: str, org: str | None, before: str | None) -> Page:
    """A page of the deliveries in ``state`` (to ``org``), the latest attempt first."""
    if state not in STATES:
        raise BadRequest(f"state must be one of {', '.join(STATES)}", expression="state")
    org = hsa_id(org) if org is not None else None
    after = _cursor(before)
    with store.begin(write=False) as tx:
        found = sql.page(tx, state, org, after, PAGE + 1)
    if len(found) <= PAGE:
        return Page(found, org, None)
    last = found[PAGE - 1]
    return Page(found[:PAGE], org, f"{last.next_attempt_at}.{last.id}")


def _cursor(before: str | None) -> tuple[int, str] | None:
    if not before:
        return None
    at, dot, delivery = before.partition(".")
    if not (dot and at.isdecimal() and int(at) < 2**63 and 0 < len(delivery) <= 64 and
            delivery.isprintable()):
        raise BadRequest("before is not a page of this list (follow the console's links)",
                         expression="before")
    return int(at), delivery


def delivery(store: Store, delivery_id: str, principal: Principal
             ) -> tuple[sql.Delivery, list[sql.Delivery]] | None:
    """A delivery and the others of its message; None when there is no such delivery. When
    ``principal`` may see personal data (it will be shown the content), the reading is
    audited in the same transaction."""
    with store.begin(write=principal.personal_data) as tx:
        found = sql.get_many(tx, [delivery_id]).get(delivery_id)
        if found is None:
            return None
        siblings = [d for d in sql.find(tx, ids=[found.message_id], limit=100)
                    if d.id != found.id]
        if principal.personal_data:
            tx.append_audit([AuditRecord(
                "read", principal, (("CarePlan", found.careplan_id),) if found.careplan_id
                else (), frozenset({found.patient_id}) if found.patient_id else frozenset(),
                detail=f"console: content of message {found.message_id} "
                       f"(delivery {found.id} to {found.dest_org})").entry()])
    return found, siblings


def replay(store: Store, messaging: Messaging, principal: Principal, *,
           ids: list[str] | None = None, org: str | None = None) -> list[str]:
    """Dead deliveries sent again, audited as the operator's: those of ``ids``, or those to
    ``org`` (up to REPLAY_AT_ONCE, the longest dead first), or every one."""
    if org is not None:
        with store.begin(write=False) as tx:
            ids = [d.id for d in sql.page(tx, sql.DEAD, hsa_id(org), None, REPLAY_AT_ONCE,
                                          oldest_first=True)]
        if not ids:
            return []
    with messaging.bus() as bus:
        done = replay_dead(store, bus, ids, principal=principal)
    log.info("console: %s replayed %d dead deliveries", principal.client_id, len(done))
    return done


def client_rows(store: Store) -> list[ClientRecord]:
    return sorted(list_clients(store), key=lambda c: (not c.active, c.org_hsa_id, c.created))


# (as clients.authenticate reads a client id: what a store can look up)
_CLIENT_ID = re.compile(r"[!-~]{1,64}")


def _granting(store: Store, principal: Principal) -> ClientRecord:
    """The operator's own client as the store has it now (its role, scopes and personal-data
    access: a console session carries none of its scopes)."""
    rec = get_client(store, principal.client_id)
    if rec is None or not rec.active or rec.role != "admin":
        raise Forbidden("Your client is no longer an active admin client: sign in again")
    return rec


def _may_grant(operator: ClientRecord, role: str, scope: str, personal_data: bool) -> None:
    """Forbidden unless a client of ``role``, ``scope`` and ``personal_data`` has no more than
    the operator's own client: personal-data access only from an operator who has it, and so
    organisation and portal clients (which read people's SIPs by the SIP rules) too; each
    scope within one of the operator's. More than that is ``sip-hub client create``'s."""
    cli = " (or register it with sip-hub client create)"
    if personal_data and not operator.personal_data:
        raise Forbidden("Your client has no personal-data access: it cannot give a client "
                        "personal-data access" + cli)
    if role in ("organization", "portal") and not operator.personal_data:
        raise Forbidden(f"A client of role {role} reads people's SIP data; your client has no "
                        "personal-data access, so it registers admin clients without it only"
                        + cli)
    own = parse_scopes(operator.scope)
    wider = [f"system/{s.resource}.{''.join(p for p in 'cruds' if p in s.perms)}"
             for s in parse_scopes(scope)
             if not any(o.resource in ("*", s.resource) and s.perms <= o.perms for o in own)]
    if wider:
        raise Forbidden(f"The scopes {' '.join(wider)[:200]} are wider than your own client "
                        f"scopes ({operator.scope[:200]})" + cli)


def create_client(store: Store, principal: Principal, form: dict[str, str]
                  ) -> dict[str, Any]:
    """A new API client from the console's form (its secret shown once, as the command
    line prints it); BadRequest with the reason when the form is not one, Forbidden when it
    would give the client more than the operator's own (``_may_grant``)."""
    role, scope = form.get("role", "organization"), form.get("scope", "")
    personal_data = form.get("personal_data") == "on"
    operator = _granting(store, principal)
    if role in ROLES:  # (another is the form's mistake: clients.create_client's)
        _may_grant(operator, role, scope, personal_data)
    made = clients.create_client(
        store, org=form.get("org", "").strip(), scope=scope,
        name=form.get("name", "").strip() or None, role=role, personal_data=personal_data)
    log.info("console: %s created API client %s of %s (role %s)", principal.client_id,
             made["client_id"], made["organization"], made["role"])
    return made


def set_disabled(store: Store, principal: Principal, client_id: str, disabled: bool) -> None:
    if disabled and client_id == principal.client_id:
        raise BadRequest("You are signed in with this client: disable it from another admin "
                         "client or with sip-hub client disable")
    if not disabled:
        # Enabling lets the client's secret in again: only for a client the operator could
        # have registered (a disabled one of more access is the command line's to enable).
        target = get_client(store, client_id) if _CLIENT_ID.fullmatch(client_id) else None
        if target is not None:
            _may_grant(_granting(store, principal), target.role, target.scope,
                       target.personal_data)
    clients.set_disabled(store, client_id, disabled)
    log.info("console: %s %s API client %s", principal.client_id,
             "disabled" if disabled else "enabled", client_id)
