"""/metrics as IT staff scrape it: every HTTP request counted and timed by method, route and
status; one answer for all of the API's worker processes, whichever of them a scrape reaches."""

from __future__ import annotations

import http.client
import os
import signal
import tempfile
import time
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from hubprocess import children, free_port, get, start, stop, wait


def samples(page: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The samples called ``name`` in a /metrics page, by their labels."""
    out = {}
    for family in text_string_to_metric_families(page):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def requests_of(page: str, method: str, route: str, status: str) -> float:
    return samples(page, "sip_hub_http_requests_total").get(
        (("method", method), ("route", route), ("status", status)), 0.0)


def test_requests_are_counted_and_timed_by_route_and_status(client) -> None:
    before = client.get("/metrics").text
    for _ in range(3):
        assert client.get("/fhir/CarePlan/nobody").status_code == 404   # a hot route
    assert client.get("/fhir/metadata").status_code == 200             # a FastAPI route
    assert client.get("/no/such/path").status_code == 404
    assert client.post("/fhir/CarePlan", content=b"{",
                       headers={"Content-Type": "application/fhir+json"}).status_code == 400
    after = client.get("/metrics").text

    def grew(method: str, route: str, status: str) -> float:
        return requests_of(after, method, route, status) - \
            requests_of(before, method, route, status)
    assert grew("GET", "/fhir/{rtype}/{rid}", "404") == 3  # the path template, not the ids
    assert grew("GET", "/fhir/metadata", "200") == 1
    assert grew("GET", "unmatched", "404") == 1
    assert grew("POST", "/fhir/{rtype}", "400") == 1
    assert not any("nobody" in str(labels)
                   for labels in samples(after, "sip_hub_http_requests_total"))
    counts = samples(after, "sip_hub_http_request_duration_seconds_count")
    buckets = samples(after, "sip_hub_http_request_duration_seconds_bucket")
    key = (("method", "GET"), ("route", "/fhir/{rtype}/{rid}"))
    assert counts[key] >= 3
    assert buckets[tuple(sorted((*key, ("le", "+Inf"))))] == counts[key]


def test_an_answer_that_fails_midway_counts_as_a_500(client, monkeypatch) -> None:
    from sip_hub import interactions

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")
    monkeypatch.setattr(interactions, "read", broken)
    before = client.get("/metrics").text
    assert client.get("/fhir/CarePlan/some-plan").status_code == 500
    after = client.get("/metrics").text
    assert requests_of(after, "GET", "/fhir/{rtype}/{rid}", "500") - \
        requests_of(before, "GET", "/fhir/{rtype}/{rid}", "500") == 1


# -- several API processes ----------------------------------------------------------------------

def _scrape(port: int) -> tuple[int, str]:
    answer = get(port, "/metrics")
    return answer.status, answer.body.decode()


def test_every_scrape_answers_the_sum_of_all_api_workers(tmp_path: Path) -> None:
    """``sip-hub serve --workers 2``: the kernel hands each connection to either worker, and
    whichever answers a scrape counts the other's requests too (before, each answered its
    own, and the totals jumped between scrapes). A replaced worker's counts stay in."""
    shared_dirs = set(Path(tempfile.gettempdir()).glob("sip-hub-metrics-*"))
    port = free_port()
    proc, log = start(tmp_path, ["serve", "--port", str(port), "--workers", "2"])
    try:
        wait(lambda: log.read_bytes().count(b"Application startup complete") >= 2,
             "the API did not start", proc, log)
        for _ in range(40):  # 40 connections: both workers take some
            assert get(port, "/healthz").status == 200
        totals = set()
        for _ in range(12):
            status, page = _scrape(port)
            assert status == 200
            totals.add(requests_of(page, "GET", "/healthz", "200"))
        assert totals == {40.0}, totals

        # Workers killed one after another; each is replaced, and scrapes all along (also
        # while a new worker is creating its file) answer every count of the dead ones too.
        for started in (3, 4, 5):
            workers = sorted(children(proc.pid, workers=True))
            assert len(workers) == 2
            os.kill(workers[0], signal.SIGKILL)  # the supervisor starts another
            deadline = time.monotonic() + 60
            while log.read_bytes().count(b"Application startup complete") < started:
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                try:
                    status, page = _scrape(port)
                except (ConnectionError, http.client.RemoteDisconnected):
                    continue  # a connection the kernel had handed to the killed worker
                assert status == 200, page
                assert requests_of(page, "GET", "/healthz", "200") == 40.0
        pages = [_scrape(port)[1] for _ in range(12)]
        assert {requests_of(p, "GET", "/healthz", "200") for p in pages} == {40.0}
    finally:
        assert stop(proc) == 0
    # The supervisor removes the directory the workers kept their metrics in.
    assert set(Path(tempfile.gettempdir()).glob("sip-hub-metrics-*")) == shared_dirs

