"""The README's curl tour, run as written against a real hub on the embedded default."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tour() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## A tour with curl"):]
    return re.search(r"```sh\n(.*?)```", section, re.S).group(1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_readme_tour_works_as_written(tmp_path):
    port = _free_port()
    env = {**os.environ, "SIP_HUB_DATA_DIR": str(tmp_path), "SIP_HUB_PORT": str(port)}
    env.pop("SIP_HUB_DATABASE_URL", None)
    server = subprocess.Popen([sys.executable, "-m", "sip_hub.cli", "serve"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "hub did not start"
                time.sleep(0.2)
        script = _tour().replace("http://127.0.0.1:8080", f"http://127.0.0.1:{port}")
        script = script.replace(".venv/bin/sip-hub", f"{sys.executable} -m sip_hub.cli")
        done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
    finally:
        server.terminate()
        server.wait(timeout=15)
    out = done.stdout
    assert done.returncode == 0, done.stderr
    assert '"status":"ok"' in out
    assert '"resourceType":"CapabilityStatement"' in out
    assert '"type":"transaction-response"' in out and "201 Created" in out
    assert "HTTP/1.1 200 OK" in out and 'etag: W/"1"' in out
    assert '"total":1' in out                     # found by personnummer
    assert "<CarePlan xmlns=\"http://hl7.org/fhir\">" in out
    assert '"type":"history"' in out
    assert "check digit is 3, expected 2" in out
