"""The OAuth2 token endpoint, the public keys and the SMART configuration."""

from __future__ import annotations

import base64
import binascii
import re
from collections import Counter
from urllib.parse import unquote_plus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .. import clients
from ..auth import Scope, TokenService, parse_scopes
from ..errors import BadRequest, PayloadTooLarge
from .forms import read_form
from .wire import in_thread

router = APIRouter(tags=["auth"])
SCOPES_SUPPORTED = ["system/*.cruds", "system/*.rs", "system/CarePlan.rs", "system/Consent.rs",
                    "system/CareTeam.rs"]


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    headers = {"Cache-Control": "no-store"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="sip_hub"'
    return JSONResponse({"error": error, "error_description": description}, status,
                        headers=headers)


class _Malformed(Exception):
    """An Authorization: Basic header that cannot be read."""


def _basic(header: str) -> tuple[str, str] | None:
    """(client id, secret) of a Basic header; None without one. A Basic header that cannot be
    decoded raises _Malformed: the client chose Basic, so falling back to form fields would
    let a broken header pass unnoticed (and mix two authentication methods)."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(value.strip(), validate=True).decode() \
            .partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _Malformed from None
    if not colon:
        raise _Malformed
    # RFC 6749 2.3.1: client id and secret are form-urlencoded before Basic encoding.
    return unquote_plus(user), unquote_plus(password)


# RFC 6749 3.3: scope tokens are printable ASCII but space, '"' and '\\', separated by spaces.
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")


def _covered(requested: Scope, granted: tuple[Scope, ...]) -> bool:
    return any((g.resource in ("*", requested.resource)) and requested.perms <= g.perms
               for g in granted)


@router.post("/auth/token")
async def token(request: Request) -> JSONResponse:
    # (Media types are case-insensitive: RFC 9110 8.3.1.)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        return _oauth_error(400, "invalid_request",
                            "The token request must be application/x-www-form-urlencoded")
    try:
        fields = await read_form(request)
    except (BadRequest, PayloadTooLarge) as exc:  # an OAuth2 error too, with its status
        return _oauth_error(exc.status, "invalid_request",
                            f"The form cannot be read: {exc.diagnostics}")
    # RFC 6749 3.2: a parameter sent twice is invalid (which one would count is a guess).
    repeated = sorted(k for k, n in Counter(k for k, _ in fields).items() if n > 1)
    if repeated:
        return _oauth_error(400, "invalid_request",
                            f"Parameters may be sent once only: {', '.join(repeated)}")
    form = dict(fields)
    grant = form.get("grant_type")
    if not isinstance(grant, str) or not grant:
        return _oauth_error(400, "invalid_request", "grant_type is required "
                            "(grant_type=client_credentials)")
    if grant != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "Only client_credentials is supported")
    authorization = request.headers.getlist("authorization")
    if len(authorization) > 1:  # (as at /fhir: which one is meant would be a guess)
        return _oauth_error(400, "invalid_request", "Send one Authorization header, not "
                            "several")
    try:
        creds = _basic(authorization[0] if authorization else "")
    except _Malformed:
        return _oauth_error(401, "invalid_client", "The Basic Authorization header is not "
                            "base64 of <client_id>:<client_secret> in UTF-8")
    cid, secret = form.get("client_id"), form.get("client_secret")
    if creds is not None:
        # RFC 6749 2.3: one authentication method per request. A client_id alone beside
        # Basic is allowed when it names the same client.
        if secret is not None or (cid is not None and cid != creds[0]):
            return _oauth_error(400, "invalid_request", "Use one client authentication "
                                "method: HTTP Basic or client_id and client_secret in the form")
    elif isinstance(cid, str) and isinstance(secret, str):
        creds = (cid, secret)
    if creds is None:
        return _oauth_error(401, "invalid_client", "Send client_id and client_secret "
                            "(HTTP Basic or form fields)")
    store = request.app.state.store
    rec = await in_thread(request, clients.authenticate, store, creds[0], creds[1])
    if rec is None:
        return _oauth_error(401, "invalid_client", "Unknown client or wrong secret")
    granted = parse_scopes(rec.scope)
    asked = form.get("scope")
    if isinstance(asked, str) and asked.strip():
        # (a scope asked for twice is granted once: the token's text is what the hub caches)
        wanted = list(dict.fromkeys(s for s in asked.split(" ") if s))
        if not all(_SCOPE_TOKEN.fullmatch(s) for s in wanted):
            return _oauth_error(400, "invalid_scope", "scope must be SMART system scopes "
                                "separated by spaces, e.g. system/CarePlan.rs")
        if len(" ".join(wanted)) > clients.SCOPE_MAX:  # (no longer than a registered one)
            return _oauth_error(400, "invalid_scope", f"The requested scopes must be at most "
                                f"{clients.SCOPE_MAX} characters together")
        try:  # (a type the hub does not serve grants nothing and hides a typo, as at create)
            clients.parse_scopes(" ".join(wanted))
        except BadRequest as exc:
            return _oauth_error(400, "invalid_scope", exc.diagnostics)
        parsed = [Scope.parse(s) for s in wanted]
        if any(p is None or not _covered(p, granted) for p in parsed):
            return _oauth_error(400, "invalid_scope",
                                f"Requested scopes exceed the client's: {rec.scope}")
        scope = " ".join(wanted)
    else:
        scope = rec.scope
    tokens: TokenService = request.app.state.tokens
    issued = tokens.issue(client_id=rec.client_id, org=rec.org_hsa_id, role=rec.role,
                          scope=scope, personal_data=rec.personal_data)
    return JSONResponse(issued, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})


@router.get("/auth/jwks")
def jwks(request: Request) -> JSONResponse:
    return JSONResponse(request.app.state.tokens.keys.public_jwks())


@router.get("/.well-known/smart-configuration")
@router.get("/fhir/.well-known/smart-configuration")
def smart_configuration(request: Request) -> JSONResponse:
    # The hub's own base, never the request's Host: that would hand every client that asks
    # a token endpoint of the caller's choosing.
    settings = request.app.state.settings
    base = settings.public_base
    return JSONResponse({
        "issuer": settings.issuer,
        "jwks_uri": f"{base}/auth/jwks",
        "token_endpoint": f"{base}/auth/token",
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "grant_types_supported": ["client_credentials"],
        "scopes_supported": SCOPES_SUPPORTED,
        "capabilities": ["client-confidential-symmetric"],
        "code_challenge_methods_supported": [],
    })
