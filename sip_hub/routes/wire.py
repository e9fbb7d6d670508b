"""FHIR on the wire: request bodies in, responses out, in JSON or XML.

Bodies are read raw and validated by us (never as FastAPI body models: a wrong-typed value
must be a 4xx OperationOutcome, not a 500).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import re
from collections.abc import Callable
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, TypeVar

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from ..access import Access
from ..auth import bearer
from ..errors import BadRequest, NotAcceptable, PayloadTooLarge, UnsupportedMediaType
from ..fhir import exact, models, validation
from ..fhir.patch import MEDIA_TYPE as PATCH
from ..fhir.dates import from_us
from ..fhir.outcome import information
from ..interactions import Context, Result, etag, location, not_modified

JSON = "application/fhir+json"
XML = "application/fhir+xml"
_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir",
               "text/json"}
_XML_TYPES = {"application/fhir+xml", "application/xml", "application/xml+fhir", "text/xml"}
FHIR_TYPES = frozenset(_JSON_TYPES | _XML_TYPES)
_FORMAT_ALIASES = {"json": JSON, "xml": XML, **{t: JSON for t in _JSON_TYPES},
                   **{t: XML for t in _XML_TYPES}}


# Accept headers sent by most clients, answered without parsing them.
_COMMON_ACCEPT = {"": JSON, "*/*": JSON, JSON: JSON, "application/json": JSON, XML: XML}
# How specifically a range names a form (a FHIR type: 3): text/* asks for JSON alone.
_JSON_RANGES = {"*/*": 1, "application/*": 2, "text/*": 2}
_XML_RANGES = {"*/*": 1, "application/*": 2}

T = TypeVar("T")


async def in_thread(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Blocking work (a transaction) on one of the app's threads (``app.state.threads``, made
    by the lifespan; ``SIP_HUB_THREADS`` of them), in the caller's context. A plain executor
    hop: Starlette's ``run_in_threadpool`` (anyio's ``to_thread``) cost a tenth of a point
    read on PostgreSQL."""
    pool = getattr(request.app.state, "threads", None)
    if pool is None:  # the app's lifespan has not run
        return await run_in_threadpool(fn, *args, **kwargs)
    call = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(pool, call)


def _media(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


# FHIR's fhirVersion media-type parameter (http.html#version-parameter): the versions this
# hub speaks (R4); a media type asking for another is not acceptable.
_FHIR_VERSIONS = frozenset({"4.0", "4.0.1"})


def _other_fhir_version(params: list[str]) -> bool:
    return any(name.strip().lower() == "fhirversion" and value.strip().strip('"')
               not in _FHIR_VERSIONS for name, _, value in (p.partition("=") for p in params))


def accepted(accept: str) -> list[tuple[str, float]]:
    """An ``Accept`` header's media types (lower case) with their q-values, in its order
    (RFC 9110 12.5.1: names and types are case-insensitive; a q that cannot be read or lies
    outside 0..1 counts as 0, not acceptable, as does a FHIR version other than R4's)."""
    out = []
    for part in accept.split(","):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if _other_fhir_version(params):
            q = 0.0
        out.append((media.lower(), q if 0.0 <= q <= 1.0 else 0.0))
    return out


def response_format(request: Request) -> str:
    """JSON or XML, from ``_format`` first, then ``Accept``; 406 when neither can be served."""
    fmt = request.query_params.get("_format")
    if fmt:
        # A media type's parameters (FHIR's fhirVersion, a charset) as ``Accept``'s are;
        # a "+" sent unescaped arrives as a space.
        chosen = _FORMAT_ALIASES.get(_media(fmt).replace(" ", "+"))
        if chosen is None:
            raise NotAcceptable(f"_format '{fmt}' is not supported; use json or xml")
        if _other_fhir_version(fmt.split(";")[1:]):
            raise NotAcceptable(f"_format '{fmt}' asks for a FHIR version this server does not "
                                "speak: it speaks FHIR R4 (4.0.1)")
        return chosen
    accept = request.headers.get("accept", "")
    common = _COMMON_ACCEPT.get(accept)
    if common is not None:
        return common
    if not accept.strip():
        return JSON
    # RFC 9110 12.5.1: each form's q is that of the most specific range that names it (the
    # highest of equally specific ones): a wildcard does not lift a type refused with q=0.
    # The higher q > 0 is served; on a tie the one whose range comes first (JSON when one
    # range names both).
    best = {JSON: (0, 0.0, 0), XML: (0, 0.0, 0)}  # form: (specificity, q, -position)
    for i, (media, q) in enumerate(accepted(accept)):
        for fmt, specific in ((JSON, 3 if media in _JSON_TYPES else _JSON_RANGES.get(media)),
                              (XML, 3 if media in _XML_TYPES else _XML_RANGES.get(media))):
            if specific and (specific, q) > best[fmt][:2]:
                best[fmt] = (specific, q, -i)
    json_q, xml_q = best[JSON][1:], best[XML][1:]
    if max(json_q[0], xml_q[0]) > 0:
        return JSON if json_q >= xml_q else XML
    raise NotAcceptable(f"Cannot answer in any of '{accept}'; this server speaks "
                        f"{JSON} and {XML}, FHIR R4 (fhirVersion=4.0)")


async def read_raw(request: Request, max_bytes: int) -> bytes:
    """The request's body, a 413 as soon as it is known to pass ``max_bytes`` (by its
    Content-Length, else while it streams in). A body in a content coding (Content-Encoding:
    gzip) is a 415 that says to send it uncoded (RFC 9110 12.5.3): the hub undoes none, and
    read as it came a gzip body was a misleading 'Malformed JSON' and one labelled br was
    stored as if plain. A body whose Content-Type declares another FHIR version
    (``fhirVersion=3.0``, STU3; ``5.0``, R5) is a 415 too (FHIR http.html#version-parameter):
    read as R4 it was stored misread, the versions' elements meaning different things."""
    ctype = request.headers.get("content-type", "")
    if _other_fhir_version(ctype.split(";")[1:]):
        raise UnsupportedMediaType(f"Content-Type '{ctype[:100]}' declares a FHIR version this "
                                   "server does not speak: it speaks FHIR R4; send the body "
                                   "as R4, with fhirVersion=4.0 or none")
    coding = request.headers.get("content-encoding")
    if coding is not None and any(c.strip().lower() not in ("", "identity")
                                  for c in coding.split(",")):
        raise UnsupportedMediaType(f"Content-Encoding '{coding}' is not supported: send the "
                                   "body without a content coding",
                                   headers={"Accept-Encoding": "identity"})
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"The body is larger than the limit of {max_bytes} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"The body is larger than the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_patch(request: Request, max_bytes: int) -> Any:
    """A PATCH's body: a JSON Patch document (its shape is checked by ``fhir.patch``)."""
    ctype = _media(request.headers.get("content-type", ""))
    if ctype != PATCH:
        said = f"'{ctype}'" if ctype else "missing"
        raise UnsupportedMediaType(
            f"Content-Type is {said}: a patch is a JSON Patch, sent as {PATCH} (FHIRPath "
            "Patch and XML Patch are not supported)")
    raw = await read_raw(request, max_bytes)
    if not raw.strip():
        raise BadRequest("The request has no body")
    return validation.read_json(raw)


async def read_body(request: Request, max_bytes: int) -> Any:
    raw = await read_raw(request, max_bytes)
    if not raw.strip():
        raise BadRequest("The request has no body")
    ctype = _media(request.headers.get("content-type", ""))
    if ctype in _JSON_TYPES:
        return validation.read_json(raw)
    if ctype in _XML_TYPES:
        return models.from_xml(raw)  # (which refuses what is nested too deep itself)
    if not ctype:
        raise UnsupportedMediaType(f"Content-Type is missing; send {JSON} or {XML}")
    raise UnsupportedMediaType(f"Content-Type '{ctype}' is not supported; send {JSON} or {XML}")


def _render(payload: dict[str, Any] | bytes, fmt: str, pretty: bool) -> bytes:
    if fmt == XML:
        data = exact.loads(payload if isinstance(payload, bytes) else exact.dumps(payload))
        return models.to_xml(data)
    if isinstance(payload, bytes) and not pretty:
        return payload
    opts = orjson.OPT_INDENT_2 if pretty else 0
    obj = exact.loads(payload) if isinstance(payload, bytes) else payload
    return exact.dumps(obj, option=opts)


def _vary_accept(headers: dict[str, str] | None) -> dict[str, str]:
    """``headers`` with Accept named in Vary: the same URL answers JSON or XML by Accept, and
    without it a cache (a proxy's, a browser's) could answer one client's Accept with the form
    another asked for (RFC 9110 12.5.5: an origin server SHOULD send Vary when it negotiates)."""
    out = dict(headers or {})
    key = next((k for k in out if k.lower() == "vary"), None)
    if key is None:
        out["Vary"] = "Accept"
    elif "accept" not in (v.strip().lower() for v in out[key].split(",")) and out[key] != "*":
        out[key] = f"{out[key]}, Accept"
    return out


def respond(request: Request, payload: dict[str, Any] | bytes | None, status: int = 200,
            headers: dict[str, str] | None = None, fmt: str | None = None) -> Response:
    fmt = fmt or response_format(request)
    pretty = request.query_params.get("_pretty") == "true"
    body = b"" if payload is None else _render(payload, fmt, pretty)
    return Response(body, status_code=status, headers=_vary_accept(headers),
                    media_type=f"{fmt}; charset=utf-8" if payload is not None else None)


def single(request: Request, name: str) -> str | None:
    """Query parameter ``name`` of an operation that takes it at most once; given twice, a 400
    (which one is meant would be a guess, and taking the last silently overrode the first)."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise BadRequest(f"{name} may be given once only", expression=name)
    return values[0] if values else None


def _split_unquoted(text: str, sep: str) -> list[str]:
    """``text`` split on ``sep`` where it is not within a quoted string (RFC 9110 5.6.4)."""
    parts, start, quoted, i = [], 0, False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and quoted:
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == sep and not quoted:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    parts.append(text[start:])
    return parts


def preferences(request: Request) -> dict[str, str]:
    """The client's preferences (RFC 7240: ``Prefer`` headers, each a comma-separated list of
    ``name[=value]``, parameters after ``;``), by name in lower case, each value unquoted
    (``handling="lenient"`` was taken for strict: the header was searched for a literal
    ``handling=lenient``, which also found it as another preference's parameter). Of a
    preference given twice the first counts (RFC 7240 section 2)."""
    out: dict[str, str] = {}
    for header in request.headers.getlist("prefer"):
        for item in _split_unquoted(header, ","):
            name, _, value = _split_unquoted(item, ";")[0].partition("=")
            name, value = name.strip().lower(), value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            if name:
                out.setdefault(name, value)
    return out


def prefer_return(request: Request) -> str:
    value = preferences(request).get("return")
    return value if value in ("minimal", "representation", "OperationOutcome") \
        else "representation"


def prefer_lenient(request: Request) -> bool:
    """``Prefer: handling=lenient`` (FHIR search: ignore unknown or unsupported parameters);
    ``strict``, the default, otherwise."""
    return preferences(request).get("handling") == "lenient"


def _not_modified(request: Request, tag: str, last_updated: int) -> bool:
    """A conditional read (``interactions.not_modified``) of a GET or HEAD."""
    if request.method not in ("GET", "HEAD"):
        return False
    since = request.headers.get("if-modified-since")
    try:
        when = parsedate_to_datetime(since) if since is not None else None
    except (TypeError, ValueError, IndexError):
        when = None  # (one that is not a date is ignored)
    return not_modified(request.headers.get("if-none-match"), when, tag, last_updated)


def result_response(request: Request, ctx: Context, result: Result, *,
                    write: bool = False) -> Response:
    fmt = response_format(request)
    headers = dict(result.headers)
    s = result.stored
    if s is not None:
        headers["ETag"] = etag(s)
        headers["Last-Modified"] = format_datetime(from_us(s.last_updated), usegmt=True)
        if not write and result.status == 200 and result.body is None and \
                _not_modified(request, headers["ETag"], s.last_updated):
            return respond(request, None, 304, headers, fmt)
        if write:
            headers["Location"] = location(ctx, s)
        else:
            headers["Content-Location"] = location(ctx, s)
    if write and s is not None:
        pref = prefer_return(request)
        if pref == "minimal":
            return respond(request, None, result.status, headers, fmt)
        if pref == "OperationOutcome":
            verb = "Created" if result.status == 201 else "Updated"
            return respond(request, information(f"{verb} {s.type}/{s.id} version {s.version_id}"),
                           result.status, headers, fmt)
    payload: dict[str, Any] | bytes | None = result.body if result.body is not None else (
        s.content if s is not None else None)
    return respond(request, payload, result.status, headers, fmt)


def context(request: Request, *, public: bool = False) -> Context:
    """The interaction context of a request; authenticates the caller unless ``public``."""
    state = request.app.state
    settings = state.settings
    base = settings.public_base + "/fhir"  # (never from the request's Host: see public_base)
    # (start refuses a default above the maximum; Settings changed in code may still hold one)
    page = min(settings.default_page_size, settings.max_page_size)
    if public:
        return Context(base, page, settings.max_page_size, max_bytes=settings.max_body_bytes)
    authorization = request.headers.getlist("authorization")
    if len(authorization) > 1:  # (the first one alone counted: which one is meant is a guess)
        raise BadRequest("Send one Authorization header, not several")
    principal = state.tokens.verify(bearer(authorization[0] if authorization else None))
    messaging = getattr(state, "messaging", None)
    return Context(base, page, settings.max_page_size,
                   prefer_lenient(request), Access.for_principal(principal), state.audit,
                   messaging.emitter if messaging is not None else None,
                   max_bytes=settings.max_body_bytes)
