"""The FHIR REST API under /fhir: instance, type and system interactions."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from fastapi import APIRouter, Request
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from .. import bundles, cpu
from .. import interactions as ix
from ..errors import MethodNotAllowed, UnsupportedMediaType
from ..fhir.capability import capability_statement
from ..fhir.dates import format_instant, now_utc
from ..fhir.validation import check_id
from ..messaging.capability import messaging_section
from ..service import ahead_pays, basis_keys, check_type, prepare_ahead, prevalidate
from ..store import Store, Tx
from .forms import read_form
from .wire import (context, in_thread, prefer_return, read_body, read_patch, respond,
                   result_response)

router = APIRouter(prefix="/fhir", tags=["FHIR"])
_STARTED = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
_SEARCH_FORM_FIELDS = 1000  # (starlette's bound; a search combines 50 parameters at most)


def _store(request: Request) -> Store:
    return request.app.state.store


def _read(request: Request, fn: Callable[[Tx, ix.Context], ix.Result], *,
          snapshot: bool = True, ctx: ix.Context | None = None) -> Response:
    """A read-only interaction in its own (read) transaction (``ctx``: the request's, when
    the caller has made it already)."""
    ctx = ctx or context(request)
    with _store(request).begin(write=False, snapshot=snapshot) as tx:
        result = fn(tx, ctx)
    return result_response(request, ctx, result)


async def _write(request: Request, rtype: str, perm: str,
                 fn: Callable[[Tx, ix.Context, Any], ix.Result], *, ahead: bool = False,
                 replaces: str | None = None) -> Response:
    """A write interaction with the request body, in one write transaction. The body's
    structure (and, ``ahead``, its rules: see ``service.prepare_ahead``; ``replaces``: the
    id an update writes) is checked before the transaction begins, so that no write lock is
    held while that runs."""
    ctx = context(request)
    check_type(rtype, write=True)
    if replaces is not None:
        check_id(replaces)  # before anything reads by it (PostgreSQL refuses a NUL: a 5xx)
    ctx.access.check(rtype, perm)  # refuse before any work is done on the body
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    store = _store(request)

    # Prepared ahead where that pays, else the basis read in the write (one statement).
    ahead, read_in_write = (ahead, False) if ahead_pays(store) else (False, ahead)

    def work() -> ix.Result:
        with cpu.turn(store):  # one thread of the process at a time (see sip_hub.cpu)
            checked = prepare_ahead(store, body, rtype, base=ctx.base_url,
                                    replaces=replaces) if ahead else prevalidate(body)

        def write(tx: Tx) -> ix.Result:
            if read_in_write and isinstance(checked, dict):
                tx.load(basis_keys(checked, rtype, replaces))
            return fn(tx, ctx, checked)
        return store.write(write)
    result = await in_thread(request, work)
    return result_response(request, ctx, result, write=True)


def _not_a_type_or_id(request: Request, name: str) -> None:
    """A keyword or an operation where the generic routes take a type or an id
    (/fhir/_history, /fhir/CarePlan/$citizen-view) names a path that routes of its own take
    (with fewer parameters): a method they do not take is a 405, whose Allow names theirs,
    not an unknown type or an invalid id. One that no such route takes is left to the type's
    or the id's check: a 405 there would name methods that are refused as well."""
    if name[:1] not in ("_", "$"):
        return
    fewest = request.app.fewest_parameters(request.scope)
    if fewest is not None and fewest < len(request.path_params):
        raise MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")


def _params(request: Request) -> list[tuple[str, str]]:
    return list(request.query_params.multi_items())


def _search(request: Request, rtype: str, items: list[tuple[str, str]]) -> Response:
    ctx = context(request)
    pinned = _pinned(ctx, rtype, items)
    return _read(request, lambda tx, c: ix.search(tx, c, rtype, pinned), ctx=ctx)


def _pinned(ctx: ix.Context, rtype: str, items: list[tuple[str, str]]
            ) -> list[tuple[str, str]]:
    """A search of the access log, pinned to the events recorded up to its first page.

    Every read of the log is itself logged (it shows personal data), newest first, so each
    page read put a new event at the head of the next one: paged by offset, the next page
    showed events of the page before again, and the last ones never. The first page's
    search gets ``date=le<now>``, once this process's queued events are stored (so that
    they neither arrive under the pin later nor are missing from the answer); its next and
    previous links carry the pin on."""
    if rtype != "AuditEvent" or any(k == "_offset" for k, _ in items):
        return items
    ctx.access.check(rtype, "s")  # (a caller the log is not for waits for nothing)
    if ctx.audit is not None:
        ctx.audit.flush()
    return items + [("date", "le" + format_instant(now_utc()))]


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    base = context(request, public=True).base_url
    messaging = getattr(request.app.state, "messaging", None)
    section = messaging_section(messaging, base) if messaging is not None else None
    return respond(request, capability_statement(base, _STARTED, section))


@router.post("")
@router.post("/")
async def system_bundle(request: Request) -> Response:
    ctx = context(request)
    body = await read_body(request, request.app.state.settings.max_body_bytes)
    out = await in_thread(request, bundles.process, _store(request), ctx, body,
                          prefer_return(request),
                          max_entries=request.app.state.settings.max_bundle_entries)
    return respond(request, out)


@router.get("/_history")
def system_history(request: Request) -> Response:
    return _read(request, lambda tx, ctx: ix.history(tx, ctx, _params(request)))


@router.get("/{rtype}")
def search_type(request: Request, rtype: str) -> Response:
    _not_a_type_or_id(request, rtype)
    return _search(request, rtype, _params(request))


@router.post("/{rtype}/_search")
async def search_post(request: Request, rtype: str) -> Response:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":  # (media types are case-insensitive)
        raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded "
                                   "parameters")
    # (Within the hub's body limit, as every body: starlette's request.form() bounds only
    # each field; and as many fields as it allowed.)
    form = await read_form(request, request.app.state.settings.max_body_bytes,
                           _SEARCH_FORM_FIELDS)
    items = _params(request) + form
    return await in_thread(request, _search, request, rtype, items)


@router.post("/{rtype}")
async def create(request: Request, rtype: str) -> Response:
    _not_a_type_or_id(request, rtype)
    if_none_exist = request.headers.get("if-none-exist")
    # A conditional create may answer with what exists, whatever the body: no rules first.
    return await _write(request, rtype, "c", lambda tx, ctx, body: ix.create(
        tx, ctx, rtype, body, if_none_exist=if_none_exist), ahead=not if_none_exist)


@router.put("/{rtype}")
async def conditional_update(request: Request, rtype: str) -> Response:
    _not_a_type_or_id(request, rtype)
    items = [(k, v) for k, v in _params(request) if k != "_format"]
    if not items:
        raise MethodNotAllowed("PUT on a type needs search criteria (conditional update)")
    if_match = request.headers.get("if-match")
    return await _write(request, rtype, "u", lambda tx, ctx, body: ix.conditional_update(
        tx, ctx, rtype, items, body, if_match=if_match))


@router.get("/{rtype}/_history")
def type_history(request: Request, rtype: str) -> Response:
    return _read(request, lambda tx, ctx: ix.history(tx, ctx, _params(request), rtype))


async def _point_read(request: Request, fn: Callable[[Tx, ix.Context], ix.Result]) -> Response:
    """A single indexed lookup. On the embedded store it costs less than the hop to the
    threadpool, so it runs on the event loop (measured: SQLite reads ~1.5k/s against ~0.9k/s);
    on PostgreSQL the network round trip would stall the loop, so it goes to a thread."""
    if _store(request).embedded:
        return _read(request, fn, snapshot=False)
    return await in_thread(request, _read, request, fn)


def _subset_params(request: Request) -> list[tuple[str, str]] | None:
    """A read's ``_summary`` and ``_elements`` (None, at once, for a read without a query)."""
    if not request.scope.get("query_string"):
        return None
    return [(k, v) for k, v in _params(request) if k in ("_summary", "_elements")]


@router.get("/{rtype}/{rid}")
async def read(request: Request, rtype: str, rid: str) -> Response:
    _not_a_type_or_id(request, rid)
    items = _subset_params(request)
    return await _point_read(request, lambda tx, ctx: ix.read(tx, ctx, rtype, rid, items))


@router.put("/{rtype}/{rid}")
async def update(request: Request, rtype: str, rid: str) -> Response:
    _not_a_type_or_id(request, rid)
    if_match = request.headers.get("if-match")
    return await _write(request, rtype, "u", lambda tx, ctx, body: ix.update(
        tx, ctx, rtype, rid, body, if_match=if_match), ahead=True, replaces=rid)


@router.patch("/{rtype}/{rid}")
async def patch(request: Request, rtype: str, rid: str) -> Response:
    """A JSON Patch (``application/json-patch+json``) of the current version, written as an
    update (``interactions.patch``)."""
    _not_a_type_or_id(request, rid)
    ctx = context(request)
    check_type(rtype, write=True)
    check_id(rid)
    ctx.access.check(rtype, "u")  # refuse before any work is done on the body
    ops = await read_patch(request, request.app.state.settings.max_body_bytes)
    if_match = request.headers.get("if-match")
    store = _store(request)
    result = await in_thread(request, store.write, lambda tx: ix.patch(
        tx, ctx, rtype, rid, ops, if_match=if_match))
    return result_response(request, ctx, result, write=True)


@router.delete("/{rtype}/{rid}")
def delete(request: Request, rtype: str, rid: str) -> Response:
    _not_a_type_or_id(request, rid)
    ctx = context(request)
    if_match = request.headers.get("if-match")
    result = _store(request).write(lambda tx: ix.delete(tx, ctx, rtype, rid,
                                                        if_match=if_match))
    return result_response(request, ctx, result)


@router.get("/{rtype}/{rid}/_history")
def instance_history(request: Request, rtype: str, rid: str) -> Response:
    return _read(request, lambda tx, ctx: ix.history(tx, ctx, _params(request), rtype, rid))


@router.get("/{rtype}/{rid}/_history/{vid}")
async def vread(request: Request, rtype: str, rid: str, vid: str) -> Response:
    items = _subset_params(request)
    return await _point_read(request, lambda tx, ctx: ix.vread(tx, ctx, rtype, rid, vid, items))


# -- the hot interactions, routed without FastAPI's per-request machinery ---------------------
# FastAPI's middleware, route matching and parameter solving cost more than a point read on the
# embedded store. Read, search, create and update of paths whose type and id are well-formed
# FHIR are dispatched to these routes by ``sip_hub.app.HubApp`` before the FastAPI stack;
# anything else (operations, _history, _search, malformed ids) goes on to the routes above.

class _TypeConvertor(Convertor[str]):
    regex = "[A-Z][A-Za-z]{1,63}"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _IdConvertor(_TypeConvertor):
    regex = "[A-Za-z0-9.-]{1,64}"  # the FHIR id type


register_url_convertor("fhir_type", _TypeConvertor())
register_url_convertor("fhir_id", _IdConvertor())


async def _fast_read(request: Request) -> Response:
    return await read(request, **request.path_params)


def _fast_search(request: Request) -> Response:
    return search_type(request, **request.path_params)


async def _fast_create(request: Request) -> Response:
    return await create(request, **request.path_params)


async def _fast_update(request: Request) -> Response:
    return await update(request, **request.path_params)


def fast_routes() -> list[BaseRoute]:
    """Matched by ``HubApp`` before every other route of the app."""
    instance, type_ = "/fhir/{rtype:fhir_type}/{rid:fhir_id}", "/fhir/{rtype:fhir_type}"
    return [Route(instance, _fast_read, methods=["GET"], include_in_schema=False),
            Route(instance, _fast_update, methods=["PUT"], include_in_schema=False),
            Route(type_, _fast_search, methods=["GET"], include_in_schema=False),
            Route(type_, _fast_create, methods=["POST"], include_in_schema=False)]
