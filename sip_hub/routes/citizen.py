"""``/fhir/CarePlan/$citizen-view``: the citizen's approved plans for the national portal, by
GET (``?patient=``) or by POST with a Parameters resource (FHIR operations.html: a server
SHALL take POST for every operation, and client libraries invoke operations so by default).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from .. import citizen, parameters
from ..errors import BadRequest, SipHubError
from ..interactions import Context
from .pdf import render_citizen_pdf
from .render import render_citizen_html
from .wire import (FHIR_TYPES, accepted, context, in_thread, read_body, respond, response_format,
                   single)

router = APIRouter(prefix="/fhir", tags=["national portal"])
# The person's own plans: no cache on the way (the portal's, a proxy's, a browser's) keeps
# them, and the form depends on Accept, so a cache must never answer one with the other.
PRIVATE = {"Cache-Control": "no-store", "Pragma": "no-cache", "Vary": "Accept"}
# The forms for people, shown by a browser: no script runs, even a plan text the escaping
# missed; the page loads nothing (it has no style sheet, image or form) and no other site
# frames it (the portal fetches it with its token: a browser's frame could not).
NOSNIFF = {"X-Content-Type-Options": "nosniff"}
HTML_HEADERS = {**PRIVATE, **NOSNIFF,
                "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'; "
                                           "base-uri 'none'; form-action 'none'",
                "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


# The parameters of the operation (OperationDefinition sip-citizen-view) and the format ones.
PDF = "application/pdf"
KNOWN = frozenset({"patient", "_format", "_pretty"})
FORMAT = frozenset({"_format", "_pretty"})
# The Parameters of a POST: patient as a string, the token <system>|<value> (type string,
# searchType token, in the OperationDefinition).
PARAMS = (parameters.Param("patient", ("valueString",), required=True),)


def _human_form(accept: str) -> str | None:
    """The form for people that ``Accept`` prefers over the FHIR ones: "html", "pdf" or None
    (a FHIR Bundle). "application/json, text/html;q=0" asks for anything but HTML, and a
    browser's "text/html,...,*/*;q=0.8" for HTML; "application/pdf" for the PDF. At an equal
    q the human form wins (HTML before PDF), as HTML always has. "text/*" names HTML too (a
    more specific range wins, RFC 9110 12.5.1); "*/*" and "application/*" alone ask for the
    FHIR default, JSON, and so does "application/pdf;q=0.5, */*": the PDF is taken only where
    it is preferred to JSON, whatever range names JSON."""
    ranked = accepted(accept)
    exact = [q for media, q in ranked if media == "text/html"]
    html = max(exact or [q for media, q in ranked if media == "text/*"], default=0.0)
    pdf = max((q for media, q in ranked if media == PDF), default=0.0)
    fhir = max((q for media, q in ranked if media in FHIR_TYPES), default=0.0)
    if html > 0 and html >= max(pdf, fhir):
        return "html"
    # JSON's own q: its type's if named, else the range's that names it (the most specific)
    json = fhir if any(media in FHIR_TYPES for media, _ in ranked) else max(
        [q for media, q in ranked if media == "application/*"]
        or [q for media, q in ranked if media == "*/*"], default=0.0)
    if pdf > 0 and pdf >= json:
        return "pdf"
    return None


@router.get("/CarePlan/$citizen-view")
def citizen_view(request: Request) -> Response:
    try:
        ctx = context(request)
        _known_only(request, ctx, KNOWN, "$citizen-view takes patient (and _format, _pretty) "
                                         "only")
        patient = single(request, "patient")  # (max 1 in the OperationDefinition)
        if not patient:
            raise BadRequest("patient=<system>|<value> is required", expression="patient")
        return _citizen_view(request, ctx, patient)
    except SipHubError as err:
        _private(err)
        raise


@router.post("/CarePlan/$citizen-view")
async def citizen_view_by_post(request: Request) -> Response:
    """The same view, its patient in a Parameters resource (JSON or XML): the checks, the
    audit and the forms by Accept (Bundle, HTML, PDF) are the GET's. The URL takes _format
    and _pretty only: a patient there and another in the body would leave which is meant a
    guess."""
    try:
        ctx = context(request)
        _known_only(request, ctx, FORMAT, "$citizen-view by POST takes _format and _pretty "
                                          "in the URL only; patient goes in the Parameters "
                                          "resource")
        body = await read_body(request, request.app.state.settings.max_body_bytes)
        patient = parameters.read(body, "$citizen-view", PARAMS).string("patient")
        assert patient is not None  # (required)
        return await in_thread(request, _citizen_view, request, ctx, patient)
    except SipHubError as err:
        _private(err)
        raise


def _private(err: SipHubError) -> None:
    """A refusal of the view, not to be kept by a cache either: it names the person asked for
    (an invalid identifier) or who may not ask; it is negotiated by Accept (JSON or XML) as
    the answers are."""
    err.headers = {**PRIVATE, **err.headers}


def _known_only(request: Request, ctx: Context, known: frozenset[str], says: str) -> None:
    unknown = sorted({k for k in request.query_params.keys() if k not in known})
    if unknown and not ctx.lenient:
        # Strict, as the hub's searches are: "_summary=count" or "patient:exact" silently
        # ignored would answer a question the caller did not ask.
        raise BadRequest(f"{says}, not {', '.join(k[:40] for k in unknown[:5])}; with Prefer: "
                         "handling=lenient unknown parameters are ignored",
                         expression=unknown[0][:40])


def _citizen_view(request: Request, ctx: Context, patient: str) -> Response:
    # The form is settled before the person's data is read: a request that cannot be answered
    # (406) reads nothing, and the access log never says it was delivered.
    form = None if request.query_params.get("_format") is not None else _human_form(
        request.headers.get("accept", ""))
    fmt = response_format(request) if form is None else None
    with request.app.state.store.begin(write=False) as tx:
        seen = citizen.view(tx, ctx, patient)
    try:
        answer = _answer(request, seen.bundle, form, fmt)
    except Exception as exc:  # (audited as not delivered, then the error's usual answer)
        citizen.delivered(ctx, seen, failure=exc.diagnostics if isinstance(
            exc, SipHubError) else f"the {form or fmt} answer could not be made "
            f"({type(exc).__name__})")
        raise
    citizen.delivered(ctx, seen)
    return answer


def _answer(request: Request, out: dict[str, Any], form: str | None, fmt: str | None
            ) -> Response:
    if form == "html":
        return Response(render_citizen_html(out), media_type="text/html; charset=utf-8",
                        headers=HTML_HEADERS)
    if form == "pdf":
        # (shown by the portal's viewer; its name if the person saves it)
        return Response(render_citizen_pdf(out), media_type=PDF, headers={
            **PRIVATE, **NOSNIFF, "Content-Disposition": 'inline; filename="samordnad-plan.pdf"'})
    return respond(request, out, headers=PRIVATE, fmt=fmt)
