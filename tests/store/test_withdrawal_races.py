"""A consent withdrawn while a request reads: what the request shows is decided on grants read
no earlier than what it shows (README: "withdrawing or narrowing consent takes effect at
once"; domain rule 1).

PostgreSQL reads see a snapshot per statement (reads in autocommit, writes in READ
COMMITTED), so a request that reads a person's grants and then, in a later statement, the
records it decides on could judge a record written after a withdrawal by the grants from
before it. The races are made certain: the test holds the request at a point of its own code
path (an ``Event`` in a wrapper of a store method, in that request's thread only) while the
withdrawal and a new version of the person's data commit. SQLite runs a request's reads in
one transaction (one snapshot of its WAL file), where the history test holds as well."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import orjson
import pytest

import sip_factory as f
from fhirhttp import JSON_HEADERS
from sip_hub.store.resources import Tx
from sip_process import BUP, SOC, day, read
from test_probe_concurrency import world  # noqa: F401 (the fixture: the demo SIP)

postgres_only = pytest.mark.parametrize(
    "store", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)

SECRET_ADDRESS = [{"use": "home", "line": ["Hemliga gatan 1"], "postalCode": "11111",
                   "city": "Skyddad", "country": "SE"}]


def put(client, headers: dict, res: dict):
    return client.put(f"/fhir/{res['resourceType']}/{res['id']}", content=orjson.dumps(res),
                      headers=JSON_HEADERS | headers)


def withdraw_and_move(client, soc: dict) -> str:
    """SOC withdraws Alva's consent and, once that has committed, gives her a protected
    address (a new version of her Patient); that version's id."""
    withdrawn = f.sip_consent(start=day(-10), end=day(365), status="inactive")
    assert put(client, soc, withdrawn).status_code == 200
    moved = read(client, "Patient/alva", soc)
    moved.pop("meta")
    moved["address"] = SECRET_ADDRESS
    r = put(client, soc, moved)
    assert r.status_code == 200, r.text
    return r.json()["meta"]["versionId"]


class Pause:
    """After ``hold()``, holds the next call of ``Tx.<method>`` whose arguments ``when``
    accepts (whichever thread makes it: the test client runs the request in a thread of its
    own) until ``release()``; other calls pass through. The test makes no such call itself
    meanwhile."""

    def __init__(self, monkeypatch, method: str,
                 when: Callable[..., bool] = lambda *args, **kw: True) -> None:
        self.arrived, self.go = threading.Event(), threading.Event()
        self.held = False
        self.lock = threading.Lock()
        original = getattr(Tx, method)
        pause = self

        def wrapper(tx: Tx, *args: Any, **kw: Any) -> Any:
            with pause.lock:
                mine = pause.held and when(*args, **kw)
                pause.held = pause.held and not mine
            if mine:
                pause.arrived.set()
                assert pause.go.wait(30)
            return original(tx, *args, **kw)
        monkeypatch.setattr(Tx, method, wrapper)

    def hold(self) -> None:
        with self.lock:
            self.held = True

    def release(self) -> None:
        self.go.set()


def race(pause: Pause, request: Callable[[], Any], meanwhile: Callable[[], Any]
         ) -> tuple[Any, Any]:
    """``request`` held by ``pause`` while ``meanwhile`` runs to its end; both answers."""
    def held() -> Any:
        pause.hold()
        return request()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(held)
        assert pause.arrived.wait(30)
        try:
            done = meanwhile()
        finally:
            pause.release()
        return answer.result(timeout=30), done


def test_an_instance_history_read_across_a_withdrawal_shows_no_version_written_after_it(
        client, store, world, monkeypatch):
    """BUP reads the history of Alva's Patient; its access was checked (the consent covered
    it) but the versions not yet read when SOC withdraws the consent and then gives Alva a
    protected address. BUP relies on being shown no version written after the withdrawal:
    that address only ever existed while the consent did not cover BUP (on PostgreSQL the
    history was judged by the grants read before the withdrawal, and showed it)."""
    soc, bup = world[SOC], world[BUP]
    assert client.get("/fhir/Patient/alva/_history", headers=bup).status_code == 200
    r, secret = race(Pause(monkeypatch, "history"),
                     lambda: client.get("/fhir/Patient/alva/_history", headers=bup),
                     lambda: withdraw_and_move(client, soc))
    assert client.get("/fhir/Patient/alva", headers=bup).status_code == 403  # (withdrawn)
    assert r.status_code in (200, 403), r.text
    shown = [e["resource"] for e in r.json().get("entry", []) if "resource" in e]
    assert secret not in [res["meta"]["versionId"] for res in shown]
    assert "Hemliga gatan 1" not in r.text


@postgres_only
def test_a_transaction_reads_each_record_on_the_grants_as_they_are_after_it(
        client, store, world, monkeypatch):
    """A transaction Bundle by BUP reads Alva's plan (which reads her grants: the consent
    covers BUP) and then her Patient; before the Patient is read SOC withdraws the consent
    and gives Alva a protected address. BUP relies on the Patient's read being refused as a
    read of it on its own is: it was judged by the grants the transaction read for the plan,
    from before the withdrawal, and showed the new address."""
    soc, bup = world[SOC], world[BUP]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "GET", "url": "CarePlan/alva-sip"}},
        {"request": {"method": "GET", "url": "Patient/alva"}}]}

    def transaction():
        return client.post("/fhir", content=orjson.dumps(bundle),
                           headers=JSON_HEADERS | bup)
    assert transaction().status_code == 200
    r, _ = race(Pause(monkeypatch, "current", lambda rtype, rid: rtype == "Patient"),
                transaction, lambda: withdraw_and_move(client, soc))
    assert "Hemliga gatan 1" not in r.text
    assert r.status_code == 403, r.text
