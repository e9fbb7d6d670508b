"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..errors import TransientError

router = APIRouter(tags=["operations"])
log = logging.getLogger("sip_hub.health")


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    try:
        request.app.state.store.ping()
    except TransientError as exc:
        # The reason is for the hub's operators, in its log: the answer is public, and the
        # driver's message names the database's host, port and user.
        log.warning("health check: %s", exc.diagnostics[:500])
        return JSONResponse({"status": "unavailable", "database": "unavailable"}, 503)
    return JSONResponse({"status": "ok"})
