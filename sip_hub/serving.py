"""Serving the API over several processes, each listening on a socket of its own.

uvicorn's multi-process mode binds one socket in a parent process and shares it with every
worker: whichever worker wakes first accepts a burst of new connections and keeps them for as
long as the clients keep them alive. Care systems (and the load balancers in front of the hub)
keep their connections open, so one worker did almost all the work: measured with 32
keep-alive clients, one of two workers ran at 90% of a core, the other at 25%.

Here each worker process binds its own listening socket with ``SO_REUSEPORT`` and the kernel
spreads new connections across them by address hash. A supervisor (this process) starts the
workers, replaces one that dies, stops if one cannot start (the app or the address is broken,
and would fail the same way again), and passes SIGTERM/SIGINT on for a graceful shutdown. It
holds the address bound (not listening) all along, so that no other program takes the port
between a worker's death and its replacement. Where ``SO_REUSEPORT`` does not exist, uvicorn's
own mode serves.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
from multiprocessing.process import BaseProcess
from typing import Any

import httptools
import orjson
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from . import metrics
from .errors import Issue
from .fhir.outcome import outcome

log = logging.getLogger("uvicorn.error")
_GRACE_SECONDS = 30.0  # for a worker to finish its requests after SIGTERM
_RESTART_PAUSE = 1.0   # between replacing workers that keep dying

# A request head's bounds. httptools and uvicorn set none, and grow a target and a header
# field by concatenation as they stream in: one client sending a 64 MiB field kept every
# other client of its worker waiting 4 s (256 MiB: 70 s).
MAX_TARGET = 65_535          # bytes of the request-target (httptools parses no longer one)
MAX_HEAD = 64 * 1024         # bytes of the target and header fields together
MAX_FIELDS = 100             # header fields
HEAD_SECONDS = 10.0          # from a request's first byte to the end of its head
BODY_SECONDS = 10.0          # a request body may make no progress for (a 408 after)


def run(workers: int, **config: Any) -> int:
    """Serve ``uvicorn.Config(**config)`` with ``workers`` processes; the exit status."""
    # (uvicorn waits for every connection to close on SIGTERM, without one for ever.)
    config.setdefault("timeout_graceful_shutdown", int(_GRACE_SECONDS))
    if workers <= 1:
        uvicorn.run(**config)
        return 0
    # The workers answer /metrics with the sum of all of them (see sip_hub.metrics).
    with metrics.shared_between_processes():
        if not hasattr(socket, "SO_REUSEPORT"):
            uvicorn.run(workers=workers, **config)
            return 0
        return Supervisor(workers, config).run()


class _Coalescing:
    """A connection's transport that sends what is written to it within one turn of the
    event loop as one write. uvicorn writes a response's head when the app starts it and
    its body after, each at once: two system calls and two TCP segments a response, on
    which the client wakes twice."""

    __slots__ = ("_transport", "_loop", "_held")

    def __init__(self, transport: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._held is None:
            self._held = [data]
            self._loop.call_soon(self._flush)
        else:
            self._held.append(data)

    def writelines(self, lines: Any) -> None:
        for data in lines:
            self.write(data)

    def _flush(self) -> None:
        held, self._held = self._held, None
        if held and not self._transport.is_closing():
            if len(held) == 1:
                self._transport.write(held[0])
            else:
                self._transport.writelines(held)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def write_eof(self) -> None:
        self._flush()
        self._transport.write_eof()

    def abort(self) -> None:
        self._held = None
        self._transport.abort()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(map(len, self._held or ()))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _Refusal(Exception):
    """A request the connection answers itself, with ``status``, and then closes."""

    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status, self.code, self.text = status, code, text


_MALFORMED = _Refusal(400, "structure", "The request is not well-formed HTTP/1.1")
_CODINGS = frozenset({b"chunked", b"identity"})  # the transfer codings the hub undoes


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) sending each response in one write, and
    bounding what a client may make it hold: a head's size, its fields and its time (a
    connection idle from the start is closed after the keep-alive timeout, as one idle after
    a response), and the pauses of a body (a 408 once one makes no progress for
    ``BODY_SECONDS``). A request the protocol refuses (those bounds, malformed HTTP, a
    transfer coding the hub does not undo, HTTP/1.1 without one Host) is answered with an
    OperationOutcome and the connection closed, after the answers of the requests before it:
    uvicorn answered at once, and a pipelined write that was applied lost its own answer (its
    client, reading the 400, would send it again). An offer to upgrade the connection (h2c)
    is ignored, as RFC 9110 7.8 allows, and the request read as if it had none: httptools
    skips the body of such a request, which ran with none."""

    # Per connection: a refusal waiting for the answers before it; per request head: the
    # bytes of the chunks that held nothing but head (None: no head under way; -1: one began
    # in the chunk being read), its fields and their bytes, its Host fields, its
    # Transfer-Encoding values and Content-Length, its timer, and the head to read again
    # without its upgrade offer; per request body: its timer (None: no body under way) and
    # when it last made progress.
    _refusal: _Refusal | None = None
    _head_bytes: int | None = None
    _fields = 0
    _field_bytes = 0
    _hosts = 0
    _codings: list[bytes] | None = None
    _length: bytes | None = None
    _head_timer: asyncio.TimerHandle | None = None
    _reread: bytes | None = None
    _body_timer: asyncio.TimerHandle | None = None
    _body_at = 0.0

    def connection_made(self, transport: Any) -> None:
        super().connection_made(_Coalescing(transport, self.loop))
        # (uvicorn arms it only after a response: a connection that never sent a request
        # was held for ever.)
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._stop_head_timer()
        self._stop_body_timer()

    def data_received(self, data: bytes) -> None:
        # (The keep-alive timer stops when a request begins, not on any byte: stray line
        # ends kept an idle connection open.)
        if self._refusal is not None:  # nothing more is read on this connection
            return
        if not self._feed(data):
            return
        if self._body_timer is not None:  # (what arrives while a body is under way is body)
            self._body_at = self.loop.time()
        counted = self._head_bytes
        if counted is not None:  # a head is under way
            if counted < 0:  # (it began in this chunk, after bytes that may not be its own)
                self._head_bytes = 0
                self._head_timer = self.loop.call_later(HEAD_SECONDS, self._head_timeout)
            else:
                self._head_bytes = counted = counted + len(data)
                if counted > MAX_HEAD:
                    self._refuse(_too_large())

    def _feed(self, data: bytes) -> bool:
        """Parses ``data``; False when the connection reads no more of it."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            head = self._reread
            if head is not None:  # an offer the hub ignores: the request is read again
                self._reread = None
                self.parser = httptools.HttpRequestParser(self)
                self.parser.set_dangerous_leniencies(lenient_data_after_close=True)
                return self._feed(head + data[exc.args[0]:])
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return False
        except httptools.HttpParserError as exc:
            refusal = exc.__context__
            self._refuse(refusal if isinstance(refusal, _Refusal) else _MALFORMED)
            return False
        return True

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._unset_keepalive_if_required()
        self._head_bytes = -1
        self._fields = self._field_bytes = self._hosts = 0
        self._codings = self._length = None

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > MAX_TARGET:
            raise _Refusal(414, "too-long", f"The request-target is longer than {MAX_TARGET} "
                           "bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        self._field_bytes += len(name) + len(value)
        if self._fields > MAX_FIELDS or self._field_bytes + len(self.url) > MAX_HEAD:
            raise _too_large()
        name = name.lower()
        if name == b"host":
            self._hosts += 1
        elif name == b"expect":
            if value.lower() == b"100-continue":
                self.expect_100_continue = True
        elif name == b"transfer-encoding":
            self._codings = (self._codings or []) + [value]
        elif name == b"content-length":
            self._length = value
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._head_bytes = None
        self._stop_head_timer()
        version = self.parser.get_http_version()
        # RFC 9112 3.2: a request names its host once; HTTP/1.1 must name it.
        if self._hosts > 1 or (self._hosts == 0 and version == "1.1"):
            raise _Refusal(400, "invalid", "An HTTP/1.1 request has exactly one Host header "
                           "field")
        if version == "1.0":  # (RFC 9110 10.1.1, 15.2: no 1xx to an HTTP/1.0 client)
            self.expect_100_continue = False
        if self._codings is not None:
            codings = [c.strip().lower() for v in self._codings for c in v.split(b",")]
            unknown = [c.decode("latin-1") for c in codings if c not in _CODINGS]
            if unknown:  # (RFC 9112 6.1: the body cannot be read without undoing it)
                raise _Refusal(501, "not-supported", f"Transfer-Encoding {', '.join(unknown)} "
                               "is not supported: send the body chunked or with a "
                               "Content-Length")
        if self.parser.should_upgrade():
            if self._should_upgrade() or self.parser.get_method() == b"CONNECT":
                super().on_headers_complete()  # (a websocket handshake, or CONNECT: uvicorn's)
                return
            # httptools reads no body after this head, and stops at its end: the head is
            # parsed again without the offer, by a parser of its own (see _feed).
            self._reread = self._head_without_upgrade(version)
            return
        super().on_headers_complete()
        if self._codings is not None or self._length not in (None, b"0"):  # a body follows
            self._body_at = self.loop.time()
            self._body_timer = self.loop.call_later(BODY_SECONDS, self._body_timeout)

    def on_message_complete(self) -> None:
        if self._reread is not None:  # (the request is read again: see on_headers_complete)
            return
        super().on_message_complete()
        if self._body_timer is not None:
            self._stop_body_timer()
            # Answered before its body was read (a 401 from the head, a 413 from its
            # Content-Length): the connection is idle from now, not from that answer.
            if self.cycle.response_complete and not self.transport.is_closing():
                self._unset_keepalive_if_required()
                self.timeout_keep_alive_task = self.loop.call_later(
                    self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def on_response_complete(self) -> None:
        # (Whether a request was waiting, before uvicorn takes the next one off the queue and
        # starts it: a refusal is answered once every request before it is.)
        queued = bool(self.pipeline)
        super().on_response_complete()
        # The next head has its own timer, not keep-alive's; and a body still arriving is
        # read to its end (and discarded) first: cut off, its client would get a reset
        # rather than this answer.
        if self._head_bytes is not None or self._body_timer is not None:
            self._unset_keepalive_if_required()
        if self._refusal is not None and not queued and not self.transport.is_closing():
            self._answer_refusal()

    def _head_without_upgrade(self, version: str) -> bytes:
        head = [self.parser.get_method(), b" ", self.url, b" HTTP/", version.encode(), b"\r\n"]
        for name, value in self.headers:
            if name != b"upgrade":  # (without it, Connection: upgrade asks for nothing)
                head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        return b"".join(head)

    def _refuse(self, refusal: _Refusal) -> None:
        """Answers ``refusal`` now, or once the requests before it are answered."""
        self._refusal = refusal
        self._head_bytes = None
        self._stop_head_timer()
        self._stop_body_timer()
        self.flow.pause_reading()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            # The refused bytes are this request's own body: it is refused whole. Queued, it
            # never starts; running, it is the first unanswered and is answered now.
            if self.pipeline and self.pipeline[0][0] is cycle:
                self.pipeline.popleft()
            else:
                self._answer_refusal()
                return
        if not self.pipeline and (cycle is None or cycle.response_complete):
            self._answer_refusal()

    def _answer_refusal(self) -> None:
        refusal = self._refusal
        assert refusal is not None
        self.logger.warning("Refused a request (%d): %s", refusal.status, refusal.text)
        metrics.observe_refusal(refusal.status)
        body = orjson.dumps(outcome([Issue(refusal.code, refusal.text)]))
        head = [STATUS_LINE[refusal.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"content-type: application/fhir+json; charset=utf-8\r\n"
                    b"content-length: %d\r\nconnection: close\r\n\r\n" % len(body))
        self.transport.write(b"".join(head) + body)
        self.transport.close()

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._head_bytes is None or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the hub is not reading (earlier requests run): not late
            self._head_timer = self.loop.call_later(HEAD_SECONDS, self._head_timeout)
            return
        self._refuse(_Refusal(408, "timeout", f"The request head did not arrive within "
                              f"{HEAD_SECONDS:.0f} s"))

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _body_timeout(self) -> None:
        self._body_timer = None
        if self.transport.is_closing():
            return
        now, cycle = self.loop.time(), self.cycle
        # Not late while the hub is not reading (earlier requests run, or the app has yet to
        # take what was read), nor while the client waits for its 100 Continue.
        if self.flow.read_paused or cycle.waiting_for_100_continue:
            self._body_at = now
        idle = now - self._body_at
        if idle < BODY_SECONDS:  # (progress since the timer was armed: it is armed again)
            self._body_timer = self.loop.call_later(BODY_SECONDS - idle, self._body_timeout)
            return
        if not cycle.response_complete:  # (the app's receive ends: no more body comes)
            cycle.disconnected = True
            cycle.message_event.set()
        if cycle.response_started:
            self.transport.close()
        else:
            self._refusal = _Refusal(408, "timeout", "The request body made no progress for "
                                     f"{BODY_SECONDS:.0f} s")
            self._answer_refusal()

    def _stop_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None


def _too_large() -> _Refusal:
    return _Refusal(431, "too-long", f"The request head is larger than {MAX_HEAD} bytes or "
                    f"has more than {MAX_FIELDS} header fields")


def _socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def _worker(config: dict[str, Any]) -> None:
    """A worker process: its own listening socket, then uvicorn on it."""
    cfg = uvicorn.Config(**config)
    try:
        sock = _socket(cfg.host, cfg.port)
        sock.listen(cfg.backlog)
    except OSError as exc:
        log.error("Cannot listen on %s:%s: %s", cfg.host, cfg.port, exc)
        sys.exit(STARTUP_FAILURE)
    log.info("Worker [%s] listening on http://%s:%s", os.getpid(), cfg.host, cfg.port)
    uvicorn.Server(cfg).run(sockets=[sock])


class Supervisor:
    def __init__(self, workers: int, config: dict[str, Any]) -> None:
        self.workers = workers
        self.config = config
        self.stop = threading.Event()
        self._spawn = multiprocessing.get_context("spawn")

    def _start(self) -> BaseProcess:
        proc = self._spawn.Process(target=_worker, args=(self.config,), name="sip-hub-api")
        proc.start()
        return proc

    def run(self) -> int:
        host, port = self.config.get("host", "127.0.0.1"), int(self.config.get("port", 8000))
        try:
            guard = _socket(host, port)
        except OSError as exc:
            log.error("Cannot bind %s:%s: %s", host, port, exc)
            return 1
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop.set())
        log.info("Started supervisor [%s]: %d workers on http://%s:%s", os.getpid(),
                 self.workers, host, port)
        procs = [self._start() for _ in range(self.workers)]
        status = 0
        try:
            while not self.stop.wait(0.5):
                for i, proc in enumerate(procs):
                    if proc.is_alive():
                        continue
                    proc.join()
                    if proc.exitcode == STARTUP_FAILURE:
                        log.error("Worker [%s] failed to start; stopping", proc.pid)
                        self.stop.set()
                        status = 1
                        break
                    log.warning("Worker [%s] exited (%s); starting another", proc.pid,
                                proc.exitcode)
                    self.stop.wait(_RESTART_PAUSE)
                    if not self.stop.is_set():
                        procs[i] = self._start()
        finally:
            self._shutdown(procs)
            guard.close()
        return status

    def _shutdown(self, procs: list[BaseProcess]) -> None:
        for proc in procs:
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.join(_GRACE_SECONDS)
            if proc.is_alive():
                log.warning("Worker [%s] did not stop in %.0f s; killed", proc.pid,
                            _GRACE_SECONDS)
                proc.kill()
                proc.join()
        log.info("Stopped supervisor [%s]", os.getpid())
