"""Conditional read (FHIR http.html; RFC 9110 13.1.2 and 13.1.3): a system that polls a plan
sends the ETag or the date of its copy and gets a 304 without the resource while it is
current, the resource once it changed. Access rules and the audit apply as to any read."""

from __future__ import annotations

from email.utils import format_datetime
from datetime import datetime, timedelta, timezone

import pytest

from fhirhttp import body, create, patient


@pytest.fixture
def pat(client):
    return create(client, patient())


def _get(client, path, **headers):
    return client.get(f"/fhir/{path}", headers=headers)


@pytest.mark.parametrize("tag", ['W/"1"', '"1"', '*', 'W/"7", W/"1"'])
def test_the_current_etag_gets_a_304_without_the_resource(client, pat, tag):
    r = _get(client, f"Patient/{pat['id']}", **{"If-None-Match": tag})
    assert r.status_code == 304, r.text
    assert r.content == b""
    assert r.headers["etag"] == 'W/"1"'
    assert "last-modified" in r.headers


def test_an_older_etag_gets_the_new_version(client, pat):
    pat["active"] = False
    assert client.put(f"/fhir/Patient/{pat['id']}", **body(pat)).status_code == 200
    r = _get(client, f"Patient/{pat['id']}", **{"If-None-Match": 'W/"1"'})
    assert r.status_code == 200
    assert r.json()["meta"]["versionId"] == "2" and r.json()["active"] is False
    assert r.headers["etag"] == 'W/"2"'


def test_if_modified_since(client, pat):
    last = datetime.fromisoformat(pat["meta"]["lastUpdated"])
    path = f"Patient/{pat['id']}"
    for when, status in ((last, 304), (last + timedelta(hours=1), 304),
                         (last - timedelta(seconds=1), 200)):
        r = _get(client, path, **{"If-Modified-Since": format_datetime(
            when.astimezone(timezone.utc), usegmt=True)})
        assert r.status_code == status, (when, r.status_code)
    # a value that is no HTTP date is ignored (RFC 9110 13.1.3)
    assert _get(client, path, **{"If-Modified-Since": "yesterday"}).status_code == 200
    # If-None-Match decides when both are given
    r = _get(client, path, **{"If-None-Match": 'W/"9"', "If-Modified-Since": format_datetime(
        last.astimezone(timezone.utc) + timedelta(hours=1), usegmt=True)})
    assert r.status_code == 200


def test_a_version_read_is_conditional_too(client, pat):
    r = _get(client, f"Patient/{pat['id']}/_history/1", **{"If-None-Match": 'W/"1"'})
    assert r.status_code == 304 and r.content == b""


def test_a_deleted_resource_is_gone_whatever_the_etag(client, pat):
    assert client.delete(f"/fhir/Patient/{pat['id']}").status_code in (200, 204)
    assert _get(client, f"Patient/{pat['id']}", **{"If-None-Match": "*"}).status_code == 410


def test_a_caller_without_access_gets_no_hint(client, pat, as_org):
    path = f"Patient/{pat['id']}"
    assert _get(client, path, **{"If-None-Match": 'W/"1"', "Authorization": "Bearer x"}
                ).status_code == 401
    # an organisation the person's consent does not cover: refused as a plain read is
    other = as_org("SE2321000016-ZZZZ")
    plain = _get(client, path, **other)
    assert plain.status_code in (403, 404)
    assert _get(client, path, **other, **{"If-None-Match": 'W/"1"'}).status_code == \
        plain.status_code


def test_the_capability_statement_declares_it(client):
    cs = _get(client, "metadata").json()
    resources = cs["rest"][0]["resource"]
    assert {r["conditionalRead"] for r in resources} == {"full-support"}
