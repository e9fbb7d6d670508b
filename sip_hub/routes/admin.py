"""``/admin``: the web console for IT staff (HTML pages; what they show: ``sip_hub.console``).

Signed in with an admin client's id and secret: the session is a signed cookie (HttpOnly,
SameSite=Strict, path /admin, Secure in production or over https) holding the client and a
token that every form carries back (a cross-site form has neither). A page asked for without a
session goes to the sign-in page and back. Each page is sent with a content security policy
that allows no script, and no page may be framed or cached.

A request the console cannot take gets a page that says why, with its status (400 for a form
that is not one, 403 for a form from elsewhere, 404 for no such delivery or client, 503 when
the database is down): the JSON API's OperationOutcomes are for systems, this is for people.
"""

from __future__ import annotations

import functools
import hmac
import inspect
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from fastapi import APIRouter, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from .. import clients, console
from ..auth import ConsoleSession, TokenService
from ..errors import (BadRequest, Forbidden, NotFound, SipHubError, Unauthorized,
                      UnsupportedMediaType)
from ..fhir.validation import check_id
from ..store.clients import end_session, session_ended
from ..store.outbox import Delivery
from .forms import read_form
from .messaging import messaging
from .render import render_page
from .wire import in_thread

router = APIRouter(tags=["console"], include_in_schema=False)

COOKIE = "sip_hub_console"
_FORM = "application/x-www-form-urlencoded"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'self'; img-src 'self'; "
                               "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_CLIENT = re.compile(r"(sip-[0-9a-f]{1,40})?")
# Short notices after a change (Post/Redirect/Get): codes, so that a link cannot make the
# console say anything else.
NOTICES = {
    "replayed": "{n} dead deliveries sent again.",
    "replayed-none": "There was no dead delivery to send again.",
    "disabled": "Client {client} disabled: its secret is refused, and the tokens it holds "
                "within seconds.",
    "enabled": "Client {client} enabled.",
    "signed-out": "You are signed out.",
}


def _page(request: Request, template: str, session: ConsoleSession | None, status: int = 200,
          **context: Any) -> HTMLResponse:
    q = request.query_params
    notice = NOTICES.get(q.get("notice", ""))
    n, client = q.get("n", ""), q.get("client", "")
    # (a link that would fill the notice with anything else gets none)
    fits = (n == "" or (n.isdecimal() and len(n) < 10)) and _CLIENT.fullmatch(client)
    notice = notice.format(n=n, client=client) if notice is not None and fits else None
    html = render_page(f"admin/{template}", session=session, notice=notice,
                       path=request.url.path, **context)
    return HTMLResponse(html, status, headers=SECURITY_HEADERS)


def _problem(request: Request, session: ConsoleSession | None, status: int, text: str
             ) -> HTMLResponse:
    return _page(request, "problem.html", session, status, status_code=status, text=text)


def _see(url: str) -> RedirectResponse:
    return RedirectResponse(url, 303, headers=SECURITY_HEADERS)


async def _session(request: Request) -> ConsoleSession | None:
    """The request's console session; None when it has none that is good (not this hub's,
    expired, its client disabled, or signed out)."""
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    tokens: TokenService = request.app.state.tokens
    store = request.app.state.store

    def check() -> ConsoleSession | None:
        session = tokens.verify_session(value)
        ended = session_ended(store, session.jti, session.principal.client_id, session.issued)
        return None if ended else session
    try:
        return await in_thread(request, check)
    except Unauthorized:
        return None


def _to_sign_in(request: Request) -> RedirectResponse:
    path = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return _see("/admin/login?" + urlencode({"next": path}))


def _local(target: str | None) -> str:
    """Where to go after signing in: a console page, never another site or path."""
    parts = urlsplit(target or "")
    path = unquote(parts.path)
    if target and not (parts.scheme or parts.netloc) and target.startswith("/admin") and \
            (path == "/admin" or path.startswith("/admin/")) and \
            ".." not in path.split("/") and "\\" not in target and \
            all(c.isprintable() and not c.isspace() for c in target):
        return target
    return "/admin"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def _same_origin(request: Request) -> bool:
    """A form posted from this hub's pages: browsers send Origin with every POST, and one
    from another origin is refused before its fields are read (CSRF, beside the session's
    token). This hub's origin is its public base (SIP_HUB_BASE_URL: behind a proxy that ends
    TLS the request itself says http) or the request's own."""
    origin = request.headers.get("origin")
    if origin is None:
        return True
    own = {_origin(str(request.base_url)), _origin(request.app.state.settings.public_base)}
    return origin.lower() in own


def _secure(request: Request) -> bool:
    """Whether the session cookie is for https only: in production, and wherever the hub is
    reached over https."""
    settings = request.app.state.settings
    return settings.env == "production" or request.url.scheme == "https" or \
        settings.public_base.startswith("https:")


async def _form(request: Request) -> dict[str, str]:
    """The form's fields (each once); a SipHubError saying why there is none."""
    if not _same_origin(request):
        raise Forbidden("The form was sent from another site")
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != _FORM:
        raise UnsupportedMediaType(f"The form must be sent as {_FORM}")
    out: dict[str, str] = {}
    for key, value in await read_form(request):  # (a 413 past the forms' bound)
        if key in out:
            raise BadRequest(f"The form's field {key[:40]} is sent more than once")
        out[key] = value
    return out


async def _signed_form(request: Request, session: ConsoleSession) -> dict[str, str]:
    """A signed-in operator's form with the session's token; a SipHubError saying why not."""
    form = await _form(request)
    if not hmac.compare_digest(form.get("csrf", "").encode(), session.csrf.encode()):
        raise Forbidden("The form is not from this session's pages (reload the page and try "
                        "again)")
    return form


Handler = Callable[..., Awaitable[Response]]


def _console(*, posted: bool) -> Callable[[Handler], Handler]:
    """A console page (``posted``: a form's target) for signed-in operators only: the
    handler gets the request, the session (and the form) and the path's parameters. Without
    a session a page goes to sign in first and a form is refused (401); a form without the
    session's token, or from another site, is refused (403); a SipHubError from the handler
    is the page saying why."""
    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def run(request: Request, **params: Any) -> Response:
            session = None
            try:
                session = await _session(request)
                if session is None:
                    if not posted:
                        return _to_sign_in(request)
                    raise Unauthorized("Your session has ended: sign in again.")
                if posted:
                    return await handler(request, session, await _signed_form(request, session),
                                         **params)
                return await handler(request, session, **params)
            except SipHubError as exc:
                return _problem(request, session, exc.status, exc.diagnostics)
        # (FastAPI reads the path's parameters from the signature: not the session or form)
        sig = inspect.signature(handler)
        run.__signature__ = sig.replace(parameters=[  # type: ignore[attr-defined]
            p for p in sig.parameters.values() if p.name not in ("session", "form")])
        return run
    return wrap


# -- signing in and out -----------------------------------------------------------------------

@router.get("/admin/console.css")
def stylesheet() -> Response:
    return Response(render_page("admin/console.css"), media_type="text/css",
                    headers={"Cache-Control": "public, max-age=3600",
                             "X-Content-Type-Options": "nosniff"})


@router.get("/admin/login")
async def sign_in_page(request: Request) -> Response:
    target = _local(request.query_params.get("next"))
    try:
        signed_in = await _session(request) is not None
    except SipHubError:  # (the database is down: the page says so when one signs in)
        signed_in = False
    return _see(target) if signed_in else _page(request, "login.html", None, next=target)


@router.post("/admin/login")
async def sign_in(request: Request) -> Response:
    try:
        form = await _form(request)
    except SipHubError as exc:
        return _problem(request, None, exc.status, exc.diagnostics)
    target = _local(form.get("next"))
    client_id, secret = form.get("client_id", "").strip(), form.get("client_secret", "")
    if not client_id or not secret:
        return _page(request, "login.html", None, 400, next=target, client_id=client_id,
                     error="Give the admin client's id and secret.")
    try:
        rec = await in_thread(request, clients.authenticate, request.app.state.store,
                              client_id, secret)
    except SipHubError as exc:
        return _problem(request, None, exc.status, exc.diagnostics)
    if rec is None:
        return _page(request, "login.html", None, 401, next=target, client_id=client_id,
                     error="Unknown client or wrong secret.")
    if rec.role != "admin":
        return _page(request, "login.html", None, 403, next=target, client_id=client_id,
                     error="The console is for the hub's admin clients (sip-hub client "
                           "create --role admin); this client is an organisation's or the "
                           "portal's.")
    lifetime = request.app.state.settings.console_session_minutes * 60
    tokens: TokenService = request.app.state.tokens
    value = tokens.issue_session(client_id=rec.client_id, org=rec.org_hsa_id,
                                 personal_data=rec.personal_data, lifetime=lifetime)
    response = _see(target)
    response.set_cookie(COOKIE, value, max_age=lifetime, path="/admin", httponly=True,
                        samesite="strict", secure=_secure(request))
    return response


@router.post("/admin/logout")
@_console(posted=True)
async def sign_out(request: Request, session: ConsoleSession, form: dict[str, str]
                   ) -> Response:
    await in_thread(request, end_session, request.app.state.store, session.jti,
                    session.principal.expires, int(time.time()))
    response = _see("/admin/login?notice=signed-out")
    response.delete_cookie(COOKIE, path="/admin", httponly=True, samesite="strict",
                           secure=_secure(request))
    return response


# -- pages ------------------------------------------------------------------------------------

@router.get("/admin")
@_console(posted=False)
async def front(request: Request, session: ConsoleSession) -> Response:
    state = request.app.state
    found = await in_thread(request, console.overview, state.store, state.settings,
                            messaging(request))
    return _page(request, "overview.html", session, **found)


@router.get("/admin/messages")
@_console(posted=False)
async def message_list(request: Request, session: ConsoleSession) -> Response:
    q = request.query_params
    state, org = q.get("state") or "dead", (q.get("org") or "").strip() or None
    found = await in_thread(request, console.deliveries, request.app.state.store, state, org,
                            q.get("before"))
    more = None if found.before is None else "/admin/messages?" + urlencode(
        {k: v for k, v in (("state", state), ("org", found.org), ("before", found.before))
         if v})
    return _page(request, "messages.html", session, rows=found.rows, state=state,
                 org=found.org or "", states=console.STATES, more=more,
                 first=not q.get("before"))


@router.get("/admin/messages/{delivery_id}")
@_console(posted=False)
async def message(request: Request, session: ConsoleSession, delivery_id: str) -> Response:
    def read() -> tuple[Delivery, list[Delivery]]:
        check_id(delivery_id, expression="delivery id")
        found = console.delivery(request.app.state.store, delivery_id, session.principal)
        if found is None:
            raise NotFound(f"No delivery '{delivery_id}'")
        return found
    d, siblings = await in_thread(request, read)
    content = d.content.decode("utf-8", "replace") if session.principal.personal_data \
        else None
    return _page(request, "message.html", session, d=d, siblings=siblings, content=content)


@router.post("/admin/messages/{delivery_id}/replay")
@_console(posted=True)
async def replay_one(request: Request, session: ConsoleSession, form: dict[str, str],
                     delivery_id: str) -> Response:
    check_id(delivery_id, expression="delivery id")
    done = await in_thread(request, console.replay, request.app.state.store,
                           messaging(request), session.principal, ids=[delivery_id])
    return _see(f"/admin/messages/{delivery_id}?" + urlencode(_replayed(done)))


@router.post("/admin/messages/replay")
@_console(posted=True)
async def replay_many(request: Request, session: ConsoleSession, form: dict[str, str]
                      ) -> Response:
    """Every dead delivery sent again, or those to the form's ``org`` (up to
    console.REPLAY_AT_ONCE a click)."""
    org = form.get("org", "").strip()
    done = await in_thread(request, console.replay, request.app.state.store,
                           messaging(request), session.principal, org=org or None)
    query = {"state": "dead", **({"org": org} if org else {}), **_replayed(done)}
    return _see("/admin/messages?" + urlencode(query))


def _replayed(done: list[str]) -> dict[str, Any]:
    return {"notice": "replayed", "n": len(done)} if done else {"notice": "replayed-none"}


@router.get("/admin/clients")
@_console(posted=False)
async def client_list(request: Request, session: ConsoleSession) -> Response:
    rows = await in_thread(request, console.client_rows, request.app.state.store)
    return _page(request, "clients.html", session, rows=rows, form={}, made=None)


@router.post("/admin/clients")
@_console(posted=True)
async def client_create(request: Request, session: ConsoleSession, form: dict[str, str]
                        ) -> Response:
    store = request.app.state.store
    try:
        made = await in_thread(request, console.create_client, store, session.principal, form)
    except (BadRequest, Forbidden) as exc:  # (the form again, as filled in, with the reason:
        # 403 for a client of more access than the operator's own)
        rows = await in_thread(request, console.client_rows, store)
        return _page(request, "clients.html", session, exc.status, rows=rows, form=form,
                     made=None, error=exc.diagnostics)
    rows = await in_thread(request, console.client_rows, store)
    return _page(request, "clients.html", session, 201, rows=rows, form={}, made=made)


@router.post("/admin/clients/{client_id}/{verb}")
@_console(posted=True)
async def client_state(request: Request, session: ConsoleSession, form: dict[str, str],
                       client_id: str, verb: str) -> Response:
    if verb not in ("disable", "enable"):
        raise NotFound("No such page")
    await in_thread(request, console.set_disabled, request.app.state.store, session.principal,
                    client_id, verb == "disable")
    return _see("/admin/clients?" + urlencode({"notice": f"{verb}d", "client": client_id}))


@router.get("/admin/endpoints")
@_console(posted=False)
async def endpoint_list(request: Request, session: ConsoleSession) -> Response:
    m = messaging(request)
    rows = await in_thread(request, console.endpoints, request.app.state.store, m)
    return _page(request, "endpoints.html", session, rows=rows, file=m.config.endpoints_file)
