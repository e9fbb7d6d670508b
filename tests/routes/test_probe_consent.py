"""Probes of how consent gates access: a consent dated to start later, and a consent
narrowed through a nested provision."""

from __future__ import annotations

import sip_factory as f
from sip_hub.messaging import outbox as routing
from fhirhttp import JSON_HEADERS, body
import test_access
from test_access import BUP, SCHOOL, SOC

world = test_access.world  # the demo SIP written by its coordinator (a fixture)


def put_consent(client, world, consent):
    return client.put("/fhir/Consent/alva-sip-samtycke", **body(consent) | {
        "headers": JSON_HEADERS | world[SOC]})


def test_a_consent_dated_to_start_later_does_not_yet_cover(client, world, store):
    r = put_consent(client, world, f.sip_consent(start="2099-01-01", end=None))
    assert r.status_code == 200, r.text
    assert client.get("/fhir/CarePlan/alva-sip", headers=world[BUP]).status_code == 403
    b = client.get("/fhir/CarePlan?patient=alva&_include=CarePlan:goal",
                   headers=world[BUP]).json()
    assert b["total"] == 0 and "entry" not in b
    # Nor is anything sent: messages are routed to no one until the consent starts.
    with store.begin(write=False) as tx:
        assert routing.covered(tx, "alva") == set()


def test_a_nested_deny_provision_is_refused_not_ignored(client, world):
    consent = f.sip_consent()
    consent["provision"]["provision"] = [{"type": "deny", "actor": [
        {"role": consent["provision"]["actor"][0]["role"],
         "reference": {"reference": f.SCHOOL}}]}]
    r = put_consent(client, world, consent)
    assert r.status_code in (400, 422), r.text
    assert client.get("/fhir/CarePlan/alva-sip", headers=world[SCHOOL]).status_code == 200

