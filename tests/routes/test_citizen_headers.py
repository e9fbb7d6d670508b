"""The citizen view's answers and a cache on the way (the portal's, a proxy's, a browser's):
the same URL answers HTML, PDF, FHIR JSON or FHIR XML by Accept, so each answer names Accept in
Vary, and none is kept (they are the person's own plans: Cache-Control no-store), its
refusals included."""

from __future__ import annotations

import pytest

import sip_factory as f
from sip_hub import identifiers
from sip_process import write_case

VIEW = "/fhir/CarePlan/$citizen-view"
ALVA = f"{VIEW}?patient={identifiers.PERSONNUMMER}|{f.DEMO_PNR}"


@pytest.fixture
def alva(client):
    write_case(client, {}, f.demo_case())


def _private_and_varies(r) -> None:
    cache = [v.strip().lower() for v in r.headers.get("cache-control", "").split(",")]
    assert "no-store" in cache, r.headers
    vary = [v.strip().lower() for v in r.headers.get("vary", "").split(",")]
    assert vary.count("accept") == 1, r.headers


@pytest.mark.parametrize(("accept", "ctype"), [
    ("text/html", "text/html"),
    ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", "text/html"),
    ("application/fhir+json", "application/fhir+json"),
    ("application/json", "application/fhir+json"),
    ("application/fhir+xml", "application/fhir+xml"),
    ("application/pdf", "application/pdf"),
    ("*/*", "application/fhir+json"),
    (None, "application/fhir+json"),
])
def test_every_form_varies_by_accept_and_is_not_stored(client, alva, portal, accept, ctype):
    headers = portal | ({"Accept": accept} if accept else {})
    r = client.get(ALVA, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(ctype), r.headers
    _private_and_varies(r)
    if ctype.startswith("application/fhir"):
        assert "Bundle" in r.text
    head = client.head(ALVA, headers=headers)
    assert head.status_code == 200 and head.content == b""
    _private_and_varies(head)


def test_a_format_parameter_answer_is_private_too(client, alva, portal):
    for fmt, status in (("json", 200), ("xml", 200), ("html", 406)):
        r = client.get(f"{ALVA}&_format={fmt}", headers=portal | {"Accept": "text/html"})
        assert r.status_code == status, r.text
        _private_and_varies(r)


@pytest.mark.parametrize(("url", "status"), [
    (f"{VIEW}?patient={identifiers.PERSONNUMMER}|19121212121X", 400),   # names the person
    (f"{VIEW}?patient=urn:other|191212121212", 400),
    (f"{VIEW}?patient={identifiers.PERSONNUMMER}|{f.DEMO_PNR}&_count=1", 400),
    (VIEW, 400),
])
@pytest.mark.parametrize("accept", ["text/html", "application/fhir+xml", "application/json"])
def test_refusals_vary_by_accept_and_are_not_stored(client, alva, portal, url, status, accept):
    r = client.get(url, headers=portal | {"Accept": accept})
    assert r.status_code == status, r.text
    assert "OperationOutcome" in r.text
    _private_and_varies(r)


def test_refusals_of_the_caller_are_not_stored_either(client, alva, as_org, anonymous):
    r = client.get(ALVA, headers=as_org("SE2321000016-15CQ"))  # not the portal: 403
    assert r.status_code == 403, r.text
    _private_and_varies(r)
    r = anonymous.get(ALVA, headers={"Authorization": ""})  # no token: 401
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    _private_and_varies(r)
