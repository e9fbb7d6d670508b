"""``POST /fhir/$process-message`` and the operators' ``POST /admin/messages/{id}/$replay``.

Include this router before ``fhir_rest``, whose ``POST /fhir/{type}`` would otherwise take
``$process-message``.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from ..errors import BadRequest, Forbidden, NotFound
from ..fhir.outcome import information
from ..fhir.validation import check_id
from ..messaging import process_message as pm
from ..messaging.replay import replay_dead
from ..messaging.runtime import Messaging
from .wire import context, in_thread, read_body, respond, single

router = APIRouter(tags=["messaging"])


def messaging(request: Request) -> Messaging:
    """The process's messaging runtime (``app.state.messaging``; made from the settings on
    first use when the app did not set one)."""
    state = request.app.state
    found = getattr(state, "messaging", None)
    if found is None:
        found = state.messaging = Messaging.for_hub(state.settings)
    return found


def _flag(request: Request, name: str) -> bool:
    value = single(request, name)
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise BadRequest(f"{name} must be true or false, not '{value}'", expression=name)


@router.post("/fhir/$process-message")
async def process_message(request: Request) -> Response:
    ctx = context(request)
    state = request.app.state
    asynchronous = _flag(request, "async")
    response_url = single(request, "response-url")
    body = await read_body(request, state.settings.max_body_bytes)
    reply = await in_thread(
        request, pm.process, state.store, ctx, body, messaging(request),
        asynchronous=asynchronous, response_url=response_url)
    return respond(request, reply.body, reply.status)


def fast_routes() -> list[BaseRoute]:
    """``$process-message`` is the messaging hot path: dispatched by ``sip_hub.app.HubApp``
    before FastAPI's middleware stack, like the hot FHIR interactions."""
    return [Route("/fhir/$process-message", process_message, methods=["POST"],
                  include_in_schema=False)]


@router.post("/admin/messages/{message_id}/$replay")
async def replay(request: Request, message_id: str) -> Response:
    """Send a dead message again: ``message_id`` is a delivery id or a MessageHeader.id."""
    ctx = context(request)
    principal = ctx.access.principal
    if principal is None or principal.role != "admin":
        raise Forbidden("Replaying messages is for admin clients")
    # Both kinds of id are FHIR ids (PostgreSQL refused a NUL in one: a 5xx).
    check_id(message_id, expression="message_id")

    def work() -> list[str]:
        with messaging(request).bus() as bus:
            return replay_dead(request.app.state.store, bus, [message_id],
                               principal=principal)
    replayed = await in_thread(request, work)
    if not replayed:
        raise NotFound(f"No dead delivery with id or MessageHeader.id '{message_id}'")
    return respond(request, information(
        f"Replayed {len(replayed)} dead deliver{'y' if len(replayed) == 1 else 'ies'}: "
        f"{', '.join(replayed)}"))
