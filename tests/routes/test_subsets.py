"""``_summary`` and ``_elements``: what of each resource a search or a read returns (FHIR R4
search.html#summary, #elements), each subset tagged SUBSETTED, the rest as stored."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from lxml import etree

import sip_factory as f
from fhirhttp import JSON_HEADERS, body, create, refused_400, store_all

Json = dict[str, Any]

SUBSETTED = ("http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "SUBSETTED")
LENIENT = {"Prefer": "handling=lenient"}
XML_OUT = {"accept": "application/fhir+xml"}
F = "{http://hl7.org/fhir}"

# CarePlan's elements by the R4 definition (careplan.html): isSummary, min 1, isModifier.
CAREPLAN_SUMMARY = {"id", "meta", "implicitRules", "identifier", "instantiatesCanonical",
                    "instantiatesUri", "basedOn", "replaces", "partOf", "status", "intent",
                    "category", "title", "description", "subject", "encounter", "period",
                    "created", "author", "addresses"}
CAREPLAN_MANDATORY = {"status", "intent", "subject"}
CAREPLAN_MODIFIERS = {"implicitRules", "modifierExtension", "status", "intent"}


@pytest.fixture
def alva(client: Any) -> Json:
    """The demo SIP stored; its CarePlan as read back whole."""
    store_all(client, f.demo_case())
    plan = client.get("/fhir/CarePlan/alva-sip", headers=JSON_HEADERS).json()
    # what the tests below tell apart is there to tell
    assert {"activity", "goal", "careTeam", "extension"} <= set(plan), sorted(plan)
    assert "meta" in plan and "tag" not in plan["meta"]
    return plan


def _goal(**extra: Any) -> Json:
    return {"resourceType": "Goal", "lifecycleStatus": "active",
            "description": {"text": "Gå i skolan"}, "subject": {"reference": "Patient/alva"},
            **extra}


def _tagged(res: Json) -> bool:
    return any((t.get("system"), t.get("code")) == SUBSETTED
               for t in res.get("meta", {}).get("tag", []))


def _without_tag(res: Json) -> Json:
    meta = {**res["meta"], "tag": [t for t in res["meta"].get("tag", [])
                                   if (t.get("system"), t.get("code")) != SUBSETTED]}
    if not meta["tag"]:
        del meta["tag"]
    return {**res, "meta": meta}


def _entries(client: Any, query: str, mode: str = "match", headers: Any = None) -> list[Json]:
    r = client.get(f"/fhir/{query}", headers={**JSON_HEADERS, **(headers or {})})
    assert r.status_code == 200, r.text
    return [e["resource"] for e in r.json().get("entry", []) if e["search"]["mode"] == mode]


def _is_subset(part: Json, whole: Json, keys: set[str]) -> None:
    """``part`` is ``whole`` cut to ``keys`` (as stored, in its order), tagged SUBSETTED."""
    assert _tagged(part), part.get("meta")
    assert list(part)[:3] == ["resourceType", "id", "meta"]
    assert _without_tag(part) == {k: v for k, v in whole.items()
                                  if k in keys | {"resourceType"}}


def test_summary_true_keeps_the_summary_mandatory_and_modifier_elements(client, alva):
    want = CAREPLAN_SUMMARY | CAREPLAN_MANDATORY | CAREPLAN_MODIFIERS
    [plan] = _entries(client, "CarePlan?_id=alva-sip&_summary=true")
    _is_subset(plan, alva, want)
    assert not {"activity", "goal", "careTeam", "extension", "text"} & set(plan)
    assert plan["meta"]["versionId"] == alva["meta"]["versionId"]


def test_summary_text_keeps_text_and_the_mandatory_elements(client, alva):
    [plan] = _entries(client, "CarePlan?_id=alva-sip&_summary=text")
    _is_subset(plan, alva, {"id", "meta", "text"} | CAREPLAN_MANDATORY)


def test_summary_data_leaves_out_the_text_only(client, alva):
    with_text = {**alva, "text": {"status": "generated",
                                  "div": '<div xmlns="http://www.w3.org/1999/xhtml">SIP</div>'}}
    r = client.put("/fhir/CarePlan/alva-sip", **body(with_text))
    assert r.status_code == 200, r.text
    stored = r.json()
    [plan] = _entries(client, "CarePlan?_id=alva-sip&_summary=data")
    _is_subset(plan, stored, set(stored) - {"text"})
    [whole] = _entries(client, "CarePlan?_id=alva-sip&_summary=false")
    assert whole == stored


def test_elements_keeps_those_asked_for_with_the_mandatory_and_modifier_elements(
        client, alva):
    for query in ("_elements=title,period", "_elements=CarePlan.title&_elements=period",
                  "_elements=title, period"):
        [plan] = _entries(client, f"CarePlan?_id=alva-sip&{query}")
        _is_subset(plan, alva, {"id", "meta", "title", "period"} | CAREPLAN_MANDATORY
                   | CAREPLAN_MODIFIERS)
        assert "activity" not in plan


def test_a_choice_element_is_asked_for_without_its_type_and_keeps_its_extension(
        client, alva):
    goal = {**_goal(), "startDate": "2026-01-10",
            "_startDate": {"extension": [{"url": "http://example.se/precision",
                                          "valueCode": "day"}]},
            "target": [{"measure": {"text": "x"}, "detailQuantity": {"value": 1.50}}]}
    made = create(client, goal)
    [part] = _entries(client, f"Goal?_id={made['id']}&_elements=start")
    _is_subset(part, made, {"id", "meta", "startDate", "_startDate", "lifecycleStatus",
                            "description", "subject"})
    assert "target" not in part


def test_summary_applies_to_included_resources_and_elements_to_the_matches_only(
        client, alva):
    goals = {g["id"]: g for g in _entries(client, "CarePlan?_id=alva-sip"
                                          "&_include=CarePlan:goal", "include")}
    assert goals and all(not _tagged(g) for g in goals.values())
    summarised = _entries(client, "CarePlan?_id=alva-sip&_include=CarePlan:goal"
                                  "&_summary=true", "include")
    assert {g["id"] for g in summarised} == set(goals)
    for g in summarised:  # Goal's summary elements (goal.html)
        _is_subset(g, goals[g["id"]], {"id", "meta", "implicitRules", "lifecycleStatus",
                                       "achievementStatus", "category", "priority",
                                       "description", "subject", "startDate", "statusDate",
                                       "expressedBy", "modifierExtension"})
    [plan] = _entries(client, "CarePlan?_id=alva-sip&_include=CarePlan:goal&_elements=title")
    assert set(plan) - {"resourceType"} <= {"id", "meta", "title"} | CAREPLAN_MANDATORY
    assert _entries(client, "CarePlan?_id=alva-sip&_include=CarePlan:goal&_elements=title",
                    "include") == list(goals.values())


def test_a_read_and_a_vread_return_the_subset_asked_for(client, alva):
    url = "/fhir/CarePlan/alva-sip"
    full = client.get(url, headers=JSON_HEADERS)
    r = client.get(f"{url}?_summary=true", headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    _is_subset(r.json(), alva, CAREPLAN_SUMMARY | CAREPLAN_MODIFIERS)
    assert r.headers["etag"] == full.headers["etag"]
    assert r.headers["last-modified"] == full.headers["last-modified"]
    vid = alva["meta"]["versionId"]
    r = client.get(f"{url}/_history/{vid}", params={"_elements": "title"},
                   headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    _is_subset(r.json(), alva, {"id", "meta", "title"} | CAREPLAN_MANDATORY
               | CAREPLAN_MODIFIERS)
    # in XML too, tagged
    r = client.get(f"{url}?_summary=true", headers=XML_OUT)
    assert r.status_code == 200, r.text
    root = etree.fromstring(r.content)
    assert root.find(f"{F}activity") is None and root.find(f"{F}status") is not None
    codes = [c.get("value") for c in root.iterfind(f"{F}meta/{F}tag/{F}code")]
    assert codes == ["SUBSETTED"]
    # a read's other parameters are not looked at, as before
    assert client.get(f"{url}?foo=bar", headers=JSON_HEADERS).json() == alva


def test_a_batch_read_returns_the_subset_asked_for(client, alva):
    r = client.post("/fhir", **body({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "CarePlan/alva-sip?_summary=text"}},
        {"request": {"method": "GET", "url": "CarePlan?_id=alva-sip&_elements=title"}},
        {"request": {"method": "GET", "url": "CarePlan/alva-sip?_elements=nope"}}]}))
    assert r.status_code == 200, r.text
    first, second, third = r.json()["entry"]
    _is_subset(first["resource"], alva, {"id", "meta"} | CAREPLAN_MANDATORY)
    assert first["response"]["etag"] == f'W/"{alva["meta"]["versionId"]}"'
    [plan] = [e["resource"] for e in second["resource"]["entry"]]
    assert _tagged(plan) and "activity" not in plan
    assert third["response"]["status"].startswith("400")


def test_paging_keeps_the_subset(client, alva):
    for i in range(3):
        create(client, _goal(description={"text": f"mål {i}"},
                             target=[{"measure": {"text": "m"}}]))
    r = client.get("/fhir/Goal?_elements=description&_count=2", headers=JSON_HEADERS)
    nxt = next(link["url"] for link in r.json()["link"] if link["relation"] == "next")
    assert "_elements=description" in nxt
    page = client.get("/fhir" + nxt.split("/fhir", 1)[1], headers=JSON_HEADERS).json()
    assert page["entry"] and all(_tagged(e["resource"]) and "target" not in e["resource"]
                                 for e in page["entry"])


@pytest.mark.parametrize("query, where", [
    ("CarePlan?_summary=yes", "_summary"),
    ("CarePlan?_summary=true&_summary=text", "_summary"),
    ("CarePlan?_summary=true&_elements=title", "_elements"),
    ("CarePlan?_elements=activity.detail", "_elements"),
    ("CarePlan?_elements=nope", "_elements"),
    ("CarePlan?_elements=Goal.description", "_elements"),
    ("CarePlan?_elements=,", "_elements"),
    ("CarePlan/alva-sip?_summary=count", "_summary"),
    ("CarePlan/alva-sip?_elements=nope", "_elements"),
    ("CarePlan/alva-sip/_history/1?_summary=maybe", "_summary"),
])
def test_a_subset_that_cannot_be_made_is_a_400(client, alva, query, where):
    refused_400(client, f"/fhir/{query}", where)


def test_an_unknown_element_is_ignored_under_lenient_handling(client, alva):
    r = client.get("/fhir/CarePlan?_id=alva-sip&_elements=nope", headers={
        **JSON_HEADERS, **LENIENT})
    assert r.status_code == 200, r.text
    match = [e["resource"] for e in r.json()["entry"] if e["search"]["mode"] == "match"]
    outcome = [e["resource"] for e in r.json()["entry"] if e["search"]["mode"] == "outcome"]
    assert match == [alva] and "_elements" in outcome[0]["issue"][0]["diagnostics"]
    r = client.get("/fhir/CarePlan/alva-sip?_elements=nope", headers={
        **JSON_HEADERS, **LENIENT})
    assert r.status_code == 200 and r.json() == alva


def test_summary_count_with_elements_counts(client, alva):
    r = client.get("/fhir/CarePlan?_id=alva-sip&_summary=count&_elements=title",
                   headers=JSON_HEADERS)
    assert r.status_code == 200, r.text
    assert r.json()["total"] == 1 and "entry" not in r.json()


@pytest.mark.node
def test_subsets_validate_independently(client, alva, fhir_validator, tmp_path):
    emitted = [client.get(f"/fhir/CarePlan/alva-sip?{q}", headers=JSON_HEADERS).json()
               for q in ("_summary=true", "_summary=text", "_summary=data",
                         "_elements=title")]
    emitted.append(client.get("/fhir/CarePlan?_include=CarePlan:goal&_summary=true",
                              headers=JSON_HEADERS).json())
    fhir_validator.validate_resources(tmp_path, emitted)



# -- a subset written back ---------------------------------------------------------------------

TAG = {"system": SUBSETTED[0], "code": SUBSETTED[1], "display": "subsetted"}
PATCH = {"content-type": "application/json-patch+json", "accept": "application/fhir+json"}


def _says_subsetted(issue: Json, where: str) -> None:
    """The issue of a refused SUBSETTED resource: at its tag, telling what to do instead."""
    assert issue["expression"] == [where], issue
    assert issue["code"] == "business-rule", issue
    assert "SUBSETTED" in issue["diagnostics"], issue
    assert "Read the whole resource" in issue["diagnostics"], issue


def _refused(r: Any, where: str = "Patient.meta.tag[0]") -> None:
    assert r.status_code == 422, r.text
    _says_subsetted(r.json()["issue"][0], where)


@pytest.fixture
def whole(client: Any) -> Json:
    """A Patient with more than a name, as stored."""
    return create(client, {"resourceType": "Patient", "name": [{"family": "Subset"}],
                           "gender": "female", "birthDate": "1990-01-01",
                           "identifier": [{"system": "urn:test", "value": "subset-1"}]})


def _unchanged(client: Any, whole: Json) -> None:
    r = client.get(f"/fhir/Patient/{whole['id']}", headers=JSON_HEADERS)
    assert r.status_code == 200 and r.json() == whole, r.text


def _no_patient(client: Any, family: str) -> None:
    r = client.get(f"/fhir/Patient?family={family}", headers=JSON_HEADERS)
    assert r.status_code == 200 and r.json()["total"] == 0, r.text


@pytest.mark.parametrize("query", ["Patient/{id}?_elements=name",
                                   "Patient?_id={id}&_elements=name",
                                   "Patient/{id}?_summary=text"])
def test_a_subset_written_back_is_refused_and_the_resource_is_unchanged(client, whole, query):
    """An integrator reads a part (``_elements``, ``_summary``), corrects the name and saves
    what it got, as client libraries do (fhirpy's ``save()`` PUTs it back). The SUBSETTED tag
    is there so the part is never taken for the whole (search.html#summary): the update is a
    422 naming the tag, and the stored Patient keeps its gender, birth date and identifier
    (and no SUBSETTED tag of its own)."""
    r = client.get("/fhir/" + query.format(id=whole["id"]), headers=JSON_HEADERS)
    got = r.json()
    part = got["entry"][0]["resource"] if got["resourceType"] == "Bundle" else got
    assert part["meta"]["tag"] == [TAG] and "gender" not in part
    part["name"] = [{"family": "Subsetsson"}]
    _refused(client.put(f"/fhir/Patient/{whole['id']}", **body(part)))
    _unchanged(client, whole)


def test_a_subsetted_resource_is_created_by_no_write(client, whole):
    """Whatever carries SUBSETTED among its tags is refused by every write that would store
    it, by the tag's place: a create, an update of a new id, a conditional update."""
    new = {"resourceType": "Patient", "name": [{"family": "Ny"}],
           "meta": {"tag": [{"system": "urn:test", "code": "x"}, TAG]}}
    where = "Patient.meta.tag[1]"
    _refused(client.post("/fhir/Patient", **body(new)), where)
    _refused(client.put("/fhir/Patient/ny-1", **body({**new, "id": "ny-1"})), where)
    _refused(client.put("/fhir/Patient?identifier=urn:test|ny", **body(new)), where)
    _refused(client.put(f"/fhir/Patient?_id={whole['id']}", **body(
        {**new, "id": whole["id"]})), where)
    _no_patient(client, "Ny")
    assert client.get("/fhir/Patient/ny-1").status_code == 404
    _unchanged(client, whole)


def test_a_patch_that_tags_the_resource_subsetted_is_refused(client, whole):
    """A patch's result is written as an update: one that adds the tag is refused too."""
    ops = [{"op": "add", "path": "/meta/tag", "value": [TAG]}]
    r = client.patch(f"/fhir/Patient/{whole['id']}", content=orjson.dumps(ops), headers=PATCH)
    _refused(r)
    _unchanged(client, whole)


def test_a_subset_in_a_transaction_fails_it_and_in_a_batch_its_entry(client, whole):
    """A transaction carrying a subset is refused whole (nothing of it stored); a batch
    answers that entry 422 and writes the others."""
    part = client.get(f"/fhir/Patient/{whole['id']}?_elements=name", headers=JSON_HEADERS).json()
    entries = [{"resource": {"resourceType": "Patient", "name": [{"family": "Annan"}]},
                "request": {"method": "POST", "url": "Patient"}},
               {"resource": part, "request": {"method": "PUT", "url": f"Patient/{whole['id']}"}}]
    r = client.post("/fhir", **body({"resourceType": "Bundle", "type": "transaction",
                                     "entry": entries}))
    assert r.status_code == 422, r.text
    _says_subsetted(r.json()["issue"][0], "Bundle.entry[1].resource.meta.tag[0]")
    _no_patient(client, "Annan")
    _unchanged(client, whole)
    r = client.post("/fhir", **body({"resourceType": "Bundle", "type": "batch",
                                     "entry": entries}))
    assert r.status_code == 200, r.text
    first, second = r.json()["entry"]
    assert first["response"]["status"].startswith("201"), first
    assert second["response"]["status"].startswith("422"), second
    _says_subsetted(second["response"]["outcome"]["issue"][0], "Patient.meta.tag[0]")
    _unchanged(client, whole)
