"""Demo configuration for the embedded default: the transaction Bundles in ``mappings/demo/``.

Loaded at start-up in the ``dev`` environment only; the Bundles use conditional creates so
loading them again changes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson

from . import bundles
from .errors import SipHubError
from .interactions import Context
from .settings import Settings
from .store import Store

log = logging.getLogger("sip_hub.demo")

# Set by ``sip-hub serve`` for its worker processes once it has published the conformance
# resources and loaded the demo itself: the workers do not do it again, each (one start's
# work done three times, and logged so).
PRELOADED = "_SIP_HUB_PRELOADED"


def read(settings: Settings) -> list[tuple[Path, dict[str, Any]]]:
    """The demo Bundles to load (none outside ``dev``), each with its file. A file the hub
    cannot load raises ``ValueError`` naming it and its fault, so that the start is refused in
    one line (``app.check_settings``): it was a traceback from the API's start-up that never
    named the file an operator had edited."""
    folder = settings.mappings_dir / "demo"
    if settings.env != "dev" or not folder.is_dir():
        return []
    found = []
    for path in sorted(Path(folder).glob("*.json")):
        try:
            body = orjson.loads(path.read_bytes())
        except OSError as exc:
            raise ValueError(f"{path}: cannot be read ({exc.strerror})") from None
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}: not JSON ({exc})") from None
        kind = body.get("resourceType") if isinstance(body, dict) else type(body).__name__
        if kind != "Bundle" or body.get("type") != "transaction":
            shown = f"a Bundle of type {body.get('type')!r}" if kind == "Bundle" else kind
            raise ValueError(f"{path}: a demo file must be a transaction Bundle, not {shown}")
        found.append((path, body))
    return found


def load(store: Store, settings: Settings) -> int:
    """Load the demo Bundles; a Bundle the hub refuses raises ``ValueError`` naming its file
    and the refusal."""
    found = read(settings)
    ctx = Context(f"{settings.public_base}/fhir")
    for path, body in found:
        try:
            bundles.process(store, ctx, body, "minimal")
        except SipHubError as exc:
            if exc.retryable:  # (the database: not the file's fault)
                raise
            raise ValueError(f"{path}: {exc.diagnostics}") from None
    if found:
        log.info("demo configuration loaded from %s (%d bundles)", found[0][0].parent,
                 len(found))
    return len(found)
