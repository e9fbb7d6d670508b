"""Probing the operators' side of messaging: the endpoints file and the replay of dead
letters (who may, what it may send, and that it is audited)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

import sip_factory as f
from harness import (ADMIN, BUP, SCHOOL, SOC, Hub, broker, hub, receivers,  # noqa: F401
                     settled, world)
from sip_hub.messaging import outbox
from sip_hub.messaging.endpoints import Endpoints
from sip_hub.store import outbox as sql

BOTH = pytest.mark.parametrize(
    "broker", ["memory", pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)], indirect=True)


def _file(tmp_path: Path, *entries: dict) -> Path:
    path = tmp_path / "endpoints.json"
    path.write_bytes(orjson.dumps({"endpoints": list(entries)}))
    return path


@pytest.mark.parametrize("second", [SOC, SOC.lower(), f"  {SOC}"])
def test_two_entries_for_one_organisation_are_refused(tmp_path: Path, second: str) -> None:
    path = _file(tmp_path, {"organization": SOC, "url": "https://a.example.se/pm"},
                 {"organization": second, "url": "https://b.example.se/pm"})
    with pytest.raises(ValueError) as refused:
        Endpoints.load(path)
    assert str(path) in str(refused.value) and SOC in str(refused.value)


def test_an_authorization_variable_that_is_not_set_is_refused_at_load(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without it every POST went without its Authorization header: refused by the receiver
    and dead-lettered at the first message."""
    monkeypatch.delenv("SIP_HUB_ENDPOINT_AUTH_SOC1", raising=False)
    path = _file(tmp_path, {"organization": SOC, "url": "https://a.example.se/pm",
                            "authorizationEnv": "SIP_HUB_ENDPOINT_AUTH_SOC1"})
    with pytest.raises(ValueError) as refused:
        Endpoints.load(path)
    assert str(path) in str(refused.value) and "SIP_HUB_ENDPOINT_AUTH_SOC1" in str(refused.value)
    monkeypatch.setenv("SIP_HUB_ENDPOINT_AUTH_SOC1", "Bearer x")
    loaded = Endpoints.load(path).get(SOC)
    assert loaded is not None and loaded.headers() == {"Authorization": "Bearer x"}


def _dead_to_school(world: Hub, receivers: Any) -> tuple[Any, sql.Delivery]:
    bup, school = receivers(), receivers()
    world.configure({BUP: bup.url, SCHOOL: school.url})
    school.script = [422]
    world.rounds(lambda: settled(world))
    (d,) = [d for d in world.deliveries() if d.dest_org == SCHOOL]
    assert d.state == "dead" and len(school.received) == 1
    return school, d


@BOTH
def test_a_replay_sends_nothing_the_consent_no_longer_covers(world: Hub, receivers: Any) -> None:
    school, dead = _dead_to_school(world, receivers)
    # The person narrows the consent: the school is no longer covered.
    r = world.put(SOC, f.sip_consent(actor_refs=[f.SOCIAL_SERVICES, f.BUP]))
    assert r.status_code == 200, r.text
    r = world.client.post(f"/admin/messages/{dead.id}/$replay", headers=world.headers["admin"])
    assert r.status_code == 200, r.text
    world.rounds(lambda: settled(world))
    (d,) = [d for d in world.deliveries() if d.id == dead.id]
    assert (d.state, d.last_error) == ("withdrawn", outbox.WITHDRAWN_REASON)
    assert len(school.received) == 1  # the one refused before the consent changed


def test_a_replay_is_for_admins_once_and_audited(world: Hub, receivers: Any) -> None:
    _, dead = _dead_to_school(world, receivers)
    url = f"/admin/messages/{dead.id}/$replay"
    for org in (SOC, SCHOOL):
        assert world.client.post(url, headers=world.headers[org]).status_code == 403
    assert world.client.post(url).status_code == 401
    assert world.client.post(url, headers=world.headers["admin"]).status_code == 200
    again = world.client.post(url, headers=world.headers["admin"])
    assert again.status_code == 404 and again.json()["resourceType"] == "OperationOutcome"
    log = world.client.get("/fhir/AuditEvent?patient=Patient/alva&_count=500",
                           headers=world.headers["admin"]).json()
    (event,) = [e["resource"] for e in log.get("entry", [])
                if e["resource"].get("outcomeDesc", "").startswith("$replay")]
    assert dead.id in event["outcomeDesc"] and SCHOOL in event["outcomeDesc"]
    assert event["outcome"] == "0"
    who = [a["who"].get("identifier", {}).get("value") for a in event["agent"]]
    assert ADMIN in who
    assert {"reference": "CarePlan/alva-sip"} in [e.get("what") for e in event["entity"]]
