"""RIV-TA GetCarePlans 2.0 producer (SOAP 1.1, document/literal, RIVTABP21) for the national
portal (1177) and NPÖ: ``sip_hub.rivta`` answers, this module speaks SOAP.

The caller authenticates as every API client does (a bearer token of the portal role, the
citizen view's). What the contract cannot carry is a SOAP Fault with an HTTP status that
still says what happened: ``soap:Client`` with 400 (not XML, a DOCTYPE, not the schema's
request), 401 (no valid token), 403 (not the portal), 413, 415; ``soap:VersionMismatch``
(a SOAP 1.2 envelope) and ``soap:MustUnderstand`` (a header entry not understood) with 400;
``soap:Server`` with 500.
A schema-valid request this producer cannot answer is a 200 with ``resultCode`` ERROR.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request
from lxml import etree
from starlette.responses import Response

from .. import rivta, xml
from ..errors import (BadRequest, InternalError, MethodNotAllowed, SipHubError,
                      UnsupportedMediaType)
from .pdf import render_citizen_pdf
from .render import render_citizen_html
from .wire import context, in_thread, read_raw

log = logging.getLogger("sip_hub.rivta")
router = APIRouter(tags=["national portal"])
PATH = "/rivta/clinicalprocess/logistics/logistics/GetCarePlans/2/rivtabp21"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
# The WSDL's SOAPAction, and the one clients are seen sending (standards.md): both taken;
# none or an empty one too (the operation is the Body's element).
SOAP_ACTIONS = frozenset({
    "urn:riv:clinicalprocess:logistics:GetCarePlansResponder:2:GetCarePlans",
    "urn:riv:clinicalprocess:logistics:logistics:GetCarePlansResponder:2:GetCarePlans", ""})
_XML_TYPES = frozenset({"text/xml", "application/xml", "application/soap+xml"})
# The person's own plans: no cache on the way keeps them.
PRIVATE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
MEDIA = "text/xml; charset=utf-8"


def _envelope(payload: etree._Element) -> bytes:
    env = etree.Element(etree.QName(SOAP, "Envelope"), nsmap={"soap": SOAP})
    etree.SubElement(env, etree.QName(SOAP, "Body")).append(payload)
    return xml.tostring(env)


def fault(err: SipHubError) -> Response:
    """``err`` as a SOAP 1.1 Fault: soap:Client for what the caller can mend (or the code
    SOAP itself names: VersionMismatch, MustUnderstand)."""
    client = err.status < 500
    body = etree.Element(etree.QName(SOAP, "Fault"), nsmap={"soap": SOAP})
    code = getattr(err, "faultcode", None) or ("Client" if client else "Server")
    etree.SubElement(body, "faultcode").text = f"soap:{code}"
    etree.SubElement(body, "faultstring").text = err.diagnostics
    headers = {**PRIVATE, **{k: v for k, v in err.headers.items()
                             if k.lower() in ("www-authenticate", "allow")}}
    return Response(_envelope(body), status_code=err.status, media_type=MEDIA, headers=headers)


def _render(bundle: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The plan as HTML, and as PDF unless its HTML is already over the contract's limit:
    ReportLab's time grows with the square of a long text (40 s for a plan of 350 KB, past the
    contract's 27 s, for a PDF too large to embed all the same), so such a plan is not set as
    PDF at all; it is answered without content, and the result (INFO) says so."""
    html = render_citizen_html(bundle)
    if len(html) > rivta.MAX_EMBEDDED:
        return [("text/html", html)]
    return [("text/html", html), ("application/pdf", render_citizen_pdf(bundle))]


def _answer(request: Request, ctx: Any, req: rivta.Request, log_id: str) -> etree._Element:
    hub = request.app.state.messaging.config.hub_hsa_id
    with request.app.state.store.begin(write=False) as tx:
        return rivta.get_care_plans(tx, ctx, req, hub, log_id, _render)


@router.post(PATH)
async def get_care_plans(request: Request) -> Response:
    log_id = rivta.new_log_id()
    try:
        ctx = context(request)
        ctype = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if ctype not in _XML_TYPES:
            raise UnsupportedMediaType(f"Send the SOAP 1.1 envelope as text/xml, not "
                                       f"'{ctype[:60]}'")
        action = request.headers.get("soapaction", "").strip().strip('"')
        if action not in SOAP_ACTIONS:
            raise BadRequest(f"SOAPAction '{action[:100]}' is not GetCarePlans 2.0's")
        raw = await read_raw(request, request.app.state.settings.max_body_bytes)
        req = rivta.read_request(xml.parse(raw), SOAP)
        try:
            out = await in_thread(request, _answer, request, ctx, req, log_id)
        except rivta.InvalidRequest as err:
            out = rivta.error_response(err, log_id)
        log.info("GetCarePlans %s: %s", log_id, out.findtext(
            f"{{{rivta.RESPONDER}}}result/{{{rivta.CORE}}}resultCode"))
    except SipHubError as err:
        return fault(err)
    except Exception:  # noqa: BLE001 (a Fault, as the contract's consumers read errors)
        log.exception("GetCarePlans %s failed", log_id)
        return fault(InternalError(f"Internal error; logged with logId {log_id}"))
    return Response(_envelope(out), media_type=MEDIA, headers=PRIVATE)


@router.api_route(PATH, methods=["GET", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"],
                  include_in_schema=False)
def other_method(request: Request) -> Response:
    """Another method than POST: the endpoint speaks SOAP, so a 405 SOAP 1.1 Fault (Client),
    with ``Allow``, not the FHIR API's OperationOutcome."""
    err = MethodNotAllowed(f"GetCarePlans is called with POST (a SOAP 1.1 envelope), not "
                           f"{request.method}")
    err.headers = {**err.headers, "Allow": "POST"}
    return fault(err)
