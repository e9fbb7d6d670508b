"""The hub's HTTP/1.1 limits and refusals, as a client of the running hub (``sip-hub serve``,
``serving.HttpProtocol`` on uvicorn/httptools, spoken to over raw sockets) relies on them: a
request head is bounded in size, fields and time (431, 414, a connection that sends no
complete request is closed), so one client cannot stall or starve the others; a pipelined
request is answered before a malformed one behind it is refused; a client that goes away
mid-body is no fault of the hub's (no error logged, not counted as a 500); a body or transfer
coding the hub does not undo is refused (415, 501), not misread; HTTP/1.0 gets no interim
100 response; an HTTP/1.1 request needs exactly one Host; and a media type refused with q=0
is not served through a wildcard."""

from __future__ import annotations

import gzip
import socket
import threading
import time

import pytest

from rawhttp import PATIENT, Hub, count, exchange, hub, statuses  # noqa: F401 (hub: the fixture)


# -- 1. a request head's size ---------------------------------------------------------------------

@pytest.mark.parametrize("head", [
    b"X-Padding: " + b"a" * (1 << 20) + b"\r\n",                      # one 1 MiB field
    b"".join(b"X-F%d: a\r\n" % i for i in range(100_000)),            # 100,000 fields
], ids=["huge-field", "many-fields"])
def test_an_oversized_request_head_is_a_431(hub, head):
    """RFC 6585 5: a server refuses header fields too large with 431. The hub takes any size:
    httptools has no limit and uvicorn sets none, so the head is buffered whole."""
    answer = exchange(hub.port, b"GET /healthz HTTP/1.1\r\nHost: hub\r\n" + head
                       + b"Connection: close\r\n\r\n")
    assert statuses(answer)[:1] == [431], answer[:200]


def test_a_refusal_of_the_http_layer_is_counted_in_the_metrics(hub):
    """IT staff watch ``sip_hub_http_requests_total`` by status: a client or proxy sending
    oversized heads or malformed HTTP is answered by the HTTP layer itself (431, 400), which
    no route sees, and was counted nowhere. Now under the route ``(refused)``."""
    before = {s: _requests(hub, "(refused)", s) for s in (431, 400)}
    exchange(hub.port, b"GET /healthz HTTP/1.1\r\nHost: hub\r\nX-Padding: "
             + b"a" * (1 << 20) + b"\r\nConnection: close\r\n\r\n")
    exchange(hub.port, b"GET /healthz HTTP/1.1\r\nHost: hub\r\nBad Header\r\n\r\n")
    assert _requests(hub, "(refused)", 431) == before[431] + 1
    assert _requests(hub, "(refused)", 400) == before[400] + 1


def test_a_head_within_the_limits_is_served_though_it_arrives_in_pieces(hub):
    """The bounds refuse no ordinary request: a long search target, 90 fields and a 30 KiB
    field, sent in pieces with pauses between them (counted as they arrive), are served."""
    head = (b"GET /healthz?q=" + b"a" * 30_000 + b" HTTP/1.1\r\nHost: hub\r\n"
            + b"".join(b"X-F%d: a\r\n" % i for i in range(88))
            + b"X-Padding: " + b"b" * 30_000 + b"\r\nConnection: close\r\n\r\n")
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as conn:
        for at in range(0, len(head), 8192):
            conn.sendall(head[at:at + 8192])
            time.sleep(0.02)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert statuses(answer) == [200], answer[:200]


def test_a_request_target_too_long_is_a_414(hub):
    """RFC 9112 3: a server that receives a request-target longer than it wishes to parse
    MUST answer 414. A target over 64 KiB is a text/plain 400 'Invalid HTTP request'
    (httptools.parse_url fails), after the whole target was buffered."""
    answer = exchange(hub.port, b"GET /fhir/Patient?name=" + b"a" * (1 << 20)
                       + b" HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
    assert statuses(answer)[:1] == [414], answer[:200]


def test_one_client_streaming_a_huge_header_does_not_stall_the_others(hub):
    """The header value (and a target) is grown by concatenation as it streams in:
    quadratic, on the worker's event loop. 64 MiB from one unauthenticated connection kept
    every other client of the worker waiting about 4 s (128 MiB: 16 s, 256 MiB: 70 s)."""
    done = threading.Event()

    def attacker() -> None:
        try:
            with socket.create_connection(("127.0.0.1", hub.port), timeout=60) as conn:
                conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: hub\r\nX-Padding: ")
                block = b"a" * (1 << 16)
                for _ in range(96 * 16):  # 96 MiB
                    conn.sendall(block)
                conn.sendall(b"\r\nConnection: close\r\n\r\n")
                conn.recv(100)
        except OSError:  # refused early: what a bounded head does
            pass
        finally:
            done.set()
    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    worst = 0.0
    try:
        while not done.is_set():
            started = time.monotonic()
            answer = exchange(hub.port, b"GET /healthz HTTP/1.1\r\nHost: hub\r\n"
                               b"Connection: close\r\n\r\n", timeout=60)
            assert statuses(answer) == [200]
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.1)
    finally:
        thread.join(120)
    assert worst < 1.5, f"/healthz waited {worst:.1f} s behind another client's header"


# -- 2. a request head's time ---------------------------------------------------------------------

def test_a_connection_that_sends_no_complete_request_is_closed(hub):
    """uvicorn arms its keep-alive timeout only after a response: a connection that sends
    nothing, or half a head, is held open for ever (slowloris). With the worker's file limit
    at 200, 260 such connections from one client made the hub refuse every other client."""
    results: dict[str, str] = {}

    def hold(name: str, first: bytes) -> None:
        with socket.create_connection(("127.0.0.1", hub.port), timeout=20) as conn:
            if first:
                conn.sendall(first)
            answer = b""
            try:
                while chunk := conn.recv(65536):
                    answer += chunk
            except socket.timeout:
                results[name] = "still open after 20 s"
                return
            except ConnectionResetError:
                pass
            results[name] = f"closed after {statuses(answer)}"
    threads = [threading.Thread(target=hold, args=args) for args in [
        ("nothing sent", b""), ("half a head", b"GET /healthz HTTP/1.1\r\nHost: hub\r\n")]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # (A head begun and not finished in time is answered 408 Request Timeout first.)
    assert results == {"nothing sent": "closed after []", "half a head": "closed after [408]"}


# -- 3. a malformed request behind a pipelined one ------------------------------------------------

@pytest.mark.parametrize("bad", [
    b"FOO / HTTP/1.1\r\nHost: hub\r\n\r\n",                                     # no such method
    b"GET /x HTTP/1.1\r\nHost: hub\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST /fhir/Patient HTTP/1.1\r\nHost: hub\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
], ids=["unknown-method", "two-content-lengths", "bad-chunk-in-its-body"])
def test_a_pipelined_write_gets_its_own_answer_before_a_malformed_request_is_refused(hub, bad):
    """A valid POST and, behind it on the connection, a malformed request: the hub answered
    only 'HTTP/1.1 400 Invalid HTTP request received.' and closed, while the POST was
    applied. The client reads the 400 as its create's answer (refused, nothing stored) and
    sends it again: a duplicate. RFC 9112 9.3.2: responses in the order of the requests."""
    family = f"Pipelined{bad[:3].decode()}{time.monotonic_ns()}"
    body = PATIENT % family.encode()
    answer = exchange(hub.port, b"POST /fhir/Patient HTTP/1.1\r\nHost: hub\r\n" + hub.auth
                       + b"Content-Type: application/fhir+json\r\nContent-Length: %d\r\n\r\n"
                       % len(body) + body + bad)
    time.sleep(0.5)  # (the write runs on although the connection is closed)
    assert count(hub, family) == 1
    assert statuses(answer) == [201, 400], answer[:300]


# -- 4. a client that goes away mid-body ----------------------------------------------------------

def _requests(hub: Hub, route: str, status: int) -> float:
    page = exchange(hub.port, b"GET /metrics HTTP/1.1\r\nHost: hub\r\n"
                     b"Connection: close\r\n\r\n").decode()
    total = 0.0
    for line in page.splitlines():
        if line.startswith("sip_hub_http_requests_total{") and f'route="{route}"' in line \
                and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("route,request_head", [
    ("/fhir/{rtype}", b"POST /fhir/Patient HTTP/1.1\r\nHost: hub\r\n%(auth)s"
     b"Content-Type: application/fhir+json\r\nContent-Length: 1000\r\n\r\n{\"resourceType\""),
    ("/auth/token", b"POST /auth/token HTTP/1.1\r\nHost: hub\r\n"
     b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ngrant"),
], ids=["fhir-create", "token"])
def test_a_client_gone_mid_body_is_no_500_and_no_error(hub, route, request_head):
    """starlette's ClientDisconnect reached HubApp's catch-all (hot routes: 'Unhandled error'
    logged with a traceback) or uvicorn ('Exception in ASGI application'), and the request
    was counted as a 500 in sip_hub_http_requests_total: every upload a client or load
    balancer abandons pages the operators as a fault of the hub's. It is counted as 499
    (the client closed the request)."""
    before = _requests(hub, route, 500), _requests(hub, route, 499)
    log_before = hub.log.read_bytes()
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as conn:
        conn.sendall(request_head.replace(b"%(auth)s", hub.auth))
        time.sleep(0.3)
    time.sleep(0.7)
    new_lines = hub.log.read_bytes()[len(log_before):].decode(errors="replace")
    assert "Traceback" not in new_lines and " ERROR " not in new_lines, new_lines[-1500:]
    assert (_requests(hub, route, 500), _requests(hub, route, 499)) == (before[0],
                                                                        before[1] + 1)


# -- 5. content and transfer codings --------------------------------------------------------------

@pytest.mark.parametrize("coding,compress", [("gzip", True), ("br", False)],
                         ids=["gzip-body", "br-labelled-plain-body"])
def test_a_request_body_in_a_content_coding_the_hub_does_not_undo_is_a_415(client, coding,
                                                                            compress):
    """RFC 9110 8.4 / 15.5.16: a body in a content coding the server does not accept is a
    415. The hub ignores Content-Encoding: a gzip body is a 400 'Malformed JSON: str is not
    valid UTF-8', and a body labelled br is stored as if it were plain."""
    body = PATIENT % b"Coded"
    r = client.post("/fhir/Patient", content=gzip.compress(body) if compress else body,
                    headers={"Content-Type": "application/fhir+json",
                             "Content-Encoding": coding})
    assert r.status_code == 415, r.text
    assert client.get("/fhir/Patient?family=Coded&_summary=count").json()["total"] == 0


def test_a_transfer_coding_the_hub_does_not_undo_is_a_501(hub):
    """RFC 9112 6.1: a transfer coding the server does not understand SHOULD be a 501.
    'Transfer-Encoding: gzip, chunked' was de-chunked and the gzip left on: the compressed
    bytes were read as the resource."""
    family = f"Tcoded{time.monotonic_ns()}"
    body = PATIENT % family.encode()  # (sent plain, as a client that lies about it)
    chunked = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    answer = exchange(hub.port, b"POST /fhir/Patient HTTP/1.1\r\nHost: hub\r\n" + hub.auth
                       + b"Content-Type: application/fhir+json\r\n"
                       b"Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n" + chunked)
    assert statuses(answer)[:1] == [501], answer[:300]
    assert count(hub, family) == 0


# -- 6. HTTP/1.0 and Host -------------------------------------------------------------------------

def test_an_http_1_0_request_expecting_100_continue_gets_no_interim_response(hub):
    """RFC 9110 10.1.1: a 100-continue expectation in an HTTP/1.0 request MUST be ignored,
    and 15.2: a server MUST NOT send a 1xx response to an HTTP/1.0 client (which reads the
    '100 Continue' as the final answer)."""
    family = f"OneZero{time.monotonic_ns()}"
    body = PATIENT % family.encode()
    answer = exchange(hub.port, b"POST /fhir/Patient HTTP/1.0\r\nHost: hub\r\n" + hub.auth
                       + b"Content-Type: application/fhir+json\r\nExpect: 100-continue\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert statuses(answer) == [201], answer[:200]


@pytest.mark.parametrize("host", [b"", b"Host: hub\r\nHost: other\r\n"],
                         ids=["no-host", "two-hosts"])
def test_an_http_1_1_request_without_one_host_is_a_400(hub, host):
    """RFC 9112 3.2: a server MUST respond with 400 to an HTTP/1.1 request that lacks a Host
    header field or has more than one."""
    answer = exchange(hub.port, b"GET /healthz HTTP/1.1\r\n" + host
                       + b"Connection: close\r\n\r\n")
    assert statuses(answer)[:1] == [400], answer[:200]


def test_an_http_1_0_request_without_host_is_served(hub):
    """Host is required of HTTP/1.1 requests only."""
    answer = exchange(hub.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert statuses(answer) == [200], answer[:200]


# -- 7. content negotiation -----------------------------------------------------------------------

def test_a_media_type_refused_with_q_0_is_not_served_through_a_wildcard(client):
    """RFC 9110 12.5.1: the most specific reference has precedence, and q=0 means 'not
    acceptable'. 'Accept: */*, application/fhir+json;q=0' asks for anything but JSON: the
    hub can answer XML, but answered JSON (wire.response_format maps */* to JSON without
    looking at what the header refuses)."""
    r = client.get("/fhir/metadata", headers={"Accept": "*/*, application/fhir+json;q=0"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/fhir+xml"), r.headers
