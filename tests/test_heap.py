"""A hub process that has started leaves its start-up objects out of garbage collections
(``sip_hub.heap``): a full collection walks what requests made since, not the models,
validators and compiled statements every process holds for its life.

Each check runs in a process of its own: freezing is for the whole process, and this one
builds many apps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

from sip_hub import heap

_PROBE = """
import gc, sys, orjson
from pathlib import Path
from fastapi.testclient import TestClient
from sip_hub.app import create_app
from sip_hub.settings import Settings

gc.collect()
before = len(gc.get_objects())
settings = Settings(env=sys.argv[2], data_dir=Path(sys.argv[1]), base_url="http://hub.test")
with TestClient(create_app(settings)) as c:
    assert c.get("/fhir/metadata").status_code == 200
    walked = len(gc.get_objects())
    print(orjson.dumps({"before": before, "walked": walked, "frozen": gc.get_freeze_count(),
                        "threshold": gc.get_threshold()}).decode())
"""


def _probe(tmp_path: Path, env: str) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, str(tmp_path), env], check=True,
                         capture_output=True, timeout=120)
    return orjson.loads(out.stdout.splitlines()[-1])


def test_a_started_hub_walks_only_what_came_after_its_start(tmp_path: Path) -> None:
    seen = _probe(tmp_path, "dev")
    # Importing the app alone makes well over 100k tracked objects; all of it is frozen.
    assert seen["frozen"] > 100_000
    assert seen["frozen"] > seen["before"]
    # What a collection still walks: the few made since (the request, the threads' state).
    assert seen["walked"] < seen["frozen"] // 10
    assert seen["threshold"][0] == heap.YOUNG_THRESHOLD


def test_the_test_environment_freezes_nothing(tmp_path: Path) -> None:
    """Tests build app after app in one process: frozen objects would never be freed."""
    seen = _probe(tmp_path, "test")
    assert seen["frozen"] == 0
    assert seen["walked"] > 100_000
    assert seen["threshold"][0] != heap.YOUNG_THRESHOLD
