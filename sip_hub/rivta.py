"""RIV-TA GetCarePlans 2.0 (clinicalprocess:logistics:logistics 3.0): the citizen's SIPs as
the national portal (1177) and NPÖ read them from the hub, the plans' source system.

The plans are those of the citizen view (``sip_hub.citizen``: established, never NOPATIENT,
never the kartläggning), each as one ``carePlan``: a header naming the hub as source system
and the coordinating organisation as accountable, and the plan rendered for people (HTML,
and PDF where it fits the contract's 100 KB) as its unstructured content. Times carry no
zone in the contract: they are Swedish local time.

What the official schema refuses (a missing ``patientId``, a date that is no date, elements
out of order) is a ``BadRequest`` here, a SOAP Fault at the edge; a request the schema
accepts but this producer cannot answer (an identifier that is not a valid personnummer or
samordningsnummer, another system addressed) is ``InvalidRequest``, an answer with
``resultCode`` ERROR, as the contract's consumers expect, and in the person's access log as
every call is. What SOAP 1.1 itself refuses is its own Fault (``SoapFault``): a SOAP 1.2
envelope VersionMismatch, a header entry marked mustUnderstand other than LogicalAddress
MustUnderstand; a second Body or a Header after the Body is a Fault too, never half read.
``careContactId`` filters as the contract says: a SIP belongs to no care contact, so a
request naming any is answered with no plans.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

from lxml import etree

from . import citizen, identifiers
from .errors import BadRequest, Forbidden, SipHubError
from .fhir.sip import LOCAL
from .interactions import Context
from .process import organisation_of, ref_target
from .store import Stored, Tx

RESPONDER = "urn:riv:clinicalprocess:logistics:logistics:GetCarePlansResponder:2"
CORE = "urn:riv:clinicalprocess:logistics:logistics:3"
REGISTRY = "urn:riv:itintegration:registry:1"
# The root of HSA-ids in an II (participatingCareUnitHSAId).
HSA_OID = "1.2.752.129.2.1.4.1"
# The contract's limit on content embedded in the answer: a form larger is left out, and the
# result (INFO) says so.
MAX_EMBEDDED = 100 * 1024
PERSON_TYPES = {identifiers.RIV_PERSONNUMMER_OID: identifiers.PERSONNUMMER,
                identifiers.RIV_SAMORDNINGSNUMMER_OID: identifiers.SAMORDNINGSNUMMER}
_HSA_SYSTEMS = (identifiers.HSA_ID, identifiers.HSA_ID_ALT)
# GetCarePlansType's own children, in the schema's order, and how often each may come.
_SEQUENCE = (("careUnitHSAId", False), ("patientId", True), ("datePeriod", True),
             ("sourceSystemHSAId", True), ("careContactId", False))


class InvalidRequest(SipHubError):
    """A schema-valid request this producer cannot answer: resultCode ERROR,
    errorCode INVALID_REQUEST, with the reason as the result's message."""

    status, code = 200, "invalid"


@dataclass(frozen=True)
class Request:
    logical_address: str
    patient_id: str
    patient_type: str
    care_units: tuple[str, ...] = ()
    period: tuple[str, str] | None = None  # (start, end) as YYYYMMDD
    source_system: str | None = None
    care_contacts: tuple[str, ...] = ()


# -- the request ------------------------------------------------------------------------------

def _q(ns: str, name: str) -> str:
    return f"{{{ns}}}{name}"


def _children(el: etree._Element) -> list[etree._Element]:
    return list(el.iterchildren(etree.Element))


def _text(el: etree._Element, what: str) -> str:
    if _children(el):
        raise BadRequest(f"{what} must be text, not elements")
    return el.text or ""


def _only(parent: etree._Element, ns: str, names: tuple[str, ...], what: str
          ) -> dict[str, etree._Element]:
    """``parent``'s children ``names`` (each once, in this order, all required; elements of
    another namespace after them, as the schema's xs:any ##other allows)."""
    kids = _children(parent)
    got = [etree.QName(k) for k in kids[:len(names)]]
    if [(q.namespace, q.localname) for q in got] != [(ns, n) for n in names]:
        raise BadRequest(f"{what} must contain {', '.join(names)} (namespace {ns}), in that "
                         "order")
    for extra in kids[len(names):]:
        if etree.QName(extra).namespace in (None, ns):
            raise BadRequest(f"{what} has an unexpected element {etree.QName(extra).localname}")
    return {n: kids[i] for i, n in enumerate(names)}


def _date(el: etree._Element, what: str) -> str:
    """A DateType: its pattern is the schema's (a Fault); a day the calendar lacks
    (20260231) passes it, and is an ERROR answer (``source_system``)."""
    value = _text(el, what)
    if not (len(value) == 8 and value.isascii() and value.isdigit()
            and value[:2] in ("19", "20") and "01" <= value[4:6] <= "12"
            and "01" <= value[6:] <= "31"):
        raise BadRequest(f"{what} must be a date YYYYMMDD (1900-2099), not '{value[:20]}'")
    return value


SOAP12 = "http://www.w3.org/2003/05/soap-envelope"


class SoapFault(BadRequest):
    """A request SOAP 1.1 itself refuses, with the fault code it names (``VersionMismatch``,
    ``MustUnderstand``): a soap:Client-like Fault, HTTP 400, as the hub's other faults."""

    def __init__(self, faultcode: str, diagnostics: str) -> None:
        super().__init__(diagnostics)
        self.faultcode = faultcode


def _envelope_parts(envelope: etree._Element, soap_ns: str
                    ) -> tuple[etree._Element | None, etree._Element]:
    """(Header, Body) of a SOAP 1.1 envelope: at most one Header, first; then one Body; then
    only elements of other namespaces (SOAP 1.1 section 4)."""
    if etree.QName(envelope).localname == "Envelope" and \
            etree.QName(envelope).namespace == SOAP12:
        raise SoapFault("VersionMismatch", f"A SOAP 1.2 Envelope; GetCarePlans 2.0 (RIVTABP21) "
                        f"is SOAP 1.1 ({soap_ns})")
    if etree.QName(envelope) != etree.QName(soap_ns, "Envelope"):
        raise BadRequest(f"The body must be a SOAP 1.1 Envelope ({soap_ns})")
    kids = _children(envelope)
    names = [etree.QName(k).localname if etree.QName(k).namespace == soap_ns else None
             for k in kids]
    header = kids.pop(0) if names[:1] == ["Header"] else None
    if header is not None:
        names.pop(0)
    if names[:1] != ["Body"] or any(n is not None for n in names[1:]) or \
            any(etree.QName(k).namespace is None for k in kids[1:]):
        raise BadRequest("The SOAP Envelope must hold an optional Header, then one Body (and "
                         "after it only elements of other namespaces)")
    return header, kids[0]


def _check_must_understand(header: etree._Element, soap_ns: str) -> None:
    """A header entry the caller says must be understood, other than LogicalAddress, is one
    this producer does not understand: a MustUnderstand Fault, never silently ignored."""
    for entry in _children(header):
        flag = (entry.get(_q(soap_ns, "mustUnderstand")) or "").strip()
        if flag == "1" and etree.QName(entry) != etree.QName(REGISTRY, "LogicalAddress"):
            raise SoapFault("MustUnderstand", f"The header entry {etree.QName(entry).text[:120]}"
                            " is marked mustUnderstand and is not understood here")
        if flag not in ("", "0", "1"):
            raise BadRequest("soap:mustUnderstand must be 0 or 1")


def read_request(envelope: etree._Element, soap_ns: str) -> Request:
    """The GetCarePlans request in a SOAP 1.1 envelope (parsed by ``sip_hub.xml``), checked
    as the official schema checks it."""
    header, body = _envelope_parts(envelope, soap_ns)
    if header is not None:
        _check_must_understand(header, soap_ns)
    addresses = [] if header is None else header.findall(_q(REGISTRY, "LogicalAddress"))
    if len(addresses) != 1:
        raise BadRequest(f"The SOAP Header must carry one LogicalAddress ({REGISTRY}), the "
                         "HSA-id of the source system addressed")
    payload = _children(body)
    if len(payload) != 1 or etree.QName(payload[0]) != etree.QName(RESPONDER, "GetCarePlans"):
        raise BadRequest(f"The SOAP Body must hold one GetCarePlans ({RESPONDER})")
    seen: dict[str, list[etree._Element]] = {}
    at = 0
    for kid in _children(payload[0]):
        q = etree.QName(kid)
        if q.namespace != RESPONDER:
            if q.namespace is None:
                raise BadRequest(f"GetCarePlans has an element {q.localname} in no namespace")
            at = len(_SEQUENCE)  # (xs:any ##other: only after the contract's own elements)
            continue
        names = [n for n, _ in _SEQUENCE]
        if q.localname not in names or names.index(q.localname) < at:
            raise BadRequest(f"GetCarePlans has an unexpected element {q.localname} (its "
                             f"elements are {', '.join(names)}, in that order)")
        at = names.index(q.localname)
        seen.setdefault(q.localname, []).append(kid)
        if _SEQUENCE[at][1] and len(seen[q.localname]) > 1:
            raise BadRequest(f"GetCarePlans may have one {q.localname} only")
    if "patientId" not in seen:
        raise BadRequest("GetCarePlans must have a patientId")
    person = _only(seen["patientId"][0], CORE, ("id", "type"), "patientId")
    period = None
    if "datePeriod" in seen:
        dp = _only(seen["datePeriod"][0], CORE, ("start", "end"), "datePeriod")
        period = (_date(dp["start"], "datePeriod/start"), _date(dp["end"], "datePeriod/end"))
    source = seen.get("sourceSystemHSAId")
    return Request(logical_address=_text(addresses[0], "LogicalAddress"),
                   patient_id=_text(person["id"], "patientId/id"),
                   patient_type=_text(person["type"], "patientId/type"),
                   care_units=tuple(_text(e, "careUnitHSAId")
                                    for e in seen.get("careUnitHSAId", [])),
                   period=period,
                   source_system=_text(source[0], "sourceSystemHSAId") if source else None,
                   care_contacts=tuple(_text(e, "careContactId")
                                       for e in seen.get("careContactId", [])))


def _hsa(value: str, what: str) -> str:
    try:
        return identifiers.normalise_hsa_id(value)
    except identifiers.InvalidIdentifier as exc:
        raise InvalidRequest(f"{what} '{value[:40]}' is not an HSA-id: {exc.reason}") from None


def source_system(req: Request, hub: str) -> str:
    """The hub's HSA-id, after checking that the request addresses it. ``hub`` empty (no
    SIP_HUB_MESSAGE_HUB_HSA_ID, allowed outside production): any HSA-id addressed is taken
    as the hub's."""
    address = _hsa(req.logical_address, "LogicalAddress")
    if hub and address != hub:
        raise InvalidRequest(f"LogicalAddress {address} is not this source system; address "
                             f"its HSA-id {hub}")
    if req.source_system is not None and _hsa(req.source_system, "sourceSystemHSAId") != address:
        raise InvalidRequest("sourceSystemHSAId must be the LogicalAddress, the source system "
                             "addressed")
    if req.period is not None:
        for value in req.period:
            try:
                date(int(value[:4]), int(value[4:6]), int(value[6:]))
            except ValueError:
                raise InvalidRequest(f"datePeriod: {value} is not a day") from None
        if req.period[0] > req.period[1]:
            raise InvalidRequest("datePeriod's start is after its end")
    return hub or address


def patient_token(req: Request) -> str:
    """The citizen as the citizen view names them, ``<system>|<12 digits>``."""
    system = PERSON_TYPES.get(req.patient_type)
    if system is None:
        raise InvalidRequest(f"patientId/type must be the personnummer OID "
                             f"{identifiers.RIV_PERSONNUMMER_OID} or the samordningsnummer OID "
                             f"{identifiers.RIV_SAMORDNINGSNUMMER_OID}, not "
                             f"'{req.patient_type[:40]}'")
    pid = req.patient_id
    if len(pid) != 12 or not (pid.isascii() and pid.isdigit()):
        raise InvalidRequest("patientId/id must be 12 digits, YYYYMMDDNNNN")
    try:
        identifiers.canonical_identifier(system, pid)
    except identifiers.InvalidIdentifier as exc:
        kind = "personnummer" if system == identifiers.PERSONNUMMER else "samordningsnummer"
        raise InvalidRequest(f"patientId/id is not a valid {kind}: {exc.reason}") from None
    return f"{system}|{pid}"


# -- the answer -------------------------------------------------------------------------------

def local_time(when: datetime) -> str:
    return when.astimezone(LOCAL).strftime("%Y%m%d%H%M%S")


def _us_time(us: int) -> str:
    return local_time(datetime.fromtimestamp(us / 1_000_000, tz=timezone.utc))


def _fhir_time(value: Any) -> str | None:
    """A FHIR dateTime as local time (a date alone: its start, in Sweden)."""
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        # (year 1 or 9999 in a far zone: outside what a datetime holds in Swedish time)
        out = local_time(when if when.tzinfo else when.replace(tzinfo=LOCAL))
    except (ValueError, OverflowError):
        return None
    return out if out[:2] in ("19", "20") else None  # (the contract's years)


def _hsa_id(org: dict[str, Any] | None) -> str | None:
    for ident in (org or {}).get("identifier", []):
        if isinstance(ident, dict) and ident.get("system") in _HSA_SYSTEMS \
                and isinstance(ident.get("value"), str):
            return ident["value"]
    return None


def _ref(ref: Any) -> str | None:
    target = ref_target(ref)
    return f"{target[0]}/{target[1]}" if target else None


def _unit_refs(plan: dict[str, Any], linked: dict[str, dict[str, Any]]) -> list[Any]:
    """The References to the organisations taking part in the plan's care teams (as
    ``linked`` holds them): each participant's organisation (``process.organisation_of``:
    its onBehalfOf, or the Organization itself while it has not named its representative),
    and the teams' managing organisations."""
    refs: list[Any] = []
    for team in (linked.get(_ref(r) or "") for r in plan.get("careTeam", [])):
        refs += [organisation_of(p) for p in (team or {}).get("participant", [])
                 if isinstance(p, dict)]
        refs += (team or {}).get("managingOrganization", [])
    return refs


@dataclass
class _Plan:
    stored: Stored
    doc: dict[str, Any]
    time: str
    author: dict[str, Any] | None
    care_giver: str | None
    units: list[str]


def _plans(tx: Tx, plans: list[tuple[Stored, dict[str, Any]]],
           linked: dict[str, dict[str, Any]]) -> Iterator[_Plan]:
    """Each plan (as the citizen may read it) with what its header and body name, looked up
    among ``linked`` (what the citizen view includes, as shown) and the organisations they
    name, read once for all plans."""
    linked = dict(linked)
    wanted: list[str] = []
    for _, doc in plans:
        wanted += [_ref(r) or "" for r in _unit_refs(doc, linked)]
    for org in list(linked.values()):
        if org.get("resourceType") == "Organization":
            wanted.append(_ref(org.get("partOf")) or "")
    keys = [("Organization", k.split("/", 1)[1]) for k in dict.fromkeys(wanted)
            if k.startswith("Organization/") and k not in linked]
    linked |= {f"{s.type}/{s.id}": s.json() for s in tx.current_many(keys)}
    for s, doc in plans:
        author = linked.get(_ref(doc.get("author")) or "")
        parent = linked.get(_ref((author or {}).get("partOf")) or "")
        units: list[str] = []
        for ref in _unit_refs(doc, linked):
            hsa = _hsa_id(linked.get(_ref(ref) or ""))
            if hsa and hsa not in units:
                units.append(hsa)
        # The care giver (vårdgivare) is the organisation the coordinating unit is part of,
        # where the hub knows it; else the unit itself, the most the hub can say.
        yield _Plan(s, doc, _us_time(s.last_updated), author,
                    _hsa_id(parent) or _hsa_id(author), units)


def _keep(plan: _Plan, req: Request) -> bool:
    if req.care_contacts:
        # A filter on care contacts (vårdkontakter): a SIP belongs to none, so none matches;
        # never the filter ignored and every plan answered.
        return False
    if req.care_units:
        wanted = {u.strip().upper() for u in req.care_units}
        if not wanted & {_hsa_id(plan.author), *plan.units}:
            return False
    if req.period is not None:
        return req.period[0] <= plan.time[:8] <= req.period[1]
    return True


def _el(parent: etree._Element, name: str, text: str | None = None, ns: str = CORE
        ) -> etree._Element:
    el = etree.SubElement(parent, _q(ns, name))
    if text is not None:
        el.text = text
    return el


# The plan for people: (media type, bytes) of each form, from a citizen view Bundle of it.
Render = Callable[[dict[str, Any]], list[tuple[str, bytes]]]


def _contents(plan: _Plan, linked: dict[str, dict[str, Any]], render: Render
              ) -> list[tuple[str, bytes]]:
    bundle = {"entry": [{"resource": plan.doc, "search": {"mode": "match"}}] + [
        {"resource": doc, "search": {"mode": "include"}} for doc in linked.values()]}
    return [(media, data) for media, data in render(bundle) if len(data) <= MAX_EMBEDDED]


def _care_plan(parent: etree._Element, plan: _Plan, req: Request, hub: str,
               contents: list[tuple[str, bytes]]) -> None:
    cp = _el(parent, "carePlan", ns=RESPONDER)
    head = _el(cp, "carePlanHeader")
    _el(head, "documentId", plan.stored.id)
    _el(head, "sourceSystemHSAId", hub)
    _el(head, "documentTitle", plan.doc.get("title") or "Samordnad individuell plan")
    _el(head, "documentTime", plan.time)
    person = _el(head, "patientId")
    _el(person, "id", req.patient_id)
    _el(person, "type", req.patient_type)
    who = _el(head, "accountableHealthcareProfessional")
    _el(who, "authorTime", _fhir_time(plan.doc.get("created")) or plan.time)
    unit = _hsa_id(plan.author)
    if plan.author is not None:
        org = _el(who, "healthcareProfessionalOrgUnit")
        if unit:
            _el(org, "orgUnitHSAId", unit)
        if isinstance(plan.author.get("name"), str):
            _el(org, "orgUnitName", plan.author["name"])
    if unit:
        _el(who, "healthcareProfessionalCareUnitHSAId", unit)
    if plan.care_giver:
        _el(who, "healthcareProfessionalCareGiverHSAId", plan.care_giver)
    # Every plan shown is one the person approved (citizen.SHOWN_STATUSES, intent plan).
    _el(head, "approvedForPatient", "true")
    body = _el(cp, "carePlanBody")
    for media, data in contents:
        content = _el(body, "content")
        _el(content, "mediaType", media)
        _el(content, "value", base64.b64encode(data).decode("ascii"))
    for hsa in plan.units:
        ii = _el(body, "participatingCareUnitHSAId")
        _el(ii, "root", HSA_OID)
        _el(ii, "extension", hsa)
    _el(body, "typeOfCarePlanEnum", "SIP")


def result(parent: etree._Element, code: str, log_id: str, message: str | None = None
           ) -> None:
    res = _el(parent, "result", ns=RESPONDER)
    _el(res, "resultCode", code)
    if code == "ERROR":
        _el(res, "errorCode", "INVALID_REQUEST")
    _el(res, "logId", log_id)
    if message:
        _el(res, "message", message)


def response() -> etree._Element:
    return etree.Element(_q(RESPONDER, "GetCarePlansResponse"),
                         nsmap={None: RESPONDER, "core": CORE})


def error_response(err: InvalidRequest, log_id: str) -> etree._Element:
    out = response()
    result(out, "ERROR", log_id, err.diagnostics)
    return out


def _query(req: Request) -> str:
    # (cut: an id of megabytes, which the answer refuses, is not kept in the log either)
    return f"GetCarePlans?patientId={req.patient_type[:64]}|{req.patient_id[:64]}"


def _refused(tx: Tx, ctx: Context, req: Request, err: Forbidden | InvalidRequest) -> None:
    try:
        token = patient_token(req)
    except InvalidRequest:
        token = None
    citizen.refused(tx, ctx, token, err, _query(req))


def get_care_plans(tx: Tx, ctx: Context, req: Request, hub: str, log_id: str, render: Render
                   ) -> etree._Element:
    """The GetCarePlansResponse for ``req`` (``hub``: the hub's HSA-id, empty if unset),
    audited as the citizen view is: the person's access log shows the portal's read, or
    its refusal."""
    try:
        citizen.check_caller(ctx)
    except Forbidden as err:
        _refused(tx, ctx, req, err)
        raise
    try:
        source = source_system(req, hub)
        token = patient_token(req)
        try:
            plans, extra, patients = citizen.plans_for(tx, token)
        except BadRequest as err:  # (checked above; the contract's answer all the same)
            raise InvalidRequest(err.diagnostics) from None
    except InvalidRequest as err:
        # An ERROR answer is a call about the person too: their access log shows it.
        _refused(tx, ctx, req, err)
        raise
    # Each version read once, as the citizen may read it (a plan's contained kartläggning
    # left out), for every plan's header, body and rendering.
    shown = [(s, citizen.shown(s.json(), patients)) for s in plans]
    linked = {f"{s.type}/{s.id}": citizen.shown(s.json(), patients) for s in extra}
    kept = [p for p in _plans(tx, shown, linked) if _keep(p, req)]
    out = response()
    too_large = []
    found = tx.current_many([("Patient", pid) for pid in sorted(patients)])
    accessed = found + [p.stored for p in kept] + extra
    try:
        for plan in kept:
            contents = _contents(plan, linked, render)
            if not contents:
                too_large.append(plan.stored.id)
            _care_plan(out, plan, req, source, contents)
    except Exception as exc:  # (read, never delivered: audited as such, then a soap:Server)
        ctx.record("search-type", accessed, outcome="8", rtype="CarePlan", query=_query(req),
                   detail=f"Not delivered: the answer could not be made ({type(exc).__name__})")
        raise
    ctx.record("search-type", accessed, rtype="CarePlan", query=_query(req))
    if too_large:
        result(out, "INFO", log_id, f"The content of {', '.join(too_large)} is larger than "
               f"the contract's {MAX_EMBEDDED} bytes and is not embedded")
    else:
        result(out, "OK", log_id)
    return out


def new_log_id() -> str:
    return str(uuid.uuid4())
