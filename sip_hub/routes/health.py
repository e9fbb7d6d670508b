"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..errors import TransientError

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(request: Request) -> JSONResponse:
    try:
        request.app.state.store.ping()
    except TransientError as exc:
        return JSONResponse({"status": "unavailable", "database": exc.diagnostics[:200]}, 503)
    return JSONResponse({"status": "ok"})
