"""The demo configuration that `make run` loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sip_hub import demo
from sip_hub.app import ConfigurationError, check_settings
from sip_hub.settings import Settings

MAPPINGS = Path(__file__).resolve().parent.parent / "mappings"


def test_demo_organisations_load_once_in_dev(store, tmp_path):
    settings = Settings(env="dev", data_dir=tmp_path, mappings_dir=MAPPINGS)
    assert demo.load(store, settings) >= 1
    demo.load(store, settings)  # idempotent: conditional creates
    with store.begin(write=False) as tx:
        rows, total = tx.history("Organization")
    assert total == 4
    names = sorted(r.json()["name"] for r in rows)
    assert "Region Värmland, BUP Karlstad" in names


def test_demo_is_never_loaded_in_production(store, tmp_path):
    settings = Settings(env="production", data_dir=tmp_path, mappings_dir=MAPPINGS)
    assert demo.load(store, settings) == 0


# -- a demo file the hub cannot load --------------------------------------------------------

_REFUSED_ENTRY = ('{"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": '
                  '{"resourceType": "Organization", "nickname": "BUP"}, '
                  '"request": {"method": "POST", "url": "Organization"}}]}')


@pytest.mark.parametrize("content, fault", [
    ('{"resourceType": "Bundle", "type": "transaction", "entry": [', "not JSON"),
    ('{"resourceType": "Patient"}', "must be a transaction Bundle, not Patient"),
    ('{"resourceType": "Bundle", "type": "batch"}', "not a Bundle of type 'batch'"),
    (_REFUSED_ENTRY, "nickname"),
])
def test_a_demo_file_the_hub_cannot_load_stops_serve_in_one_line_naming_it(
        tmp_path: Path, content: str, fault: str) -> None:
    """An operator editing the demo organisations who breaks a file (not JSON, not a
    transaction Bundle, a resource the hub refuses) is told at start, in one line naming the
    file and its fault, exit 2 (README, Operations), not by a traceback from a worker's
    start-up (exit 3) that never named the file."""
    mappings = tmp_path / "mappings"
    (mappings / "demo").mkdir(parents=True)
    (mappings / "endpoints.json").write_text('{"endpoints": []}')
    bad = mappings / "demo" / "organizations.json"
    bad.write_text(content)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SIP_HUB_")}
    environ.update({"SIP_HUB_DATA_DIR": str(tmp_path / "var"),
                    "SIP_HUB_MAPPINGS_DIR": str(mappings)})
    done = subprocess.run([sys.executable, "-m", "sip_hub.cli", "serve", "--port", "18539"],
                          env=environ, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 2, (done.returncode, done.stderr[-1500:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"sip-hub: Refusing to start: {bad}: "), \
        done.stderr[-1500:]
    assert fault in lines[0], lines


def test_a_demo_file_is_checked_with_the_other_settings(tmp_path: Path) -> None:
    """The check the API's processes and ``sip-hub worker`` make at start
    (``check_settings``) reads the demo files too, in ``dev`` only (production loads none)."""
    (tmp_path / "demo").mkdir()
    (tmp_path / "endpoints.json").write_text('{"endpoints": []}')
    (tmp_path / "demo" / "x.json").write_text("[]")
    dev = Settings(env="dev", data_dir=tmp_path, mappings_dir=tmp_path)
    with pytest.raises(ConfigurationError, match="must be a transaction Bundle, not list"):
        check_settings(dev)
    check_settings(Settings(env="test", data_dir=tmp_path, mappings_dir=tmp_path))
