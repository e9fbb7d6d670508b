"""URLs a delivery cannot be sent to: an async request's response-url that is not an absolute
http(s) URL in printable ASCII is a 400; one that reaches a worker anyway (stored before this
rule, or an endpoint configured in code) fails its own delivery, dead-lettered with the
reason, and neither the batch's other deliveries nor the next batches suffer (a non-ASCII
URL made pycurl raise inside the exchange: the batch's handler failed, every delivery of it
stayed published with no attempt, each republish failed again, and curl handles left in the
multi handle broke the next, unrelated batch with a KeyError)."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import pytest

from harness import (BUP, SOC, URL, Hub, broker, hub, receivers,  # noqa: F401
                     world)
from harness import acks, settled, status_change
from sip_hub.messaging import builder, outbox
from sip_hub.messaging import http as http_module
from sip_hub.messaging.endpoints import Endpoints
from sip_hub.messaging.http import HttpClient, HttpRefused, HttpRequest, url_problem
from sip_hub.messaging.process_message import process_accepted
from sip_hub.store import inbox
from test_http import _Server, _url, server  # noqa: F401

JSON = {"content-type": "application/fhir+json"}



@pytest.mark.parametrize("url, usable", [
    ("http://127.0.0.1:8190/soc/ä", False),            # as the probe sent it (decoded)
    ("http://bäck.test/pm", False),                    # a host not in its IDNA form
    ("http://xn--bck-qla.test/pm", True),              # ... and in it
    ("http://127.0.0.1:8190/soc/%C3%A4", True),        # percent-encoded UTF-8
    ("http://127.0.0.1:8190/soc/\u200b", False),       # a zero-width space
    ("ftp://127.0.0.1/pm", False),
    ("http:///pm", False),
    ("http://127.0.0.1:99999/pm", False),
    ("http://127.0.0.1:0/pm", False),
    ("https://[::1]:8443/pm?x=1", True),
])
def test_the_url_rule(url: str, usable: bool) -> None:
    assert (url_problem(url) is None) is usable


@pytest.mark.parametrize("tail", ["ä", "%C3%A4/ä", "\u00a0", "\U0001f600"])
def test_a_response_url_not_in_ascii_is_a_400_and_nothing_is_accepted(
        world: Hub, receivers: Any, tail: str) -> None:
    bup = receivers()
    world.configure({BUP: bup.url})
    msg = status_change(world)
    r = world.client.post(URL, params={"async": "true", "response-url": bup.url + "/" + tail},
                          content=orjson.dumps(msg), headers=JSON | world.headers[BUP])
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["expression"] == ["response-url"]
    assert "printable ASCII" in issue["diagnostics"]
    with world.store.begin(write=False) as tx:
        assert inbox.lookup(tx, BUP, msg["entry"][0]["resource"]["id"], msg["id"],
                            time.time_ns() // 1000) == (None, None)


def test_a_percent_encoded_response_url_is_accepted_and_answered_there(
        world: Hub, receivers: Any) -> None:
    bup = receivers()
    world.configure({BUP: bup.url})
    reply_to = bup.url + "/soc/%C3%A4"
    r = world.client.post(URL, params={"async": "true", "response-url": reply_to},
                          content=orjson.dumps(status_change(world)),
                          headers=JSON | world.headers[BUP])
    assert r.status_code == 202, r.text
    process_accepted(world.store, world.messaging)
    world.rounds(lambda: bool(acks(bup)))
    (d,) = [d for d in world.deliveries() if d.kind == "response"]
    assert d.endpoint_url == reply_to and d.state == "delivered"


def test_an_endpoint_file_with_a_url_not_in_ascii_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "endpoints.json"
    path.write_text(json.dumps({"endpoints": [{"organization": BUP,
                                               "url": "https://bup.test/pm/ä"}]}))
    with pytest.raises(ValueError, match="printable ASCII"):
        Endpoints.load(path)


def _respond(hub: Hub, org: str, patient: str, url: str | None = None) -> str:
    """A response to ``org`` (no consent to check) in a SIP of its own, to ``url`` when
    given (as an async request's response-url is kept)."""
    with hub.store.begin() as tx:
        note = builder.response(f"req-{patient}", "ok", fhir_base="http://hub.test/fhir",
                                destination=builder.Party(org, "x"),
                                focus=[f"Patient/{patient}"])
        (delivery_id,) = outbox.enqueue(tx, note, [org], kind=outbox.RESPONSE,
                                        sip=outbox.SipKey(patient, ""), endpoint_url=url)
    return delivery_id


def test_a_stored_url_not_in_ascii_fails_its_own_delivery_only(
        hub: Hub, receivers: Any) -> None:
    """A response-url kept before the rule (or by a release without it) among other
    deliveries of one batch: it is dead with the reason at its first attempt; the others are
    delivered in the same batch, and the next batch too."""
    bup, soc = receivers(), receivers()
    hub.configure({BUP: bup.url, SOC: soc.url})
    bad = _respond(hub, SOC, "p0", soc.url + "/ä")
    good = [_respond(hub, SOC, "p1"), _respond(hub, BUP, "p2"), _respond(hub, SOC, "p3",
                                                                          soc.url + "/%C3%A4")]
    hub.relay()
    hub.deliver()
    states = {d.id: (d.state, d.attempts) for d in hub.deliveries()}
    assert states[bad] == ("dead", 1)
    assert [states[g] for g in good] == [("delivered", 1)] * 3
    (dead,) = hub.deliveries(ids=[bad])
    assert "printable ASCII" in (dead.last_error or "")
    assert len(soc.received) == 2 and len(bup.received) == 1
    later = _respond(hub, BUP, "p4")   # the next batch: nothing of the first is left behind
    hub.rounds(lambda: settled(hub))
    assert hub.deliveries(ids=[later])[0].state == "delivered" and len(bup.received) == 2


def test_a_url_libcurl_refuses_fails_its_request_only_and_leaves_no_handle_behind(
        server: _Server, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Whatever the checks before let through, a URL pycurl raises on is that request's
    error: the lane goes on with its next request, the other lanes are answered, and the
    client's next exchange (which found the handles of the first in its multi handle: a
    KeyError) is answered in full."""
    monkeypatch.setattr(http_module, "_refused", lambda request: None)
    client = HttpClient()
    url = _url(server)

    def req(body: bytes, to: str = url) -> HttpRequest:
        return HttpRequest(to, body, {"Content-Type": "application/fhir+json"}, 5.0)

    first = client.exchange([[req(b"a1"), req(b"a2")], [req(b"b1"), req(b"x", url + "/ä"),
                                                        req(b"b3")],
                             [req(b"y", url + "/ä"), req(b"c2")]])
    assert [[getattr(a, "status_code", None) for a in lane] for lane in first] == [
        [200, 200], [200, None, 200], [None, 200]]
    assert isinstance(first[1][1], HttpRefused) and isinstance(first[2][0], HttpRefused)
    second = client.exchange([[req(b"d1")], [req(b"e1"), req(b"e2")]])
    assert [[getattr(a, "status_code", None) for a in lane] for lane in second] == [
        [200], [200, 200]]
    assert sorted(server.bodies) == sorted([b"a1", b"a2", b"b1", b"b3", b"c2", b"d1", b"e1",
                                            b"e2"])
    client.close()
