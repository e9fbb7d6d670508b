"""``GET /fhir/CarePlan/$citizen-view``: the citizen's approved plans for the national portal."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from .. import citizen
from ..errors import BadRequest
from .render import render_citizen_html
from .wire import context, respond

router = APIRouter(prefix="/fhir", tags=["national portal"])


@router.get("/CarePlan/$citizen-view")
def citizen_view(request: Request) -> Response:
    ctx = context(request)
    patient = request.query_params.get("patient")
    if not patient:
        raise BadRequest("patient=<system>|<value> is required", expression="patient")
    with request.app.state.store.begin(write=False) as tx:
        out = citizen.view(tx, ctx, patient)
    if "text/html" in request.headers.get("accept", "") and \
            request.query_params.get("_format") is None:
        return Response(render_citizen_html(out), media_type="text/html; charset=utf-8")
    return respond(request, out)
