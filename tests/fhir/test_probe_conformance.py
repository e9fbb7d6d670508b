"""What the hub publishes about itself, held against what it does: the CapabilityStatement's
interactions, search parameters, includes, formats and flags, called one by one; the
conformance resources it serves (their metadata, canonicals, searches, stability across
restarts); and bad input on those endpoints (a 4xx OperationOutcome, never a 5xx)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from fhirhttp import JSON_HEADERS, body, patient
from messaging import harness
from messaging.harness import BUP, URL as PROCESS_MESSAGE, Hub
from sip_hub.app import create_app
from sip_hub.fhir import profiles, sip
from sip_hub.fhir.search_params import RESOURCE_TYPES, params_for
from sip_hub.messaging import builder

Json = dict[str, Any]
SQLITE = pytest.mark.parametrize("store", ["sqlite"], indirect=True)
# The messaging harness's fixtures (a hub with messaging, the demo SIP written).
broker, hub, world = harness.broker, harness.hub, harness.world


def _cs(client: TestClient) -> Json:
    r = client.get("/fhir/metadata")
    assert r.status_code == 200, r.text
    return r.json()


def _rest(client: TestClient) -> Json:
    return _cs(client)["rest"][0]


def _by_type(client: TestClient) -> dict[str, Json]:
    return {res["type"]: res for res in _rest(client)["resource"]}


def _ok_bundle(r: Any) -> Json:
    assert r.status_code == 200, (r.request.url, r.text[:500])
    data = r.json()
    assert data["resourceType"] == "Bundle", data
    return data


def _four_xx(r: Any) -> None:
    assert 400 <= r.status_code < 500, (r.request.url, r.status_code, r.text[:300])
    assert r.json()["resourceType"] == "OperationOutcome", r.text[:300]


# -- interactions declared are interactions that work ------------------------------------------

_MINIMAL: dict[str, Json] = {
    "Appointment": {"resourceType": "Appointment", "status": "proposed",
                    "participant": [{"actor": {"reference": "Patient/p"},
                                     "status": "needs-action"}]},
    "AuditEvent": {"resourceType": "AuditEvent",
                   "type": {"system": "http://dicom.nema.org/resources/ontology/DCM",
                            "code": "110110"},
                   "recorded": "2026-01-01T00:00:00Z",
                   "agent": [{"requestor": True, "who": {"display": "x"}}],
                   "source": {"observer": {"display": "x"}}},
    "CarePlan": {"resourceType": "CarePlan", "status": "active", "intent": "plan",
                 "subject": {"reference": "Patient/p"}},
    "CareTeam": {"resourceType": "CareTeam", "status": "active"},
    "Consent": {"resourceType": "Consent", "status": "active",
                "scope": {"coding": [{"system": sip.CONSENT_SCOPE,
                                      "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": sip.LOINC, "code": "59284-0"}]}],
                "patient": {"reference": "Patient/p"}, "policyRule": {"text": "x"}},
    "Goal": {"resourceType": "Goal", "lifecycleStatus": "proposed",
             "description": {"text": "x"}, "subject": {"reference": "Patient/p"}},
    "Organization": {"resourceType": "Organization", "name": "Probe"},
    "Patient": patient(),
    "Practitioner": {"resourceType": "Practitioner", "name": [{"family": "Probe"}]},
    "PractitionerRole": {"resourceType": "PractitionerRole", "active": True},
    "Provenance": {"resourceType": "Provenance", "target": [{"reference": "Patient/p"}],
                   "recorded": "2026-01-01T00:00:00Z",
                   "agent": [{"who": {"reference": "Organization/o"}}]},
    "QuestionnaireResponse": {"resourceType": "QuestionnaireResponse", "status": "completed"},
    "RelatedPerson": {"resourceType": "RelatedPerson", "patient": {"reference": "Patient/p"}},
    "Task": {"resourceType": "Task", "status": "requested", "intent": "order"},
}


@SQLITE
def test_every_type_declaring_create_lets_an_admin_create_it(client):
    """A declared create (and update, delete) is one the hub performs for a client allowed
    everything; AuditEvent was declared writable although the API refuses every write of the
    access log (403 to everyone)."""
    for rtype, res in _by_type(client).items():
        codes = {i["code"] for i in res.get("interaction", [])}
        if "create" not in codes:
            assert not res.get("updateCreate") and not res.get("conditionalCreate"), rtype
            assert not res.get("conditionalUpdate"), rtype
            continue
        assert rtype in _MINIMAL, f"add a minimal {rtype} to _MINIMAL"
        r = client.post(f"/fhir/{rtype}", **body(_MINIMAL[rtype]))
        assert r.status_code == 201, (rtype, r.status_code, r.text[:300])
        rid = r.json()["id"]
        if "update" in codes:
            new = {**_MINIMAL[rtype], "id": rid}
            assert client.put(f"/fhir/{rtype}/{rid}", **body(new)).status_code == 200, rtype
        if "delete" in codes:
            assert client.delete(f"/fhir/{rtype}/{rid}").status_code == 200, rtype


@SQLITE
def test_read_only_types_refuse_every_write_with_405(client):
    for rtype, res in _by_type(client).items():
        codes = {i["code"] for i in res.get("interaction", [])}
        if codes & {"create", "update", "delete"} or "interaction" not in res:
            continue
        r = client.post(f"/fhir/{rtype}", **body({"resourceType": rtype}))
        assert r.status_code in (403, 405), (rtype, r.status_code)
        _four_xx(r)


@SQLITE
def test_declared_flags_hold(client):
    """updateCreate, versioned-update, readHistory, conditionalCreate, conditionalUpdate and
    conditionalDelete 'not-supported' (also in a batch), history-system, no patch."""
    res = _by_type(client)["Patient"]
    assert res["updateCreate"] and res["versioning"] == "versioned-update"
    assert res["readHistory"] and res["conditionalCreate"] and res["conditionalUpdate"]
    assert res["conditionalDelete"] == "not-supported"
    new = {**patient("201212121212"), "id": "probe-p"}
    r = client.put("/fhir/Patient/probe-p", **body(new))
    assert r.status_code == 201, r.text                                     # updateCreate
    r = client.put("/fhir/Patient/probe-p", content=body(new)["content"],
                   headers=JSON_HEADERS | {"If-Match": 'W/"7"'})
    assert r.status_code == 412, r.text                                     # versioned-update
    r = client.put("/fhir/Patient/probe-p", content=body(new)["content"],
                   headers=JSON_HEADERS | {"If-Match": 'W/"1"'})
    assert r.status_code == 200, r.text
    assert client.get("/fhir/Patient/probe-p/_history/1").status_code == 200  # readHistory
    ident = "http://electronichealth.se/identifier/personnummer|201212121212"
    r = client.post("/fhir/Patient", content=body(patient("201212121212"))["content"],
                    headers=JSON_HEADERS | {"If-None-Exist": f"identifier={ident}"})
    assert r.status_code == 200 and r.json()["id"] == "probe-p", r.text   # conditionalCreate
    r = client.put(f"/fhir/Patient?identifier={ident}",
                   **body({**patient("201212121212", family="Ny")}))
    assert r.status_code == 200 and r.json()["id"] == "probe-p", r.text   # conditionalUpdate
    _four_xx(client.delete(f"/fhir/Patient?identifier={ident}"))
    r = client.post("/fhir", **body({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "DELETE", "url": f"Patient?identifier={ident}"}}]}))
    out = r.json()
    assert r.status_code == 400 or not out["entry"][0]["response"]["status"].startswith("2")
    assert client.get("/fhir/Patient/probe-p").status_code == 200
    assert {i["code"] for i in _rest(client)["interaction"]} == {
        "transaction", "batch", "history-system"}
    _ok_bundle(client.get("/fhir/_history?_count=1"))
    assert _cs(client)["patchFormat"] == ["application/json-patch+json"]
    _four_xx(client.patch("/fhir/Patient/probe-p", content=b"[]",
                          headers={"content-type": "application/json-patch+json"}))
    r = client.patch("/fhir/Patient/probe-p",
                     content=b'[{"op":"add","path":"/gender","value":"female"}]',
                     headers={"content-type": "application/json-patch+json"})
    assert r.status_code == 200 and r.json()["gender"] == "female", r.text


# -- search parameters, includes and revincludes ----------------------------------------------

def _value(rtype: str, p: Json) -> str:
    kind = p["type"]
    if kind == "reference":
        param = params_for(rtype)[p["name"]]
        target = param.targets[0] if param.targets else "Patient"
        return f"{target}/x"
    return {"token": "x", "string": "x", "date": "2026-01-01", "uri": "http://example.org/x",
            "number": "1", "quantity": "1", "composite": "x$y"}[kind]


def _refused(client: TestClient, path: str, params: dict[str, str]) -> list[str]:
    r = client.get(path, params=params)
    return [] if r.status_code == 200 else [f"{path}?{params}: {r.status_code} {r.text[:160]}"]


@SQLITE
def test_every_declared_search_parameter_works_with_its_type(client):
    """Each declared parameter, searched by a value of its declared type, sorted on (when of a
    sortable type: rest.documentation) and, unless the resource's documentation says it is
    not supported there, with :missing."""
    refused: list[str] = []
    for rtype, res in _by_type(client).items():
        no_missing = ":missing" in res.get("documentation", "")
        for p in res.get("searchParam", []):
            name, path = p["name"], f"/fhir/{rtype}"
            if p.get("documentation", "").startswith(f"Only as {name}:identifier"):
                refused += _refused(client, path, {f"{name}:identifier": "urn:x|x"})
            else:
                refused += _refused(client, path, {name: _value(rtype, p)})
            if name not in ("_id", "_lastUpdated") and not no_missing:
                refused += _refused(client, path, {f"{name}:missing": "true"})
            if p["type"] in ("token", "string", "date", "uri") and rtype != "AuditEvent":
                refused += _refused(client, path, {"_sort": f"-{name}"})
    assert refused == []


@SQLITE
def test_every_declared_include_and_revinclude_works(client):
    for rtype, res in _by_type(client).items():
        for inc in res.get("searchInclude", []):
            _ok_bundle(client.get(f"/fhir/{rtype}", params={"_include": inc}))
        for inc in res.get("searchRevInclude", []):
            _ok_bundle(client.get(f"/fhir/{rtype}", params={"_revinclude": inc}))


@SQLITE
def test_every_revinclude_the_hub_answers_is_declared(client):
    """AuditEvent:entity points at any type and was accepted on every type, but declared on
    none (a reference parameter without target types gave no searchRevInclude)."""
    declared = {t: set(res.get("searchRevInclude", [])) for t, res in _by_type(client).items()}
    for source in RESOURCE_TYPES:
        for p in params_for(source).values():
            if p.type != "reference":
                continue
            for rtype in ("Patient", "CarePlan", "Organization"):
                inc = f"{source}:{p.name}"
                r = client.get(f"/fhir/{rtype}", params={"_revinclude": inc, "_count": "1"})
                if r.status_code == 200:
                    assert inc in declared[rtype], (rtype, inc)


@SQLITE
def test_an_include_through_audit_agents_is_refused_not_silently_empty(client):
    _four_xx(client.get("/fhir/Organization?_revinclude=AuditEvent:agent"))
    _four_xx(client.get("/fhir/AuditEvent?_include=AuditEvent:agent"))


@SQLITE
def test_search_documentation_is_true(client):
    doc = _rest(client)["documentation"]
    assert "_count" in doc and "_offset" in doc and "_sort" in doc
    _ok_bundle(client.get("/fhir/CarePlan?_count=1&_offset=1"))
    for name in ("_total=none", "_summary=count"):
        if name.split("=")[0] in doc:
            _ok_bundle(client.get(f"/fhir/CarePlan?{name}"))
    _four_xx(client.get("/fhir/CarePlan?bogus=1"))
    r = client.get("/fhir/CarePlan?bogus=1", headers={"Prefer": "handling=lenient"})
    assert _ok_bundle(r)["entry"][-1]["search"]["mode"] == "outcome"
    assert ":iterate" in doc
    _ok_bundle(client.get("/fhir/CarePlan?_include:iterate=CarePlan:goal"))
    _four_xx(client.get("/fhir/CarePlan?_include:often=CarePlan:goal"))
    _ok_bundle(client.get("/fhir/CarePlan?patient.identifier=x"))
    # _summary and _elements, as the documentation says, each subset tagged
    assert "_elements" in doc and "SUBSETTED" in doc
    for name in ("_summary=true", "_summary=text", "_summary=data", "_elements=id"):
        bundle = _ok_bundle(client.get(f"/fhir/CarePlan?{name}"))
        assert all(e["resource"]["meta"]["tag"][-1]["code"] == "SUBSETTED"
                   for e in bundle.get("entry", [])), name
    _four_xx(client.get("/fhir/CarePlan?_elements=nope"))
    for query in ("status:not=active", "identifier:missing=true", "_id=a,b&_sort=-_id",
                  "author:Organization=x", "patient:identifier=x|y", "_total=accurate"):
        _ok_bundle(client.get(f"/fhir/CarePlan?{query}"))
    for query in ("name:exact=X", "name:contains=x", "_sort=name"):
        _ok_bundle(client.get(f"/fhir/Patient?{query}"))
    _ok_bundle(client.get("/fhir/QuestionnaireResponse?_sort=questionnaire"))


# -- formats and versions -----------------------------------------------------------------------

@SQLITE
def test_every_declared_format_is_served(client):
    cs = _cs(client)
    assert cs["fhirVersion"] == "4.0.1" and cs["kind"] == "instance"
    assert cs["software"]["version"] and cs["implementation"]["url"] == "http://hub.test/fhir"
    for fmt in cs["format"]:
        want = "xml" if "xml" in fmt else "json"
        for path in ("/fhir/metadata", "/fhir/StructureDefinition/sip-careplan"):
            r = client.get(path, params={"_format": fmt})
            assert r.status_code == 200 and want in r.headers["content-type"], (fmt, path)


@SQLITE
def test_an_unsupported_fhir_version_is_not_acceptable(client):
    r = client.get("/fhir/metadata", headers={"accept": "application/fhir+json; "
                                                        "fhirVersion=5.0"})
    assert r.status_code == 406


@SQLITE
def test_capability_statement_in_xml_says_what_the_json_says(client):
    xml = client.get("/fhir/metadata?_format=xml")
    assert xml.status_code == 200
    text = xml.text
    assert '<fhirVersion value="4.0.1"/>' in text
    assert text.count("<resource>") == len(_rest(client)["resource"])


# -- the conformance resources ----------------------------------------------------------------

_EXTERNAL_OK = ("http://hl7.org/fhir/", "http://terminology.hl7.org/", "https://fhir.inera.se/",
                "http://loinc.org", "http://snomed.info/sct", "urn:iso:std:iso:",
                "http://unitsofmeasure.org", "urn:ietf:bcp:47", "http://electronichealth.se/",
                "urn:oid:", "http://dicom.nema.org/")
# Elements whose value is a canonical URL (or a code system URI)
_CANONICAL_KEYS = {"profile", "targetProfile", "valueSet", "system", "baseDefinition",
                   "definition", "message", "base", "source", "target", "sourceUri",
                   "targetUri", "sourceCanonical", "targetCanonical", "valueCanonical",
                   "answerValueSet", "inputProfile", "outputProfile", "supplements",
                   "fixedUri", "derivedFrom", "url"}


def _canonicals(node: Any, key: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        for k, v in node.items():
            out |= _canonicals(v, k)
    elif isinstance(node, list):
        for v in node:
            out |= _canonicals(v, key)
    elif isinstance(node, str) and key in _CANONICAL_KEYS and re.match(r"^[a-z]+:", node):
        out.add(node.split("|")[0])
    return out


def test_every_published_resource_has_its_metadata_and_known_canonicals():
    defs = profiles.definitions()
    ours = {d["url"] for d in defs}
    for d in defs:
        for key in ("url", "version", "status", "name", "date", "publisher"):
            assert d.get(key), (d["id"], key)
        assert re.fullmatch(r"[A-Z][A-Za-z0-9_]{0,254}", d["name"]), d["name"]
        for url in _canonicals(d) - {d["url"]}:
            if url.startswith(sip.CANONICAL + "/"):
                assert url in ours, (d["id"], url)
            elif not url.startswith("http://hl7.org/fhir/StructureDefinition/Extension#"):
                assert url.startswith(_EXTERNAL_OK), (d["id"], url)


@SQLITE
def test_canonical_searches_find_each_published_resource(client):
    for d in profiles.definitions():
        rtype = d["resourceType"]
        for query in ({"url": d["url"]}, {"name:exact": d["name"]},
                      {"url": d["url"], "version": d["version"], "status": d["status"]}):
            ids = [e["resource"]["id"]
                   for e in _ok_bundle(client.get(f"/fhir/{rtype}", params=query))["entry"]]
            assert ids == [d["id"]], (rtype, query, ids)
        if rtype == "StructureDefinition":
            found = _ok_bundle(client.get(f"/fhir/{rtype}", params={"type": d["type"]}))
            assert d["id"] in [e["resource"]["id"] for e in found["entry"]]
        if rtype == "MessageDefinition":
            ev = d["eventCoding"]
            found = _ok_bundle(client.get(f"/fhir/{rtype}", params={
                "event": f"{ev['system']}|{ev['code']}"}))
            assert [e["resource"]["id"] for e in found["entry"]] == [d["id"]]


@SQLITE
def test_messaging_section_names_published_definitions(client):
    cs = _cs(client)
    (section,) = cs["messaging"]
    assert section["reliableCache"] >= 1
    assert section["endpoint"][0]["address"] == "http://hub.test/fhir/$process-message"
    mds = {d["url"]: d for d in profiles.definitions() if d["resourceType"] ==
           "MessageDefinition"}
    declared = {m["definition"] for m in section["supportedMessage"]}
    assert declared == set(mds)
    for url in declared:
        found = _ok_bundle(client.get("/fhir/MessageDefinition", params={"url": url}))
        assert found["total"] == 1
    for md in mds.values():
        for allowed in md.get("allowedResponse", []):
            assert allowed["message"] in mds, (md["id"], allowed["message"])
    ops = {op["definition"] for op in _rest(client).get("operation", [])}
    assert f"{sip.CANONICAL}/OperationDefinition/sip-process-message" in ops


def test_published_code_systems_hold_every_code_the_hub_uses():
    from sip_hub import process as sp
    from sip_hub.messaging import vocabulary as vocab

    def codes(cs: Json) -> set[str]:
        out: set[str] = set()

        def walk(concepts: list[Json]) -> None:
            for c in concepts:
                out.add(c["code"])
                walk(c.get("concept", []))
        walk(cs.get("concept", []))
        return out
    by_url = {d["url"]: d for d in profiles.definitions() if d["resourceType"] == "CodeSystem"}
    for url, cs in by_url.items():
        assert cs["content"] == "complete" and cs["count"] == len(codes(cs)), url
    assert set(sp.DEADLINE_TASKS) | {sp.TASK_INVITATION} <= codes(by_url[sip.CS_TASK])
    assert set(sip.PHASE_STATUSES) == codes(by_url[sip.CS_PHASE])
    event_codes = {c["code"] for c in by_url[vocab.CS_EVENT]["concept"]}
    assert event_codes == set(vocab.events())
    for spec in vocab.events().values():
        assert spec.reasons <= codes(by_url[vocab.CS_EVENT])
    for vs in (d for d in profiles.definitions() if d["resourceType"] == "ValueSet"):
        for inc in vs["compose"]["include"]:
            if inc["system"].startswith(sip.CANONICAL):
                listed = {c["code"] for c in inc.get("concept", [])}
                assert listed <= codes(by_url[inc["system"]]), vs["id"]


def _served(client: TestClient) -> dict[str, tuple[str, str, str]]:
    out = {}
    for d in profiles.definitions():
        path = f"/fhir/{d['resourceType']}/{d['id']}"
        r = client.get(path)
        assert r.status_code == 200, path
        out[path] = (r.headers["etag"], r.headers["last-modified"],
                     r.json()["meta"]["lastUpdated"])
    return out


def test_conformance_resources_keep_their_version_across_restarts(client, store, settings,
                                                                  as_org):
    before = _served(client)
    for _ in range(2):
        app = create_app(settings, store=store)
        with TestClient(app, raise_server_exceptions=False) as again:
            again.headers["Authorization"] = client.headers["Authorization"]
            assert _served(again) == before


@SQLITE
def test_the_published_definitions_validate_as_served(client, fhir_validator, tmp_path: Path):
    served = []
    for d in profiles.definitions():
        served.append(client.get(f"/fhir/{d['resourceType']}/{d['id']}").json())
    served.append(_cs(client))
    fhir_validator.validate_resources(tmp_path, served)


# -- bad input on the conformance endpoints ---------------------------------------------------

_BAD = [
    "/fhir/StructureDefinition?url:below=https://sip-hub.se",
    "/fhir/StructureDefinition?url=",
    "/fhir/StructureDefinition?version:exact=0.1.0",
    "/fhir/StructureDefinition?name:missing=maybe",
    "/fhir/StructureDefinition?type=CarePlan&_sort=-bogus",
    "/fhir/StructureDefinition?_include=StructureDefinition:url",
    "/fhir/StructureDefinition?_revinclude=CarePlan:goal",
    "/fhir/StructureDefinition?_count=-1",
    "/fhir/StructureDefinition?_count=99999999999999999999999",
    "/fhir/StructureDefinition?_summary=bogus",
    "/fhir/StructureDefinition?_lastUpdated=notadate",
    "/fhir/StructureDefinition?_format=text/turtle",
    "/fhir/MessageDefinition?event=%00",
    "/fhir/MessageDefinition?event:text=x",
    "/fhir/CodeSystem/$lookup?system=https://sip-hub.se/fhir/CodeSystem/sip-event&code=x",
    "/fhir/ValueSet/$expand?url=https://sip-hub.se/fhir/ValueSet/sip-phase",
    "/fhir/ValueSet/sip-phase/$expand",
    "/fhir/StructureDefinition/sip-careplan/_history/0",
    "/fhir/StructureDefinition/sip-careplan/_history/99999999999999999999",
    "/fhir/StructureDefinition/no-such",
    "/fhir/StructureDefinition/" + "a" * 65,
    "/fhir/StructureDefinition/_history?_since=x",
    "/fhir/OperationDefinition/sip-transition/_history?_at=x",
    "/fhir/metadata?_format=bogus",
    "/fhir/SearchParameter",
    "/fhir/CapabilityStatement",
    "/fhir/NamingSystem?url=x",
]


@SQLITE
@pytest.mark.parametrize("path", _BAD)
def test_bad_requests_on_conformance_endpoints_are_4xx_outcomes(client, path):
    _four_xx(client.get(path))


@SQLITE
def test_writes_and_bad_bodies_on_conformance_endpoints_are_4xx(client):
    sd = client.get("/fhir/StructureDefinition/sip-careplan").json()
    for method, path, content in [
            ("PUT", "/fhir/StructureDefinition/sip-careplan", json.dumps(sd).encode()),
            ("PUT", "/fhir/StructureDefinition?url=x", json.dumps(sd).encode()),
            ("DELETE", "/fhir/CodeSystem/sip-event", b""),
            ("POST", "/fhir/MessageDefinition", b"{not json"),
            ("POST", "/fhir/StructureDefinition/_search", b"url=%00")]:
        ctype = ("application/x-www-form-urlencoded" if path.endswith("_search")
                 else "application/fhir+json")
        r = client.request(method, path, content=content, headers={"content-type": ctype})
        _four_xx(r)
    unchanged = client.get("/fhir/StructureDefinition/sip-careplan")
    assert unchanged.headers["etag"] == 'W/"1"'


@SQLITE
def test_transaction_cannot_change_a_published_resource(client):
    sd = client.get("/fhir/CodeSystem/sip-phase").json()
    sd["concept"] = sd["concept"][:1]
    r = client.post("/fhir", **body({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": sd, "request": {"method": "PUT", "url": "CodeSystem/sip-phase"}}]}))
    _four_xx(r)
    assert len(client.get("/fhir/CodeSystem/sip-phase").json()["concept"]) == 7



# -- MessageDefinitions against $process-message -------------------------------------------------



def _ack(focus: list[str], resources: list[Json]) -> Json:
    ack = builder.message("acknowledgement", fhir_base="https://bup.test/fhir", sender=BUP,
                          destinations=[builder.Party("SE2120000142-SOC1", "https://s.test/pm")],
                          focus=focus, resources=resources)
    ack["entry"][0]["resource"]["response"] = {
        "identifier": "0191a2b3-0000-7000-8000-000000000001", "code": "ok"}
    return ack


def _refusal(r: Any) -> str:
    assert r.status_code == 200, r.text[:300]
    entries = r.json()["entry"]
    if entries[0]["resource"]["response"]["code"] == "ok":
        return ""
    return " | ".join(i.get("diagnostics", "") for e in entries[1:]
                      for i in e["resource"].get("issue", []))


@SQLITE
def test_what_an_acknowledgement_must_name_is_published(world: Hub):
    """sip-acknowledgement's focus is CarePlan 0..1 and Patient 0..1, but $process-message
    refuses (fatal-error) an acknowledgement naming neither: its MessageDefinition now says
    so, as focus cardinalities alone cannot."""
    md = next(d for d in profiles.definitions() if d["id"] == "sip-acknowledgement")
    assert all(fc["min"] == 0 for fc in md["focus"])
    assert "at least one of them is required" in md["description"]
    assert "names the SIP" in _refusal(world.post(BUP, PROCESS_MESSAGE, _ack([], [])))
    patient_only = _refusal(world.post(BUP, PROCESS_MESSAGE, _ack(["Patient/alva"], [])))
    assert "focus" not in patient_only, patient_only


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_metadata_is_read_only_405_not_an_unknown_type(client, method):
    """POST /fhir/metadata answered 404 'Unknown resource type metadata'."""
    r = client.request(method, "/fhir/metadata", content=b"{}",
                       headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == "GET, HEAD"
    assert r.json()["resourceType"] == "OperationOutcome"
