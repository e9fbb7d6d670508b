"""On SQLite the CPU-heavy work ahead of a write (structural validation, the rules prepared
ahead) runs one thread of the process at a time, whatever the requests that ask for it at
once: a REST write, a transaction Bundle, a $process-message. On PostgreSQL it does not take
turns (see ``sip_hub.cpu``)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from fhirhttp import JSON_HEADERS, patient
from harness import BUP, URL, Hub, broker, hub, status_change, world  # noqa: F401
from sip_hub import cpu
from sip_hub.fhir import models
from sip_hub.store import Store


class Overlap:
    """Watches ``models.validate``: how many threads ran it at once, and which threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.threads: set[str] = set()


@pytest.fixture
def overlap(monkeypatch: pytest.MonkeyPatch) -> Overlap:
    seen = Overlap()
    real = models.validate

    def watched(resource: Any) -> None:
        with seen.lock:
            seen.now += 1
            seen.most = max(seen.most, seen.now)
            seen.threads.add(threading.current_thread().name)
        try:
            time.sleep(0.02)  # long enough for concurrent requests to meet here
            real(resource)
        finally:
            with seen.lock:
                seen.now -= 1
    monkeypatch.setattr(models, "validate", watched)
    return seen


def _at_once(n: int, send: Callable[[int], Any]) -> list[Any]:
    """``send(i)`` for i < n from n threads started together; their answers."""
    start = threading.Barrier(n)
    answers: list[Any] = [None] * n

    def run(i: int) -> None:
        start.wait(timeout=10)
        answers[i] = send(i)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return answers


def _creates(client: Any) -> Callable[[int], Any]:
    return lambda i: client.post("/fhir/Patient", content=orjson.dumps(
        patient(family=f"Turn{i}")), headers=JSON_HEADERS)


@pytest.fixture
def no_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu, "_TURN", contextlib.nullcontext())


def _as_expected(store: Store, most: int) -> bool:
    """The overlap the store's turns allow: one on SQLite; on PostgreSQL side by side."""
    return most == 1 if store.embedded else most > 1


def test_concurrent_writes_validate_in_turns_on_sqlite(client: Any, store: Store,
                                                       overlap: Overlap) -> None:
    answers = _at_once(6, _creates(client))
    assert [r.status_code for r in answers] == [201] * 6
    assert _as_expected(store, overlap.most), overlap.most
    assert len(overlap.threads) > 1  # the requests ran on several threads


def test_without_turns_the_same_writes_validate_side_by_side(
        client: Any, overlap: Overlap, no_turns: None) -> None:
    """What the test above rules out on SQLite happens without the turns (it can see an
    overlap)."""
    answers = _at_once(6, _creates(client))
    assert [r.status_code for r in answers] == [201] * 6
    assert overlap.most > 1


def test_transaction_bundles_validate_their_entries_in_turns(client: Any, store: Store,
                                                              overlap: Overlap) -> None:
    def send(i: int) -> Any:
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-00000000000{i}{k}",
             "resource": patient(family=f"Bundle{i}x{k}"),
             "request": {"method": "POST", "url": "Patient"}} for k in range(2)]}
        return client.post("/fhir", content=orjson.dumps(bundle), headers=JSON_HEADERS)
    answers = _at_once(4, send)
    assert [r.status_code for r in answers] == [200] * 4
    assert _as_expected(store, overlap.most), overlap.most


def test_messages_are_checked_in_turns(world: Hub, overlap: Overlap) -> None:
    messages = [status_change(world) for _ in range(4)]
    answers = _at_once(4, lambda i: world.post(BUP, URL, messages[i]))
    assert [r.status_code for r in answers] == [200] * 4
    codes = [r.json()["entry"][0]["resource"]["response"]["code"] for r in answers]
    assert "ok" in codes  # the first applied; the others may meet its new version
    assert _as_expected(world.store, overlap.most), overlap.most


def test_a_large_transaction_bundle_does_not_hold_back_other_writes(
        client: Any, store: Store, overlap: Overlap) -> None:
    """Each entry takes a turn of its own: a write that comes while a Bundle of 30 entries is
    being checked (20 ms an entry here) is done long before the Bundle."""
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{k:012d}",
         "resource": patient(family=f"Large{k}"),
         "request": {"method": "POST", "url": "Patient"}} for k in range(30)]}
    done: dict[str, float] = {}

    def send(i: int) -> Any:
        if i == 0:
            r = client.post("/fhir", content=orjson.dumps(bundle), headers=JSON_HEADERS)
        else:
            time.sleep(0.1)  # the Bundle's checks are under way
            r = _creates(client)(i)
        done["bundle" if i == 0 else "create"] = time.monotonic()
        return r
    bundle_answer, create_answer = _at_once(2, send)
    assert (bundle_answer.status_code, create_answer.status_code) == (200, 201)
    assert done["bundle"] - done["create"] > 0.2  # not after the Bundle's 0.6 s of checks
    if store.embedded:
        assert overlap.most == 1
