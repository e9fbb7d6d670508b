"""The OAuth2 token endpoint, the public keys and the SMART configuration."""

from __future__ import annotations

import base64
import binascii
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from .. import clients
from ..auth import Scope, TokenService, parse_scopes
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


def _basic(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    # RFC 6749 2.3.1: client id and secret are form-urlencoded before Basic encoding.
    return unquote(user), unquote(password)


def _covered(requested: Scope, granted: tuple[Scope, ...]) -> bool:
    return any((g.resource in ("*", requested.resource)) and requested.perms <= g.perms
               for g in granted)


@router.post("/auth/token")
async def token(request: Request) -> JSONResponse:
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype != "application/x-www-form-urlencoded":
        return _oauth_error(400, "invalid_request",
                            "The token request must be application/x-www-form-urlencoded")
    form = await request.form()
    if form.get("grant_type") != "client_credentials":
        return _oauth_error(400, "unsupported_grant_type", "Only client_credentials is supported")
    creds = _basic(request.headers.get("authorization", ""))
    if creds is None:
        cid, secret = form.get("client_id"), form.get("client_secret")
        creds = (cid, secret) if isinstance(cid, str) and isinstance(secret, str) else None
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
        wanted = asked.split()
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
    base = str(request.base_url).rstrip("/")
    settings = request.app.state.settings
    if settings.base_url:
        base = settings.base_url.rstrip("/")
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
