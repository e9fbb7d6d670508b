"""More of the hub's HTTP/1.1 handling, as a client of the running hub (``sip-hub serve``,
``serving.HttpProtocol``, spoken to over raw sockets) relies on it: every pipelined request
before a refused one gets its own answer, in order; a request offering an h2c upgrade is
read, body and all, as an ordinary HTTP/1.1 request; a request body that stops arriving is
answered 408 and its connection closed, so it holds neither the connection nor a graceful
stop for ever (one that arrives slowly but steadily is read); an answer sent before the body
is read (a 401 from the head) lets the upload finish and the connection serve the next
request; and POST [type]/_search reads its form within the hub's body limit and refuses a
content coding, as every other body."""

from __future__ import annotations

import gzip
import signal
import socket
import subprocess
import threading
import time

import pytest

from rawhttp import (PATIENT, Hub, count, exchange, hub,  # noqa: F401 (hub: the fixture)
                     read_all, start, statuses)


# What Java's HttpClient and Ktor add to an ordinary request on http:// (RFC 7540 3.2): an
# offer the server may ignore (RFC 9110 7.8).
H2C = (b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
       b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n")


def _create(hub: Hub, family: str, extra: bytes = b"") -> bytes:
    body = PATIENT % family.encode()
    return (b"POST /fhir/Patient HTTP/1.1\r\nHost: hub\r\n" + hub.auth + extra
            + b"Content-Type: application/fhir+json\r\nContent-Length: %d\r\n\r\n" % len(body)
            + body)


# -- 1. a refusal behind several pipelined requests -----------------------------------------------

@pytest.mark.parametrize("bad", [
    b"FOO / HTTP/1.1\r\nHost: hub\r\n\r\n",
    b"POST /fhir/Patient HTTP/1.1\r\nHost: hub\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
], ids=["malformed-head", "bad-chunk-in-its-body"])
def test_every_pipelined_write_before_a_refused_request_gets_its_own_answer(hub, bad):
    """Two creates pipelined before a malformed request were both applied, but the client
    read [201, 400]: the refusal was answered as soon as the second create had been taken
    off the queue and started, not once it was answered. The client takes the 400 for its
    second create and sends it again: a duplicate (RFC 9112 9.3.2: a response for each
    request, in order)."""
    family = f"PipeTwo{time.monotonic_ns()}"
    answer = exchange(hub.port, _create(hub, family) + _create(hub, family) + bad)
    time.sleep(0.5)  # (a write may run on after the connection closed)
    assert (statuses(answer), count(hub, family)) == ([201, 201, 400], 2), answer[-600:]


# -- 2. a body sent with an upgrade offer ---------------------------------------------------------

@pytest.mark.parametrize("segments", [1, 2], ids=["head-and-body-together",
                                                  "body-in-its-own-segment"])
def test_a_write_offering_an_h2c_upgrade_is_read_with_its_body(hub, segments):
    """Java's HttpClient (HTTP_2 by default on http://) and Ktor offer h2c on ordinary POSTs.
    httptools skips the body of a request asking for an upgrade, so the create ran with no
    body (400), and a body in a segment of its own was read as a second, malformed, request
    (two answers to one request). The offer is ignored and the request read whole."""
    family = f"H2c{time.monotonic_ns()}"
    request = _create(hub, family, H2C)
    head, body = request.split(b"\r\n\r\n", 1)
    pieces = [request] if segments == 1 else [head + b"\r\n\r\n", body]
    answer = exchange(hub.port, *pieces,
                       b"GET /healthz HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n",
                       pause=0.2)
    assert (statuses(answer), count(hub, family)) == ([201, 200], 1), answer[:800]
    assert b"upgrade: h2c" not in answer.lower()  # (no 101: the hub speaks HTTP/1.1 only)


# -- 3. a body that stops arriving ----------------------------------------------------------------

def test_a_request_body_that_stops_arriving_does_not_hold_its_connection_for_ever(hub):
    """A head with 'Content-Length: 1000' and a few bytes of body (or a chunked body's first
    chunk), then nothing, held the connection and a task awaiting the body for as long as
    the client liked; /auth/token reads its form before authenticating, so anyone could
    ('slow POST'). A body that makes no progress for a bounded time is answered 408 and
    closed."""
    heads = {
        "content-length": b"POST /fhir/Patient HTTP/1.1\r\nHost: hub\r\n" + hub.auth
        + b"Content-Type: application/fhir+json\r\nContent-Length: 1000\r\n\r\n{\"res",
        "chunked": b"POST /fhir/Patient HTTP/1.1\r\nHost: hub\r\n" + hub.auth
        + b"Content-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\n{\"res\r\n",
        "unauthenticated": b"POST /auth/token HTTP/1.1\r\nHost: hub\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ngrant",
    }
    results: dict[str, str] = {}

    def hold(name: str, first: bytes) -> None:
        answer = exchange(hub.port, first, timeout=25)
        results[name] = ("open after 25 s" if answer == b"<still open>"
                         else f"closed after {statuses(answer)}")
    threads = [threading.Thread(target=hold, args=item) for item in heads.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert results == {name: "closed after [408]" for name in heads}


def test_a_request_body_that_arrives_slowly_but_steadily_is_read(hub):
    """The bound is on a body's pauses, not its length in time: a create whose body takes
    longer than that bound to arrive, a few bytes a second, is served."""
    family = f"Slow{time.monotonic_ns()}"
    request = _create(hub, family, b"Connection: close\r\n")
    head, body = request.split(b"\r\n\r\n", 1)
    step = len(body) // 12 + 1
    pieces = [body[at:at + step] for at in range(0, len(body), step)]
    answer = exchange(hub.port, head + b"\r\n\r\n", *pieces, pause=1.0, timeout=20)
    assert statuses(answer) == [201], answer[:300]


def test_sigterm_stops_the_hub_though_a_client_holds_a_request_body_back(tmp_path):
    """SIGTERM is a graceful stop, bounded in time: a client that sent a head and part of a
    body, and then nothing, kept a single-worker hub 'Waiting for connections to close' for
    as long as it kept the connection open, and a deploy or restart hung on it."""
    proc, running = start(tmp_path)
    try:
        with socket.create_connection(("127.0.0.1", running.port), timeout=60) as conn:
            conn.sendall(b"POST /auth/token HTTP/1.1\r\nHost: hub\r\nContent-Type: "
                         b"application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
                         b"grant")
            time.sleep(0.5)
            proc.send_signal(signal.SIGTERM)
            try:
                status = proc.wait(timeout=35)
            except subprocess.TimeoutExpired:
                status = None
        # (One process: uvicorn stops gracefully and then re-raises the SIGTERM it caught.)
        assert status in (0, -signal.SIGTERM), (
            "the hub was still waiting for the connection 35 s after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)


# -- 4. an answer given before the body is read ---------------------------------------------------

def test_an_answer_before_the_body_is_read_does_not_cut_off_the_body_still_arriving(hub):
    """A 4 MB create without a token is answered 401 from its head, and the answer keeps
    the connection alive, so the client sends the rest of its body (8 s of it here), which
    the hub reads and discards. The keep-alive timer armed by that answer closed the
    connection 5 s later in the middle of the upload: the client got a reset instead of
    finishing and reading its 401 (RFC 9112 9.6). The upload finishes and the connection
    serves the next request."""
    total = 4_000_000
    head = (b"POST /fhir/Patient HTTP/1.1\r\nHost: hub\r\nContent-Type: application/fhir+json"
            b"\r\nContent-Length: %d\r\n\r\n" % total)
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as conn:
        conn.sendall(head)
        sent, error = 0, None
        try:
            while sent < total:  # (at 500 kB/s)
                conn.sendall(b" " * 50_000)
                sent += 50_000
                time.sleep(0.1)
            conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        except OSError as exc:
            error = exc
        try:
            answer = read_all(conn)
        except OSError:
            answer = b""
    assert (error, statuses(answer)) == (None, [401, 200]), f"sent {sent} of {total} bytes"


# -- 5. the body of POST _search ------------------------------------------------------------------

@pytest.mark.parametrize("coding,compress", [("gzip", True), ("br", False)],
                         ids=["gzip-body", "br-labelled-plain-body"])
def test_a_search_body_in_a_content_coding_is_a_415(client, coding, compress):
    """A body with a Content-Encoding is a 415 (Accept-Encoding: identity), a search's form
    as any other: a gzip form was a 400 naming its compressed bytes as a parameter, and one
    labelled br was searched as if plain."""
    r = client.post("/fhir/Patient", json={"resourceType": "Patient",
                                           "name": [{"family": "Coded"}]},
                    headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 201
    form = b"family=Coded"
    r = client.post("/fhir/Patient/_search",
                    content=gzip.compress(form) if compress else form,
                    headers={"Content-Type": "application/x-www-form-urlencoded",
                             "Content-Encoding": coding})
    assert r.status_code == 415, r.text[:300]
    assert r.headers.get("accept-encoding") == "identity"


def test_a_search_body_over_the_body_limit_is_a_413(client):
    """A body over SIP_HUB_MAX_BODY_BYTES is a 413, a search's form as any other: a 6 MB
    form of fields under 1 MiB each was read whole, then answered 400 for its unknown
    parameters."""
    limit = client.app.state.settings.max_body_bytes
    field = b"a" * 1_000_000
    form = b"family=Coded&" + b"&".join(b"x%d=%s" % (i, field)
                                        for i in range(limit // len(field) + 1))
    assert len(form) > limit
    r = client.post("/fhir/Patient/_search", content=form,
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413, r.text[:300]


def test_a_search_form_keeps_its_repeated_and_percent_encoded_parameters(client):
    """Read raw, a search's form means what it meant: a parameter may be repeated (AND) and
    is percent-decoded, with '+' a space."""
    for family, given in (("Formsson", "Anna Maria"), ("Formsson", "Bo")):
        r = client.post("/fhir/Patient", json={"resourceType": "Patient", "name": [
            {"family": family, "given": [given]}]},
            headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 201
    r = client.post("/fhir/Patient/_search?family=Formsson",
                    content=b"given=Anna+Maria&given=anna%20m&_summary=count",
                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text[:300]
    assert r.json()["total"] == 1
