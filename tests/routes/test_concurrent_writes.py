"""Writes racing each other on PostgreSQL, where requests write at the same time (SQLite has
one writer). Each race is made certain: the test holds a row lock in a transaction of its own
and lets go once the requests wait for it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest
from sqlalchemy import text

from fhirhttp import body, create, outcome_text, patient
from pgwait import wait_until_blocked

pytestmark = pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


def versions(client, pid: str) -> list[str]:
    hist = client.get(f"/fhir/Patient/{pid}/_history").json()
    return [e["request"]["method"] for e in reversed(hist.get("entry", []))]


def delete_bundle(btype: str, pid: str) -> dict:
    return {"resourceType": "Bundle", "type": btype,
            "entry": [{"request": {"method": "DELETE", "url": f"Patient/{pid}"}}]}


@pytest.mark.parametrize("how", ["DELETE", "batch", "transaction"])
def test_deletes_that_lose_the_race_to_another_delete_answer_already_deleted(
        client, store, how):
    """Requests that read the resource while another request deletes it, and go on to delete
    it themselves: each answers as a DELETE of a deleted resource does, and one tombstone is
    written."""
    pid = create(client, patient())["id"]

    def send(_n: int):
        if how == "DELETE":
            return client.delete(f"/fhir/Patient/{pid}")
        return client.post("/fhir", **body(delete_bundle(how, pid)))

    with ThreadPoolExecutor(4) as pool:
        with store.begin() as tx:
            tx.delete("Patient", pid)  # the request that comes first, not yet committed
            answers = [pool.submit(send, n) for n in range(4)]
            wait_until_blocked(tx, 4)
        answers = [a.result(timeout=30) for a in answers]

    for r in answers:
        assert r.status_code == 200, r.text
        if how == "DELETE":
            assert "already deleted" in outcome_text(r)
        else:
            resp = r.json()["entry"][0]["response"]
            assert resp["status"] == "200 OK"
            assert "already deleted" in resp["outcome"]["issue"][0]["diagnostics"]
    assert versions(client, pid) == ["POST", "DELETE"]
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410


def test_a_delete_waiting_for_an_update_deletes_the_updated_version(client, store):
    pid = create(client, patient())["id"]
    with ThreadPoolExecutor(1) as pool:
        with store.begin() as tx:
            cur = tx.current("Patient", pid)
            tx.update({**cur.json(), "gender": "female"}, pid)
            answer = pool.submit(client.delete, f"/fhir/Patient/{pid}")
            wait_until_blocked(tx, 1)
        r = answer.result(timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["etag"] == 'W/"3"'
    assert versions(client, pid) == ["POST", "PUT", "DELETE"]


def lock_row(tx, pid: str) -> None:
    tx.conn.execute(text("SELECT 1 FROM resource WHERE res_type = 'Patient' AND res_id = :i "
                         "FOR UPDATE"), {"i": pid})


def put(res: dict) -> dict:
    return {"resource": res, "request": {"method": "PUT", "url": f"Patient/{res['id']}"}}


def test_a_deadlock_between_writes_is_a_409_conflict_and_nothing_is_applied(client, store):
    """A transaction Bundle writes A then B, while another transaction holds B and comes to
    wait for A: PostgreSQL breaks the deadlock by failing the Bundle, which is a conflict
    between concurrent writes (409, retry), not an unavailable database (503); the answer
    shows nothing of PostgreSQL's internals, and the Bundle's write of A is undone."""
    a = create(client, patient())
    b = create(client, patient("200001012384"))
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [put(a | {"gender": "female"}), put(b | {"gender": "female"})]}
    with ThreadPoolExecutor(1) as pool:
        with store.begin() as tx:
            lock_row(tx, b["id"])
            answer = pool.submit(client.post, "/fhir", **body(bundle))
            wait_until_blocked(tx, 1)  # the Bundle has written A and waits for B
            lock_row(tx, a["id"])  # waits for the Bundle: a deadlock
        r = answer.result(timeout=30)

    assert r.status_code == 409, r.text
    issue = r.json()["issue"][0]
    assert r.json()["resourceType"] == "OperationOutcome" and issue["code"] == "conflict"
    assert "changed concurrently" in issue["diagnostics"]
    assert "retried" in issue["diagnostics"]
    for internal in ("deadlock", "process", "transaction", "tuple", "relation", "DETAIL"):
        assert internal not in issue["diagnostics"]
    for res in (a, b):
        now = client.get(f"/fhir/Patient/{res['id']}").json()
        assert now["meta"]["versionId"] == "1" and "gender" not in now
    # Sent again, it goes through.
    again = client.post("/fhir", content=orjson.dumps(bundle),
                        headers={"content-type": "application/fhir+json"})
    assert again.status_code == 200, again.text


def test_transaction_bundles_writing_the_same_resources_in_opposite_orders_both_succeed(
        client, store):
    """Bundles lock what they write by id up front, in one order: one waits for the other
    instead of each holding a resource the other waits for. Made certain here: the second
    Bundle is already writing B when the first, which came first to wait for A, gets A and
    goes on to B."""
    a = create(client, patient())
    b = create(client, patient("200001012384"))

    def bundle(*resources):
        return {"resourceType": "Bundle", "type": "transaction",
                "entry": [put(r | {"gender": "female"}) for r in resources]}

    with ThreadPoolExecutor(2) as pool:
        with store.begin() as tx:
            lock_row(tx, a["id"])
            first = pool.submit(client.post, "/fhir", **body(bundle(a, b)))
            wait_until_blocked(tx, 1)
            second = pool.submit(client.post, "/fhir", **body(bundle(b, a)))
            wait_until_blocked(tx, 2)
        answers = [first.result(timeout=30), second.result(timeout=30)]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    for res in (a, b):
        assert client.get(f"/fhir/Patient/{res['id']}").json()["meta"]["versionId"] == "3"


def test_transaction_bundles_creating_the_same_resources_if_none_exist_in_opposite_orders(
        client, store):
    """Conditional creates lock their criteria up front with the Bundle's other keys, in one
    order: two Bundles creating the same two Patients if none exist, in opposite entry orders,
    both succeed and make one of each (each taking the criteria one by one in entry order,
    the two deadlocked and PostgreSQL failed one). Made certain here: the test holds the
    first Patient's criteria until both Bundles wait."""
    from sip_hub.interactions import match_key
    from fhirhttp import PNR
    pnrs = ("191212121212", "200001012384")

    def criteria(pnr: str) -> str:
        return f"identifier={PNR}|{pnr}"

    def bundle(*order: str) -> dict:
        return {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": patient(p), "request": {"method": "POST", "url": "Patient",
                                                  "ifNoneExist": criteria(p)}} for p in order]}

    held = match_key("Patient", criteria(pnrs[0]), "http://testserver/fhir")
    with ThreadPoolExecutor(2) as pool:
        with store.begin() as tx:
            tx.serialise(held)
            first = pool.submit(client.post, "/fhir", **body(bundle(*pnrs)))
            wait_until_blocked(tx, 1)
            second = pool.submit(client.post, "/fhir", **body(bundle(*reversed(pnrs))))
            wait_until_blocked(tx, 2)
        answers = [first.result(timeout=30), second.result(timeout=30)]
    assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
    for p in pnrs:
        found = client.get(f"/fhir/Patient?{criteria(p)}").json()
        assert found["total"] == 1, found


def test_puts_of_one_new_id_that_lose_the_race_to_its_create_update_it(client, store):
    """PUTs creating a resource while another request creates it (not yet committed): each
    is decided again once it commits, as an update of what it created (they answered 409
    'created concurrently; retry'). One version each, none lost."""
    first = patient()
    first["id"] = "race-new"

    def send(n: int):
        return client.put("/fhir/Patient/race-new",
                          **body({**first, "name": [{"family": f"Racer{n}"}]}))

    with ThreadPoolExecutor(4) as pool:
        with store.begin() as tx:
            tx.create(first, "race-new")  # the request that comes first, not yet committed
            answers = [pool.submit(send, n) for n in range(4)]
            wait_until_blocked(tx, 4)
        answers = [a.result(timeout=30) for a in answers]
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert versions(client, "race-new") == ["POST"] + ["PUT"] * 4
    assert sorted(r.json()["meta"]["versionId"] for r in answers) == ["2", "3", "4", "5"]
