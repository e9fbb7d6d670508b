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

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import metrics

log = logging.getLogger("uvicorn.error")
_GRACE_SECONDS = 30.0  # for a worker to finish its requests after SIGTERM
_RESTART_PAUSE = 1.0   # between replacing workers that keep dying


def run(workers: int, **config: Any) -> int:
    """Serve ``uvicorn.Config(**config)`` with ``workers`` processes; the exit status."""
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


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol (httptools) sending each response in one write."""

    def connection_made(self, transport: Any) -> None:
        super().connection_made(_Coalescing(transport, self.loop))


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
