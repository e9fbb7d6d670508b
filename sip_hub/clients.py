"""API clients of organisations: registration with SMART v2 system scopes and hashed secrets."""

from __future__ import annotations

import re
import secrets
import threading
import time
import uuid
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerifyMismatchError

from . import identifiers
from .auth import ROLES, Scope
from .errors import BadRequest, NotFound
from .fhir.dates import now_utc, to_us
from .fhir.search_params import supported
from .store import Store
from .store.clients import (ClientRecord, disabled_clients, get_client, insert_client,
                            list_clients, set_client_active)

_hasher = PasswordHasher()  # argon2-cffi's defaults (RFC 9106 low-memory profile)


def use_hash_cost(time_cost: int, memory_cost_kib: int) -> None:
    """Change the Argon2 cost of new hashes (tests use a cheap one; existing hashes keep
    verifying, since the parameters travel in the hash)."""
    global _hasher
    _hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=1)


def parse_scopes(scope: str) -> list[str]:
    scopes = scope.split()
    if not scopes:
        raise BadRequest("At least one scope is required")
    for s in scopes:
        parsed = Scope.parse(s)
        if parsed is None:
            raise BadRequest(f"'{s}' is not a SMART system scope (e.g. system/CarePlan.rs, "
                             f"system/*.cruds)")
        if parsed.resource != "*" and not supported(parsed.resource):
            raise BadRequest(f"'{s}' names {parsed.resource}, which this hub does not serve: "
                             "a scope of a type it serves, or of all (system/*.rs)")
    return scopes


NAME_MAX, SCOPE_MAX = 255, 2000  # (the columns' lengths: PostgreSQL refuses longer)


def create_client(store: Store, *, org: str, scope: str, name: str | None = None,
                  role: str = "organization", personal_data: bool = False) -> dict[str, Any]:
    try:
        hsa = identifiers.normalise_hsa_id(org)
    except identifiers.InvalidIdentifier as exc:
        raise BadRequest(f"--org must be the organisation's HSA-id: {exc.reason}") from None
    scopes = parse_scopes(scope)
    if role not in ROLES:
        raise BadRequest(f"--role must be one of {', '.join(ROLES)}")
    if personal_data and role != "admin":
        raise BadRequest("--personal-data is only for admin clients; organisation and portal "
                         "clients see personal data by the SIP rules")
    if name is not None and (len(name) > NAME_MAX or not name.isprintable()):
        raise BadRequest(f"--name must be at most {NAME_MAX} printable characters")
    if len(" ".join(scopes)) > SCOPE_MAX:
        raise BadRequest(f"The scopes must be at most {SCOPE_MAX} characters together")
    client_id = f"sip-{uuid.uuid4().hex[:20]}"
    secret = secrets.token_urlsafe(32)
    insert_client(store, ClientRecord(client_id, _hasher.hash(secret), hsa, " ".join(scopes),
                                      name, to_us(now_utc()), True, role, personal_data))
    return {"client_id": client_id, "client_secret": secret, "organization": hsa,
            "scope": " ".join(scopes), "role": role, "personal_data": personal_data}


# Printable ASCII that fits the key: every id the hub issues (sip-<hex>) and nothing a
# database refuses (PostgreSQL answered a NUL in a Basic-auth client id with an error).
_CLIENT_ID = re.compile(r"[!-~]{1,64}")


def authenticate(store: Store, client_id: str, secret: str) -> ClientRecord | None:
    rec = get_client(store, client_id) if _CLIENT_ID.fullmatch(client_id) else None
    if rec is None or not rec.active:
        # Spend the same time as a real check so ids cannot be probed by timing.
        _hasher.hash(secret)
        return None
    try:
        _hasher.verify(rec.secret_hash, secret)
    except (VerifyMismatchError, InvalidHashError):
        return None
    return rec


def set_disabled(store: Store, client_id: str, disabled: bool) -> None:
    """Disable a client (its secret no longer gets a token, and the hub refuses the tokens it
    holds within ``ClientStates.max_age``; its console sessions end for good), or enable it
    again."""
    if not _CLIENT_ID.fullmatch(client_id) or not set_client_active(
            store, client_id, not disabled, int(time.time())):
        raise NotFound(f"No API client '{client_id}' (see: sip-hub client list)")


def listing(store: Store) -> list[dict[str, Any]]:
    """Every client, as ``sip-hub client list`` prints it (never its secret's hash): with its
    role and personal-data access, what an auditor asks (who may read people's data)."""
    return [{"client_id": c.client_id, "org": c.org_hsa_id, "role": c.role, "scope": c.scope,
             "personal_data": c.personal_data, "name": c.name, "disabled": not c.active}
            for c in list_clients(store)]


# How stale a process's view of the disabled clients may be: a token of a client disabled
# this long ago is refused. A bound, not a delay: each process reads again at most this often.
CLIENT_STATE_SECONDS = 5.0


class ClientStates:
    """Which clients are disabled, as this process last read it: ``TokenService`` asks on
    every request, and the database is read at most once per ``max_age`` seconds (the set
    of disabled clients, in one small statement), not once per request."""

    def __init__(self, store: Store, max_age: float = CLIENT_STATE_SECONDS) -> None:
        self.store = store
        self.max_age = max_age
        self._disabled: frozenset[str] = frozenset()
        self._read_at = -float("inf")
        self._lock = threading.Lock()

    def disabled(self, client_id: str) -> bool:
        if time.monotonic() - self._read_at >= self.max_age:
            with self._lock:  # one thread reads; the others wait for its answer
                started = time.monotonic()
                if started - self._read_at >= self.max_age:
                    self._disabled = disabled_clients(self.store)
                    # (from before the read: a client disabled during it is seen next time)
                    self._read_at = started
        return client_id in self._disabled
