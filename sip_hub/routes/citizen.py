"""``GET /fhir/CarePlan/$citizen-view``: the citizen's approved plans for the national portal."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from .. import citizen
from ..errors import BadRequest
from .render import render_citizen_html
from .wire import FHIR_TYPES, accepted, context, respond, single

router = APIRouter(prefix="/fhir", tags=["national portal"])


def _wants_html(accept: str) -> bool:
    """Whether ``Accept`` prefers text/html: "application/json, text/html;q=0" asks for
    anything but HTML, and a browser's "text/html,...,*/*;q=0.8" for HTML. At an equal q
    HTML wins, as it always has."""
    ranked = accepted(accept)
    html = max((q for media, q in ranked if media == "text/html"), default=0.0)
    fhir = max((q for media, q in ranked if media in FHIR_TYPES), default=0.0)
    return html > 0 and html >= fhir


@router.get("/CarePlan/$citizen-view")
def citizen_view(request: Request) -> Response:
    ctx = context(request)
    patient = single(request, "patient")  # (max 1 in the OperationDefinition)
    if not patient:
        raise BadRequest("patient=<system>|<value> is required", expression="patient")
    with request.app.state.store.begin(write=False) as tx:
        out = citizen.view(tx, ctx, patient)
    if _wants_html(request.headers.get("accept", "")) and \
            request.query_params.get("_format") is None:
        return Response(render_citizen_html(out), media_type="text/html; charset=utf-8")
    return respond(request, out)
