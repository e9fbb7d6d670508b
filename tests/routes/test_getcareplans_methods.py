"""The GetCarePlans endpoint answers every method but POST with a 405 SOAP 1.1 Fault (with
``Allow: POST``), as a SOAP endpoint does, not with the FHIR API's OperationOutcome (probe 3,
bug 6)."""

from __future__ import annotations

import pytest
from lxml import etree

from sip_hub.routes.rivta import PATH
from test_getcareplans import SOAP, fault


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_another_method_is_a_soap_fault(client, portal, method):
    r = client.request(method, PATH, headers=portal, content=b"<x/>")
    assert r.headers["content-type"].startswith("text/xml")
    assert r.headers["allow"] == "POST"
    assert r.headers["cache-control"] == "no-store"
    assert "POST" in fault(r, 405)
    env = etree.fromstring(r.content)
    assert etree.QName(env).namespace == SOAP and etree.QName(env).localname == "Envelope"


def test_head_is_a_405_with_allow(client, portal):
    r = client.head(PATH, headers=portal)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.headers["content-type"].startswith("text/xml")
