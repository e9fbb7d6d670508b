"""The FHIR REST API under /fhir: instance, type and system interactions."""

from __future__ import annotations

from datetime import datetime, timezone

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from .. import bundles
from .. import interactions as ix
from ..errors import BadRequest, MethodNotAllowed
from ..fhir.capability import capability_statement
from ..store import Store
from .wire import prefer_return, read_body, respond, result_response, context

router = APIRouter(prefix="/fhir", tags=["FHIR"])
_STARTED = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _store(request: Request) -> Store:
    return request.app.state.store


def _max_body(request: Request) -> int:
    return request.app.state.settings.max_body_bytes


@router.get("/metadata")
async def metadata(request: Request) -> Response:
    ctx = context(request)
    return respond(request, capability_statement(ctx.base_url, _STARTED))


@router.post("")
@router.post("/")
async def system_bundle(request: Request) -> Response:
    ctx = context(request)
    body = await read_body(request, _max_body(request))
    out = await run_in_threadpool(bundles.process, _store(request), ctx, body,
                                  prefer_return(request))
    return respond(request, out)


@router.get("/_history")
def system_history(request: Request) -> Response:
    ctx = context(request)
    with _store(request).begin(write=False) as tx:
        result = ix.history(tx, ctx, list(request.query_params.multi_items()))
    return result_response(request, ctx, result)


def _search(request: Request, rtype: str, items: list[tuple[str, str]]) -> Response:
    ctx = context(request)
    with _store(request).begin(write=False) as tx:
        result = ix.search(tx, ctx, rtype, items)
    return result_response(request, ctx, result)


@router.get("/{rtype}")
def search_type(request: Request, rtype: str) -> Response:
    return _search(request, rtype, list(request.query_params.multi_items()))


@router.post("/{rtype}/_search")
async def search_post(request: Request, rtype: str) -> Response:
    ctype = request.headers.get("content-type", "").split(";")[0].strip()
    if ctype != "application/x-www-form-urlencoded":
        raise BadRequest("POST _search takes application/x-www-form-urlencoded parameters")
    form = await request.form()
    items = list(request.query_params.multi_items()) + [
        (k, v) for k, v in form.multi_items() if isinstance(v, str)]
    return await run_in_threadpool(_search, request, rtype, items)


@router.post("/{rtype}")
async def create(request: Request, rtype: str) -> Response:
    ctx = context(request)
    body = await read_body(request, _max_body(request))
    if_none_exist = request.headers.get("if-none-exist")

    def work() -> ix.Result:
        with _store(request).begin() as tx:
            return ix.create(tx, ctx, rtype, body, if_none_exist=if_none_exist)
    result = await run_in_threadpool(work)
    return result_response(request, ctx, result, write=True)


@router.put("/{rtype}")
async def conditional_update(request: Request, rtype: str) -> Response:
    ctx = context(request)
    body = await read_body(request, _max_body(request))
    items = [(k, v) for k, v in request.query_params.multi_items() if k != "_format"]
    if not items:
        raise MethodNotAllowed("PUT on a type needs search criteria (conditional update)")
    if_match = request.headers.get("if-match")

    def work() -> ix.Result:
        with _store(request).begin() as tx:
            return ix.conditional_update(tx, ctx, rtype, items, body, if_match=if_match)
    result = await run_in_threadpool(work)
    return result_response(request, ctx, result, write=True)


@router.get("/{rtype}/_history")
def type_history(request: Request, rtype: str) -> Response:
    ctx = context(request)
    with _store(request).begin(write=False) as tx:
        result = ix.history(tx, ctx, list(request.query_params.multi_items()), rtype)
    return result_response(request, ctx, result)


@router.get("/{rtype}/{rid}")
def read(request: Request, rtype: str, rid: str) -> Response:
    ctx = context(request)
    with _store(request).begin(write=False) as tx:
        result = ix.read(tx, rtype, rid)
    return result_response(request, ctx, result)


@router.put("/{rtype}/{rid}")
async def update(request: Request, rtype: str, rid: str) -> Response:
    ctx = context(request)
    body = await read_body(request, _max_body(request))
    if_match = request.headers.get("if-match")

    def work() -> ix.Result:
        with _store(request).begin() as tx:
            return ix.update(tx, ctx, rtype, rid, body, if_match=if_match)
    result = await run_in_threadpool(work)
    return result_response(request, ctx, result, write=True)


@router.delete("/{rtype}/{rid}")
def delete(request: Request, rtype: str, rid: str) -> Response:
    ctx = context(request)
    with _store(request).begin() as tx:
        result = ix.delete(tx, rtype, rid)
    return result_response(request, ctx, result)


@router.get("/{rtype}/{rid}/_history")
def instance_history(request: Request, rtype: str, rid: str) -> Response:
    ctx = context(request)
    with _store(request).begin(write=False) as tx:
        result = ix.history(tx, ctx, list(request.query_params.multi_items()), rtype, rid)
    return result_response(request, ctx, result)


@router.get("/{rtype}/{rid}/_history/{vid}")
def vread(request: Request, rtype: str, rid: str, vid: str) -> Response:
    ctx = context(request)
    with _store(request).begin(write=False) as tx:
        result = ix.vread(tx, rtype, rid, vid)
    return result_response(request, ctx, result)
