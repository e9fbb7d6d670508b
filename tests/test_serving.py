"""``sip-hub serve --workers N``: worker processes that share the load of kept-alive clients,
are replaced when they die and stop together.

Which process holds a connection is read from /proc (Linux, where SO_REUSEPORT exists).
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import time
from pathlib import Path

import pytest

import hubprocess

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists()
                                or not hasattr(socket, "SO_REUSEPORT"),
                                reason="needs Linux /proc and SO_REUSEPORT")


def _server_side_inodes(port: int) -> set[str]:
    """Inodes of established connections whose local end is the hub's port."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if int(cols[1].split(":")[1], 16) == port and cols[3] == "01":
            inodes.add(cols[9])
    return inodes


def _holders(pids: set[int], inodes: set[str]) -> dict[int, int]:
    """How many of ``inodes`` each process holds."""
    held: dict[int, int] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                held[pid] = held.get(pid, 0) + 1
    return held


def _running(pid: int) -> bool:
    """Alive and not a zombie (a sandbox's init may never reap the orphans it inherits, such
    as multiprocessing's resource tracker)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.2)


@pytest.fixture
def hub(tmp_path):
    port = hubprocess.free_port()
    proc, log = hubprocess.start(tmp_path, ["serve", "--port", str(port), "--workers", "2"])
    try:
        hubprocess.wait(lambda: log.read_bytes().count(b"Application startup complete") >= 2
                        and hubprocess.healthy(port), "the hub did not start", proc, log)
        yield proc, port, log
    finally:
        hubprocess.stop(proc)


def test_kept_alive_connections_are_spread_over_the_workers(hub):
    proc, port, _ = hub
    workers = hubprocess.children(proc.pid)
    conns = []
    for _ in range(24):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        c.request("GET", "/healthz")
        resp = c.getresponse()
        resp.read()
        assert resp.status == 200
        conns.append(c)
    held = _holders(workers, _server_side_inodes(port))
    for c in conns:
        c.close()
    # 24 connections over two listening sockets by address hash: both take some (all on one
    # has a probability of 2 in 2^24).
    assert len(held) == 2, held
    assert sum(held.values()) == 24


def test_a_worker_that_dies_is_replaced_and_the_hub_stops_as_one(hub):
    proc, port, log = hub
    before = hubprocess.children(proc.pid)
    victim = max(before)
    os.kill(victim, signal.SIGKILL)
    hubprocess.wait(lambda: log.read_bytes().count(b"Application startup complete") >= 3,
                    "no worker replaced the killed one", proc, log)
    after = hubprocess.children(proc.pid)
    assert victim not in after and len(after & before) == len(before) - 1
    for _ in range(10):  # every connection lands on a live worker
        assert hubprocess.healthy(port)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    # The supervisor joined its workers before exiting; multiprocessing's resource tracker,
    # its child too, sees its parent gone and exits a moment later.
    _wait(lambda: not [pid for pid in after if _running(pid)], timeout=10)
    assert not hubprocess.healthy(port)


def test_a_port_in_use_stops_serve_with_an_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc, log = hubprocess.start(tmp_path, ["serve", "--port", str(port), "--workers", "2"])
        assert proc.wait(timeout=120) == 1
    assert "Cannot bind" in log.read_text()
