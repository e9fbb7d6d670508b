"""Demo configuration for the embedded default: the transaction Bundles in ``mappings/demo/``.

Loaded at start-up in the ``dev`` environment only; the Bundles use conditional creates so
loading them again changes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orjson

from . import bundles
from .interactions import Context
from .settings import Settings
from .store import Store

log = logging.getLogger("sip_hub.demo")


def load(store: Store, settings: Settings) -> int:
    folder = settings.mappings_dir / "demo"
    if settings.env != "dev" or not folder.is_dir():
        return 0
    ctx = Context(f"{settings.public_base}/fhir")
    loaded = 0
    for path in sorted(Path(folder).glob("*.json")):
        bundles.process(store, ctx, orjson.loads(path.read_bytes()), "minimal")
        loaded += 1
    log.info("demo configuration loaded from %s (%d bundles)", folder, loaded)
    return loaded
