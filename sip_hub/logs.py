"""The hub's log lines: one configuration for every process of a deployment (the API's
workers, ``sip-hub worker``, the command line), as text for people or as JSON lines for a log
pipeline (``SIP_HUB_LOG_FORMAT``), at ``SIP_HUB_LOG_LEVEL``; each line names the HTTP request it
was logged for.

Request ids: every HTTP request has one, the caller's ``X-Request-ID`` when that is a plain
token (at most 128 letters, digits and ``.-_:``; anything else could forge log lines), else a
new one. The response carries it back in ``X-Request-ID``, a 500's OperationOutcome names it,
so does every AuditEvent of the request (``audit.AuditRecord.request``), and every line
logged while the request is handled carries it (``request_id``), also from the
threads its work is handed to (``routes.wire.in_thread`` runs them in the request's context;
group commit on SQLite runs each write in its own caller's). Lines logged outside a request
(the relay, the deliveries, the deadline scans) carry ``-`` and name their message, delivery
or plan instead.

The hub logs ids, organisations, states and reasons; never a resource's content (that stays in
the store, and who read it in the audit log).
"""

from __future__ import annotations

import logging
import logging.config
import random
import re
import time
from contextvars import ContextVar
from typing import Any, Literal

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.orjson import OrjsonFormatter

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]

# The id of the HTTP request being handled in this context; None outside one.
REQUEST_ID: ContextVar[str | None] = ContextVar("sip_hub_request_id", default=None)
_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,128}")

_TEXT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s [%(process)d] %(request_id)s %(message)s"
_DATE = "%Y-%m-%dT%H:%M:%S"
_JSON_FIELDS = ["levelname", "name", "process", "request_id", "message"]
_JSON_NAMES = {"levelname": "level", "name": "logger"}


def request_id(offered: str | bytes | None) -> str:
    """The id of a request: the caller's, when it is a plain token; else a new one."""
    if isinstance(offered, bytes):
        offered = offered.decode("latin-1")
    if offered and _TOKEN.fullmatch(offered):
        return offered
    # Time-ordered (the milliseconds first, as in a UUID version 7), so that the access
    # log's index of request ids grows at its end instead of on a random page per read; then
    # 80 random bits, not os.urandom (a system call per request). Not a secret: the module's
    # generator is seeded from the OS in each process (and again in a forked child).
    return f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


class RequestIdFilter(logging.Filter):
    """Gives each record it sees ``request_id``: the request being handled where it was
    logged (a handler formats a record in the thread and context that logged it), else
    ``-``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get() or "-"
        return True


class WithoutQueryFilter(logging.Filter):
    """uvicorn's access lines (``'%s - "%s %s HTTP/%s" %d'``: client, method, target,
    version, status) with the target's path alone: a query may name a person (a search by
    ``identifier=...|<personnummer>``, ``$citizen-view?patient=...``), and the logs carry no
    resource's content."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            # (uvicorn quotes the path: a "?" in it is the query's start)
            record.args = (*args[:2], args[2].partition("?")[0], *args[3:])
        return True


class UtcFormatter(logging.Formatter):
    """Text lines with their time in UTC (ISO 8601), as JSON lines have it."""
    converter = time.gmtime


def formatter(kind: LogFormat) -> logging.Formatter:
    """How a line looks: text, or a JSON object (a record's ``extra`` fields become fields of
    their own; a traceback stays inside its line)."""
    if kind == "json":
        return OrjsonFormatter(_JSON_FIELDS, rename_fields=_JSON_NAMES,
                               timestamp="time",  # UTC, to the microsecond
                               reserved_attrs=[*RESERVED_ATTRS, "color_message"])  # uvicorn's
    return UtcFormatter(_TEXT, _DATE)


def config(level: LogLevel = "info", fmt: LogFormat = "text") -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of a hub process (also uvicorn's ``log_config``):
    the hub's and uvicorn's loggers at ``level``, other libraries' warnings, one handler on
    stderr."""
    name = level.upper()
    return {
        "version": 1,
        # Module loggers made at import (sip_hub.*, sqlalchemy, kombu) stay enabled.
        "disable_existing_loggers": False,
        "formatters": {"hub": {"()": formatter, "kind": fmt}},
        "filters": {"request": {"()": RequestIdFilter},
                    "without_query": {"()": WithoutQueryFilter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "hub",
                                "filters": ["request"], "stream": "ext://sys.stderr"}},
        "root": {"level": "WARNING", "handlers": ["stderr"]},
        "loggers": {
            "sip_hub": {"level": name},
            "uvicorn": {"level": name, "handlers": ["stderr"], "propagate": False},
            "uvicorn.error": {"level": name},
            "uvicorn.access": {"level": name, "handlers": ["stderr"], "propagate": False,
                               "filters": ["without_query"]},
        },
    }


def configure(level: LogLevel = "info", fmt: LogFormat = "text") -> None:
    """Configure this process's logging (the command line, before anything logs)."""
    logging.config.dictConfig(config(level, fmt))
