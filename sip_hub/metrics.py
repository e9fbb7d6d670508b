"""Prometheus metrics of the HTTP API and the messaging path, and ``metrics_router`` serving
them at /metrics.

Alert on ``sip_hub_message_dead_letters_total`` rising: a message an organisation needs did not
reach it (the reason is in the dead-letter queue and the outbox; ``sip-hub messages replay``
sends it again). Watch ``sip_hub_http_requests_total`` by status (5xx: the hub's own faults)
and ``sip_hub_http_request_duration_seconds``.

The API's worker processes share one port, so a scrape reaches any one of them: their metrics
are kept in files of one directory (prometheus_client's multiprocess mode, which
``shared_between_processes`` turns on for the processes ``sip-hub serve`` starts) and every
scrape answers their sum, a dead worker's counts included (counters never go down). Each
``sip-hub worker`` serves its own on its own port: scrape each.

With ``SIP_HUB_METRICS_TOKEN`` set, /metrics answers only a request that carries it as its
bearer token (Prometheus: ``authorization: {credentials: ...}`` in the scrape config), others
get a 401; unset, it answers anyone who reaches the port.
"""

from __future__ import annotations

import glob
import hmac
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Any, Protocol

from fastapi import APIRouter, Request
from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               generate_latest, multiprocess)
from prometheus_client.exposition import MetricsHandler
from prometheus_client.metrics_core import Metric
from starlette.responses import Response

from .errors import Unauthorized

_SHARED = "PROMETHEUS_MULTIPROC_DIR"

# One registry for the hub's own metrics, so that tests and embedding applications never
# meet prometheus_client's process-wide default registry.
REGISTRY = CollectorRegistry(auto_describe=True)

MESSAGES_ENQUEUED = Counter(
    "sip_hub_messages_enqueued", "Deliveries written to the outbox, by event",
    ["event"], registry=REGISTRY)
MESSAGES_PUBLISHED = Counter(
    "sip_hub_messages_published", "Deliveries the relay published to the bus",
    registry=REGISTRY)
DELIVERIES = Counter(
    "sip_hub_message_deliveries",
    "Delivery attempts by outcome (delivered, retry, dead, withdrawn, duplicate, held)",
    ["outcome"], registry=REGISTRY)
DEAD_LETTERS = Counter(
    "sip_hub_message_dead_letters", "Deliveries moved to the dead-letter queue (alert on it)",
    ["kind"], registry=REGISTRY)
# Every series of the alert metric (and of the outcomes) is there from the start, at 0: a
# series that first appears at 1 is no rise to Prometheus (``increase`` needs two samples), so
# the first dead letter after a start would not alert. (The kinds of store.outbox's messages.)
for _kind in ("notification", "response"):
    DEAD_LETTERS.labels(_kind)
for _outcome in ("delivered", "retry", "dead", "withdrawn", "duplicate", "held"):
    DELIVERIES.labels(_outcome)
MESSAGES_RECEIVED = Counter(
    "sip_hub_messages_received", "Messages received by $process-message, by response code",
    ["code"], registry=REGISTRY)


class _Deferring(Protocol):
    def after_commit(self, fn: Callable[[], None]) -> None: ...


def count_committed(tx: _Deferring, counter: Any, amount: float = 1) -> None:
    """``counter`` (a Counter, or one of its labelled children) rises by ``amount`` once
    ``tx`` commits: a count of what a transaction wrote (an enqueued message, a dead letter)
    does not rise for work that is undone, and is not taken in SQLite's write lock."""
    if amount:
        tx.after_commit(lambda: counter.inc(amount))


HTTP_REQUESTS = Counter(
    "sip_hub_http_requests", "HTTP requests answered, by method, route and status",
    ["method", "route", "status"], registry=REGISTRY)
HTTP_SECONDS = Histogram(
    "sip_hub_http_request_duration_seconds",
    "Time from a request's arrival to its answer's last byte, by method and route",
    ["method", "route"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))


# The methods counted by name. A client may send any token as the method (a 405): each one a
# label of its own would be a new series in memory and in /metrics, without bound.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    method = method if method in _METHODS else "other"
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_SECONDS.labels(method, route).observe(seconds)


# The route of a request the HTTP layer answers itself (``serving.HttpProtocol``: a head too
# large or too slow, malformed HTTP, a transfer coding it does not undo): it reaches no route.
REFUSED_ROUTE = "(refused)"


def observe_refusal(status: int) -> None:
    """A request refused before it reached the application, counted with the rest (a client
    or proxy sending oversized heads shows as a rise of 431s), method unknown ("other")."""
    HTTP_REQUESTS.labels("other", REFUSED_ROUTE, str(status)).inc()


def serve_metrics(port: int, host: str, healthy: Callable[[], bool] | None = None, *,
                  token: str | None = None) -> Callable[[], None]:
    """This process's metrics at http://host:port/metrics (a ``sip-hub worker``, which has no
    API), and with ``healthy`` its health at /healthz (200, or 503 when it says no: what a
    container's health check asks; the metrics server alone answers as long as the process
    lives); returns what stops the server. With ``token`` the metrics (not /healthz) answer
    only a request that carries it as its bearer token, as the API's /metrics does."""
    metrics = MetricsHandler.factory(REGISTRY)

    class Handler(metrics):  # type: ignore[misc, valid-type]
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if healthy is not None and self.path.split("?")[0] == "/healthz":
                ok = healthy()
                self._answer(200 if ok else 503, b'{"status":"ok"}' if ok
                             else b'{"status":"unavailable"}', "application/json")
                return None
            authorization = self.headers.get("Authorization")
            if not scraper_allowed(authorization, token):
                self._answer(401, _REFUSED, "application/fhir+json; charset=utf-8",
                             {"WWW-Authenticate": _challenge(authorization)})
                return None
            return super().do_GET()

        def _answer(self, status: int, body: bytes, ctype: str,
                    headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # (no line on stderr per scrape)
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="sip-hub-metrics", daemon=True).start()

    def stop() -> None:
        server.shutdown()
        server.server_close()
    return stop


@contextmanager
def shared_between_processes() -> Iterator[None]:
    """While inside, the processes started from here (spawned: they import prometheus_client
    afresh) keep their metrics in one new directory, removed at the end: a restarted API
    starts its counters from zero, as a single process does."""
    directory = tempfile.mkdtemp(prefix="sip-hub-metrics-")
    os.environ[_SHARED] = directory
    try:
        yield
    finally:
        del os.environ[_SHARED]
        shutil.rmtree(directory, ignore_errors=True)


metrics_router = APIRouter(tags=["operations"])


_HEADER_BYTES = 8  # a metrics file's used-bytes count and padding, before any value


class _Shared(multiprocess.MultiProcessCollector):
    """The sum over the processes' files, skipping a file still empty: a process starting
    (a replaced worker) creates its file and then sizes it, and a scrape in between would
    fail reading it (it holds no count yet)."""

    def collect(self) -> Iterable[Metric]:
        files = [f for f in glob.glob(os.path.join(self._path, "*.db"))
                 if _size(f) >= _HEADER_BYTES]
        return self.merge(files, accumulate=True)


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:  # gone meanwhile (a live gauge's file of a dead process)
        return 0


_CHALLENGE = 'Bearer realm="sip_hub metrics"'
_REFUSED_TEXT = ("/metrics is served to the monitoring system only: send its token "
                 "(SIP_HUB_METRICS_TOKEN) as 'Authorization: Bearer <token>'")
# The worker's metrics server answers a refusal as the API does (OperationOutcome, 401).
_REFUSED = json.dumps({"resourceType": "OperationOutcome", "issue": [
    {"severity": "error", "code": "login", "diagnostics": _REFUSED_TEXT}]}).encode()


def _challenge(authorization: str | None) -> str:
    """A refusal's WWW-Authenticate (RFC 6750 3: invalid_token when a token was sent)."""
    return _CHALLENGE + (', error="invalid_token"' if authorization else "")


def scraper_allowed(authorization: str | None, token: str | None) -> bool:
    """Whether ``authorization`` (the request's header) carries ``token`` as its bearer token;
    without a ``token`` anyone is. Compared in constant time: how long a refusal takes tells
    nothing of how much of the token was right."""
    if token is None:
        return True
    scheme, _, given = (authorization or "").strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode(), token.encode())


def _require_scraper(request: Request) -> None:
    secret = request.app.state.settings.metrics_token
    authorization = request.headers.get("authorization")
    if scraper_allowed(authorization,
                       None if secret is None else secret.get_secret_value()):
        return
    raise Unauthorized(_REFUSED_TEXT, headers={"WWW-Authenticate": _challenge(authorization)})


@metrics_router.get("/metrics")
def metrics(request: Request) -> Response:
    _require_scraper(request)
    registry = REGISTRY
    if os.environ.get(_SHARED):  # this process's and its siblings', summed
        registry = CollectorRegistry()
        _Shared(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
