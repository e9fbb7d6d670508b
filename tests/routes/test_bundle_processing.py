"""Transaction and batch Bundles (POST /fhir) as FHIR R4 http.html#transaction processes
them: DELETEs before the matching, placeholders everywhere FHIR links, conditional reads and
Prefer per entry, histories, errors located in the Bundle, notifications from the
transaction's final state."""

from __future__ import annotations

import orjson
import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, PNR, create, patient, plain_careplan
from messaging import harness
from messaging.harness import BUP, SCHOOL, SOC
from test_bundles import post, tx as bundle

broker, hub = harness.broker, harness.hub

PLACEHOLDER = "urn:uuid:0b3b7b0e-2f4b-4a8e-9c4f-1e1b1a1d1c10"


def get(url, **req):
    return {"request": {"method": "GET", "url": url, **req}}


def delete(url):
    return {"request": {"method": "DELETE", "url": url}}


def send(client, b, **headers):
    return client.post("/fhir", content=orjson.dumps(b), headers=JSON_HEADERS | headers)


def read_back(client, location):
    return client.get(location.replace("http://hub.test", "")).json()


# -- conditional reads in GET entries ---------------------------------------------------------

@pytest.mark.parametrize("condition", [{"ifNoneMatch": 'W/"1"'},
                                       {"ifModifiedSince": "2999-01-01T00:00:00Z"}])
def test_a_get_entry_with_a_condition_the_current_version_meets_answers_304(client, condition):
    """Bundle.entry.request.ifNoneMatch / ifModifiedSince are FHIR's conditional read inside a
    batch: a system polling a plan in a batch fetches it only once it changed, as with the
    headers outside one (both elements were ignored: 200 and the whole resource)."""
    p = create(client, patient())
    r = send(client, bundle(get(f"Patient/{p['id']}", **condition), btype="batch"))
    assert r.status_code == 200, r.text
    entry = r.json()["entry"][0]
    assert entry["response"]["status"].startswith("304"), entry["response"]
    assert "resource" not in entry


# -- Prefer applied to the entries ------------------------------------------------------------

def test_prefer_return_minimal_does_not_strip_the_resource_of_a_read_entry(client):
    """Prefer: return=minimal applies to writes (http.html#ops): a read entry of a batch
    sent with it still carries the resource it read (it was stripped: only an etag)."""
    p = create(client, patient())
    r = send(client, bundle(get(f"Patient/{p['id']}"), btype="batch"),
             Prefer="return=minimal")
    assert r.status_code == 200, r.text
    entry = r.json()["entry"][0]
    assert entry.get("resource", {}).get("id") == p["id"], entry


@pytest.mark.parametrize("btype", ["batch", "transaction"])
def test_prefer_return_operation_outcome_answers_each_write_entry_with_an_outcome(client,
                                                                                  btype):
    """Prefer: return=OperationOutcome applies to each write entry (http.html#transaction-
    response): the outcome in entry.response.outcome, no resource (it was ignored)."""
    r = send(client, bundle(post(patient()), btype=btype), Prefer="return=OperationOutcome")
    assert r.status_code == 200, r.text
    entry = r.json()["entry"][0]
    assert entry["response"].get("outcome", {}).get("resourceType") == "OperationOutcome", \
        entry
    assert "resource" not in entry


# -- processing order: DELETE before POST, before conditional matching ------------------------

def test_a_conditional_create_does_not_find_the_resource_the_transaction_deletes(client):
    """FHIR processes a transaction's DELETEs first: a conditional create whose ifNoneExist
    matches only a Patient the same transaction deletes creates a new one, and the plan
    written with it refers to that (it found the deleted Patient, and the plan referred to
    it)."""
    old = create(client, patient())
    r = send(client, bundle(
        post(patient(), PLACEHOLDER, ifNoneExist=f"identifier={PNR}|191212121212"),
        post(plain_careplan("x") | {"subject": {"reference": PLACEHOLDER}}),
        delete(f"Patient/{old['id']}")))
    assert r.status_code == 200, r.text
    created, plan = r.json()["entry"][:2]
    assert created["response"]["status"].startswith("201"), created["response"]
    subject = read_back(client, plan["response"]["location"])["subject"]["reference"]
    assert subject != f"Patient/{old['id']}"
    assert client.get(f"/fhir/{subject}").status_code == 200


def test_a_conditional_reference_does_not_resolve_to_what_the_transaction_deletes(client):
    """A conditional reference is resolved after the transaction's DELETEs: criteria that then
    match no Patient fail the transaction with 412, nothing applied (the plan was stored
    referring to the Patient the transaction deleted)."""
    old = create(client, patient())
    r = send(client, bundle(
        post(plain_careplan("x") | {"subject": {
            "reference": f"Patient?identifier={PNR}|191212121212"}}),
        delete(f"Patient/{old['id']}")))
    assert r.status_code == 412, r.text
    assert client.get("/fhir/CarePlan").json()["total"] == 0
    assert client.get(f"/fhir/Patient/{old['id']}").status_code == 200


# -- fullUrl resolution ----------------------------------------------------------------------

def _linking(where):
    plan = {"resourceType": "CarePlan", "status": "active", "intent": "plan",
            "subject": {"reference": PLACEHOLDER}}
    if where == "uri":
        plan["extension"] = [{"url": "http://example.org/fhir/StructureDefinition/source",
                              "valueUri": PLACEHOLDER}]
    else:
        plan["text"] = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/'
                        f'xhtml"><a href="{PLACEHOLDER}">Patienten</a></div>'}
    return plan


@pytest.mark.parametrize("where", ["uri", "narrative"])
def test_full_url_placeholders_are_replaced_in_uri_elements_and_the_narrative(client, where):
    """http.html#trules: placeholders are replaced in references, elements of type uri, url,
    oid, uuid, and the narrative's <a href> and <img src>: a stored plan keeps no temporary
    urn:uuid, which names nothing once stored."""
    r = send(client, bundle(post(patient(), PLACEHOLDER), post(_linking(where))))
    assert r.status_code == 200, r.text
    pat, plan = (e["response"]["location"] for e in r.json()["entry"])
    stored = read_back(client, plan)
    assert PLACEHOLDER not in orjson.dumps(stored).decode(), stored
    assert "Patient/" + pat.split("/")[-3] in orjson.dumps(stored).decode()


def test_a_relative_reference_to_an_entrys_restful_full_url_is_rewritten(client):
    """bundle.html#references: 'Patient/temp1' names the entry whose fullUrl is
    [base]/Patient/temp1, and is replaced by the id the hub assigns to that POST (it was
    stored naming a Patient that does not exist)."""
    r = send(client, bundle(post(patient(), "http://hub.test/fhir/Patient/temp1"),
                            post(plain_careplan("temp1"))))
    assert r.status_code == 200, r.text
    pat, plan = (e["response"]["location"] for e in r.json()["entry"])
    assert read_back(client, plan)["subject"]["reference"] == "Patient/" + pat.split("/")[-3]


def test_a_batch_entry_referring_to_another_entry_by_placeholder_is_refused(client):
    """A batch's entries stand alone (FHIR: no dependencies between them): an entry naming
    another by its fullUrl is refused (400), nothing stored for it (a plan about
    'urn:uuid:...', outside every patient compartment, was stored)."""
    r = send(client, bundle(post(patient(), PLACEHOLDER),
                            post(plain_careplan("x") | {"subject": {"reference": PLACEHOLDER}}),
                            btype="batch"))
    assert r.status_code == 200, r.text
    entry = r.json()["entry"][1]
    assert entry["response"]["status"].startswith("4"), entry["response"]
    assert client.get("/fhir/CarePlan").json()["total"] == 0


# -- the answer's shape ----------------------------------------------------------------------

def test_a_transaction_failure_names_the_entry_in_its_expression(client):
    """A failed transaction's issue.expression is a FHIRPath into the Bundle sent
    ('Bundle.entry[1].resource.gender'), so tooling marks the faulty entry's element
    ('Patient.gender' was as true of entry 0)."""
    bad = patient()
    bad["gender"] = "bogus"
    r = send(client, bundle(post(patient("200001012384")), post(bad)))
    assert r.status_code in (400, 422), r.text
    expressions = [x for i in r.json()["issue"] for x in i.get("expression", [])]
    assert expressions, r.json()
    assert all(x.startswith("Bundle.entry[1]") for x in expressions), expressions


def test_instance_history_in_a_batch_is_answered(client):
    """A batch may carry any GET (http.html#transaction: read, vread, search, history): a
    resource's history is answered with its history Bundle (it was a 400)."""
    p = create(client, patient())
    r = send(client, bundle(get(f"Patient/{p['id']}/_history"), btype="batch"))
    assert r.status_code == 200, r.text
    entry = r.json()["entry"][0]
    assert entry["response"]["status"].startswith("200"), entry["response"]
    assert entry["resource"]["type"] == "history"


# -- SIP notifications from a transaction ----------------------------------------------------

def test_a_transactions_notifications_do_not_depend_on_its_entry_order(hub):
    """The demo SIP written in one transaction tells BUP and the school 'plan-established'
    whatever its entries' order (FHIR gives them none but their methods'): with the Consent
    listed after the CarePlan the plan was told to no one (no consent yet), and the
    parties heard only 'consent-changed'."""
    case = f.demo_case()
    consent = [r for r in case if r["resourceType"] == "Consent"]
    case = [r for r in case if r["resourceType"] != "Consent"] + consent
    entries = [{"resource": r, "request": {"method": "PUT",
                                           "url": f"{r['resourceType']}/{r['id']}"}}
               for r in case]
    r = hub.post(SOC, "/fhir", bundle(*entries))
    assert r.status_code == 200, r.text
    told = {(d.event, d.dest_org) for d in hub.deliveries()}
    assert {("plan-established", BUP), ("plan-established", SCHOOL)} <= told, sorted(told)


# -- size ------------------------------------------------------------------------------------

@pytest.mark.parametrize("btype", ["batch", "transaction"])
def test_a_bundle_of_more_entries_than_the_hub_takes_is_refused_413(client, btype):
    """SIP_HUB_MAX_BUNDLE_ENTRIES (1,000): a Bundle of more entries is a 413 with an
    OperationOutcome naming the bound, before any entry is processed (within the body's
    bound, 60,000 small searches held a worker a minute); nothing is written."""
    entries = [get("Patient?_count=0")] * 1000 + [post(patient())]
    r = send(client, bundle(*entries, btype=btype))
    assert r.status_code == 413, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert "SIP_HUB_MAX_BUNDLE_ENTRIES" in r.text
    assert client.get("/fhir/Patient").json()["total"] == 0
