"""The demo configuration that `make run` loads."""

from __future__ import annotations

from pathlib import Path

from sip_hub import demo
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
