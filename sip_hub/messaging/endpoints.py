"""Where each organisation receives its messages: ``mappings/endpoints.json``.

The file (data, not code)::

    {"endpoints": [
      {"organization": "SE2120001637-SOC1",
       "url": "https://soc.example.se/fhir/$process-message",
       "timeoutSeconds": 10,
       "maxConcurrent": 4,
       "authorizationEnv": "SIP_HUB_ENDPOINT_AUTH_SOC1"}
    ]}

An organisation that takes its messages from the broker itself (RabbitMQ) has ``"queue":
true`` instead of a ``url``::

      {"organization": "SE2321000016-15CQ", "queue": true}

The delivery workers then hand each of its messages over to its own durable queue,
``<SIP_HUB_MESSAGE_QUEUE_PREFIX>.inbox.<HSA-id>`` (bound with ``inbox.<HSA-id>`` on the hub's
exchange), in order per SIP, and record it delivered once the broker confirms it: the message
Bundle as the body (``application/fhir+json``), MessageHeader.id as the AMQP ``message_id`` to
deduplicate on, the event code in the header ``sip-event``. What is handed over is delivered:
a consent withdrawn later cannot take it back (deliveries still waiting in the outbox are
withdrawn as for any organisation).

``organization`` is the HSA-id; ``url`` the organisation's FHIR ``$process-message``;
``timeoutSeconds`` overrides ``SIP_HUB_MESSAGE_TIMEOUT_SECONDS`` (both at most 3600);
``maxConcurrent`` (1 to 32, default 4) is how many POSTs a delivery worker sends the endpoint
at once (different SIPs' messages; one SIP's go one after another), 1 for a system that takes
one request at a time;
``authorizationEnv`` names an environment variable holding the ``Authorization`` header value
to send (secrets never sit in the file).

Why a file and not ``Organization.endpoint``: where the hub sends personal data is operational
configuration the hub's operators own. An Organization is directory data that clients write,
so trusting its endpoint would let any client redirect another organisation's messages. For
the same reason an async request's ``response-url`` must lie on its sender's configured
endpoint (same scheme, host and port).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import orjson
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from ..errors import BadRequest
from ..identifiers import InvalidIdentifier, normalise_hsa_id
from .config import MAX_TIMEOUT_SECONDS
from .http import shown_url, url_problem


DEFAULT_CONCURRENT = 4  # POSTs at once to one endpoint, unless its entry says otherwise


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    organization: str
    url: str | None = None
    queue: bool = False
    timeout_seconds: float | None = Field(default=None, gt=0, le=MAX_TIMEOUT_SECONDS,
                                          alias="timeoutSeconds")
    max_concurrent: int = Field(default=DEFAULT_CONCURRENT, ge=1, le=32, alias="maxConcurrent")
    authorization_env: str | None = Field(default=None, alias="authorizationEnv")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        problem = url_problem(v) if v is not None else None
        if problem is not None:  # (pydantic does not show the value: it may be long)
            raise ValueError(f"must be an absolute http(s) URL in printable ASCII (a host "
                             f"name in its IDNA form, anything else percent-encoded): "
                             f"{shown_url(v)[:200]!r} is {problem}")
        return v

    @model_validator(mode="after")
    def _one_way(self) -> "_Entry":
        if (self.url is None) == (not self.queue):
            raise ValueError(f"organization {self.organization[:64]}: give either a url or "
                             '"queue": true (how it receives its messages)')
        return self


def _problems(exc: ValidationError) -> str:
    """A ValidationError on one line: where (``endpoints[0].url``) and what, each problem."""
    def where(loc: tuple[object, ...]) -> str:
        out = ""
        for part in loc:
            out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
        return out or "the file"

    return "; ".join(f"{where(e['loc'])}: {e['msg']}" for e in exc.errors()).replace("\n", " ")


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoints: list[_Entry] = []


@dataclass(frozen=True, slots=True)
class Endpoint:
    org: str
    url: str | None  # None: the organisation takes its messages from its queue
    timeout: float | None = None
    authorization_env: str | None = None
    max_concurrent: int = DEFAULT_CONCURRENT

    @property
    def queue(self) -> bool:
        return self.url is None

    def headers(self) -> dict[str, str]:
        value = os.environ.get(self.authorization_env, "") if self.authorization_env else ""
        return {"Authorization": value} if value else {}


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class Endpoints:
    def __init__(self, by_org: Mapping[str, Endpoint] | None = None,
                 source: Path | None = None) -> None:
        self._by_org = dict(by_org or {})
        self.source = source  # the file they were read from (None: not from a file)

    @classmethod
    def load(cls, path: Path | None) -> "Endpoints":
        """The endpoints in ``path``; none when there is no such file."""
        if path is None or not path.is_file():
            return cls(source=path)
        try:
            data = _File.model_validate(orjson.loads(path.read_bytes()))
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}: not a valid endpoints file: {exc}") from None
        except ValidationError as exc:  # one line, without pydantic's dump of the input
            raise ValueError(f"{path}: not a valid endpoints file: {_problems(exc)}") from None
        out: dict[str, Endpoint] = {}
        for e in data.endpoints:
            try:
                org = normalise_hsa_id(e.organization)
            except InvalidIdentifier as exc:
                raise ValueError(f"{path}: organization '{e.organization[:64]}' is not an "
                                 f"HSA-id: {exc}") from None
            # Two entries for one organisation (also spelt differently): which one wins would
            # be the file's order, and the other's address silently unused.
            if org in out:
                raise ValueError(f"{path}: organization {org} has more than one entry")
            # A variable named but not set sent every POST without its Authorization header:
            # refused by the receiver and dead-lettered, at the first message, not at start.
            if e.authorization_env is not None and not os.environ.get(e.authorization_env):
                raise ValueError(f"{path}: organization {org}: authorizationEnv names "
                                 f"{e.authorization_env[:64]}, which is not set (or empty)")
            out[org] = Endpoint(org, e.url, e.timeout_seconds, e.authorization_env,
                                e.max_concurrent)
        return cls(out, path)

    @property
    def orgs(self) -> frozenset[str]:
        return frozenset(self._by_org)

    @property
    def longest_timeout(self) -> float | None:
        """The longest timeout an endpoint sets for itself (None: none sets one)."""
        return max((e.timeout for e in self._by_org.values() if e.timeout), default=None)

    def get(self, org: str) -> Endpoint | None:
        return self._by_org.get(org)

    def address(self, org: str) -> str:
        """The address named in MessageHeader.destination.endpoint: the configured URL, or a
        logical address by HSA-id while the organisation has none."""
        found = self._by_org.get(org)
        return found.url if found and found.url else f"urn:sip-hub:organization:{org}"

    @property
    def queue_orgs(self) -> frozenset[str]:
        """The organisations that take their messages from their queues."""
        return frozenset(org for org, e in self._by_org.items() if e.queue)

    def check_response_url(self, org: str, url: str) -> None:
        """Refuse a response-url that is not on the sender's configured endpoint."""
        mine = self._by_org.get(org)
        if mine is not None and mine.url is None:
            raise BadRequest("Your organisation takes its messages from its queue, where the "
                             "response goes: a response-url is for an organisation with a "
                             "message endpoint", expression="response-url")
        try:
            theirs = _origin(url)
        except ValueError:  # (urlsplit: an unclosed IPv6 bracket, "http://[")
            theirs = None
        if mine is None or theirs is None or _origin(mine.url or "") != theirs or \
                theirs[0] not in ("http", "https"):
            raise BadRequest("response-url must be on your organisation's configured message "
                             "endpoint (same scheme, host and port)", expression="response-url")
