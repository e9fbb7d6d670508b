"""A write's transaction reads from the database only what its preparation, ahead of the
transaction, did not: the preparation's reads are taken over at once (``Tx.adopt``: one
statement checks that each is still current), and what the write wrote is current in its
transaction. On SQLite every statement in a write transaction holds the one write lock; on
PostgreSQL each is a round trip."""

from __future__ import annotations

import copy
from typing import Any

import orjson

from fhirhttp import JSON_HEADERS
from harness import BUP, SOC, URL, Hub, broker, hub, status_change, world  # noqa: F401
from sip_hub.store import resources


def _reads(monkeypatch: Any) -> list[tuple[str, str]]:
    """The resources transactions read one by one from now on (not yet read in them)."""
    read: list[tuple[str, str]] = []
    real = resources.Tx.current

    def current(self: resources.Tx, rtype: str, rid: str) -> Any:
        if (rtype, rid) not in self._seen:
            read.append((rtype, rid))
        return real(self, rtype, rid)
    monkeypatch.setattr(resources.Tx, "current", current)
    return read


def test_a_rest_create_and_update_read_nothing_more_in_their_transaction(
        world: Hub, monkeypatch: Any) -> None:
    plan = world.client.get("/fhir/CarePlan/alva-sip", headers=world.headers[SOC]).json()
    draft = {k: v for k, v in copy.deepcopy(plan).items() if k not in ("id", "meta")}
    draft["status"] = "draft"
    changed = {k: v for k, v in copy.deepcopy(plan).items() if k != "meta"}
    changed["note"] = [{"text": "Mötet flyttat"}]
    read = _reads(monkeypatch)
    r = world.client.post("/fhir/CarePlan", content=orjson.dumps(draft),
                          headers=JSON_HEADERS | world.headers[SOC])
    assert r.status_code == 201, r.text
    r = world.client.put("/fhir/CarePlan/alva-sip", content=orjson.dumps(changed),
                         headers=JSON_HEADERS | world.headers[SOC])
    assert r.status_code == 200, r.text
    assert r.json()["note"] == changed["note"] and r.json()["meta"]["versionId"] == "2"
    assert read == []


def test_a_message_reads_nothing_more_in_its_transaction(world: Hub, monkeypatch: Any) -> None:
    message = status_change(world)
    read = _reads(monkeypatch)
    r = world.post(BUP, URL, message)
    assert r.status_code == 200, r.text
    assert r.json()["entry"][0]["resource"]["response"]["code"] == "ok"
    assert read == []
