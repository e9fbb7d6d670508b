"""Authentication: OAuth2 client credentials, short-lived signed JWTs, SMART v2 system scopes.

Tokens are ES256 JWTs. The key ring comes from settings (the first key signs, every key
verifies, so keys rotate without cutting off live tokens); in dev a key is made under the
data directory on first start.
"""

from __future__ import annotations

import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from .errors import Forbidden, SipHubError, Unauthorized
from .settings import Settings

Role = Literal["organization", "portal", "admin"]
ROLES: tuple[Role, ...] = ("organization", "portal", "admin")
_ALG = "ES256"
_BEARER_CHALLENGE = 'Bearer realm="sip_hub"'
# The longest token verified: those the hub issues, with scopes of at most
# ``clients.SCOPE_MAX`` characters, are under half of it.
TOKEN_MAX = 8192
# How far another API process's clock may be ahead of this one's (RFC 7519 4.1.4/4.1.5): a
# token it issued is stamped iat = nbf = its clock, truncated to the second, and without a
# margin is "not yet valid" here for as long as the clocks differ (even a few hundred
# milliseconds refuse a fresh token now and then). Only iat and nbf get it: exp is kept to
# the second on this machine's clock, so a token's lifetime and a revocation stay as stated.
CLOCK_SKEW = 60


class KeyConfigError(SipHubError):
    status, code = 500, "exception"


@dataclass(frozen=True, slots=True)
class KeyRing:
    signing_kid: str
    private: dict[str, ec.EllipticCurvePrivateKey]

    def public_jwks(self) -> dict[str, Any]:
        keys = []
        for kid, key in self.private.items():
            jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": _ALG})
        return {"keys": keys}


def _load_entries(raw: str, where: str) -> list[dict[str, str]]:
    try:
        entries = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise KeyConfigError(f"{where} is not JSON: {exc}") from None
    if not isinstance(entries, list) or not entries or not all(
            isinstance(e, dict) and "kid" in e and "pem" in e for e in entries):
        raise KeyConfigError(f"{where} must be a JSON list of {{\"kid\", \"pem\"}} objects")
    return entries


def _dev_key_file(settings: Settings) -> Path:
    path = settings.data_dir / "jwt-keys.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps([{"kid": f"dev-{uuid.uuid4().hex[:8]}", "pem": pem}]))
        tmp.chmod(0o600)
        # Several workers may start at once: the first rename wins, the others' keys are unused.
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        tmp.unlink()
    return path


def load_keys(settings: Settings) -> KeyRing:
    if settings.jwt_keys:
        entries = _load_entries(settings.jwt_keys, "SIP_HUB_JWT_KEYS")
    else:
        path = settings.jwt_keys_file or _dev_key_file(settings)
        try:
            raw = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:  # a traceback at start, before this
            raise KeyConfigError(f"SIP_HUB_JWT_KEYS_FILE {path} cannot be read: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
        entries = _load_entries(raw, str(path))
    private: dict[str, ec.EllipticCurvePrivateKey] = {}
    for e in entries:
        try:
            key = serialization.load_pem_private_key(str(e["pem"]).encode(), password=None)
        except (ValueError, TypeError):  # (never the key's bytes in the message)
            raise KeyConfigError(f"key {str(e['kid'])[:64]} is not a PEM private key without "
                                 "a password (PKCS8, EC P-256)") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise KeyConfigError(f"key {e['kid']} is not an EC private key (ES256 needs P-256)")
        private[e["kid"]] = key
    return KeyRing(entries[0]["kid"], private)


# -- SMART v2 system scopes -------------------------------------------------------------------

_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
# A resource type's name (or *): a scope naming anything else (a NUL, U+FFFF, an empty name)
# would otherwise travel into the token and be echoed in every 403, which XML cannot carry.
_SCOPE_TYPE = re.compile(r"\*|[A-Z][A-Za-z]{0,63}")


@dataclass(frozen=True, slots=True)
class Scope:
    resource: str  # a type or "*"
    perms: frozenset[str]  # of c r u d s

    @classmethod
    def parse(cls, text: str) -> "Scope | None":
        if not text.startswith("system/") or "." not in text:
            return None
        rtype, _, perms = text[len("system/"):].partition(".")
        if not _SCOPE_TYPE.fullmatch(rtype):
            return None
        perms = _V1.get(perms, perms)
        if not perms or any(p not in "cruds" for p in perms):
            return None
        return cls(rtype, frozenset(perms))


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an API client of an organisation, with its role and scopes."""

    client_id: str
    org: str  # HSA-id of the client's organisation
    role: Role
    scopes: tuple[Scope, ...]
    personal_data: bool
    scope_text: str
    expires: int = 0

    def may(self, rtype: str, perm: str) -> bool:
        return any((s.resource == "*" or s.resource == rtype) and perm in s.perms
                   for s in self.scopes)

    def require(self, rtype: str, perm: str) -> None:
        if not self.may(rtype, perm):
            raise Forbidden(f"The token's scopes ({self.scope_text}) do not allow "
                            f"'{perm}' on {rtype}")


def parse_scopes(text: str) -> tuple[Scope, ...]:
    return tuple(s for s in (Scope.parse(t) for t in text.split()) if s is not None)


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    """A signed-in operator of the web console: the admin client, the token its forms carry
    back, and the session's id (to sign it out before it expires)."""

    principal: Principal
    csrf: str
    jti: str
    issued: int = 0  # when it was signed in (UTC seconds)


# -- tokens ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True, eq=False)
class TokenService:
    keys: KeyRing
    issuer: str
    lifetime: int
    # Whether a client id is disabled (``clients.ClientStates.disabled``): its tokens are
    # refused from then on, though they have not expired. None: no client is ever disabled.
    disabled: Callable[[str], bool] | None = None

    def issue(self, *, client_id: str, org: str, role: str, scope: str,
              personal_data: bool) -> dict[str, Any]:
        token = self._sign(self.issuer, self.lifetime, sub=client_id, org=org, role=role,
                           scope=scope, pd=personal_data)
        return {"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime,
                "scope": scope}

    def _sign(self, audience: str, lifetime: int, **claims: Any) -> str:
        now = int(time.time())
        claims |= {"iss": self.issuer, "aud": audience, "iat": now, "nbf": now,
                   "exp": now + lifetime, "jti": uuid.uuid4().hex}
        return jwt.encode(claims, self.keys.private[self.keys.signing_kid], algorithm=_ALG,
                          headers={"kid": self.keys.signing_kid})

    # -- the web console's sessions (``routes.admin``) --
    # Signed as the tokens are, for another audience: a session is no API token, and an API
    # token no session. ``csrf``: the token the console's forms carry back.

    @property
    def console_audience(self) -> str:
        return f"{self.issuer}#console"

    def issue_session(self, *, client_id: str, org: str, personal_data: bool,
                      lifetime: int) -> str:
        """A console session of an admin client, for ``lifetime`` seconds."""
        return self._sign(self.console_audience, lifetime, sub=client_id, org=org,
                          role="admin", pd=personal_data, csrf=secrets.token_urlsafe(24))

    def verify_session(self, value: str) -> ConsoleSession:
        """A console session of this hub's; Unauthorized when it is not one, has expired,
        or its client has been disabled (whether it was signed out: the store knows)."""
        claims = self._claims(value, self.console_audience,
                              ["exp", "iat", "sub", "org", "csrf", "jti"])
        sub, org, pd = claims["sub"], claims["org"], claims.get("pd")
        csrf, jti = claims["csrf"], claims["jti"]
        if claims.get("role") != "admin" or not (
                isinstance(sub, str) and isinstance(org, str) and isinstance(pd, bool) and
                isinstance(csrf, str) and csrf and isinstance(jti, str) and jti):
            raise _invalid("The console session's claims are malformed")
        if self.disabled is not None and self.disabled(sub):
            raise _invalid("The session's client has been disabled")
        return ConsoleSession(Principal(sub, org, "admin", (), pd, "", int(claims["exp"])),
                              csrf, jti, int(claims["iat"]))

    def verify(self, token: str) -> Principal:
        # (before the cache, which holds tokens by their text: one of any length is memory
        # for the taking)
        if len(token) > TOKEN_MAX:
            raise _invalid(f"The token is longer than any this hub issues ({TOKEN_MAX} "
                           "characters)")
        principal = _verify_cached(self, token)
        if principal.expires <= time.time():
            raise _invalid("The token has expired")
        if self.disabled is not None and self.disabled(principal.client_id):
            raise _invalid("The token's client has been disabled")
        return principal

    def _claims(self, token: str, audience: str, require: list[str]) -> dict[str, Any]:
        """The claims of a token signed by a key of this hub's, for ``audience``."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self.keys.private.get(kid) if isinstance(kid, str) else None
            if key is None:
                raise Unauthorized("The token was not signed by a key of this hub",
                                   headers={"WWW-Authenticate": _BEARER_CHALLENGE +
                                            ', error="invalid_token"'})
            claims = jwt.decode(token, key.public_key(), algorithms=[_ALG],
                                audience=audience, issuer=self.issuer, leeway=CLOCK_SKEW,
                                options={"require": require})
        except jwt.ExpiredSignatureError:
            raise _invalid("The token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise _invalid(f"The token is not valid: {_short(str(exc))}") from None
        # (PyJWT's leeway is one margin for all three; exp is held to this clock: above)
        if int(claims["exp"]) <= time.time():
            raise _invalid("The token has expired")
        return claims

    def _verify(self, token: str) -> Principal:
        claims = self._claims(token, self.issuer, ["exp", "iat", "sub", "org", "role"])
        role = claims["role"]
        if not isinstance(role, str) or role not in ROLES:
            raise _invalid("The token has an unknown role")
        # Claims of the wrong JSON type (a token signed by a key shared with another issuer of
        # the same name) are refused here, not left to fail deep in a request as a 500.
        scope, org, pd = claims.get("scope", ""), claims["org"], claims.get("pd", False)
        if not (isinstance(scope, str) and isinstance(org, str) and isinstance(pd, bool)):
            raise _invalid("The token's claims are malformed")
        return Principal(claims["sub"], org, role, parse_scopes(scope), pd, scope,
                         int(claims["exp"]))


def _short(text: str, limit: int = 200) -> str:
    """PyJWT's messages echo parts of the token's header (an unsupported ``crit`` name), kept
    short here; what XML and JSON cannot carry the OperationOutcome replaces (fhir.outcome)."""
    return text if len(text) <= limit else text[:limit] + "…"


def _invalid(text: str) -> Unauthorized:
    return Unauthorized(text, headers={"WWW-Authenticate": _BEARER_CHALLENGE +
                                       ', error="invalid_token"'})


# Verifying a signature costs ~0.1 ms and a client reuses its token for minutes; expiry is
# still checked on every request (in verify). Failures are not cached.
@lru_cache(maxsize=4096)
def _verify_cached(service: TokenService, token: str) -> Principal:
    return service._verify(token)


def bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("Authentication required: send 'Authorization: Bearer <token>' "
                           "(get one at /auth/token)",
                           headers={"WWW-Authenticate": _BEARER_CHALLENGE})
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Only Bearer tokens are accepted",
                           headers={"WWW-Authenticate": _BEARER_CHALLENGE})
    return token.strip()
