"""The organisations' message endpoint for the messaging benchmark, in its own process.

Run by ``bench/messaging.py`` as ``python bench/receiver.py PORT``; not meant to be run by
hand. One aiohttp server (on uvloop when available) on 127.0.0.1:PORT stands in for every
receiving organisation: ``POST /<HSA-id>/$process-message`` records when the message arrived
(``time.monotonic()``: the system-wide monotonic clock, comparable with the load client's),
for which organisation, its MessageHeader.id and the token naming the load client's message
(``bm`` and 32 hex digits, which the load client writes into the resource the message
changes), and answers 200 with an ``ok`` acknowledgement, as a fast reliable receiver would.
A MessageHeader.id an organisation has seen before is a duplicate: counted, answered ok
again, not recorded twice.

``GET /_receipts?since=N`` returns the receipts from the N-th on (``[[org, token, t], ...]``)
with the totals, so that the load client fetches each receipt once.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from pathlib import Path

import orjson
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import runner_factory  # noqa: E402

from sip_hub.messaging import builder  # noqa: E402

_REQUEST, _OWN, _BUNDLE = b"@REQUEST-ID@", b"@RESPONSE-ID@", b"@BUNDLE-ID@"


class Receipts:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str | None, float]] = []
        self.seen: set[tuple[str, str]] = set()
        self.duplicates = 0
        self.bad = 0
        self.answered = 0
        # One acknowledgement, serialised once; each answer fills in the message it answers
        # and ids of its own.
        ack = builder.response(_REQUEST.decode(), "ok", fhir_base="http://127.0.0.1/fhir",
                               destination=builder.Party("SE2120000142-SOC1", "urn:bench"))
        self.template = (orjson.dumps(ack)
                         .replace(ack["entry"][0]["resource"]["id"].encode(), _OWN)
                         .replace(ack["id"].encode(), _BUNDLE))

    def answer(self, header_id: str) -> bytes:
        self.answered += 1
        n = f"{self.answered:012x}".encode()
        return (self.template.replace(_REQUEST, header_id.encode())
                .replace(_OWN, b"00000000-0000-4000-8000-" + n)
                .replace(_BUNDLE, b"00000000-0000-4000-9000-" + n))


_TOKEN = re.compile(rb"bm[0-9a-f]{32}")


def _token_of(body: bytes) -> str | None:
    found = _TOKEN.search(body)
    return found.group().decode() if found else None


def make_app() -> web.Application:
    receipts = Receipts()

    async def process_message(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.monotonic()
        org = request.match_info["org"]
        try:
            header = orjson.loads(body)["entry"][0]["resource"]
            header_id = str(header["id"])
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            receipts.bad += 1
            return web.Response(status=400, text="not a FHIR message")
        if (org, header_id) in receipts.seen:
            receipts.duplicates += 1
        else:
            receipts.seen.add((org, header_id))
            receipts.rows.append((org, _token_of(body), now))
        return web.Response(body=receipts.answer(header_id),
                            content_type="application/fhir+json")

    async def since(request: web.Request) -> web.Response:
        start = int(request.query.get("since", "0"))
        return web.Response(body=orjson.dumps({
            "total": len(receipts.rows), "duplicates": receipts.duplicates,
            "bad": receipts.bad, "rows": receipts.rows[start:]}),
            content_type="application/json")

    app = web.Application(client_max_size=16 * 2**20)
    app.router.add_post("/{org}/$process-message", process_message)
    app.router.add_get("/_receipts", since)
    return app


async def serve(port: int) -> None:
    runner = web.AppRunner(make_app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print(f"receiver listening on 127.0.0.1:{port}", file=sys.stderr, flush=True)
    await asyncio.Event().wait()  # until the benchmark stops the process


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=runner_factory()) as runner:
        runner.run(serve(int(sys.argv[1])))
