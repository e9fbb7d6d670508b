"""The hub's HTTP/1.1 protocol (``serving.HttpProtocol``, uvicorn's httptools protocol): each
response leaves in one write (its head and body, which uvicorn writes separately, were two
system calls and two TCP segments, on which the client woke twice), and nothing written is
lost, reordered or held back: a streamed body's parts arrive as they are sent, a connection
closed after its response gets the whole response first, pipelined requests are answered
in order."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from sip_hub.serving import HttpProtocol


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """/stream sends its body in three parts, a pause between them; anything else echoes
    its path in one body."""
    if scope["type"] != "http":
        return
    await receive()
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        for part in (b"one ", b"two ", b"three"):
            await send({"type": "http.response.body", "body": part, "more_body": True})
            await asyncio.sleep(0.2)
        await send({"type": "http.response.body", "body": b""})
        return
    body = scope["path"].encode() * 100
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# -- what reaches the transport --------------------------------------------------------------

class Recording(asyncio.Transport):
    """A connection's transport that records each write call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[bytes]]] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.calls.append(("write", [bytes(data)]))

    def writelines(self, lines: Any) -> None:
        self.calls.append(("writelines", [bytes(x) for x in lines]))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(
            name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


def _protocol() -> tuple[HttpProtocol, Recording]:
    config = uvicorn.Config(app=app, http=HttpProtocol, log_level="warning")
    config.load()
    protocol = HttpProtocol(config=config, server_state=ServerState(), app_state={})
    transport = Recording()
    protocol.connection_made(transport)
    return protocol, transport


def _received(calls: list[tuple[str, list[bytes]]]) -> bytes:
    return b"".join(b"".join(parts) for _, parts in calls)


def test_a_response_is_written_once_head_and_body_together() -> None:
    async def run() -> list[tuple[str, list[bytes]]]:
        protocol, transport = _protocol()
        protocol.data_received(b"GET /x HTTP/1.1\r\nHost: hub\r\n\r\n")
        for _ in range(20):
            await asyncio.sleep(0)
        protocol.connection_lost(None)
        return transport.calls
    calls = asyncio.run(run())
    assert len(calls) == 1, calls
    response = _received(calls)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert response.endswith(b"\r\n\r\n" + b"/x" * 100)


def test_a_connection_closed_after_its_response_gets_all_of_it_first() -> None:
    async def run() -> Recording:
        protocol, transport = _protocol()
        protocol.data_received(b"GET /y HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        for _ in range(20):
            await asyncio.sleep(0)
        return transport
    transport = asyncio.run(run())
    assert transport.closed
    assert _received(transport.calls).endswith(b"/y" * 100)


# -- over a real connection ------------------------------------------------------------------

@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    srv = uvicorn.Server(uvicorn.Config(app=app, host="127.0.0.1", port=port,
                                        http=HttpProtocol, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    thread.join(10)


def _read_until_closed(conn: socket.socket) -> bytes:
    out = b""
    while chunk := conn.recv(65536):
        out += chunk
    return out


def test_pipelined_requests_are_answered_whole_and_in_order(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as conn:
        conn.sendall(b"GET /a HTTP/1.1\r\nHost: hub\r\n\r\n"
                     b"GET /b HTTP/1.1\r\nHost: hub\r\n\r\n"
                     b"GET /c HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n")
        data = _read_until_closed(conn)
    bodies = [part.split(b"\r\n\r\n", 1)[1][:200] for part in data.split(b"HTTP/1.1 200")[1:]]
    assert bodies == [b"/a" * 100, b"/b" * 100, b"/c" * 100]


def test_a_streamed_body_arrives_as_it_is_sent(server: int) -> None:
    with socket.create_connection(("127.0.0.1", server), timeout=10) as conn:
        conn.sendall(b"GET /stream HTTP/1.1\r\nHost: hub\r\n\r\n")
        first = b""
        while b"one " not in first:
            first += conn.recv(65536)
        assert b"two" not in first  # (sent 0.2 s later): the first part was not held back
        rest = b""
        while not rest.endswith(b"0\r\n\r\n"):
            rest += conn.recv(65536)
    assert b"two " in rest and b"three" in rest
