"""fhir.resources exactly as published, in a process of its own.

The hub changes how fhir_core's models validate when fhir.resources defines them (see
`.models`); the changes hold for the life of the process and cannot be switched off within
it. What must run the library as published (the benchmarks' floors, the tests that prove the
hub decides exactly as the library does) runs in the process `process()` starts, where
`models` leaves fhir_core as it is.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from typing import Any

from ..errors import BadRequest, Unprocessable
from . import models

ENV = models.AS_PUBLISHED_ENV


def _as_published() -> bool:
    return models.AS_PUBLISHED


@contextmanager
def process() -> Iterator[ProcessPoolExecutor]:
    """One fresh process (spawned, not forked: a fork would inherit this process's models)
    in which fhir.resources runs as published; submit module-level functions to it."""
    before = os.environ.get(ENV)
    os.environ[ENV] = "1"  # read by .models when the new process imports it
    try:
        pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        try:
            if not pool.submit(_as_published).result():  # starts it while ENV is set
                raise RuntimeError("the process runs the hub's changes to fhir_core")
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    finally:
        if before is None:
            del os.environ[ENV]
        else:
            os.environ[ENV] = before
    try:
        yield pool
    finally:
        pool.shutdown(cancel_futures=True)


def outcome(resource: Any) -> tuple[str, Any]:
    """`models.validate`'s answer as data: ('ok', None), or the error's class, its message and
    its issues (code, diagnostics, expression)."""
    try:
        models.validate(resource)
    except (BadRequest, Unprocessable) as exc:
        found = [(i.code, i.diagnostics, i.expression) for i in getattr(exc, "issues", [])]
        return type(exc).__name__, (str(exc), found)
    return "ok", None


def outcomes(resources: list[Any]) -> list[tuple[str, Any]]:
    return [outcome(resource) for resource in resources]
