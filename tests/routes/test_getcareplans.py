"""RIV-TA GetCarePlans 2.0 for the national portal (1177, NPÖ): the citizen's established SIPs
as the official contract has them; every request and answer checked against its XSDs."""

from __future__ import annotations

import base64
import copy
import uuid
from pathlib import Path

import pytest
from lxml import etree

import sip_factory as f
import sip_process
from conftest import REQUIRE
from fhirhttp import body
from sip_hub.fhir import sip
from sip_hub.routes.rivta import PATH

RIV = Path(__file__).resolve().parents[3] / "shared" / "riv" / \
    "clinicalprocess_logistics_logistics_3.0"
HUB = "SE2321000016-HUB1"
PORTAL = "SE2321000016-1177"
SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
RESPONDER = "urn:riv:clinicalprocess:logistics:logistics:GetCarePlansResponder:2"
CORE = "urn:riv:clinicalprocess:logistics:logistics:3"
REGISTRY = "urn:riv:itintegration:registry:1"
PNR_OID = "1.2.752.129.2.1.3.1"
ACTION = "urn:riv:clinicalprocess:logistics:GetCarePlansResponder:2:GetCarePlans"
ACTION_SEEN = "urn:riv:clinicalprocess:logistics:logistics:GetCarePlansResponder:2:GetCarePlans"


@pytest.fixture(scope="module")
def schemas() -> tuple[etree.XMLSchema, etree.XMLSchema]:
    """The official responder and registry schemas (../shared/riv beside the repository)."""
    responder = RIV / "interactions" / "GetCarePlansInteraction" / "GetCarePlansResponder_2.0.xsd"
    if not responder.is_file():
        if REQUIRE:
            pytest.fail(f"the official schemas are required: {responder}")
        pytest.skip(f"the official schemas are not at {responder}")
    registry = RIV / "core_components" / "itintegration_registry_1.0.xsd"
    return (etree.XMLSchema(etree.parse(str(responder))),
            etree.XMLSchema(etree.parse(str(registry))))


@pytest.fixture(autouse=True)
def _hub_hsa_id(monkeypatch):
    """The hub's own HSA-id, read when the app (the ``anonymous`` fixture) starts."""
    monkeypatch.setenv("SIP_HUB_MESSAGE_HUB_HSA_ID", HUB)


@pytest.fixture
def alva(client):
    sip_process.write_case(client, {}, f.demo_case())


def request_xml(pnr: str = f.DEMO_PNR, *, type_: str = PNR_OID, address: str = HUB,
                units: tuple[str, ...] = (), period: tuple[str, str] | None = None,
                source: str | None = HUB) -> str:
    parts = [f"<r:careUnitHSAId>{u}</r:careUnitHSAId>" for u in units]
    parts.append(f"<r:patientId><c:id>{pnr}</c:id><c:type>{type_}</c:type></r:patientId>")
    if period:
        parts.append(f"<r:datePeriod><c:start>{period[0]}</c:start><c:end>{period[1]}</c:end>"
                     "</r:datePeriod>")
    if source is not None:
        parts.append(f"<r:sourceSystemHSAId>{source}</r:sourceSystemHSAId>")
    return (f'<soap:Envelope xmlns:soap="{SOAP}" xmlns:r="{RESPONDER}" xmlns:c="{CORE}" '
            f'xmlns:itr="{REGISTRY}"><soap:Header><itr:LogicalAddress>{address}'
            f'</itr:LogicalAddress></soap:Header><soap:Body><r:GetCarePlans>{"".join(parts)}'
            "</r:GetCarePlans></soap:Body></soap:Envelope>")


def _standalone(el: etree._Element) -> etree._ElementTree:
    return etree.ElementTree(copy.deepcopy(el))


def assert_request_valid(schemas, text: str) -> None:
    responder, registry = schemas
    env = etree.fromstring(text.encode())
    responder.assertValid(_standalone(env.find(f"{{{SOAP}}}Body")[0]))
    registry.assertValid(_standalone(env.find(f"{{{SOAP}}}Header")[0]))


def post(c, headers, text: str, action: str = ACTION, ctype: str = "text/xml; charset=utf-8"):
    return c.post(PATH, content=text.encode(),
                  headers={**headers, "Content-Type": ctype, "SOAPAction": f'"{action}"'})


def answer(schemas, r) -> etree._Element:
    """The GetCarePlansResponse of an HTTP 200, valid by the official schema."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/xml")
    assert r.headers["cache-control"] == "no-store"
    env = etree.fromstring(r.content)
    out = env.find(f"{{{SOAP}}}Body")[0]
    schemas[0].assertValid(_standalone(out))
    assert etree.QName(out).localname == "GetCarePlansResponse"
    return out


def call(c, headers, schemas, **kw) -> etree._Element:
    text = request_xml(**kw)
    assert_request_valid(schemas, text)
    return answer(schemas, post(c, headers, text))


def result(out) -> tuple[str, str]:
    res = out.find(f"{{{RESPONDER}}}result")
    log_id = res.findtext(f"{{{CORE}}}logId")
    uuid.UUID(log_id)
    return res.findtext(f"{{{CORE}}}resultCode"), res.findtext(f"{{{CORE}}}message") or ""


def plans(out) -> list[etree._Element]:
    return out.findall(f"{{{RESPONDER}}}carePlan")


def core(el, path: str) -> str | None:
    return el.findtext("/".join(f"{{{CORE}}}{p}" for p in path.split("/")))


def fault(r, status: int) -> str:
    assert r.status_code == status, r.text
    env = etree.fromstring(r.content)
    fl = env.find(f"{{{SOAP}}}Body/{{{SOAP}}}Fault")
    assert fl is not None, r.text
    assert fl.findtext("faultcode") == ("soap:Client" if status < 500 else "soap:Server")
    return fl.findtext("faultstring")


def test_the_established_plan_is_answered_as_the_contract_has_it(client, alva, portal, schemas):
    out = call(client, portal, schemas)
    assert result(out) == ("OK", "")
    [cp] = plans(out)
    assert core(cp, "carePlanHeader/documentId") == "alva-sip"
    assert core(cp, "carePlanHeader/sourceSystemHSAId") == HUB
    assert core(cp, "carePlanHeader/documentTitle") == "SIP för Alva Andersson"
    assert len(core(cp, "carePlanHeader/documentTime")) == 14
    assert core(cp, "carePlanHeader/patientId/id") == f.DEMO_PNR
    assert core(cp, "carePlanHeader/patientId/type") == PNR_OID
    assert core(cp, "carePlanHeader/approvedForPatient") == "true"
    who = "carePlanHeader/accountableHealthcareProfessional/"
    # created 2026-11-20T14:30:00+01:00: Swedish local time, no zone
    assert core(cp, who + "authorTime") == "20261120143000"
    assert core(cp, who + "healthcareProfessionalCareUnitHSAId") == sip_process.SOC
    assert core(cp, who + "healthcareProfessionalCareGiverHSAId") == sip_process.SOC
    assert core(cp, who + "healthcareProfessionalOrgUnit/orgUnitName").startswith("Socialtj")
    units = [ii.findtext(f"{{{CORE}}}extension") for ii in
             cp.iter(f"{{{CORE}}}participatingCareUnitHSAId")]
    assert sorted(units) == sorted([sip_process.SOC, sip_process.BUP, sip_process.SCHOOL])
    assert {ii.findtext(f"{{{CORE}}}root") for ii in
            cp.iter(f"{{{CORE}}}participatingCareUnitHSAId")} == {"1.2.752.129.2.1.4.1"}
    assert core(cp, "carePlanBody/typeOfCarePlanEnum") == "SIP"
    contents = {c.findtext(f"{{{CORE}}}mediaType"):
                base64.b64decode(c.findtext(f"{{{CORE}}}value"))
                for c in cp.iter(f"{{{CORE}}}content")}
    assert set(contents) == {"text/html", "application/pdf"}
    assert all(len(v) <= 100 * 1024 for v in contents.values())
    html = contents["text/html"].decode()
    assert "SIP för Alva Andersson" in html
    assert "Alva somnar före klockan 23 på vardagar" in html
    assert "Samtalsbehandling (KBT)" in html
    assert "Somnar sent" not in html  # the kartläggning never reaches the citizen
    assert contents["application/pdf"].startswith(b"%PDF")


def test_document_time_is_the_last_update_in_swedish_local_time(client, alva, portal, schemas):
    from datetime import datetime
    from zoneinfo import ZoneInfo
    plan = client.get("/fhir/CarePlan/alva-sip").json()
    updated = datetime.fromisoformat(plan["meta"]["lastUpdated"].replace("Z", "+00:00"))
    [cp] = plans(call(client, portal, schemas))
    assert core(cp, "carePlanHeader/documentTime") == \
        updated.astimezone(ZoneInfo("Europe/Stockholm")).strftime("%Y%m%d%H%M%S")


@pytest.mark.parametrize("action", [ACTION, ACTION_SEEN, ""])
def test_both_soap_actions_are_taken(client, alva, portal, schemas, action):
    r = post(client, portal, request_xml(), action=action)
    assert len(plans(answer(schemas, r))) == 1


def test_another_soap_action_is_a_client_fault(client, alva, portal):
    assert "SOAPAction" in fault(post(client, portal, request_xml(), action="urn:x:Other"), 400)


def test_filters_by_care_unit(client, alva, portal, schemas):
    assert len(plans(call(client, portal, schemas, units=(sip_process.SOC,)))) == 1
    assert len(plans(call(client, portal, schemas, units=(sip_process.BUP,)))) == 1
    assert len(plans(call(client, portal, schemas,
                          units=("SE2321000016-HAB1", sip_process.SCHOOL)))) == 1
    out = call(client, portal, schemas, units=("SE2321000016-HAB1",))
    assert plans(out) == [] and result(out)[0] == "OK"


def _case_with_an_invited_unit() -> list[dict]:
    """The demo SIP with habilitation taking part as the organisation itself: invited, its
    representative not yet named (member the Organization, no onBehalfOf), as the profile's
    sip-ct-4 allows and ``invitations`` writes."""
    case = []
    for r in copy.deepcopy(f.demo_case()):
        if r["resourceType"] == "CareTeam":
            r["participant"].append(f.participant(f.HABILITATION,
                                                  "organisation-representative"))
        case.append(r)
        if r["resourceType"] == "Organization" and r["id"] == "skolan":
            case.append(f.habilitation())
    return case


def test_a_unit_taking_part_as_itself_participates_and_filters(client, portal, schemas):
    """An invited unit that has not yet named its representative takes part in the SIP:
    the portal sees it among participatingCareUnitHSAId and finds the plan by it as
    careUnitHSAId (only onBehalfOf was followed: the unit was missing and found nothing)."""
    sip_process.write_case(client, {}, _case_with_an_invited_unit())
    [cp] = plans(call(client, portal, schemas))
    units = [ii.findtext(f"{{{CORE}}}extension") for ii in
             cp.iter(f"{{{CORE}}}participatingCareUnitHSAId")]
    assert sorted(units) == sorted([sip_process.SOC, sip_process.BUP, sip_process.SCHOOL,
                                    f.HABILITATION_HSA])
    assert len(plans(call(client, portal, schemas, units=(f.HABILITATION_HSA,)))) == 1


def test_filters_by_date_period_on_document_time(client, alva, portal, schemas):
    [cp] = plans(call(client, portal, schemas))
    day = core(cp, "carePlanHeader/documentTime")[:8]
    assert len(plans(call(client, portal, schemas, period=(day, day)))) == 1
    assert len(plans(call(client, portal, schemas, period=("19900101", day)))) == 1
    assert plans(call(client, portal, schemas, period=("20000101", "20001231"))) == []


def test_a_draft_plan_is_not_answered(client, alva, portal, schemas):
    plan = client.get("/fhir/CarePlan/alva-sip").json()
    plan["status"] = "draft"
    assert client.put("/fhir/CarePlan/alva-sip", **body(plan)).status_code == 200
    out = call(client, portal, schemas)
    assert plans(out) == [] and result(out)[0] == "OK"


def test_a_nopatient_plan_is_never_answered(client, alva, portal, schemas):
    plan = client.get("/fhir/CarePlan/alva-sip").json()
    plan["meta"]["security"] = [sip.NOPATIENT.coding()]
    assert client.put("/fhir/CarePlan/alva-sip", **body(plan)).status_code == 200
    assert plans(call(client, portal, schemas)) == []


def test_a_person_without_plans_gets_an_empty_ok(client, alva, portal, schemas):
    out = call(client, portal, schemas, pnr=f.TOLVAN_PNR)
    assert plans(out) == [] and result(out)[0] == "OK"


@pytest.mark.parametrize("pnr, type_, says", [
    ("20110314238", PNR_OID, "12 digits"),
    ("20110314-2384", PNR_OID, "12 digits"),
    ("201103142385", PNR_OID, "not a valid personnummer"),
    (f.DEMO_PNR, "1.2.752.129.2.1.3.9", "personnummer OID"),
    (f.DEMO_PNR, "1.2.752.129.2.1.3.3", "samordningsnummer"),
])
def test_an_invalid_patient_id_is_an_error_result(client, alva, portal, schemas, pnr, type_,
                                                  says):
    out = call(client, portal, schemas, pnr=pnr, type_=type_)
    code, message = result(out)
    assert code == "ERROR" and says in message and plans(out) == []
    assert out.findtext(f"{{{RESPONDER}}}result/{{{CORE}}}errorCode") == "INVALID_REQUEST"


def test_a_samordningsnummer_is_taken(client, portal, schemas):
    out = call(client, portal, schemas, pnr=f.DEMO_SAMORDNINGSNUMMER, type_="1.2.752.129.2.1.3.3")
    assert result(out)[0] == "OK"


@pytest.mark.parametrize("kw, says", [
    ({"address": "SE2321000016-OTH1", "source": "SE2321000016-OTH1"}, HUB),
    ({"source": "SE2321000016-OTH1"}, "sourceSystemHSAId"),
    ({"address": "not-an-hsa-id", "source": None}, "not an HSA-id"),
    ({"period": ("20260231", "20260301")}, "not a day"),
    ({"period": ("20260301", "20260201")}, "after its end"),
])
def test_another_source_system_or_a_wrong_period_is_an_error_result(client, alva, portal,
                                                                    schemas, kw, says):
    out = call(client, portal, schemas, **kw)
    code, message = result(out)
    assert code == "ERROR" and says in message and plans(out) == []


def test_without_source_system_the_logical_address_is_enough(client, alva, portal, schemas):
    assert len(plans(call(client, portal, schemas, source=None))) == 1


def test_without_a_configured_hub_hsa_id_the_address_is_taken(client, alva, portal, schemas):
    client.app.state.messaging.config.hub_hsa_id = ""
    other = "SE2321000016-DEV1"
    [cp] = plans(call(client, portal, schemas, address=other, source=other))
    assert core(cp, "carePlanHeader/sourceSystemHSAId") == other


def test_no_token_is_401_and_another_role_403_as_faults(anonymous, alva, as_org, client):
    anonymous.headers.pop("Authorization", None)
    r = post(anonymous, {}, request_xml())
    assert "Authentication required" in fault(r, 401)
    assert r.headers["www-authenticate"].startswith("Bearer")
    r = post(anonymous, as_org(sip_process.SOC), request_xml())
    assert "national portal" in fault(r, 403)
    assert "alva-sip" not in r.text


@pytest.mark.parametrize("text, says", [
    ("<soap:Envelope", "Malformed XML"),
    ("", "Malformed XML"),
    ('{"patient": "x"}', "Malformed XML"),
    (f'<Envelope xmlns="{SOAP}"><Body/></Envelope>', "LogicalAddress"),
    (request_xml().replace("<soap:Header>", "<soap:Header><x/>").replace(
        "<itr:LogicalAddress>", "<itr:Other>").replace("</itr:LogicalAddress>", "</itr:Other>"),
     "LogicalAddress"),
    (request_xml().replace("r:GetCarePlans", "r:GetCareContacts"), "GetCarePlans"),
    (request_xml().replace("<c:id>", "<r:id>").replace("</c:id>", "</r:id>"), "patientId"),
    (request_xml(period=("2026-01-01", "20260201")), "YYYYMMDD"),
    (request_xml(units=("X",)).replace("<r:careUnitHSAId>X</r:careUnitHSAId>", "").replace(
        "</r:GetCarePlans>", "<r:careUnitHSAId>X</r:careUnitHSAId></r:GetCarePlans>"),
     "careUnitHSAId"),
    (request_xml().replace("<r:patientId>", "<r:patientIdX>").replace(
        "</r:patientId>", "</r:patientIdX>"), "patientIdX"),
    (request_xml().replace("<r:sourceSystemHSAId>", "<sourceSystemHSAId>").replace(
        "</r:sourceSystemHSAId>", "</sourceSystemHSAId>"), "no namespace"),
])
def test_what_the_schema_refuses_is_a_client_fault(client, alva, portal, schemas, text, says):
    assert says in fault(post(client, portal, text), 400)
    try:  # the official schema refuses the payload too (where there is one to check)
        env = etree.fromstring(text.encode())
        payload = env.find(f"{{{SOAP}}}Body")[0]
    except (etree.XMLSyntaxError, TypeError, IndexError, ValueError):
        return
    if says == "LogicalAddress":  # (a header the WSDL requires; the payload may be fine)
        return
    if etree.QName(payload).localname == "GetCarePlans" and \
            etree.QName(payload).namespace == RESPONDER:
        assert not schemas[0].validate(_standalone(payload))


def test_mangled_requests_are_answered_never_a_500(client, alva, portal, schemas):
    text = request_xml(units=(sip_process.SOC,), period=("20000101", "20991231"))
    for i in range(0, len(text), 7):
        for mangled in (text[:i] + text[i + 1:], text[:i] + "<" + text[i:], text[:i]):
            r = post(client, portal, mangled)
            assert r.status_code in (200, 400), (mangled, r.text)
            if r.status_code == 200:
                answer(schemas, r)
            else:
                fault(r, 400)


def test_extensions_of_other_namespaces_are_taken(client, alva, portal, schemas):
    text = request_xml().replace("</r:GetCarePlans>", '<x:ext xmlns:x="urn:x">1</x:ext>'
                                 "</r:GetCarePlans>")
    assert_request_valid(schemas, text)
    assert len(plans(answer(schemas, post(client, portal, text)))) == 1


def test_a_doctype_is_refused_and_no_entity_expanded(client, alva, portal):
    text = ('<?xml version="1.0"?><!DOCTYPE e [<!ENTITY pnr "' + f.DEMO_PNR + '">'
            '<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
            + request_xml(pnr="&pnr;"))
    r = post(client, portal, text)
    assert "DOCTYPE" in fault(r, 400)
    assert "alva-sip" not in r.text and "lollol" not in r.text


def test_an_external_entity_is_never_fetched(client, alva, portal, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    text = (f'<!DOCTYPE e [<!ENTITY x SYSTEM "file://{secret}">]>'
            + request_xml().replace(HUB + "</itr:", "&x;</itr:", 1))
    r = post(client, portal, text)
    fault(r, 400)
    assert "TOPSECRET" not in r.text


def test_not_xml_content_type_is_415(client, alva, portal):
    fault(post(client, portal, request_xml(), ctype="application/json"), 415)


def test_other_methods_are_refused(client):
    assert client.get(PATH).status_code == 405


def test_each_call_is_in_the_persons_access_log(client, alva, portal, anonymous, schemas,
                                                as_org):
    call(client, portal, schemas)
    post(anonymous, as_org(sip_process.SOC), request_xml())
    anonymous.app.state.audit.flush()
    log = client.get("/fhir/AuditEvent?patient=alva&subtype=search-type").json()

    def by(org, outcome):
        return [e["resource"] for e in log.get("entry", [])
                if e["resource"]["outcome"] == outcome and
                any(a["who"].get("identifier", {}).get("value") == org
                    for a in e["resource"]["agent"])
                and any(base64.b64decode(x.get("query", "")).startswith(b"GetCarePlans")
                        for x in e["resource"].get("entity", []))]
    [read] = by(PORTAL, "0")
    seen = {x["what"].get("reference") for x in read["entity"] if "what" in x}
    assert {"CarePlan/alva-sip", "Patient/alva"} <= seen
    assert by(sip_process.SOC, "4")  # the refusal is there too


def test_the_care_giver_is_the_organisation_the_unit_is_part_of(client, alva, portal, schemas):
    city = f.organization("SE2120000142-0001", "Stockholms stad", id="stockholms-stad")
    assert client.put("/fhir/Organization/stockholms-stad", **body(city)).status_code in (200, 201)
    soc = client.get("/fhir/Organization/socialtjansten").json()
    soc["partOf"] = {"reference": "Organization/stockholms-stad"}
    assert client.put("/fhir/Organization/socialtjansten", **body(soc)).status_code == 200
    [cp] = plans(call(client, portal, schemas))
    who = "carePlanHeader/accountableHealthcareProfessional/"
    assert core(cp, who + "healthcareProfessionalCareUnitHSAId") == sip_process.SOC
    assert core(cp, who + "healthcareProfessionalCareGiverHSAId") == "SE2120000142-0001"


def test_content_over_the_contracts_limit_is_left_out_and_said(client, alva, portal, schemas,
                                                               monkeypatch):
    from sip_hub import rivta
    [cp] = plans(call(client, portal, schemas))
    sizes = {c.findtext(f"{{{CORE}}}mediaType"): len(base64.b64decode(
        c.findtext(f"{{{CORE}}}value"))) for c in cp.iter(f"{{{CORE}}}content")}
    assert sizes["text/html"] < sizes["application/pdf"]
    monkeypatch.setattr(rivta, "MAX_EMBEDDED", sizes["text/html"])
    [cp] = plans(out := call(client, portal, schemas))
    assert [c.findtext(f"{{{CORE}}}mediaType") for c in cp.iter(f"{{{CORE}}}content")] == \
        ["text/html"]
    assert result(out)[0] == "OK"
    monkeypatch.setattr(rivta, "MAX_EMBEDDED", 100)
    [cp] = plans(out := call(client, portal, schemas))
    assert list(cp.iter(f"{{{CORE}}}content")) == []
    code, message = result(out)
    assert code == "INFO" and "alva-sip" in message


def test_ten_concurrent_calls_are_each_answered(client, alva, portal, schemas):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(lambda _: post(client, portal, request_xml()), range(10)))
    outs = [answer(schemas, r) for r in answers]
    assert all(len(plans(out)) == 1 and result(out)[0] == "OK" for out in outs)
    assert len({out.findtext(f"{{{RESPONDER}}}result/{{{CORE}}}logId") for out in outs}) == 10
