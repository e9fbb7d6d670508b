"""Probes of the approval rule (domain rules 3 and 9): the ways a client might write a SIP
plan as established without the person's approval, the forms an approval Provenance takes,
and what a refusal leaves behind (nothing stored, logged or shown to the citizen)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

import sip_factory as f
from conftest import issue_token
from fhirhttp import JSON_HEADERS, body, outcome_text
from sip_hub import identifiers
from sip_hub.fhir.models import to_xml
from messaging import harness
from messaging.harness import URL, outcome_of, sip_message
from sip_process import SOC, read

PORTAL = "SE2321000016-1177"
VIEW = f"/fhir/CarePlan/$citizen-view?patient={identifiers.PERSONNUMMER}|{f.DEMO_PNR}"
Json = dict[str, Any]
broker, hub = harness.broker, harness.hub  # the messaging hub's fixtures


def _put(r: Json, url: str | None = None, **request: str) -> Json:
    return {"resource": copy.deepcopy(r),
            "request": {"method": "PUT", "url": url or f"{r['resourceType']}/{r['id']}",
                        **request}}


def _post(r: Json, full_url: str | None = None, **request: str) -> Json:
    res = {k: v for k, v in copy.deepcopy(r).items() if k != "id"}
    entry: Json = {"resource": res,
                   "request": {"method": "POST", "url": r["resourceType"], **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def _send(client, headers, entries: list[Json], btype: str = "transaction"):
    return client.post("/fhir", content=body({"resourceType": "Bundle", "type": btype,
                                              "entry": entries})["content"],
                       headers=JSON_HEADERS | headers)


def _context() -> list[Json]:
    """The demo SIP without its plan and approval."""
    return [r for r in f.demo_case() if r["resourceType"] not in ("CarePlan", "Provenance")]


def _shown(client, portal) -> int:
    r = client.get(VIEW, headers=portal)
    assert r.status_code == 200, r.text
    return r.json()["total"]


def _refused(r, *texts: str) -> None:
    assert r.status_code == 409, r.text
    for text in texts:
        assert text in outcome_text(r), outcome_text(r)


def _setup(client, soc) -> None:
    r = _send(client, soc, [_put(x) for x in _context()])
    assert r.status_code == 200, r.text


def _no_plan(client, portal) -> None:
    assert client.get("/fhir/CarePlan/alva-sip").status_code in (404, 410)
    assert _shown(client, portal) == 0


# -- ways around it ----------------------------------------------------------------------------

def test_a_batch_entry_cannot_establish_a_plan(client, soc, portal):
    _setup(client, soc)
    r = _send(client, soc, [_put(f.sip_careplan()), _put(f.approval_provenance())], "batch")
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["response"]["status"] == "409"
    _no_plan(client, portal)


def test_a_conditional_update_in_a_transaction_needs_the_approval(client, soc, portal):
    _setup(client, soc)
    r = _send(client, soc, [_put(f.sip_careplan(), "CarePlan?patient=Patient/alva")])
    _refused(r, "Bundle.entry[0]", "approval")
    _no_plan(client, portal)


def test_a_post_with_if_none_exist_needs_the_approval(client, soc, portal):
    _setup(client, soc)
    r = _send(client, soc, [_post(f.sip_careplan(), ifNoneExist="patient=Patient/alva")])
    _refused(r, "approval")
    assert read(client, "CarePlan?patient=Patient/alva", soc)["total"] == 0
    assert _shown(client, portal) == 0


def test_a_non_sip_plan_turned_into_an_established_sip_needs_the_approval(client, soc, portal):
    _setup(client, soc)
    plain = f.sip_careplan(status="draft")
    del plain["category"]
    plain["extension"] = []
    plain.pop("extension")
    r = client.put("/fhir/CarePlan/alva-sip", content=body(plain)["content"],
                   headers=JSON_HEADERS | soc)
    assert r.status_code in (200, 201), r.text
    r = _send(client, soc, [_put(f.sip_careplan())])
    _refused(r, "approval")
    assert read(client, "CarePlan/alva-sip", soc)["status"] == "draft"
    assert _shown(client, portal) == 0


@pytest.mark.parametrize("status", ["on-hold", "completed"])
def test_on_hold_or_completed_needs_the_approval(client, soc, portal, status):
    _setup(client, soc)
    r = client.put("/fhir/CarePlan/alva-sip", content=body(f.sip_careplan(status=status))[
        "content"], headers=JSON_HEADERS | soc)
    _refused(r, "approval")
    _no_plan(client, portal)


def test_a_phase_that_says_established_with_status_draft_is_refused(client, soc, portal):
    _setup(client, soc)
    plan = f.sip_careplan(status="draft")
    plan["extension"].append({"url": f.sip.EXT_PHASE, "valueCode": "upprattad"})
    r = _send(client, soc, [_put(plan), _put(f.approval_provenance())])
    assert r.status_code in (400, 409, 422), r.text
    _no_plan(client, portal)


# -- the Provenance ----------------------------------------------------------------------------

@pytest.mark.parametrize("target", [
    "CarePlan/alva-sip/_history/1",
    "http://hub.test/fhir/CarePlan/alva-sip",
])
def test_an_approval_may_name_the_plan_by_version_or_absolute_url(client, soc, portal, target):
    _setup(client, soc)
    prov = f.approval_provenance()
    prov["target"] = [{"reference": target}]
    r = _send(client, soc, [_put(f.sip_careplan()), _put(prov)])
    assert r.status_code == 200, r.text
    assert _shown(client, portal) == 1


def test_an_approval_of_an_older_version_of_the_plan_does_not_count(client, soc, portal):
    """A PUT over a deleted plan writes version 3: an approval of version 1 approved other
    content."""
    _setup(client, soc)
    assert _send(client, soc, [_put(f.sip_careplan(status="draft"))]).status_code == 200
    assert client.delete("/fhir/CarePlan/alva-sip", headers=soc).status_code in (200, 204)
    prov = f.approval_provenance("CarePlan/alva-sip/_history/1", id="alva-sip-godkannande")
    r = _send(client, soc, [_put(f.sip_careplan()), _put(prov)])
    _refused(r, "approval")
    _no_plan(client, portal)


def test_an_approval_may_name_a_posted_plan_by_its_urn(client, soc, portal):
    _setup(client, soc)
    urn = "urn:uuid:0d5f0e0a-3a1b-4c55-9a55-8f7a0c3c1b11"
    prov = f.approval_provenance(urn, id="alva-sip-godkannande")
    r = _send(client, soc, [_post(f.sip_careplan(), urn), _post(prov)])
    assert r.status_code == 200, r.text
    assert _shown(client, portal) == 1


def test_an_approval_beside_another_provenance_of_the_plan_counts(client, soc, portal):
    """A Provenance that records only who wrote the plan (no attester) says nothing of the
    approval: it neither gives one nor spoils the one given beside it."""
    _setup(client, soc)
    authored = f.approval_provenance(approvers=(), id="alva-sip-forfattad")
    r = _send(client, soc, [_put(f.sip_careplan()), _put(authored),
                            _put(f.approval_provenance())])
    assert r.status_code == 200, r.text
    assert _shown(client, portal) == 1


def test_a_provenance_without_an_attester_alone_is_refused(client, soc, portal):
    _setup(client, soc)
    authored = f.approval_provenance(approvers=(), id="alva-sip-forfattad")
    r = _send(client, soc, [_put(f.sip_careplan()), _put(authored)])
    _refused(r, "Bundle.entry[0]", "who approved the plan and when")
    _no_plan(client, portal)


def test_a_minors_plan_needs_a_custodians_approval_even_with_none_in_the_team(
        client, soc, portal):
    """Alva is 15: with no custodian in the CareTeam her own approval alone does not
    establish the plan."""
    context = [f.sip_careteam(relatives=()) if r["resourceType"] == "CareTeam" else r
               for r in _context()]
    assert _send(client, soc, [_put(x) for x in context]).status_code == 200
    r = _send(client, soc, [_put(f.sip_careplan()),
                            _put(f.approval_provenance(approvers=(f.PATIENT,)))])
    _refused(r, "custodian")
    _no_plan(client, portal)


def _other_relative() -> list[Json]:
    other = f.patient("201001012382")
    other["id"] = "other"
    rp = copy.deepcopy(f.related_person())
    rp["id"] = "other-mother"
    rp["patient"] = {"reference": "Patient/other"}
    return [other, rp]


@pytest.mark.parametrize("who", [
    {"reference": "RelatedPerson/other-mother"},
    {"identifier": {"system": identifiers.PERSONNUMMER, "value": f.DEMO_PNR}},
    {"display": "Alva Andersson"},
])
def test_an_attester_who_is_not_known_as_the_person_is_refused(client, soc, portal, who):
    _setup(client, soc)
    r = _send(client, soc, [_put(x) for x in _other_relative()])
    assert r.status_code == 200, r.text
    prov = f.approval_provenance()
    prov["agent"][1]["who"] = who
    r = _send(client, soc, [_put(f.sip_careplan()), _put(prov)])
    assert r.status_code in (400, 409), r.text
    _no_plan(client, portal)


def test_an_approval_with_a_period_instead_of_a_time_is_refused(client, soc, portal):
    _setup(client, soc)
    prov = f.approval_provenance()
    del prov["occurredDateTime"]
    prov["occurredPeriod"] = {"start": "2026-11-27T14:00:00+01:00"}
    r = _send(client, soc, [_put(f.sip_careplan()), _put(prov)])
    _refused(r, "who approved the plan and when")
    _no_plan(client, portal)


def test_an_approval_refused_itself_refuses_the_whole_transaction(client, soc, portal):
    _setup(client, soc)
    prov = f.approval_provenance()
    prov["recorded"] = "not a time"
    r = _send(client, soc, [_put(f.sip_careplan()), _put(prov)])
    assert r.status_code >= 400, r.text
    _no_plan(client, portal)


def test_an_approval_written_alone_does_not_open_a_later_write(client, soc, portal):
    _setup(client, soc)
    assert _send(client, soc, [_put(f.sip_careplan(status="draft")),
                               _put(f.approval_provenance())]).status_code == 200
    # On its own, before (a draft's approval) or after: a later write is still refused.
    r = client.put("/fhir/Provenance/alva-sip-godkannande", content=body(
        f.approval_provenance())["content"], headers=JSON_HEADERS | soc)
    assert r.status_code == 200, r.text
    assert client.delete("/fhir/CarePlan/alva-sip", headers=soc).status_code in (200, 204)
    _refused(client.put("/fhir/CarePlan/alva-sip", content=body(f.sip_careplan())["content"],
                        headers=JSON_HEADERS | soc), "approval")
    _refused(_send(client, soc, [_put(f.sip_careplan())]), "approval")
    _no_plan(client, portal)


# -- what a refusal leaves ---------------------------------------------------------------------

def _writes_logged(client) -> list[Json]:
    """The AuditEvents of successful creates and updates of the plan."""
    client.app.state.audit.flush()
    got = client.get("/fhir/AuditEvent?entity=CarePlan/alva-sip&_count=1000")
    assert got.status_code == 200, got.text
    return [e["resource"] for e in got.json().get("entry", [])
            if e["resource"].get("outcome") == "0"
            and e["resource"].get("action") in ("C", "U")]


def test_a_refused_import_stores_and_logs_no_write(client, soc, portal):
    entries = [_put(x) for x in _context()] + [_put(f.sip_careplan())]
    r = _send(client, soc, entries)
    # The entry is named; the expression is a FHIRPath into the Bundle, within its resource
    # (as for every entry's error)
    _refused(r, f"Bundle.entry[{len(entries) - 1}]")
    assert r.json()["issue"][0]["expression"] == \
        [f"Bundle.entry[{len(entries) - 1}].resource.status"]
    assert client.get("/fhir/Patient/alva").status_code == 404
    assert _writes_logged(client) == []
    assert _shown(client, portal) == 0
    # (the same query finds the write once it is made)
    assert _send(client, soc, entries + [_put(f.approval_provenance())]).status_code == 200
    assert len(_writes_logged(client)) == 1


# -- by message ($process-message) -------------------------------------------------------------

def _by_message(hub, *resources: Json, event: str = "sip-initiated"):
    message = sip_message(event, SOC, *resources, focus=["CarePlan/alva-sip"])
    return hub.post(SOC, URL, message)


def test_a_message_cannot_establish_a_plan_without_the_approval(hub):
    r = hub.client.post("/fhir", content=body({"resourceType": "Bundle", "type": "transaction",
                                               "entry": [_put(x) for x in _context()]})[
        "content"], headers=JSON_HEADERS | hub.headers[SOC])
    assert r.status_code == 200, r.text
    code, issue = outcome_of(_by_message(hub, f.sip_careplan()))
    assert code != "ok" and "approval" in issue, (code, issue)
    assert hub.client.get("/fhir/CarePlan/alva-sip", headers=hub.headers["admin"]
                          ).status_code == 404
    portal = {"Authorization": "Bearer " + issue_token(
        hub.client, hub.store, PORTAL, "system/CarePlan.rs", "portal", False)}
    assert _shown(hub.client, portal) == 0
    for event in ("sip-initiated", "plan-established"):
        code, issue = outcome_of(_by_message(hub, f.sip_careplan(), f.approval_provenance(),
                                             event=event))
        assert code != "ok"
    assert _shown(hub.client, portal) == 0


# -- in XML ------------------------------------------------------------------------------------

XML = {"content-type": "application/fhir+xml"}


def test_xml_writes_follow_the_same_rule(client, soc, portal):
    _setup(client, soc)
    r = client.put("/fhir/CarePlan/alva-sip", content=to_xml(f.sip_careplan()),
                   headers=XML | soc)
    _refused(r, "approval")
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [_put(f.sip_careplan())]}
    _refused(client.post("/fhir", content=to_xml(bundle), headers=XML | soc), "approval")
    _no_plan(client, portal)
    bundle["entry"].append(_put(f.approval_provenance()))
    r = client.post("/fhir", content=to_xml(bundle), headers=XML | soc)
    assert r.status_code == 200, r.text
    assert _shown(client, portal) == 1
