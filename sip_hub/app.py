"""The FastAPI application: ``create_app(settings)`` wires store, routes and error handling."""

from __future__ import annotations

import dataclasses
import inspect
import os
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import Message, Receive, Scope, Send

from . import __version__, clients, deadlines, demo, heap, logs
from .audit import AuditLog
from .messaging.config import MessagingSettings
from .messaging.runtime import Messaging
from .messaging.worker import Worker
from .metrics import observe_request
from .auth import TokenService, load_keys
from .errors import BadRequest, InternalError, MethodNotAllowed, NotFound, SipHubError
from .fhir.outcome import from_error
from .fhir.search_params import READ_ONLY_TYPES
from .routes import ROUTERS, fhir_rest, messaging as messaging_routes
from .routes.wire import JSON, in_thread, respond
from .service import FhirService
from .settings import Settings
from .store import Store
from .store.checkpoint import Checkpointer
from .store.engine import make_engine
from .store.migrate import require_current, upgrade

log = logging.getLogger("sip_hub")


class ConfigurationError(RuntimeError):
    """The settings are unfit for the environment; the hub refuses to start."""


def check_settings(settings: Settings) -> None:
    if settings.env == "production":
        problems = settings.production_problems() + _messaging_problems(settings)
        if problems:
            raise ConfigurationError("Refusing to start in production: " + "; ".join(problems))
        return
    # In every environment: an endpoints file the hub cannot use stops the start with its
    # reason (it was a traceback from the API's start-up, or the worker's), and so does one
    # named that is not there (read as no endpoints: every message dead-lettered).
    named = MessagingSettings().endpoints_file
    if named is not None and not named.is_file():
        raise ConfigurationError(f"Refusing to start: SIP_HUB_MESSAGE_ENDPOINTS_FILE {named} "
                                 "is not a file")
    try:
        Messaging.for_hub(settings)
        demo.read(settings)
    except ValueError as exc:
        raise ConfigurationError(f"Refusing to start: {exc}") from None


def _messaging_problems(settings: Settings) -> list[str]:
    config = MessagingSettings.for_hub(settings)
    problems = []
    if not config.hub_hsa_id:
        problems.append("SIP_HUB_MESSAGE_HUB_HSA_ID must name the hub's own HSA-id (the "
                        "sender of its messages)")
    try:
        endpoints = Messaging.from_config(config).endpoints
    except ValueError as exc:
        problems.append(str(exc))
    else:
        if not endpoints.orgs:
            problems.append(f"{config.endpoints_file} configures no organisation endpoints: "
                            "every message would be dead-lettered")
    return problems


def build_store(settings: Settings) -> Store:
    engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
    if settings.auto_migrate:
        upgrade(engine)
    else:
        require_current(engine)
    return Store(engine)


def _error_response(request: Request, err: SipHubError) -> Response:
    if err.status == 405 and "Allow" not in err.headers:
        err.headers = {**err.headers, "Allow": _allowed(request.app, request.scope)}
    if err.retryable and "Retry-After" not in err.headers:
        # A conflict with another request, a database that did not answer: sent again
        # shortly it can succeed (RFC 9110 10.2.3).
        err.headers = {**err.headers, "Retry-After": "1"}
    try:
        return respond(request, from_error(err), err.status, err.headers)
    except SipHubError:  # the client's Accept cannot be served either: answer in JSON
        return respond(request, from_error(err), err.status, err.headers, fmt=JSON)


_METHODS = ("DELETE", "GET", "PATCH", "POST", "PUT")


def _allowed(app: "HubApp", scope: Scope) -> str:
    """A 405's ``Allow`` (RFC 9110 15.5.6): the methods the path's own routes take, HEAD
    wherever GET (``HubApp`` answers HEAD as GET), less the one refused. A path's own routes
    are those that match it with the fewest path parameters: /fhir/metadata is the
    CapabilityStatement's, not a type that /fhir/{rtype} takes, and /fhir/$process-message
    is the operation's. Starlette's names the first route of the path only, and a path's GET,
    PUT and DELETE are routes apart. (The routers as ``create_app`` includes them: FastAPI's
    wrapper of an included router does not say which of its routes matched.)"""
    ranked = _ranked(app, scope)
    fewest = min(ranked.values(), default=0)
    methods = {m for m, rank in ranked.items() if rank == fewest}
    if _read_only(scope["path"]):  # (the hub's published definitions: read and searched)
        methods &= {"GET"}
    if "GET" in methods:
        methods.add("HEAD")
    methods.discard(scope["method"])
    return ", ".join(sorted(methods))


def _ranked(app: "HubApp", scope: Scope) -> dict[str, int]:
    """The methods the routes of ``scope``'s path take, each with the fewest path parameters
    of a route taking the path with it."""
    routes = [r for r, _ in app.hot_routes] + [
        r for r in app.router.routes if hasattr(r, "path")] + [
        r for router in ROUTERS for r in router.routes]
    ranked: dict[str, int] = {}
    for method in _METHODS:
        probe = {"type": "http", "path": scope["path"], "root_path": scope.get("root_path", ""),
                 "method": method, "headers": []}  # (matching may write to its scope)
        for route in routes:
            matched, child = route.matches(probe)
            if matched is Match.FULL:
                rank = len(child.get("path_params") or {})
                ranked[method] = min(rank, ranked.get(method, rank))
    return ranked


def _read_only(path: str) -> bool:
    """Whether ``path`` is a read-only type's (``/fhir/StructureDefinition``) or one of its
    instances': its routes take writes that ``service.check_type`` refuses for the type."""
    parts = path.split("/")
    return len(parts) in (3, 4) and parts[1] == "fhir" and parts[2] in READ_ONLY_TYPES \
        and (len(parts) == 3 or not parts[3].startswith(("_", "$")))


def _unexpected_response(request: Request) -> Response:
    log.exception("Unhandled error on %s %s", request.method, request.url.path,
                  extra={"method": request.method, "path": request.url.path})
    return _error_response(request, InternalError(
        "Internal error; the request was not applied. It has been logged with request id "
        f"{logs.REQUEST_ID.get()}."))


# A request whose client went away before its body was read is counted with this status
# (nginx's "client closed request"; never sent: there is no one to send it to).
CLIENT_GONE = 499
_GONE_KEY = "sip_hub.client_gone"


async def _client_gone(request: Request, exc: Exception) -> None:
    """A request whose client disconnected mid-body (starlette's ``ClientDisconnect``): no
    answer and no error. It reached the catch-all, which logged a traceback and counted a
    500: every upload a client or load balancer abandoned paged the operators as a fault of
    the hub's."""
    log.debug("The client went away before its request was read: %s %s", request.method,
              request.url.path)
    request.scope[_GONE_KEY] = True


class HubApp(FastAPI):
    """FastAPI, with the hot FHIR interactions (read, search, create, update of well-formed
    types and ids, and ``$process-message``) dispatched straight to their handlers. The
    middleware stack and router in between cost a third of a point read on the embedded store;
    errors are answered exactly as the exception handlers below answer them.

    Every HTTP request gets its id (``logs.request_id``) here, before either path: its log
    lines carry it and its response answers it in ``X-Request-ID``. And it is counted and
    timed here, by method, route (its path template: ``/fhir/{rtype}/{rid}``; ``unmatched``
    for paths no route takes) and status (``sip_hub.metrics``; ``CLIENT_GONE``, 499, for a
    request whose client went away before it was read).

    HEAD is answered here, once for every route: as GET, the body left out (RFC 9110 9.3.2:
    the same status and headers, ETag and Content-Length included). So a HEAD of personal
    data is authorised and audited exactly as the GET it stands for; the handlers see GET."""

    hot_routes = tuple((r, inspect.iscoroutinefunction(r.endpoint))
                       for r in fhir_rest.fast_routes() + messaging_routes.fast_routes())

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.add_exception_handler(ClientDisconnect, _client_gone)  # (FastAPI's routes)

    def fewest_parameters(self, scope: Scope) -> int | None:
        """The fewest path parameters of a route that takes ``scope``'s path, whatever its
        method (None: no route takes it). The path is that route's: one with more
        parameters takes it only for a type or an id (see ``_allowed``)."""
        return min(_ranked(self, scope).values(), default=None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        started = time.perf_counter()
        rid = logs.request_id(next((v for k, v in scope["headers"] if k == b"x-request-id"),
                                   None))
        logs.REQUEST_ID.set(rid)  # in this request's own task (and the threads it uses)
        tag = (b"x-request-id", rid.encode())
        status = 500  # unless an answer starts
        method = scope["method"]
        head = method == "HEAD"
        if head:  # (a copy: the server's own scope still says HEAD)
            scope = {**scope, "method": "GET"}

        async def send_tagged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), tag]
                status = message["status"]
            elif head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)
        try:
            await self._dispatch(scope, receive, send_tagged)
        finally:
            if scope.get(_GONE_KEY):
                status = CLIENT_GONE
            route = scope.get("route")
            observe_request(method, getattr(route, "path_format", "unmatched"),
                            status, time.perf_counter() - started)

    async def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> None:
        for route, is_async in self.hot_routes:
            matched, child = route.matches(scope)
            if matched is Match.FULL:
                scope["app"] = self
                scope["route"] = route
                scope.update(child)
                request = Request(scope, receive, send)
                try:
                    response = await route.endpoint(request) if is_async \
                        else await in_thread(request, route.endpoint, request)
                except SipHubError as exc:
                    response = _error_response(request, exc)
                except ClientDisconnect as exc:
                    await _client_gone(request, exc)
                    return
                except Exception:  # noqa: BLE001 (answered as the app's handler does)
                    response = _unexpected_response(request)
                await response(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, *, store: Store | None = None) -> FastAPI:
    settings = settings or Settings()
    check_settings(settings)
    if settings.unreachable_base:
        log.warning("SIP_HUB_BASE_URL is not set and the hub listens on every interface "
                    "(%s): the URLs it emits (links, Location, the SMART token endpoint) name "
                    "%s, which other machines cannot reach. Set SIP_HUB_BASE_URL to the "
                    "hub's public address.", settings.host or "*", settings.public_base)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Threads for blocking work (writes; reads on PostgreSQL): the app's own pool, which
        # routes.wire.in_thread uses, and anyio's, which FastAPI uses for the other sync
        # routes. Python runs one thread at a time: past a few per core they only queue on the
        # interpreter lock, and 40 (anyio's default) spent more CPU switching than working.
        app.state.threads = ThreadPoolExecutor(settings.threads, thread_name_prefix="sip-hub")
        to_thread.current_default_thread_limiter().total_tokens = settings.threads
        if getattr(app.state, "store", None) is None:
            app.state.store = build_store(settings)
        # Tokens of a client disabled since they were issued are refused from then on.
        states = clients.ClientStates(app.state.store, settings.client_state_seconds)
        app.state.tokens = dataclasses.replace(app.state.tokens, disabled=states.disabled)
        if not os.environ.get(demo.PRELOADED):  # (``sip-hub serve`` did it, once)
            FhirService(app.state.store).seed_definitions()
            demo.load(app.state.store, settings)
        app.state.audit = AuditLog(app.state.store)
        app.state.audit.start()
        checkpointer = Checkpointer(app.state.store.engine)
        checkpointer.start()
        if getattr(app.state, "messaging", None) is None:
            app.state.messaging = Messaging.for_hub(settings)
        # The embedded default runs the messaging worker in-process (the in-memory bus lives
        # in this process); with RabbitMQ, `sip-hub worker` processes do it.
        worker = None
        if settings.broker_url.startswith("memory://") and settings.env != "test":
            worker = Worker(app.state.store, app.state.messaging, audit=app.state.audit)
            worker.start()
        scheduler = deadlines.Scheduler(app.state.store, settings, app.state.audit)
        scheduler.start()
        if settings.env != "test":  # tests build many apps in one process: nothing frozen
            heap.settle()
        yield
        scheduler.stop()
        if worker is not None:
            worker.stop()
            worker.close()
        app.state.threads.shutdown(wait=True)
        app.state.audit.stop()
        checkpointer.stop()
        app.state.store.engine.dispose()

    # No API browser (FastAPI's /docs, /redoc, /openapi.json): Swagger UI is a page on the
    # console's origin running script from a CDN, which could read the console's pages and
    # post its forms. The interface is described by the CapabilityStatement (/fhir/metadata).
    app = HubApp(title="sip_hub", version=__version__, lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None, redirect_slashes=False)
    app.state.settings = settings
    app.state.store = store
    app.state.tokens = TokenService(load_keys(settings), settings.issuer,
                                    settings.token_lifetime_seconds)

    @app.exception_handler(SipHubError)
    async def _sip(request: Request, exc: SipHubError) -> Response:
        return _error_response(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            err: SipHubError = MethodNotAllowed(f"{request.method} is not allowed on "
                                                f"{request.url.path}")
        elif exc.status_code == 404:
            err = NotFound(f"No such endpoint: {request.url.path}")
        else:
            err = BadRequest(str(exc.detail))
            err.status = exc.status_code
        return _error_response(request, err)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return _error_response(request, BadRequest(f"Invalid request: {exc.errors()[:3]}"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        return _unexpected_response(request)

    for router in ROUTERS:
        app.include_router(router)
    return app
