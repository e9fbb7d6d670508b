"""A SIP plan becomes established only with the person's approval (domain rules 3 and 9):
through ``$transition`` (approvedBy, approvedAt), or, for a plan established outside the hub,
imported in a transaction with a Provenance naming who approved it and when. What an
organisation writes as established without one is refused, and nothing of it is stored or
shown to the citizen."""

from __future__ import annotations

import copy

import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body, outcome_text
from sip_hub import identifiers
from sip_process import read

VIEW = f"/fhir/CarePlan/$citizen-view?patient={identifiers.PERSONNUMMER}|{f.DEMO_PNR}"


def _transaction(client, headers, resources):
    entries = [{"resource": copy.deepcopy(r),
                "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
               for r in resources]
    return client.post("/fhir", content=body({"resourceType": "Bundle", "type": "transaction",
                                              "entry": entries})["content"],
                       headers=JSON_HEADERS | headers)


def _case(*, approval=None):
    """The demo SIP, its plan established, with ``approval`` as the approval Provenance (None:
    without one)."""
    case = [r for r in f.demo_case() if r["resourceType"] != "Provenance"]
    return case + ([approval] if approval is not None else [])


def _shown(client, portal) -> int:
    r = client.get(VIEW, headers=portal)
    assert r.status_code == 200, r.text
    return r.json()["total"]


def _refused(r, *texts):
    assert r.status_code == 409, r.text
    issue = r.json()["issue"][0]
    assert issue["code"] == "business-rule"
    for text in texts:
        assert text in outcome_text(r), outcome_text(r)


def _nothing_stored(client):
    for path in ("CarePlan/alva-sip", "Patient/alva", "Provenance/alva-sip-godkannande"):
        assert client.get(f"/fhir/{path}").status_code == 404, path


def test_an_imported_plan_with_the_persons_approval_is_stored_and_shown(client, soc, portal):
    r = _transaction(client, soc, _case(approval=f.approval_provenance()))
    assert r.status_code == 200, r.text
    plan = read(client, "CarePlan/alva-sip", soc)
    assert plan["status"] == "active"
    provs = read(client, "Provenance?target=CarePlan/alva-sip", soc)
    assert provs["total"] == 1
    attesters = [a["who"]["reference"] for a in provs["entry"][0]["resource"]["agent"]
                 if a["type"]["coding"][0]["code"] == "attester"]
    assert attesters == [f.PATIENT, f.MOTHER]
    assert _shown(client, portal) == 1


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_a_plan_written_as_established_on_its_own_is_refused(client, soc, portal, method):
    assert _transaction(client, soc, [r for r in _case() if r["resourceType"] != "CarePlan"]
                        ).status_code == 200
    plan = f.sip_careplan()
    if method == "POST":
        del plan["id"]
        r = client.post("/fhir/CarePlan", content=body(plan)["content"],
                        headers=JSON_HEADERS | soc)
    else:
        r = client.put("/fhir/CarePlan/alva-sip", content=body(plan)["content"],
                       headers=JSON_HEADERS | soc)
    _refused(r, "approval", "$transition")
    assert r.json()["issue"][0]["expression"] == ["CarePlan.status"]
    assert read(client, "CarePlan?patient=Patient/alva", soc)["total"] == 0
    assert _shown(client, portal) == 0


def test_an_import_without_the_approval_is_refused_naming_the_plan_entry(client, soc, portal):
    case = _case()
    r = _transaction(client, soc, case)
    index = next(i for i, res in enumerate(case) if res["resourceType"] == "CarePlan")
    _refused(r, f"Bundle.entry[{index}]", "without the person's approval")
    _nothing_stored(client)
    assert _shown(client, portal) == 0


def test_an_approval_of_another_plan_does_not_count(client, soc):
    other = f.approval_provenance("CarePlan/another-plan")
    _refused(_transaction(client, soc, _case(approval=other)), "without the person's approval")
    _nothing_stored(client)


@pytest.mark.parametrize("change, text", [
    (lambda p: p.pop("occurredDateTime"), "who approved the plan and when"),
    (lambda p: p.update(agent=p["agent"][:1]), "who approved the plan and when"),
    (lambda p: p.update(occurredDateTime="2099-01-01T10:00:00+01:00"), "cannot lie in the future"),
    # Someone who is not the person nor takes part for them (the coordinator's practitioner)
    (lambda p: p["agent"][1].update(who={"reference": f.COORDINATOR}), "cannot approve this plan"),
    # Alva is 15: her custodian approves too
    (lambda p: p.update(agent=p["agent"][:2]), "a custodian (vårdnadshavare) approves"),
])
def test_an_approval_that_does_not_hold_is_refused(client, soc, portal, change, text):
    prov = f.approval_provenance()
    change(prov)
    _refused(_transaction(client, soc, _case(approval=prov)), text)
    _nothing_stored(client)
    assert _shown(client, portal) == 0


def test_a_plan_written_over_a_deleted_one_as_established_needs_the_approval(client, soc):
    assert _transaction(client, soc, _case(approval=f.approval_provenance())).status_code == 200
    # An operator removes the plan (organisations may not delete an established plan) ...
    assert client.delete("/fhir/CarePlan/alva-sip").status_code in (200, 204)
    # ... and the coordinator cannot put an established one back without an approval.
    r = client.put("/fhir/CarePlan/alva-sip", content=body(f.sip_careplan())["content"],
                   headers=JSON_HEADERS | soc)
    _refused(r, "approval")
    assert client.get("/fhir/CarePlan/alva-sip").status_code == 410


def test_a_draft_plan_needs_no_approval(client, soc):
    case = [f.sip_careplan(status="draft") if r["resourceType"] == "CarePlan" else r
            for r in _case()]
    assert _transaction(client, soc, case).status_code == 200


def test_the_hubs_operators_may_repair_an_established_plan_without_one(client):
    """Operators (unrestricted admin clients) repair data; their writes are audited."""
    r = _transaction(client, {}, _case())
    assert r.status_code == 200, r.text
    assert read(client, "CarePlan/alva-sip")["status"] == "active"
