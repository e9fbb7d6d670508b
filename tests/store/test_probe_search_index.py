"""What the search index holds for values it had no row for, and for resources stored before
a rule, on SQLite and PostgreSQL: a canonical resource found by ``url=<canonical>|<version>``;
``:missing`` seeing references to other servers, display-only references and a
CodeableConcept's text; and an upgrade from 0014 making a stored reference to the hub's own
base local, so that a search by the local reference finds it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from sqlalchemy import Engine, text

from fhirhttp import create, patient, plain_careplan
from indexrows import index_is_exact
from sip_hub.fhir import profiles
from sip_hub.fhir.search_params import CANONICAL_TYPES
from sip_hub.service import find
from sip_hub.store import Store
from sip_hub.store.migrate import upgrade

T0 = 1_760_000_000_000_000  # UTC microseconds


def ids(client: Any, query: str, params: dict[str, str] | None = None) -> list[str]:
    r = client.get(f"/fhir/{query}", params=params)
    assert r.status_code == 200, (query, params, r.text)
    return sorted(e["resource"]["id"] for e in r.json().get("entry", [])
                  if e["search"]["mode"] == "match")


# -- 1. canonical url with its version --------------------------------------------------------

def test_a_canonical_url_with_its_version_finds_that_version_only(client) -> None:
    """FHIR R4 search, "Searching by version": ``url=<canonical>|<version>`` finds the
    resource of that url and that version (it was searched for as one url holding the bar,
    and found nothing); another version, or ``<url>|`` (no version), finds none of it."""
    published = [d for d in profiles.definitions() if d["resourceType"] in CANONICAL_TYPES]
    assert {d["resourceType"] for d in published} >= {"StructureDefinition", "CodeSystem"}
    for d in published:
        rtype, url, version = d["resourceType"], d["url"], d["version"]
        assert ids(client, rtype, {"url": f"{url}|{version}"}) == [d["id"]], (rtype, url)
        assert ids(client, rtype, {"url": url}) == [d["id"]]
        assert ids(client, rtype, {"url": f"{url}|{version}9"}) == []
        assert ids(client, rtype, {"url": f"{url}|"}) == []
        assert d["id"] in ids(client, rtype, {"version": version})
        assert ids(client, rtype, {"url": f"{url}|{version}", "version": version}) == [d["id"]]


def test_canonical_urls_with_versions_are_ored(client) -> None:
    sds = [d for d in profiles.definitions() if d["resourceType"] == "StructureDefinition"][:2]
    both = ",".join(f"{d['url']}|{d['version']}" for d in sds)
    assert ids(client, "StructureDefinition", {"url": both}) == sorted(d["id"] for d in sds)
    one = f"{sds[0]['url']}|{sds[0]['version']},{sds[1]['url']}|0.0.0-none"
    assert ids(client, "StructureDefinition", {"url": one}) == [sds[0]["id"]]


# -- 2. :missing and values with no row of their own ------------------------------------------

def test_references_elsewhere_or_by_display_are_not_missing(client) -> None:
    """``:missing=true`` is for no value at all: a reference to another server (the hub
    indexes no target for it) or given by its display alone is a value. One naming a type
    the parameter cannot refer to (a Device for ``author``) is not a value of it."""
    p = create(client, patient())["id"]
    elsewhere = create(client, plain_careplan(p, author={
        "reference": "https://other.example/fhir/Practitioner/123"}))["id"]
    display = create(client, plain_careplan(p, author={"display": "Kommunens socialtjänst"}))[
        "id"]
    local = create(client, plain_careplan(p, author={"reference": f"Patient/{p}"}))["id"]
    none = create(client, plain_careplan(p))["id"]
    device = create(client, plain_careplan(p, author={
        "reference": "https://other.example/fhir/Device/d1"}))["id"]
    assert ids(client, "CarePlan?author:missing=true") == sorted([none, device])
    assert ids(client, "CarePlan?author:missing=false") == sorted([elsewhere, display, local])
    assert ids(client, f"CarePlan?author=Patient/{p}") == [local]


def test_a_codeable_concept_with_text_alone_is_not_missing(client) -> None:
    p = create(client, patient())["id"]
    text_only = create(client, plain_careplan(p, category=[{"text": "Samordnad plan"}]))["id"]
    coded = create(client, plain_careplan(p, category=[{"coding": [
        {"system": "http://snomed.info/sct", "code": "734163000"}]}]))["id"]
    none = create(client, plain_careplan(p))["id"]
    assert ids(client, "CarePlan?category:missing=true") == [none]
    assert ids(client, "CarePlan?category:missing=false") == sorted([text_only, coded])
    assert ids(client, "CarePlan?category=734163000") == [coded]
    assert ids(client, "CarePlan?category:not=734163000") == sorted([text_only, none])


# -- 3. an upgrade from 0014 with resources stored before -------------------------------------

def _careplan(rid: str, subject: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "CarePlan", "id": rid,
            "meta": {"versionId": "1", "lastUpdated": "2025-10-09T08:00:00Z"},
            "status": "active", "intent": "plan", "subject": {"reference": subject}, **extra}


def _store_as_0014(engine: Engine, docs: list[dict[str, Any]]) -> None:
    """Resources as a release before 2026-12-06 stored them (references as sent), with the
    index rows release 0014 derived (an absolute reference: no reference row; no row for a
    value without one of its own) and that release's fingerprint."""
    with engine.begin() as conn:
        for doc in docs:
            rtype, rid = doc["resourceType"], doc["id"]
            conn.execute(text(
                "INSERT INTO resource_history (res_type, res_id, version_id, last_updated, "
                "method, content) VALUES (:t, :i, 1, :u, 'PUT', :c)"),
                {"t": rtype, "i": rid, "u": T0, "c": orjson.dumps(doc)})
            conn.execute(text(
                "INSERT INTO resource (res_type, res_id, version_id, last_updated, deleted, "
                "owner_org, withheld) VALUES (:t, :i, 1, :u, false, 'SE2321000016-15CQ', "
                "false)"), {"t": rtype, "i": rid, "u": T0})
            if rtype == "CarePlan":
                conn.execute(text(
                    "INSERT INTO idx_token (res_type, res_id, param, system, code) "
                    "VALUES ('CarePlan', :i, 'status', NULL, 'active')"), {"i": rid})
        conn.execute(text("INSERT INTO search_index_state (id, fingerprint) "
                          "VALUES (1, 'the fingerprint of release 0014')"))


def _found(store: Store, rtype: str, items: list[tuple[str, str]]) -> list[str]:
    with store.begin(write=False) as tx:
        return sorted(s.id for s in find(tx, rtype, items))


@pytest.mark.parametrize("base,env", [
    ("http://127.0.0.1:8080", {}),  # no SIP_HUB_BASE_URL: the listen address, as served
    ("https://sip.region.se", {"SIP_HUB_BASE_URL": "https://sip.region.se/"}),
])
def test_upgrading_from_0014_makes_references_to_the_hubs_base_local(
        fresh: Engine, monkeypatch: pytest.MonkeyPatch, base: str,
        env: dict[str, str]) -> None:
    for name in ("SIP_HUB_BASE_URL", "SIP_HUB_HOST", "SIP_HUB_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    upgrade(fresh, "0014")
    ours, theirs = f"{base}/fhir/Patient/x", "https://other.example/fhir/Patient/x"
    _store_as_0014(fresh, [
        {"resourceType": "Patient", "id": "x", "birthDate": "1912-12-12"},
        _careplan("mine", ours, author={"reference": f"{base}/fhir/Organization/o1"}),
        _careplan("elsewhere", theirs, category=[{"text": "Samordnad plan"}]),
        _careplan("local", "Patient/x"),
    ])
    store = Store(fresh)
    assert _found(store, "CarePlan", [("patient", "Patient/x")]) == []  # not even "local"

    upgrade(fresh)

    assert _found(store, "CarePlan", [("patient", "Patient/x")]) == ["local", "mine"]
    assert _found(store, "CarePlan", [("author", "Organization/o1")]) == ["mine"]
    assert _found(store, "CarePlan", [("subject:missing", "true")]) == []
    assert _found(store, "CarePlan", [("category:missing", "false")]) == ["elsewhere"]
    with store.begin(write=False) as tx:
        mine, elsewhere = tx.current("CarePlan", "mine"), tx.current("CarePlan", "elsewhere")
        assert mine is not None and elsewhere is not None
        assert mine.json()["subject"] == {"reference": "Patient/x"}
        assert mine.json()["author"] == {"reference": "Organization/o1"}
        assert mine.version_id == 1  # the same version, holding its references as now
        assert elsewhere.json()["subject"] == {"reference": theirs}  # another server's
    for rid in ("mine", "elsewhere", "local"):
        index_is_exact(store, [("CarePlan", rid)])

    # An update replaces exactly the rows the upgrade wrote (derived from the same content).
    with store.begin() as tx:
        tx.update(_careplan("mine", "Patient/y"), "mine")
    index_is_exact(store, [("CarePlan", "mine")])
    assert _found(store, "CarePlan", [("patient", "Patient/x")]) == ["local"]
