"""What ``_include`` and ``_revinclude`` (``:iterate`` too) add to a page is bounded: at most
SIP_HUB_MAX_PAGE_SIZE resources, counted among what the caller may see, with an
OperationOutcome warning entry when more were left out; only what a page holds is audited
as read. (The hub's page size is 5 here.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import ADMIN_ORG
from fhirhttp import JSON_HEADERS, body, create
from sip_hub.settings import Settings

Json = dict[str, Any]
PAGE = 5


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(env="test", data_dir=tmp_path, base_url="http://hub.test",
                    auto_migrate=False, default_page_size=PAGE, max_page_size=PAGE)


def _page(client: Any, query: str, headers: Any = None) -> tuple[list[Json], list[Json],
                                                                    list[Json]]:
    """(matches, included, outcomes) of one page of a search."""
    r = client.get(f"/fhir/{query}", headers={**JSON_HEADERS, **(headers or {})})
    assert r.status_code == 200, r.text
    out: dict[str, list[Json]] = {"match": [], "include": [], "outcome": []}
    for e in r.json().get("entry", []):
        out[e["search"]["mode"]].append(e["resource"])
    return out["match"], out["include"], out["outcome"]


def _patient_with_goals(client: Any, n: int) -> str:
    org = create(client, {"resourceType": "Organization", "name": "Enhet"})
    p = create(client, {"resourceType": "Patient", "name": [{"family": "Svensson"}],
                        "managingOrganization": {"reference": f"Organization/{org['id']}"}})
    entries = [{"resource": {"resourceType": "Goal", "lifecycleStatus": "active",
                             "description": {"text": f"Mål {i}"},
                             "subject": {"reference": f"Patient/{p['id']}"}},
                "request": {"method": "POST", "url": "Goal"}} for i in range(n)]
    r = client.post("/fhir", **body({"resourceType": "Bundle", "type": "transaction",
                                     "entry": entries}))
    assert r.status_code == 200, r.text[:300]
    return str(p["id"])


def _left_out(outcomes: list[Json]) -> bool:
    return any(i["severity"] == "warning" and "SIP_HUB_MAX_PAGE_SIZE" in i["diagnostics"]
               for oo in outcomes for i in oo["issue"])


def test_a_revinclude_adds_at_most_a_page_and_says_more_were_left_out(client):
    """A page of one Patient brought every Goal that refers to it (thousands, all read, held
    and answered at once, with no next link): the client gets at most a page's worth, and a
    warning that tells it to search the Goals themselves."""
    pid = _patient_with_goals(client, 12)
    matches, included, outcomes = _page(
        client, f"Patient?_id={pid}&_revinclude=Goal:subject&_count=1")
    assert [m["id"] for m in matches] == [pid]
    assert len(included) == PAGE and {r["resourceType"] for r in included} == {"Goal"}
    assert _left_out(outcomes), outcomes
    # what fits in a page comes whole, with no warning
    _, included, outcomes = _page(client, f"Patient?_id={_patient_with_goals(client, PAGE)}"
                                          "&_revinclude=Goal:subject")
    assert len(included) == PAGE and not outcomes


def test_iterate_rounds_share_the_pages_bound(client):
    """Each ``:iterate`` round multiplied what a page held: the bound is the page's, over
    all rounds (here 3 children and 9 grandchildren of one Organization)."""
    root = create(client, {"resourceType": "Organization", "name": "Region"})
    for i in range(3):
        child = create(client, {"resourceType": "Organization", "name": f"Förvaltning {i}",
                                "partOf": {"reference": f"Organization/{root['id']}"}})
        for j in range(3):
            create(client, {"resourceType": "Organization", "name": f"Enhet {i}.{j}",
                            "partOf": {"reference": f"Organization/{child['id']}"}})
    _, included, outcomes = _page(
        client, f"Organization?_id={root['id']}&_revinclude:iterate=Organization:partof")
    assert len(included) == PAGE and len({r["id"] for r in included}) == PAGE
    assert _left_out(outcomes), outcomes


def test_what_the_caller_may_not_see_takes_no_room(client, as_org):
    """The bound counts what the caller may read: Goals its scopes do not let it see leave
    the page to the RelatedPerson it may, with no warning of anything left out."""
    pid = _patient_with_goals(client, 3 * PAGE)
    create(client, {"resourceType": "RelatedPerson", "name": [{"family": "Svensson"}],
                    "patient": {"reference": f"Patient/{pid}"}})
    reader = as_org(ADMIN_ORG, scope="system/Patient.rs system/RelatedPerson.rs",
                    role="admin", personal_data=True)
    query = f"Patient?_id={pid}&_revinclude=Goal:subject&_revinclude=RelatedPerson:patient"
    _, included, outcomes = _page(client, query, reader)
    assert [r["resourceType"] for r in included] == ["RelatedPerson"] and not outcomes
    _, included, outcomes = _page(client, query)  # (as the hub's operators: a page full)
    assert len(included) == PAGE and _left_out(outcomes)


def test_only_what_a_page_holds_is_audited_as_read(client):
    """The access log records the Goals the page answered with, not those left out."""
    pid = _patient_with_goals(client, 12)
    r = client.get(f"/fhir/Patient?_id={pid}&_revinclude=Goal:subject",
                   headers={**JSON_HEADERS, "X-Request-ID": "include-bound"})
    assert r.status_code == 200, r.text
    answered = {e["resource"]["id"] for e in r.json()["entry"]
                if e["search"]["mode"] == "include"}
    client.app.state.audit.flush()
    log = client.get("/fhir/AuditEvent?entity:identifier=include-bound&_count=100").json()
    read = {e["what"]["reference"].split("/")[1] for entry in log.get("entry", [])
            for e in entry["resource"].get("entity", [])
            if e.get("what", {}).get("reference", "").startswith("Goal/")}
    assert read == answered and len(read) == PAGE
