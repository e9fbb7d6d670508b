"""The citizen view's AuditEvent says what the caller got (probe 3, bug 5): a form that cannot
be served (406) is refused before the person's data is read, and so leaves no record of an
access; an answer that fails after the read (a rendering error: 500) is audited as a serious
failure (outcome 8) naming what was read, never as a success."""

from __future__ import annotations

import pytest

import sip_factory as f
import sip_hub.routes.citizen as route
from sip_hub import identifiers
from sip_process import write_case

URL = f"/fhir/CarePlan/$citizen-view?patient={identifiers.PERSONNUMMER}|{f.DEMO_PNR}"
PORTAL = "SE2321000016-1177"


@pytest.fixture
def alva(client):
    write_case(client, {}, f.demo_case())


def _portal_events(client, anonymous) -> list[dict]:
    anonymous.app.state.audit.flush()
    log = client.get("/fhir/AuditEvent?patient=alva&_count=1000").json()
    return [e["resource"] for e in log.get("entry", [])
            if any(a["who"].get("identifier", {}).get("value") == PORTAL
                   for a in e["resource"]["agent"])]


def _entities(event: dict) -> set[str]:
    return {e["what"]["reference"] for e in event.get("entity", [])
            if "reference" in e.get("what", {})}


@pytest.mark.parametrize(("query", "accept"), [
    ("", "image/png"),
    ("", "application/pdf;q=0, text/html;q=0, application/json;q=0, image/*"),
    ("&_format=text/csv", "text/html"),
    ("&_format=application/pdf", ""),
])
def test_a_form_that_cannot_be_served_reads_and_records_nothing(client, alva, portal, anonymous,
                                                                 query, accept):
    before = _portal_events(client, anonymous)
    r = client.get(URL + query, headers={**portal, "Accept": accept})
    assert r.status_code == 406, r.text
    assert r.headers["cache-control"] == "no-store"
    assert _portal_events(client, anonymous) == before


@pytest.mark.parametrize(("accept", "renderer"), [
    ("text/html", "render_citizen_html"), ("application/pdf", "render_citizen_pdf")])
def test_a_rendering_that_fails_is_audited_as_a_failure(client, alva, portal, anonymous,
                                                        monkeypatch, accept, renderer):
    def broken(bundle):
        raise RuntimeError("broken renderer")
    monkeypatch.setattr(route, renderer, broken)
    before = _portal_events(client, anonymous)
    r = client.get(URL, headers={**portal, "Accept": accept})
    assert r.status_code == 500
    new = [e for e in _portal_events(client, anonymous) if e not in before]
    assert len(new) == 1, new
    [event] = new
    assert event["outcome"] == "8"
    assert "Not delivered" in event.get("outcomeDesc", "") or "Not delivered" in str(event)
    assert "CarePlan/alva-sip" in {x.split("/_history")[0] for x in _entities(event)}


@pytest.mark.parametrize("accept", ["text/html", "application/pdf", "application/fhir+json",
                                    "application/fhir+xml"])
def test_a_delivered_view_is_audited_as_a_success(client, alva, portal, anonymous, accept):
    before = _portal_events(client, anonymous)
    r = client.get(URL, headers={**portal, "Accept": accept})
    assert r.status_code == 200, r.text
    new = [e for e in _portal_events(client, anonymous) if e not in before]
    assert [e["outcome"] for e in new] == ["0"]
    assert "CarePlan/alva-sip" in {x.split("/_history")[0] for x in _entities(new[0])}


def test_a_getcareplans_answer_that_fails_is_audited_as_a_failure(client, alva, portal,
                                                                  anonymous, monkeypatch):
    import sip_hub.routes.rivta as soap
    from test_getcareplans import post, request_xml

    def broken(bundle):
        raise RuntimeError("broken renderer")
    monkeypatch.setattr(soap, "render_citizen_html", broken)
    monkeypatch.setenv("SIP_HUB_MESSAGE_HUB_HSA_ID", "SE2321000016-HUB1")
    before = _portal_events(client, anonymous)
    r = post(client, portal, request_xml(source=None))
    assert r.status_code == 500 and b"soap:Server" in r.content
    new = [e for e in _portal_events(client, anonymous) if e not in before]
    assert [e["outcome"] for e in new] == ["8"], new
    assert "CarePlan/alva-sip" in {x.split("/_history")[0] for x in _entities(new[0])}
