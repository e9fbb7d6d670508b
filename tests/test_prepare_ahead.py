"""Writes checked before their transaction: the rules run outside the write lock, and a change
to anything they read in between sends the write back through them inside the transaction.

A REST create or update is prepared against a read of the store (``service.prepare_ahead``);
the write transaction takes that preparation only while every resource it resolved is still at
the version read (``Tx.adopt``). These tests change the store in that gap, on SQLite and
PostgreSQL, and check that the outcome is what the rules say about the store at write time.
"""

from __future__ import annotations

import copy

import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS, body, outcome_text
from sip_hub import interactions as ix
from sip_hub.errors import Unprocessable
from sip_hub.fhir import sip
from sip_hub.service import Prepared, Prevalidated, prepare_ahead
from sip_hub.store import Store

SOC = "SE2120000142-SOC1"


def _without_plan() -> list[dict]:
    """The demo SIP's resources but its CarePlan and the approval of it."""
    return [r for r in f.demo_case() if r["resourceType"] not in ("CarePlan", "Provenance")]


def _seed(store: Store) -> None:
    """The demo SIP's resources without its CarePlan, stored as they are (set-up only)."""
    with store.begin() as tx:
        for res in _without_plan():
            tx.update(copy.deepcopy(res), res["id"])


def _ctx() -> ix.Context:
    return ix.Context("http://hub.test/fhir")


def test_a_plan_prepared_ahead_is_stored_as_prepared(store):
    _seed(store)
    ahead = prepare_ahead(store, f.sip_careplan(), "CarePlan")
    assert isinstance(ahead, Prepared)
    # The rules resolved the individual, the goals and the team: those are the basis.
    assert {("Patient", "alva"), ("CareTeam", "alva-sip"), ("Goal", "alva-mal-skola")} \
        <= set(ahead.basis)
    assert sip.PROFILE_CAREPLAN in ahead["meta"]["profile"]
    with store.begin() as tx:
        assert tx.adopt(ahead.basis)  # nothing changed: the write takes the preparation
        assert tx.current("Patient", "alva") is ahead.basis[("Patient", "alva")]
        stored = ix.create(tx, _ctx(), "CarePlan", ahead).stored
    assert stored is not None
    assert stored.json()["meta"]["profile"] == ahead["meta"]["profile"]
    assert store.read("CarePlan", stored.id).json()["subject"] == {"reference": "Patient/alva"}


def test_a_change_to_what_the_rules_read_is_checked_again_in_the_transaction(store):
    _seed(store)
    ahead = prepare_ahead(store, f.sip_careplan(), "CarePlan")
    assert isinstance(ahead, Prepared)
    # Between the preparation and the write, the individual loses their personnummer.
    with store.begin() as tx:
        anonymous = f.patient(f.DEMO_PNR, id="alva")
        del anonymous["identifier"]
        tx.update(anonymous, "alva")
    with store.begin() as tx:
        with pytest.raises(Unprocessable) as err:
            ix.create(tx, _ctx(), "CarePlan", ahead)
    assert "has no personnummer" in str(err.value.issues)
    with store.begin(write=False) as tx:
        assert ix.search(tx, _ctx(), "CarePlan", []).body["total"] == 0


def test_a_resource_that_appears_in_between_is_seen_by_the_rules(store):
    """Absence is part of the basis: a goal missing when prepared but stored before the
    write makes the write look again (and here pass)."""
    _seed(store)
    with store.begin() as tx:
        tx.delete("Goal", "alva-mal-somn")
    ahead = prepare_ahead(store, f.sip_careplan(), "CarePlan")
    assert isinstance(ahead, Prepared)
    assert ahead.basis[("Goal", "alva-mal-somn")] is not None  # read as deleted
    with store.begin() as tx:
        tx.update(copy.deepcopy(f.sip_goal(id="alva-mal-somn")), "alva-mal-somn")
    with store.begin() as tx:
        assert not tx.adopt(ahead.basis)
    with store.begin() as tx:
        assert ix.create(tx, _ctx(), "CarePlan", ahead).status == 201


def _ids(tx, status: str) -> list[str]:
    found = ix.search(tx, _ctx(), "CarePlan", [("status", status)]).body
    return [e["fullUrl"].rsplit("/", 1)[1] for e in found.get("entry", [])]


def test_an_update_prepared_ahead_reads_the_version_it_replaces_there(store):
    """The version an update replaces joins the basis, read ahead with its index rows
    derived (the write compares them instead of deriving them in the lock); a change to it in
    between sends the update through the rules again, and the index follows what is stored."""
    _seed(store)
    with store.begin() as tx:
        first = ix.create(tx, _ctx(), "CarePlan", f.sip_careplan(), rid="plan-1").stored
    assert first is not None
    revised = f.sip_careplan()
    revised.update(id="plan-1", status="draft")
    ahead = prepare_ahead(store, copy.deepcopy(revised), "CarePlan", replaces="plan-1")
    assert isinstance(ahead, Prepared)
    old = ahead.basis[("CarePlan", "plan-1")]
    assert old is not None and old.version_id == first.version_id
    assert old._rows is not None and ("status", None, "active") in old.index_rows().token
    with store.begin() as tx:
        assert ix.update(tx, _ctx(), "CarePlan", "plan-1", ahead).status == 200
    with store.begin(write=False) as tx:
        assert _ids(tx, "draft") == ["plan-1"]
        assert _ids(tx, "active") == []
    # Prepared again, then the plan changes before the write: the basis no longer holds.
    again = copy.deepcopy(revised)
    again["status"] = "on-hold"
    ahead = prepare_ahead(store, again, "CarePlan", replaces="plan-1")
    assert isinstance(ahead, Prepared)
    with store.begin() as tx:
        tx.update(dict(store.read("CarePlan", "plan-1").json(), status="active"), "plan-1")
    with store.begin() as tx:
        assert not tx.adopt(ahead.basis)
    with store.begin() as tx:
        assert ix.update(tx, _ctx(), "CarePlan", "plan-1", ahead).status == 200
    with store.begin(write=False) as tx:
        assert _ids(tx, "on-hold") == ["plan-1"]
        for gone in ("active", "draft"):
            assert _ids(tx, gone) == []


def test_a_refused_preparation_leaves_the_body_as_it_came(store):
    """The rules refused it ahead: the write transaction gets the body untouched (identifiers
    not normalised) and refuses it itself, in the order of its own checks."""
    _seed(store)
    plan = f.sip_careplan(patient_ref="Patient/nobody")
    ahead = prepare_ahead(store, copy.deepcopy(plan), "CarePlan")
    assert isinstance(ahead, Prevalidated) and not isinstance(ahead, Prepared)
    assert dict(ahead) == plan
    with store.begin() as tx, pytest.raises(Unprocessable) as err:
        ix.create(tx, _ctx(), "CarePlan", ahead)
    assert "Patient/nobody does not exist" in str(err.value.issues)


# -- over HTTP: the answers clients rely on ---------------------------------------------------

def test_conditional_create_answers_with_the_match_whatever_the_body(client):
    r = client.post("/fhir/Patient", **body(f.patient(f.DEMO_PNR, id="alva")))
    assert r.status_code == 201, r.text
    created = r.json()["id"]
    invalid = f.patient(f.DEMO_PNR)
    invalid["identifier"][0]["value"] = "200101012385"  # wrong check digit
    r = client.post("/fhir/Patient", **body(invalid) | {"headers": JSON_HEADERS | {
        "If-None-Exist": f"identifier={f.DEMO_PNR}"}})
    assert r.status_code == 200, r.text
    assert r.json()["id"] == created


def test_update_creating_without_create_scope_is_forbidden_before_the_body_is_judged(
        client, as_org):
    plan = f.sip_careplan(patient_ref="Patient/nobody")  # would be a 422
    r = client.put(f"/fhir/CarePlan/{plan['id']}", **body(plan) | {
        "headers": JSON_HEADERS | as_org(SOC, scope="system/*.rus")})
    assert r.status_code == 403, r.text


def test_a_plan_posted_over_http_is_checked_and_stored(client):
    for res in _without_plan():
        r = client.put(f"/fhir/{res['resourceType']}/{res['id']}", **body(res))
        assert r.status_code in (200, 201), r.text
    plan = f.sip_careplan()
    del plan["id"]
    r = client.post("/fhir/CarePlan", **body(plan))
    assert r.status_code == 201, r.text
    assert sip.PROFILE_CAREPLAN in r.json()["meta"]["profile"]
    plan["subject"] = {"reference": "Patient/nobody"}
    r = client.post("/fhir/CarePlan", **body(plan))
    assert r.status_code == 422
    assert "Patient/nobody does not exist" in outcome_text(r)


def test_over_http_only_the_embedded_store_prepares_ahead(client, store, monkeypatch):
    """Ahead of the write only where a write lock is to be kept short (SQLite's one); on
    PostgreSQL the rules run in the write transaction, whose outcome is the same."""
    from sip_hub.routes import fhir_rest
    real, ahead = fhir_rest.prepare_ahead, []

    def counted(*args, **kw):
        ahead.append(args[2])
        return real(*args, **kw)
    monkeypatch.setattr(fhir_rest, "prepare_ahead", counted)
    for res in _without_plan():
        r = client.put(f"/fhir/{res['resourceType']}/{res['id']}", **body(res))
        assert r.status_code in (200, 201), r.text
    r = client.put("/fhir/CarePlan/alva-sip", **body(f.sip_careplan()))
    assert r.status_code == 201, r.text
    assert sip.PROFILE_CAREPLAN in r.json()["meta"]["profile"]
    assert len(ahead) == (len(_without_plan()) + 1 if store.embedded else 0)
