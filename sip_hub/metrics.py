"""Prometheus metrics of the messaging path, and ``metrics_router`` serving them at /metrics.

Alert on ``sip_hub_message_dead_letters_total`` rising: a message an organisation needs did not
reach it (the reason is in the dead-letter queue and the outbox; ``sip-hub messages replay``
sends it again). The metrics are per process (the API and each ``sip-hub worker``); scrape
every process.
"""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.responses import Response

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
MESSAGES_RECEIVED = Counter(
    "sip_hub_messages_received", "Messages received by $process-message, by response code",
    ["code"], registry=REGISTRY)

metrics_router = APIRouter(tags=["operations"])


@metrics_router.get("/metrics")
def metrics() -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
