"""The deliveries' HTTP client against a real local server: keep-alive, stale connections,
timeouts, unreachable endpoints, and lanes of requests side by side."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sip_hub.messaging.http import HttpClient, HttpError, HttpRequest, HttpResponse, HttpTimeout


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.bodies: list[bytes] = []
        self.delay = 0.0
        self.slow = b""  # bodies starting with this wait 'delay' seconds (all when empty)
        self.close_after_answer = False
        self.silently_close = False
        self.echo = False  # answer with the body received
        self.answer_size = 0  # answer with this many bytes (when not 0)
        self.lock = threading.Lock()
        self.in_flight: list[bytes] = []
        # Each request with what was in flight as it came.
        self.overlaps: list[tuple[bytes, list[bytes]]] = []

    def get_request(self):  # type: ignore[no-untyped-def]
        self.connections += 1
        return super().get_request()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        srv = self.server
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with srv.lock:
            srv.overlaps.append((body, list(srv.in_flight)))
            srv.in_flight.append(body)
        if body.startswith(srv.slow):
            time.sleep(srv.delay)
        with srv.lock:
            srv.in_flight.remove(body)
            srv.bodies.append(body)
        answer = b"echo " + body if srv.echo else b'{"resourceType":"Bundle","type":"message"}'
        if srv.answer_size:
            answer = b"x" * srv.answer_size
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(answer)))
        if self.server.close_after_answer:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer)
        if self.server.silently_close:
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Server]:
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _url(srv: _Server) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/fhir/$process-message"


def _post(client: HttpClient, url: str, body: bytes, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    return client.post(url, content=body, headers={"Content-Type": "application/fhir+json"},
                       timeout=timeout)


def test_posts_reuse_one_kept_alive_connection(server: _Server) -> None:
    client = HttpClient()
    answers = [_post(client, _url(server), f"m{i}".encode()) for i in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert answers[0].content.startswith(b'{"resourceType":"Bundle"')
    assert answers[0].url == _url(server)
    assert server.bodies == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert server.connections == 1
    client.close()


def test_a_connection_the_server_closes_is_not_reused(server: _Server) -> None:
    server.close_after_answer = True
    client = HttpClient()
    for i in range(3):
        assert _post(client, _url(server), b"x").status_code == 200
    assert server.connections == 3
    client.close()


def test_a_kept_alive_connection_closed_meanwhile_is_replaced_and_the_message_sent_once(
        server: _Server) -> None:
    # The server drops each connection after answering without saying so (an idle timeout,
    # a restart): the client's next request on it fails before any answer comes.
    server.silently_close = True
    client = HttpClient()
    assert _post(client, _url(server), b"first").status_code == 200
    time.sleep(0.05)
    assert _post(client, _url(server), b"second").status_code == 200
    assert server.bodies == [b"first", b"second"]
    assert server.connections == 2
    client.close()


def test_a_slow_endpoint_is_a_timeout(server: _Server) -> None:
    server.delay = 0.5
    client = HttpClient()
    with pytest.raises(HttpTimeout, match="within 0.1 s"):
        _post(client, _url(server), b"slow", timeout=0.1)
    server.delay = 0.0
    assert _post(client, _url(server), b"next").status_code == 200  # a fresh connection
    client.close()


def test_an_unreachable_endpoint_is_an_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    with pytest.raises(HttpError, match="connect"):
        _post(HttpClient(), f"http://127.0.0.1:{port}/x", b"x")
    with pytest.raises(HttpError, match="not an http"):
        _post(HttpClient(), "ftp://example.test/x", b"x")


def _req(url: str, body: bytes, timeout: float = 5.0) -> HttpRequest:
    return HttpRequest(url, body, {"Content-Type": "application/fhir+json"}, timeout)


def test_lanes_run_side_by_side_each_one_request_after_another(server: _Server) -> None:
    """A deliverer's lanes (a SIP's deliveries to one organisation each): the lanes' requests
    overlap, a lane's never do and keep their order, and each answer is its request's."""
    server.delay, server.echo = 0.1, True
    client = HttpClient()
    lanes = [[_req(_url(server), f"lane {n} message {k}".encode()) for k in range(3)]
             for n in range(4)]
    answers = client.exchange(lanes)
    assert [[a.content for a in lane] for lane in answers] == [  # type: ignore[union-attr]
        [b"echo lane %d message %d" % (n, k) for k in range(3)] for n in range(4)]
    assert all(a.status_code == 200 for lane in answers for a in lane)  # type: ignore[union-attr]
    assert max(len(seen) for _, seen in server.overlaps) == 3  # the other three lanes' requests
    for n in range(4):
        mine = [b for b in server.bodies if b.startswith(b"lane %d " % n)]
        assert mine == [f"lane {n} message {k}".encode() for k in range(3)]
    for body, seen in server.overlaps:  # none of its own lane in flight
        assert not any(other.split(b" message")[0] == body.split(b" message")[0]
                       for other in seen)
    assert server.connections == 4
    server.delay = 0.0
    assert [len(lane) for lane in client.exchange(lanes)] == [3, 3, 3, 3]
    assert server.connections == 4  # the four kept-alive connections, reused
    client.close()


def test_a_failed_request_does_not_stop_its_lane_or_the_others(server: _Server) -> None:
    server.delay, server.slow, server.echo = 1.0, b"slow", True
    client = HttpClient()
    answers = client.exchange([
        [_req(_url(server), b"slow one", timeout=0.2), _req(_url(server), b"after the slow")],
        [_req("ftp://example.test/x", b"never sent"), _req(_url(server), b"after the ftp")],
        [_req(_url(server), b"fast")]])
    (slow, after_slow), (ftp, after_ftp), (fast,) = answers
    assert isinstance(slow, HttpTimeout) and "within 0.2 s" in str(slow)
    assert isinstance(ftp, HttpError) and "not an http" in str(ftp)
    assert [a.content for a in (after_slow, after_ftp, fast)  # type: ignore[union-attr]
            ] == [b"echo after the slow", b"echo after the ftp", b"echo fast"]
    assert all(isinstance(a, HttpResponse) for a in (after_slow, after_ftp, fast))
    assert b"never sent" not in server.bodies
    client.close()


def test_threads_sharing_a_client_post_on_connections_of_their_own(server: _Server) -> None:
    """Threads may share a client: concurrent POSTs must not share (and garble) a
    connection; each thread's are reused afterwards."""
    server.delay, server.echo = 0.2, True
    client = HttpClient()
    start = threading.Barrier(4)
    answers: dict[int, list[bytes]] = {}

    def post(n: int) -> None:
        start.wait(timeout=5)
        answers[n] = [_post(client, _url(server), f"thread {n} message {k}".encode()).content
                      for k in range(2)]
    threads = [threading.Thread(target=post, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert answers == {n: [f"echo thread {n} message {k}".encode() for k in range(2)]
                       for n in range(4)}
    assert max(len(seen) for _, seen in server.overlaps) == 3
    assert server.connections == 4  # one per thread, kept alive for its second POST
    client.close()


def test_a_header_that_would_inject_another_is_refused_unsent(server: _Server) -> None:
    client = HttpClient()
    answers = client.exchange([
        [HttpRequest(_url(server), b"evil", {"Authorization": "Bearer t\r\nX-Admin: yes"}, 5),
         HttpRequest(_url(server), b"bad name", {"X Bad": "v"}, 5),
         _req(_url(server), b"fine")]])
    evil, bad_name, fine = answers[0]
    assert isinstance(evil, HttpError) and "'Authorization'" in str(evil)
    assert isinstance(bad_name, HttpError)
    assert isinstance(fine, HttpResponse) and fine.status_code == 200
    assert server.bodies == [b"fine"]
    client.close()


def test_an_answer_longer_than_the_limit_is_an_error_and_the_lane_goes_on(
        server: _Server) -> None:
    client = HttpClient(max_answer=1_000)
    server.answer_size = 5_000
    with pytest.raises(HttpError, match="longer than 1000 bytes"):
        _post(client, _url(server), b"first")
    server.answer_size = 1_000  # at the limit: taken whole
    answer = _post(client, _url(server), b"second")
    assert answer.status_code == 200 and answer.content == b"x" * 1_000
    assert server.bodies == [b"first", b"second"]
    client.close()
