"""The SIP process operations (FHIR ``$operations`` taking and returning Parameters).

Each runs in one write transaction, so all its effects are stored together or not at all.
``If-Match`` (on the CarePlan, or on the Task for ``$respond``) makes the call conditional on
the version the client has seen.
"""

from __future__ import annotations

from typing import Any, Callable

from fastapi import APIRouter, Request
from starlette.responses import Response

from .. import invitations, revisions, transitions
from ..fhir.dates import now_utc
from ..fhir.validation import check_id
from ..operation import Operation
from ..store import Tx
from .wire import context, in_thread, read_body, respond

router = APIRouter(prefix="/fhir", tags=["SIP process"])

Json = dict[str, Any]


async def _operation(request: Request, rid: str,
                     fn: Callable[[Operation, Any, str | None], Json]) -> Response:
    check_id(rid)  # before anything reads by it (PostgreSQL refuses a NUL in one: a 5xx)
    ctx = context(request)
    state = request.app.state
    body = await read_body(request, state.settings.max_body_bytes)
    if_match = request.headers.get("if-match")

    def work(tx: Tx) -> Json:
        return fn(Operation(tx, ctx, now_utc(), state.settings.sip_inactive_days), body,
                  if_match)
    return respond(request, await in_thread(request, state.store.write, work))


@router.post("/CarePlan/{rid}/$transition")
async def transition(request: Request, rid: str) -> Response:
    return await _operation(request, rid, lambda op, body, if_match: transitions.run(
        op, rid, body, if_match))


@router.post("/CarePlan/{rid}/$invite")
async def invite(request: Request, rid: str) -> Response:
    return await _operation(request, rid, lambda op, body, if_match: invitations.invite(
        op, rid, body, if_match))


@router.post("/Task/{rid}/$respond")
async def respond_to_invitation(request: Request, rid: str) -> Response:
    return await _operation(request, rid, lambda op, body, if_match: invitations.respond(
        op, rid, body, if_match))


@router.post("/CarePlan/{rid}/$propose-revision")
async def propose_revision(request: Request, rid: str) -> Response:
    return await _operation(request, rid, lambda op, body, if_match: revisions.propose(
        op, rid, body, if_match))


@router.post("/CarePlan/{rid}/$approve-revision")
async def approve_revision(request: Request, rid: str) -> Response:
    return await _operation(request, rid, lambda op, body, if_match: revisions.approve(
        op, rid, body, if_match))
