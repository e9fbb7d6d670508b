"""transaction and batch Bundles at the FHIR base."""

from __future__ import annotations

import pytest

from fhirhttp import PNR, body, create, outcome_text, patient, plain_careplan


def tx(*entries, btype="transaction"):
    return {"resourceType": "Bundle", "type": btype, "entry": list(entries)}


def post(resource, full_url=None, **req):
    e = {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"],
                                           **req}}
    if full_url:
        e["fullUrl"] = full_url
    return e


def test_transaction_resolves_urn_uuid_references(client):
    pat_url = "urn:uuid:0b3b7b0e-2f4b-4a8e-9c4f-1e1b1a1d1c10"
    bundle = tx(
        post({"resourceType": "CarePlan", "status": "active", "intent": "plan",
              "subject": {"reference": pat_url}}),
        post(patient(), pat_url),
    )
    r = client.post("/fhir", **body(bundle))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created", "201 Created"]
    plan_loc, pat_loc = (e["response"]["location"] for e in out["entry"])
    pat_id = pat_loc.split("/")[-3]
    plan = client.get(plan_loc.replace("http://hub.test", "")).json()
    assert plan["subject"]["reference"] == f"Patient/{pat_id}"


def test_transaction_is_all_or_nothing(client):
    bad = patient()
    bad["identifier"][0]["value"] = "191212121213"
    bundle = tx(post(patient("200001012384")), post(bad))
    r = client.post("/fhir", **body(bundle))
    assert r.status_code == 422
    assert "Bundle.entry[1]" in outcome_text(r)
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_transaction_update_delete_and_read_entries(client):
    keep = create(client, patient())
    drop = create(client, patient("200001012384"))
    bundle = tx(
        {"resource": keep | {"gender": "male"},
         "request": {"method": "PUT", "url": f"Patient/{keep['id']}", "ifMatch": 'W/"1"'}},
        {"request": {"method": "DELETE", "url": f"Patient/{drop['id']}"}},
        {"request": {"method": "GET", "url": f"Patient/{keep['id']}"}},
    )
    out = client.post("/fhir", **body(bundle)).json()
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses == ["200 OK", "200 OK", "200 OK"]
    # GET runs after the PUT in a transaction, so it sees the new version.
    assert out["entry"][2]["resource"]["gender"] == "male"
    assert client.get(f"/fhir/Patient/{drop['id']}").status_code == 410


def test_transaction_stale_if_match_rolls_back(client):
    keep = create(client, patient())
    bundle = tx(post(patient("200001012384")),
                {"resource": keep, "request": {"method": "PUT", "url": f"Patient/{keep['id']}",
                                               "ifMatch": 'W/"7"'}})
    r = client.post("/fhir", **body(bundle))
    assert r.status_code == 412
    assert client.get("/fhir/Patient").json()["total"] == 1


def test_delete_entries_with_a_stale_if_match_delete_nothing(client):
    keep = create(client, patient())
    stale = {"request": {"method": "DELETE", "url": f"Patient/{keep['id']}",
                         "ifMatch": 'W/"7"'}}
    r = client.post("/fhir", **body(tx(post(patient("200001012384")), stale)))
    assert r.status_code == 412, r.text
    assert "Bundle.entry[1]" in outcome_text(r)
    assert client.get("/fhir/Patient").json()["total"] == 1  # the whole transaction undone
    out = client.post("/fhir", **body(tx(stale, btype="batch"))).json()
    assert out["entry"][0]["response"]["status"] == "412"
    assert client.get(f"/fhir/Patient/{keep['id']}").status_code == 200
    current = {"request": {"method": "DELETE", "url": f"Patient/{keep['id']}",
                           "ifMatch": 'W/"1"'}}
    out = client.post("/fhir", **body(tx(current))).json()
    assert out["entry"][0]["response"]["status"] == "200 OK"
    assert client.get(f"/fhir/Patient/{keep['id']}").status_code == 410


def test_transaction_conditional_create_reuses_existing(client):
    existing = create(client, patient())
    url = "urn:uuid:7f1a4c1e-0000-4000-8000-000000000001"
    bundle = tx(
        post(patient(), url, ifNoneExist="identifier=191212121212"),
        post(plain_careplan("placeholder") | {"subject": {"reference": url}}),
    )
    out = client.post("/fhir", **body(bundle)).json()
    assert out["entry"][0]["response"]["status"] == "200 OK"
    plan_id = out["entry"][1]["response"]["location"].split("/")[-3]
    plan = client.get(f"/fhir/CarePlan/{plan_id}").json()
    assert plan["subject"]["reference"] == f"Patient/{existing['id']}"
    assert client.get("/fhir/Patient").json()["total"] == 1


def test_batch_entries_succeed_or_fail_alone(client):
    bad = patient()
    bad["gender"] = "bogus"
    bundle = tx(post(patient()), post(bad), {"request": {"method": "GET", "url": "Patient/nobody"}},
                btype="batch")
    r = client.post("/fhir", **body(bundle))
    assert r.status_code == 200
    out = r.json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses[0] == "201 Created" and statuses[1] == "422" and statuses[2] == "404"
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Patient").json()["total"] == 1


def test_a_fault_of_the_hub_in_one_batch_entry_is_that_entrys_500_alone(
        client, monkeypatch, caplog):
    """The entries of a batch commit one by one: a bug met by one entry is its own 500
    (an OperationOutcome, logged with its traceback); the others' results are answered."""
    from sip_hub import interactions

    real_read = interactions.read

    def read(tx, ctx, rtype, rid, *more):
        if rid == "buggy":
            raise RuntimeError("a bug")
        return real_read(tx, ctx, rtype, rid, *more)
    monkeypatch.setattr(interactions, "read", read)
    bundle = tx(post(patient()), {"request": {"method": "GET", "url": "Patient/buggy"}},
                post(patient("200001012384")), btype="batch")
    r = client.post("/fhir", **body(bundle))
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert [e["response"]["status"] for e in entries] == ["201 Created", "500", "201 Created"]
    issue = entries[1]["response"]["outcome"]["issue"][0]
    assert issue["code"] == "exception" and "Bundle.entry[1]" in issue["diagnostics"]
    assert "Unhandled error in Bundle.entry[1]" in caplog.text
    assert "RuntimeError: a bug" in caplog.text  # with its traceback
    assert client.get("/fhir/Patient").json()["total"] == 2


def test_batch_search_entry(client):
    create(client, patient())
    out = client.post("/fhir", **body(tx(
        {"request": {"method": "GET", "url": "Patient?identifier=191212121212"}},
        btype="batch"))).json()
    assert out["entry"][0]["resource"]["total"] == 1


def test_bundle_of_other_type_is_400(client):
    r = client.post("/fhir", **body({"resourceType": "Bundle", "type": "collection"}))
    assert r.status_code == 400
    assert "transaction or batch" in outcome_text(r)


def test_entry_without_request_is_400(client):
    r = client.post("/fhir", **body(tx({"resource": patient()})))
    assert r.status_code == 400
    assert "request" in outcome_text(r)


def test_absolute_url_to_other_server_is_refused(client):
    r = client.post("/fhir", **body(tx({"resource": patient(), "request": {
        "method": "POST", "url": "http://elsewhere.example/fhir/Patient"}})))
    assert r.status_code == 400


@pytest.mark.parametrize("field,value", [
    ("fullUrl", {"a": 1}), ("fullUrl", ["urn:uuid:x"]), ("fullUrl", 5),
    ("request.ifNoneExist", {"identifier": "x"}), ("request.ifMatch", 3),
])
@pytest.mark.parametrize("btype", ["transaction", "batch"])
def test_entry_elements_of_the_wrong_type_are_400_and_nothing_is_stored(client, btype, field,
                                                                         value):
    entry = {"fullUrl": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a",
             "resource": patient(), "request": {"method": "POST", "url": "Patient"}}
    if field.startswith("request."):
        entry["request"][field.split(".")[1]] = value
    else:
        entry[field] = value
    r = client.post("/fhir", **body({"resourceType": "Bundle", "type": btype,
                                     "entry": [entry]}))
    if btype == "transaction":
        assert r.status_code == 400, r.text
        assert "Bundle.entry[0]" in outcome_text(r) and field.split(".")[-1] in outcome_text(r)
    else:  # each entry answers alone
        assert r.status_code == 200, r.text
        response = r.json()["entry"][0]["response"]
        assert response["status"] == "400"
        assert field.split(".")[-1] in str(response["outcome"])
    assert client.get("/fhir/Patient").json()["total"] == 0


def test_two_conditional_creates_on_the_same_criteria_fail_the_transaction(client):
    """Both found nothing and both created: two resources where the criteria said one, and
    every conditional create on them afterwards a 412. Two spellings of one personnummer
    are the same criteria."""
    first = post(patient(), ifNoneExist=f"identifier={PNR}|191212121212")
    again = post(patient(), ifNoneExist=f"identifier={PNR}|19121212-1212")
    r = client.post("/fhir", **body(tx(first, again)))
    assert r.status_code == 400, r.text
    assert "Bundle.entry[1]: Bundle.entry[0] creates or updates the Patient of the same " \
        "criteria" in outcome_text(r)
    assert client.get("/fhir/Patient").json()["total"] == 0
    r = client.post("/fhir", **body(tx(first)))  # alone, it creates
    assert r.status_code == 200 and r.json()["entry"][0]["response"]["status"] == "201 Created"


@pytest.mark.parametrize("second", ["PUT", "DELETE"])
def test_a_transaction_writing_one_resource_twice_fails_and_writes_nothing(client, second):
    """FHIR: entries whose resource identities overlap fail the transaction (both were
    applied, the last one winning)."""
    keep = create(client, patient())
    other = create(client, patient("200001012384"))
    twice = {"request": {"method": second, "url": f"Patient/{keep['id']}"}}
    if second == "PUT":
        twice["resource"] = keep | {"gender": "female"}
    bundle = tx({"resource": other | {"gender": "male"},
                 "request": {"method": "PUT", "url": f"Patient/{other['id']}"}},
                {"resource": keep | {"gender": "male"},
                 "request": {"method": "PUT", "url": f"Patient/{keep['id']}"}}, twice)
    r = client.post("/fhir", **body(bundle))
    assert r.status_code == 400, r.text
    assert f"Bundle.entry[2]: Patient/{keep['id']} is written by Bundle.entry[1]" in \
        outcome_text(r)
    for p in (keep, other):
        assert client.get(f"/fhir/Patient/{p['id']}").json()["meta"]["versionId"] == "1"
