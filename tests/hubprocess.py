"""The hub as real processes for tests: ``python -m sip_hub.cli <args>`` on the embedded
default in a test's directory, its stderr in a file, stopped with SIGTERM."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path: Path, args: list[str], **env: str) -> tuple[subprocess.Popen, Path]:
    """The command with none of the caller's ``SIP_HUB_*`` settings but ``env``; its stderr
    (its log lines) in the returned file."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("SIP_HUB_")}
    full.update(SIP_HUB_DATA_DIR=str(tmp_path), SIP_HUB_MAPPINGS_DIR=str(MAPPINGS), **env)
    log = tmp_path / "stderr.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "sip_hub.cli", *args], env=full,
                                stdout=subprocess.DEVNULL, stderr=out)
    return proc, log


def wait(cond: Callable[[], bool], what: str, proc: subprocess.Popen, log: Path,
         timeout: float = 60.0) -> None:
    """Until ``cond``; fails with the log's end when the process ends or time runs out."""
    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what}: {log.read_text()[-3000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=60)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes


def get(port: int, path: str, headers: dict[str, str] | None = None,
        timeout: float = 10.0) -> Answer:
    """GET on a new connection (the kernel hands each new connection to any of the API's
    worker processes)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def healthy(port: int) -> bool:
    """Whether the API answers /healthz with 200 (False while nothing listens)."""
    try:
        return get(port, "/healthz", timeout=2).status == 200
    except OSError:
        return False


def children(pid: int, *, workers: bool = False) -> set[int]:
    """The child processes of ``pid`` (from /proc); ``workers``: only the API worker
    processes multiprocessing spawned (not its resource tracker)."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes() if workers else b""
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and (
                not workers or b"spawn_main" in cmd):
            out.add(int(entry))
    return out
