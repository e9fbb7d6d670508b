"""The hub as a real ``sip-hub serve`` process spoken to over raw sockets (its HTTP/1.1
layer, ``serving.HttpProtocol``): a module-scoped ``hub`` fixture with an organisation
client's token, and the exchanges the HTTP tests make with it."""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import hubprocess

ORG = "SE2321000016-15CQ"
PATIENT = b'{"resourceType":"Patient","name":[{"family":"%s"}]}'


@dataclass(frozen=True)
class Hub:
    port: int
    log: Path
    token: str

    @property
    def auth(self) -> bytes:
        return f"Authorization: Bearer {self.token}\r\n".encode()


def env(data_dir: Path) -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.startswith("SIP_HUB_")}
    out.update(SIP_HUB_DATA_DIR=str(data_dir), SIP_HUB_MAPPINGS_DIR=str(hubprocess.MAPPINGS))
    return out


def read_all(conn: socket.socket) -> bytes:
    out = b""
    try:
        while chunk := conn.recv(65536):
            out += chunk
    except ConnectionResetError:
        pass
    return out


def exchange(port: int, *pieces: bytes, pause: float = 0.0, timeout: float = 10.0) -> bytes:
    """Sends ``pieces`` on a new connection (``pause`` between them: separate segments) and
    reads until the hub closes it; ``b"<still open>"`` if ``timeout`` passes without a
    byte."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        try:
            for i, piece in enumerate(pieces):
                if i and pause:
                    time.sleep(pause)
                conn.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            return read_all(conn)
        except socket.timeout:
            return b"<still open>"


def statuses(answer: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.[01] (\d{3})", answer)]


def _token(port: int, creds: dict[str, str]) -> str:
    basic = base64.b64encode(f"{creds['client_id']}:{creds['client_secret']}".encode())
    form = b"grant_type=client_credentials"
    answer = exchange(port, b"POST /auth/token HTTP/1.1\r\nHost: hub\r\nAuthorization: Basic "
                      + basic + b"\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                      b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(form) + form)
    assert statuses(answer)[:1] == [200], answer[:500]
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])["access_token"]


def start(data: Path) -> tuple[subprocess.Popen, Hub]:
    """``sip-hub serve`` on the embedded default, with an organisation client."""
    made = subprocess.run([sys.executable, "-m", "sip_hub.cli", "client", "create", "--org", ORG,
                           "--scope", "system/*.cruds"], env=env(data), capture_output=True,
                          check=True)
    creds = json.loads(made.stdout)
    port = hubprocess.free_port()
    proc, log = hubprocess.start(data, ["serve", "--port", str(port)])
    try:
        hubprocess.wait(lambda: hubprocess.healthy(port), "the hub did not start", proc, log)
        return proc, Hub(port, log, _token(port, creds))
    except BaseException:
        hubprocess.stop(proc)
        raise


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    proc, running = start(tmp_path_factory.mktemp("hub"))
    try:
        yield running
    finally:
        hubprocess.stop(proc)


def count(hub: Hub, family: str) -> int:
    """How many Patients of ``family`` the hub holds."""
    answer = exchange(hub.port, b"GET /fhir/Patient?family=%s&_summary=count HTTP/1.1\r\n"
                      b"Host: hub\r\n" % family.encode() + hub.auth
                      + b"Connection: close\r\n\r\n")
    return json.loads(answer.split(b"\r\n\r\n", 1)[1])["total"]
