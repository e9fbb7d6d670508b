"""What an organisation's answer to a POSTed message means (real HTTP servers on loopback):
delivered only when the answer says the message was received (its response message, or a
202 / 204); any other 2xx is a failed attempt, retried and dead-lettered with its reason; a
Retry-After is waited for."""

from __future__ import annotations

from email.utils import formatdate
from http.server import BaseHTTPRequestHandler
from time import time
from typing import Any, Callable, Iterator

import orjson
import pytest

from harness import BUP, SCHOOL, SOC, Hub, Servers, broker, hub, world  # noqa: F401
from sip_hub.messaging import builder
from sip_hub.store import outbox as sql

# An answer: (status, content type, body), or with the header fields to send as well.
Answer = tuple[Any, ...]


class Endpoint(list):
    """A receiver's URL and the messages it was POSTed."""
    url = ""


@pytest.fixture
def endpoint() -> Iterator[Callable[[Callable[[dict], Answer]], Endpoint]]:
    """An endpoint answering each POST with ``answer(message)``."""
    servers = Servers()

    def start(answer: Callable[[dict], Answer]) -> Endpoint:
        got = Endpoint()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                data = orjson.loads(self.rfile.read(int(self.headers["content-length"])))
                got.append(data)
                status, ctype, payload, *more = answer(data)
                self.send_response(status)
                for name, value in (more[0] if more else {}).items():
                    self.send_header(name, value)
                if status != 204:
                    self.send_header("content-type", ctype)
                    self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass
        got.url = servers.start(Handler)
        return got

    yield start
    servers.close()


def _to_bup(hub: Hub, endpoint: Any, answer: Callable[[dict], Answer], **overrides: Any
            ) -> Endpoint:
    """BUP's endpoint answering ``answer``, the school's acknowledging every message."""
    bup = endpoint(answer)
    school = endpoint(lambda m: (200, "application/fhir+json", _ok(m)))
    hub.configure({BUP: bup.url, SCHOOL: school.url}, **overrides)
    return bup


def _ok(message: dict, answered: str | None = None) -> bytes:
    """The ok response message to ``message`` (or naming ``answered`` as the one answered)."""
    reply = builder.response(answered or message["entry"][0]["resource"]["id"], "ok",
                             fhir_base="https://bup.test/fhir",
                             destination=builder.Party(SOC, "urn:x"))
    return orjson.dumps(reply)


def _bup(hub: Hub) -> sql.Delivery:
    (d,) = [d for d in hub.deliveries() if d.dest_org == BUP]
    return d


# -- what counts as delivered ------------------------------------------------------------------

_HTML = ("text/html; charset=utf-8",
         b"<html><body><h1>Sign in</h1><form>...</form></body></html>")
_ERROR = ("application/fhir+json", orjson.dumps({
    "resourceType": "OperationOutcome", "issue": [
        {"severity": "fatal", "code": "exception", "diagnostics": "database unavailable"}]}))


@pytest.mark.parametrize("answer", [_HTML, _ERROR], ids=["html-page", "operation-outcome"])
def test_a_200_that_is_no_response_message_is_retried_then_dead_lettered(
        world: Hub, endpoint: Any, answer: tuple[str, bytes]) -> None:
    """A reverse proxy in front of BUP's endpoint answers 200 with its sign-in page, or BUP's
    server answers 200 with a bare OperationOutcome saying it failed: nothing says the
    message reached BUP's system. The hub does not record it delivered (it would be lost
    without a trace): a failed attempt with the reason, retried, dead-lettered after the
    last attempt, where operators see it and replay it."""
    bup = _to_bup(world, endpoint, lambda m: (200, *answer))
    world.relay()
    world.deliver()
    d = _bup(world)
    assert len(bup) == 1 and (d.state, d.attempts) == ("pending", 1)
    assert d.last_error and d.last_error.startswith(f"HTTP 200 from {bup.url}: not a FHIR "
                                                    "response message")
    world.rounds(lambda: _bup(world).state == "dead")
    d = _bup(world)
    assert len(bup) == d.attempts == 3
    assert d.last_error.startswith("Gave up after 3 attempts: HTTP 200")
    assert len(world.bus.take_dead()) == 1


def test_an_ok_response_to_another_message_is_not_taken_for_this_ones(
        world: Hub, endpoint: Any) -> None:
    """BUP's endpoint (or a cache in front of it) answers 200 with an ok response message
    naming another message in ``response.identifier`` (FHIR: the MessageHeader.id of the
    message it answers): it acknowledges that one, not this. A failed attempt, retried."""
    bup = _to_bup(world, endpoint, lambda m: (200, "application/fhir+json",
                                              _ok(m, answered="some-other-message")))
    world.relay()
    world.deliver()
    d = _bup(world)
    assert len(bup) == 1 and (d.state, d.attempts) == ("pending", 1)
    assert "a response message to message 'some-other-message', not to this one" \
        in (d.last_error or "")


@pytest.mark.parametrize("status", [202, 204])
def test_an_accepted_message_is_delivered(world: Hub, endpoint: Any, status: int) -> None:
    """An endpoint that processes messages asynchronously answers 202 (the hub's own
    ``$process-message?async=true`` does so with an informational OperationOutcome) and
    sends its response later as a message of its own; one may answer 204. Both say the
    message was received: delivered."""
    information = orjson.dumps({"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "informational", "diagnostics": "accepted"}]})
    bup = _to_bup(world, endpoint, lambda m: (status, "application/fhir+json",
                                              information if status == 202 else b""))
    world.relay()
    world.deliver()
    assert len(bup) == 1 and (_bup(world).state, _bup(world).attempts) == ("delivered", 1)


# -- Retry-After ---------------------------------------------------------------------------------

def _retry_after(value: str, status: int = 503) -> Callable[[dict], Answer]:
    oo = orjson.dumps({"resourceType": "OperationOutcome", "issue": [
        {"severity": "error", "code": "transient", "diagnostics": "down for maintenance"}]})
    return lambda m: (status, "application/fhir+json", oo, {"Retry-After": value})


@pytest.mark.parametrize(("status", "value", "wait"), [
    (503, "120", 120), (429, "120", 120),
    (503, "7200", 600),       # at most the maximum backoff
    (503, "0", 0.01),         # never sooner than the hub's own backoff
    (503, "soon", 0.01),      # one that is neither seconds nor an HTTP-date: the backoff
], ids=["503-seconds", "429-seconds", "above-the-maximum", "zero", "unreadable"])
def test_a_retry_after_is_waited_for(world: Hub, endpoint: Any, status: int, value: str,
                                     wait: float) -> None:
    """An organisation that answers 503 or 429 with Retry-After (its maintenance window, its
    rate limit) is not POSTed to again before then: the next attempt is after the longer of
    its Retry-After and the hub's backoff (base 0.01 s here), at most the maximum (600 s
    here), so that its attempts are not spent while it said it is away."""
    _to_bup(world, endpoint, _retry_after(value, status), retry_max_seconds=600)
    world.relay()
    world.deliver()
    d = _bup(world)
    assert (d.state, d.attempts) == ("pending", 1) and f"HTTP {status}" in (d.last_error or "")
    assert d.next_attempt_at - d.updated == int(wait * 1_000_000)


def test_a_retry_after_given_as_an_http_date_is_waited_for(world: Hub, endpoint: Any) -> None:
    """Retry-After as an HTTP-date (RFC 9110): the next attempt is then, not sooner."""
    _to_bup(world, endpoint, _retry_after(formatdate(time() + 300, usegmt=True)),
            retry_max_seconds=600)
    world.relay()
    world.deliver()
    d = _bup(world)
    assert d.state == "pending"
    assert 290_000_000 <= d.next_attempt_at - d.updated <= 301_000_000
