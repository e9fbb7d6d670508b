"""``transaction`` and ``batch`` Bundles posted to the FHIR base.

A transaction is all or nothing: one database transaction, ``urn:uuid:`` (and other fullUrl)
references resolved to the ids the hub assigns, entries processed in the order the spec
gives (DELETE, POST, PUT, GET) and answered in the order they came.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import count
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson

from . import cpu, interactions as ix, logs, process as sp
from .errors import BadRequest, InternalError, PayloadTooLarge, SipHubError
from .fhir import exact, models, patch as json_patch
from .fhir.dates import now_utc
from .fhir.indexing import reference_holders
from .fhir.outcome import from_error, information
from .fhir.search_params import supported
from .fhir.validation import CONDITIONAL_REF, ID_RE
from .service import Prepared, Prevalidated, Resolve, check_type, prevalidate, tx_resolver
from .store import Store, Stored, Tx
from .ids import uuid7

log = logging.getLogger("sip_hub.bundles")
# FHIR's processing order of a transaction's entries (http.html#trules)
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3}
_WRITES = frozenset({"POST", "PUT", "PATCH"})
_BY_ID = ("PUT", "PATCH", "DELETE")  # (the methods that write a resource named by its id)
_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


@dataclass(slots=True)
class _Entry:
    index: int
    method: str
    rtype: str
    rid: str | None
    vid: str | None
    query: list[tuple[str, str]]
    has_query: bool
    resource: Any
    full_url: str | None
    if_none_exist: str | None
    if_match: str | None
    patch: Any = None  # a PATCH's JSON Patch (its resource, a Binary, is not written)
    # A GET's conditional read (``request.ifNoneMatch``, ``request.ifModifiedSince``).
    if_none_match: str | None = None
    if_modified_since: str | None = None


def _parse_url(url: str, ctx: ix.Context, where: str) -> tuple[str, str | None, str | None,
                                                                list[tuple[str, str]], bool]:
    if url.startswith(ctx.base_url + "/"):
        url = url[len(ctx.base_url) + 1:]
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket ("//[/Patient"): the client's URL, not ours
        raise BadRequest(f"{where}.request.url is not a URL: '{url[:80]}'",
                         expression=f"{where}.request.url") from None
    if parts.scheme or parts.netloc:
        raise BadRequest(f"{where}.request.url must be relative to this server: '{url}'")
    segs = [s for s in parts.path.split("/") if s]
    if not segs:
        raise BadRequest(f"{where}.request.url '{url}' names no resource type")
    rtype, rid, vid = segs[0], None, None
    # A history: the system's (``_history``), a type's, a resource's (``vid`` ``""``).
    if segs == ["_history"]:
        rtype, vid = "", ""
    elif len(segs) == 2 and segs[1] == "_history":
        vid = ""
    elif len(segs) >= 2:
        rid = segs[1]
    if len(segs) == 4 and segs[2] == "_history":
        vid = segs[3]
    elif len(segs) == 3 and segs[2] == "_history":
        vid = ""
    elif len(segs) > 2:
        raise BadRequest(f"{where}.request.url '{url}' is not supported in a Bundle")
    return rtype, rid, vid, parse_qsl(parts.query, keep_blank_values=True), bool(parts.query)


# The elements FHIR R4 defines for a Bundle entry and its request (a primitive's extension
# sibling too: ``_fullUrl``); any other is the entry's fault (a batch answers it alone).
_ENTRY_ELEMENTS = frozenset({"id", "extension", "modifierExtension", "link", "fullUrl",
                             "_fullUrl", "resource", "search", "request", "response"})
_REQUEST_ELEMENTS = frozenset({"id", "extension", "modifierExtension"} | {
    n for name in ("method", "url", "ifNoneMatch", "ifModifiedSince", "ifMatch", "ifNoneExist")
    for n in (name, "_" + name)})


def _known_elements(value: Any, known: frozenset[str], where: str) -> None:
    if isinstance(value, dict) and not value.keys() <= known:
        name = sorted(set(value) - known)[0]
        raise BadRequest(f"{where}.{name[:40]} is not an element FHIR R4 defines there",
                         expression=f"{where}.{name[:40]}")


def _entries(bundle: dict[str, Any], ctx: ix.Context, first: int = 0,
             numbers: Sequence[int] | None = None) -> list[_Entry]:
    """The entries, numbered from ``first`` (a batch reads its entries one at a time), or
    by ``numbers``, one per entry in order, increasing (a message's entries, see
    ``transaction_in``)."""
    out = []
    listed = bundle.get("entry") or []
    if numbers is not None and (len(numbers) != len(listed) or
                                list(numbers) != sorted(set(numbers))):
        raise ValueError("numbers: one increasing number per entry")
    for i, e in zip(numbers if numbers is not None else count(first), listed):
        where = f"Bundle.entry[{i}]"
        req = e.get("request") if isinstance(e, dict) else None
        _known_elements(e, _ENTRY_ELEMENTS, where)
        _known_elements(req, _REQUEST_ELEMENTS, f"{where}.request")
        if not isinstance(req, dict) or not isinstance(req.get("url"), str):
            raise BadRequest(f"{where}.request with method and url is required",
                             expression=f"{where}.request")
        method = str(req.get("method", "")).upper()
        if method not in _ORDER:
            raise BadRequest(f"{where}.request.method '{req.get('method')}' is not supported",
                             expression=f"{where}.request.method")
        rtype, rid, vid, query, has_query = _parse_url(req["url"], ctx, where)
        if vid == "" and method != "GET":
            raise BadRequest(f"{where}.request.url: a history ('{req['url'][:80]}') is read "
                             f"with GET, not {method}", expression=f"{where}.request.url")
        if vid is not None and method != "GET":
            # (It was applied to the resource as a whole: a DELETE of one version deleted all.)
            raise BadRequest(f"{where}.request.url: a {method} of one version "
                             f"('{req['url'][:80]}') is not supported; name the resource "
                             "without _history", expression=f"{where}.request.url")
        resource, ops = e.get("resource"), None
        if method in ("POST", "PUT") and not isinstance(resource, dict):
            raise BadRequest(f"{where}: {method} needs a resource", expression=where)
        if method == "PATCH":
            if rid is None:
                raise BadRequest(f"{where}: conditional patch is not supported; name the "
                                 "resource by its id", expression=f"{where}.request.url")
            try:
                resource, ops = None, json_patch.from_binary(resource)
            except SipHubError as err:  # (named as the entry's resource, with its status)
                raise type(err)(f"{where}: {err.diagnostics}",
                                expression=f"{where}.resource") from None
        out.append(_Entry(i, method, rtype, rid, vid, query, has_query, resource,
                          _text(e, "fullUrl", where),
                          _text(req, "ifNoneExist", f"{where}.request"),
                          _text(req, "ifMatch", f"{where}.request"), ops,
                          _text(req, "ifNoneMatch", f"{where}.request"),
                          _instant(req, "ifModifiedSince", f"{where}.request")))
    return out


def _text(node: dict[str, Any], key: str, where: str) -> str | None:
    """An optional string element of an entry (a uri or string in FHIR): anything else is the
    client's error, not a key the transaction can map or a header it can parse."""
    value = node.get(key)
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"{where}.{key} must be a string", expression=f"{where}.{key}")


def _instant(node: dict[str, Any], key: str, where: str) -> str | None:
    """An optional instant of an entry's request (``ifModifiedSince``), with its zone."""
    value = _text(node, key, where)
    if value is not None:
        try:
            when = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            when = None
        if when is None or when.tzinfo is None:
            raise BadRequest(f"{where}.{key} must be an instant with its time zone, like "
                             f"2026-01-31T12:00:00Z, not '{value[:40]}'",
                             expression=f"{where}.{key}")
    return value


def rewrite_refs(node: Any, mapping: dict[str, str]) -> Any:
    """``node`` with the links ``mapping`` names (an entry's fullUrl: the resource it became)
    replaced wherever FHIR's transaction rules ask (http.html#trules): a reference, any
    other element whose value is one (the uri, url, oid and uuid types: a string that is a
    fullUrl is one of those) and the narrative's ``<a href>`` and ``<img src>``. A valueUri
    or a link kept the ``urn:uuid:``, which names nothing once stored."""
    if isinstance(node, dict):
        return {k: (_rewrite_div(v, mapping) if k == "div" else mapping.get(v, v))
                if isinstance(v, str) else rewrite_refs(v, mapping) for k, v in node.items()}
    if isinstance(node, list):
        return [mapping.get(v, v) if isinstance(v, str) else rewrite_refs(v, mapping)
                for v in node]
    return node


_LINK_ATTR = re.compile(r"""\b(href|src)=(["'])(.*?)\2""", re.S)


def _rewrite_div(div: str, mapping: dict[str, str]) -> str:
    """A narrative's links to the entries (``href``, ``src``) made links to what they
    became."""
    if not mapping or ("href=" not in div and "src=" not in div):
        return div
    return _LINK_ATTR.sub(lambda m: f"{m[1]}={m[2]}{mapping.get(m[3], m[3])}{m[2]}", div)


def _maps(mapping: dict[str, str], ctx: ix.Context, full_url: str, target: str) -> None:
    """Map an entry's ``full_url`` to ``target``; a RESTful one on the hub's base
    (``[base]/Patient/temp1``) also as the relative reference that names it there
    (``Patient/temp1``: bundle.html#references resolves it against that base)."""
    mapping[full_url] = target
    if full_url.startswith(ctx.base_url + "/"):
        mapping.setdefault(full_url[len(ctx.base_url) + 1:], target)


def _distinct_full_urls(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``entries`` without a ``fullUrl`` that an earlier entry gives with the same version
    (bdl-7: two entries answering with one version of a resource, e.g. two reads of it, made
    a Bundle that validators refuse); the later entry keeps its response and resource."""
    seen: set[tuple[str, str | None]] = set()
    for entry in entries:
        url = entry.get("fullUrl")
        if url is None:
            continue
        key = (url, entry["response"].get("etag") if "resource" in entry else None)
        if key in seen:
            del entry["fullUrl"]
        seen.add(key)
    return entries


def _response_entry(ctx: ix.Context, result: ix.Result, prefer: str,
                    e: _Entry | None = None) -> dict[str, Any]:
    """An entry's answer to its request ``e`` (None: a GET without conditions): a create's
    or update's names the version it made or found, as the interaction's Location does
    outside a Bundle, and answers as ``prefer`` asks (``Prefer: return``, which FHIR applies
    to each write entry: minimal, no resource; OperationOutcome, one in its outcome); a
    read's carries its resource, or is a 304 when the entry's conditions find the client's
    copy current (as a conditional read outside a Bundle)."""
    method = e.method if e is not None else "GET"
    resp: dict[str, Any] = {"status": _STATUS_TEXT.get(result.status, str(result.status))}
    entry: dict[str, Any] = {}
    s = result.stored
    if s is not None:
        entry["fullUrl"] = f"{ctx.base_url}/{s.type}/{s.id}"
        resp["etag"] = ix.etag(s)
        resp["lastModified"] = s.last_updated_instant
        write = method in _WRITES
        if result.status == 201 or (result.status == 200 and write):
            resp["location"] = ix.location(ctx, s)
        if write and prefer == "OperationOutcome":
            verb = "Created" if result.status == 201 else "Updated"
            resp["outcome"] = information(f"{verb} {s.type}/{s.id} version {s.version_id}")
        elif write and prefer == "minimal" or s.content is None:
            pass
        elif method == "GET" and e is not None and result.status == 200 and \
                result.body is None and _not_modified(e, s):
            resp["status"] = "304 Not Modified"
        else:  # (a read's subset: its body)
            entry["resource"] = result.body if result.body is not None else \
                orjson.Fragment(s.content)
    elif result.body is not None:
        if result.body.get("resourceType") == "OperationOutcome":
            resp["outcome"] = result.body
        else:
            entry["resource"] = result.body
    entry["response"] = resp
    return entry


def _not_modified(e: _Entry, s: Stored) -> bool:
    """A GET entry's conditional read (``ix.not_modified``) of ``s``."""
    since = e.if_modified_since
    return ix.not_modified(e.if_none_match, datetime.fromisoformat(
        since.replace("Z", "+00:00")) if since is not None else None, ix.etag(s),
        s.last_updated)


def _run(tx: Tx, ctx: ix.Context, e: _Entry, resolve: Resolve | None = None) -> ix.Result:
    if e.rtype == "metadata":  # (the base's path, not a type: 'metadata is read with GET')
        raise BadRequest(f"Bundle.entry[{e.index}]: the CapabilityStatement is read at "
                         "[base]/metadata, not within a Bundle",
                         expression=f"Bundle.entry[{e.index}].request.url")
    if e.method == "GET":
        if e.vid == "":  # (a history, answered and audited as outside a Bundle)
            return ix.history(tx, ctx, e.query, e.rtype or None, e.rid)
        if e.rid is None:
            return ix.search(tx, ctx, e.rtype, e.query)
        if e.vid:
            return ix.vread(tx, ctx, e.rtype, e.rid, e.vid, e.query)
        return ix.read(tx, ctx, e.rtype, e.rid, e.query)
    if e.method == "DELETE":
        if e.rid is None:
            raise BadRequest(f"Bundle.entry[{e.index}]: conditional delete is not supported")
        return ix.delete(tx, ctx, e.rtype, e.rid, if_match=e.if_match)
    if e.method == "PATCH":
        assert e.rid is not None  # (_entries refuses a conditional one)
        return ix.patch(tx, ctx, e.rtype, e.rid, e.patch, if_match=e.if_match)
    if e.method == "POST":
        if e.rid is not None:
            raise BadRequest(f"Bundle.entry[{e.index}]: POST goes to the type, not an instance")
        return ix.create(tx, ctx, e.rtype, e.resource, if_none_exist=e.if_none_exist,
                         resolve=resolve)
    if e.rid is None:
        if not e.has_query:
            raise BadRequest(f"Bundle.entry[{e.index}]: PUT needs an id or search criteria")
        return ix.conditional_update(tx, ctx, e.rtype, e.query, e.resource,
                                     if_match=e.if_match, resolve=resolve)
    return ix.update(tx, ctx, e.rtype, e.rid, e.resource, if_match=e.if_match,
                     resolve=resolve)


def _with_entry(err: SipHubError, index: int) -> SipHubError:
    """Name the failing entry in the error so the client knows which one to fix: in the
    diagnostics, and in each expression, a FHIRPath into the Bundle sent (``Patient.gender``
    was as true of any other Patient entry)."""
    prefix = f"Bundle.entry[{index}]"
    err.diagnostics = f"{prefix}: {err.diagnostics}"
    for i, issue in enumerate(err.issues):
        err.issues[i] = type(issue)(issue.code, f"{prefix}: {issue.diagnostics}",
                                    tuple(_in_entry(x, prefix) for x in issue.expression),
                                    issue.severity)
    return err


# An expression into a resource (``Patient.gender``), as the write pipeline names them.
_RESOURCE_PATH = re.compile(r"[A-Z][A-Za-z]*(?=[.\[]|$)")


def _in_entry(expression: str, prefix: str) -> str:
    """``expression`` as a FHIRPath into the Bundle: one into the entry's resource under
    its ``resource``; one into the Bundle already (``Bundle.entry[n].request.url``) as it
    is; anything else (a search parameter of the entry's URL or criteria) under its
    ``request``."""
    if expression.startswith("Bundle.entry["):
        return expression
    m = _RESOURCE_PATH.match(expression)
    if m is not None:
        return f"{prefix}.resource{expression[m.end():]}"
    return f"{prefix}.request"


def _criteria_keys(ctx: ix.Context, entries: list[_Entry]) -> dict[int, str]:
    """The lock key of each conditional create's and update's criteria (``ix.match_key``),
    by entry index; criteria it refuses have none (the entry's match refuses them)."""
    keys = {}
    for e in entries:
        if e.method == "POST" and e.if_none_exist or e.method == "PUT" and e.has_query:
            key = ix.match_key(e.rtype, e.if_none_exist if e.method == "POST" else e.query,
                               ctx.base_url)
            if key is not None:
                keys[e.index] = key
    return keys


def _each_once(entries: list[_Entry], criteria: dict[int, str]) -> None:
    """FHIR's transaction processing: entries whose resource identities overlap fail the
    transaction. Two PUTs (or a PUT and a DELETE) of one resource were both applied, in
    the Bundle's processing order: the outcome was whichever came last. Two conditional
    creates (or updates) on the same criteria both found nothing and both created: two
    resources where the criteria said one, and every later conditional create a 412."""
    seen: dict[tuple[str, str], int] = {}
    for e in entries:
        if e.method in _BY_ID and e.rid:
            first = seen.setdefault((e.rtype, e.rid), e.index)
            if first != e.index:
                raise _with_entry(BadRequest(
                    f"{e.rtype}/{e.rid} is written by Bundle.entry[{first}] too: a transaction "
                    "writes each resource once"), e.index)
        elif e.index in criteria:
            first = seen.setdefault(("?", criteria[e.index]), e.index)
            if first != e.index:
                raise _with_entry(BadRequest(
                    f"Bundle.entry[{first}] creates or updates the {e.rtype} of the same "
                    "criteria: a transaction writes each resource once"), e.index)


def _resolved_once(tx: Tx, ctx: ix.Context, entries: list[_Entry]) -> None:
    """``_each_once`` for what conditional updates write, once their criteria are locked
    (what they match stays so until they are written): FHIR counts 'resolved identities
    from conditional update' among those that may not overlap. A PUT by id and a conditional
    update whose criteria matched its resource were both applied, the last one winning.
    Only a type that several entries write is matched here: one alone overlaps nothing."""
    writes = [e for e in entries
              if e.method in _BY_ID and e.rid or e.method == "PUT" and e.has_query]
    shared = {t for t, n in Counter(e.rtype for e in writes).items() if n > 1}
    seen: dict[tuple[str, str], _Entry] = {}
    matched: dict[int, Stored] = {}  # (what criteria matched: a refusal names it)
    for e in writes:
        if e.rtype not in shared:
            continue
        # A conditional update with an id in its body writes that id or fails.
        rid = e.rid or _body_id(e.resource)
        if rid is None:
            found = _conditional_match(tx, ctx, e)
            if found is None:
                continue  # (it creates a resource of its own)
            rid, matched[e.index] = found.id, found
        first = seen.setdefault((e.rtype, rid), e)
        if first is e:
            continue
        if e.index in matched:
            said = f"its criteria match {e.rtype}/{rid}, which Bundle.entry[{first.index}] " \
                "writes too"
        else:
            said = f"{e.rtype}/{rid} is written by Bundle.entry[{first.index}] too" + \
                (", whose criteria match it" if first.index in matched else "")
        err = _with_entry(BadRequest(f"{said}: a transaction writes each resource once"),
                          e.index)
        # The refusal tells which resource the criteria match (a personnummer's Patient):
        # a search of personal data, in the person's access log (as ``ix.several``'s).
        for w in (first, e):
            if w.index in matched:
                ctx.record("search-type", [matched[w.index]], outcome="4", rtype=w.rtype,
                           query=urlencode(w.query), detail=err.diagnostics)
        raise err


def _full_urls_once(entries: list[_Entry]) -> None:
    """bdl-7: a fullUrl names one entry; a reference to one given twice meant either."""
    seen: dict[str, int] = {}
    for e in entries:
        if e.full_url:
            first = seen.setdefault(e.full_url, e.index)
            if first != e.index:
                raise _with_entry(BadRequest(
                    f"fullUrl '{e.full_url[:80]}' is the fullUrl of Bundle.entry[{first}] "
                    "too: a fullUrl names one entry", expression=f"Bundle.entry[{e.index}]"
                    ".fullUrl"), e.index)


# A conditional reference in a resource as orjson writes it: most resources have none, which
# one serialisation and a scan tell in a few microseconds, where the walk took tens.
_HAS_CONDITIONAL_REF = re.compile(b'"reference":"' + CONDITIONAL_REF.pattern.encode(), re.S)


def _resolve_conditional(tx: Tx, ctx: ix.Context, entries: list[_Entry],
                         mapping: dict[str, str]) -> None:
    """FHIR's conditional references (``Patient?identifier=...``): each made a reference to
    the one resource its criteria match among what the caller may see; none or several fail
    the transaction (412). They were stored as they came, outside every compartment. A
    PATCH's are resolved too: its references are rewritten as a resource's are."""
    for e in entries:
        try:
            for ref in _written_refs(e):
                if ref in mapping or not CONDITIONAL_REF.match(ref):
                    continue
                rtype, _, criteria = ref.partition("?")
                check_type(rtype)
                ctx.access.check(rtype, "s")
                found = ix.match(tx, ctx, rtype, criteria)
                if len(found) != 1:
                    err = ix.PreconditionFailed(
                        f"The conditional reference '{ref[:80]}' matches "
                        f"{'no' if not found else 'more than one'} {rtype}: it must match "
                        "exactly one")
                    raise ix.several(ctx, rtype, criteria, found, err) if found else err
                # The caller learns which resource its criteria name (a personnummer's
                # Patient): a search of personal data, in the person's access log.
                ctx.record("search-type", found, rtype=rtype, query=criteria)
                mapping[ref] = f"{rtype}/{found[0].id}"
        except SipHubError as err:
            raise _with_entry(err, e.index) from None


def _written_refs(e: _Entry) -> list[str]:
    """The references that ``e`` writes and ``_resolve_conditional`` may have to resolve:
    its resource's, unless it was resolved before the transaction (a Prepared one) or holds
    no conditional reference, or its PATCH's."""
    if e.patch is not None:
        return _patch_refs(e.patch)
    if not isinstance(e.resource, dict) or isinstance(e.resource, Prepared) or \
            not _HAS_CONDITIONAL_REF.search(exact.dumps(e.resource)):
        return []
    return [h["reference"] for h in reference_holders(e.resource)]


def _writes_reference(op: Any) -> bool:
    """A PATCH operation whose value is a reference itself (its path ends in /reference)."""
    return isinstance(op, dict) and isinstance(op.get("value"), str) and \
        isinstance(op.get("path"), str) and op["path"].endswith("/reference")


def _rewrite_patch(ops: Any, mapping: dict[str, str]) -> Any:
    """A PATCH's operations with their references to the Bundle's entries rewritten: in a
    value that holds references, and a value that is one."""
    if not isinstance(ops, list):
        return ops  # (refused by the patch's own checks)
    return [{**op, "value": mapping.get(op["value"], op["value"])} if _writes_reference(op)
            else rewrite_refs(op, mapping) for op in ops]


def _patch_refs(ops: Any) -> list[str]:
    """The reference strings a PATCH's operations write (those _rewrite_patch rewrites)."""
    out: list[str] = []
    for op in ops if isinstance(ops, list) else ():
        if _writes_reference(op):
            out.append(op["value"])
        elif isinstance(op, dict):
            out += [h["reference"] for h in reference_holders(op.get("value"))]
    return out


def _placeholders_resolved(entries: list[_Entry], why: str = "names no resource the "
                           "transaction creates or updates (no such fullUrl)") -> None:
    """A ``urn:uuid:`` reference names an entry of the Bundle by its fullUrl; one left once
    every entry's is replaced names none (a typo, or a DELETE's), and was stored as it came.
    ``why``: what the refusal tells the client."""
    for e in entries:
        if isinstance(e.resource, dict) or e.patch is not None:
            refs = [h["reference"] for h in reference_holders(e.resource)] \
                if isinstance(e.resource, dict) else _patch_refs(e.patch)
            for ref in refs:
                if isinstance(ref, str) and ref.startswith("urn:uuid:"):
                    raise _with_entry(BadRequest(f"The reference '{ref[:80]}' {why}"),
                                      e.index)


# In a batch a placeholder names nothing: each entry stands alone (FHIR: no dependencies
# between a batch's entries). Stored as it came, it made a plan about no one, outside every
# patient compartment.
_IN_A_BATCH = ("names another entry by its fullUrl, which a batch does not resolve: its "
               "entries stand alone. Send a transaction, or name the resource Type/id")


def _lock_keys(entries: list[_Entry], criteria: dict[int, str]) -> list[str]:
    """The keys of what ``entries`` write by id and of the criteria they match on."""
    keys: list[str] = []
    for e in entries:
        if not supported(e.rtype):
            continue
        if e.method in _BY_ID and e.rid:
            if ID_RE.fullmatch(e.rid):
                keys.append(f"write:{e.rtype}/{e.rid}")
        elif e.index in criteria:
            keys.append(criteria[e.index])
    return keys


def transaction_in(tx: Tx, ctx: ix.Context, bundle: dict[str, Any], prefer: str, *,
                   placeholders: bool = False, numbers: Sequence[int] | None = None) -> dict:
    """A transaction Bundle inside the caller's database transaction (messages use this, so
    their effects commit with the message's cache entry and notifications). ``placeholders``:
    refuse a ``urn:uuid:`` reference no entry resolves (a client's Bundle, not a message's
    entries, which hold references of their own). ``numbers``: the index each entry is
    named by in errors (``Bundle.entry[n]``), one per entry, increasing; by default its
    place in ``bundle`` (a message names the entries of the message it was built from)."""
    # Notifications are emitted once every entry is written (``_notify``).
    ctx = replace(ctx, within=tx, approvals=sp.Approvals(),
                  changes=[] if ctx.messaging is not None else None)
    entries = _entries(bundle, ctx, numbers=numbers)
    criteria = _criteria_keys(ctx, entries)
    _each_once(entries, criteria)
    _full_urls_once(entries)
    # What the entries write by id, and the criteria of their conditional creates and
    # updates, are locked up front, in one order: two Bundles writing the same resources in
    # different entry orders would otherwise each lock one the other waits for (a deadlock,
    # which PostgreSQL breaks by failing one of them). Only well-formed keys (PostgreSQL
    # refuses a NUL): a bad entry is refused where it is processed.
    tx.serialise_all(_lock_keys(entries, criteria))
    responses: dict[int, dict[str, Any]] = {}
    # FHIR processes the DELETEs first: what the other entries' criteria (conditional
    # creates, updates and references) match is what is left after them. Matched before,
    # a conditional create found, and a plan referred to, a Patient the transaction deleted.
    for e in entries:
        if e.method == "DELETE":
            try:
                responses[e.index] = _response_entry(ctx, _run(tx, ctx, e), prefer, e)
            except SipHubError as err:
                raise _with_entry(err, e.index) from None
    _resolved_once(tx, ctx, entries)
    # Assign ids (or find the existing resource for a conditional create) before any
    # write, so every reference between entries can be rewritten first.
    mapping: dict[str, str] = {}
    assigned: dict[int, str] = {}
    for e in entries:
        if e.method == "POST" and isinstance(e.resource, dict):
            try:
                check_type(e.rtype, write=True)
                rid = None
                if e.if_none_exist:
                    found = ix.match(tx, ctx, e.rtype, e.if_none_exist)
                    if len(found) > 1:
                        err = ix.PreconditionFailed(
                            f"ifNoneExist matched {len(found)} {e.rtype} resources")
                        raise ix.several(ctx, e.rtype, e.if_none_exist, found, err)
                    rid = found[0].id if found else None
                    if rid:
                        ctx.record("read", found)  # (as a conditional create outside one)
                        responses[e.index] = _response_entry(ctx, ix.Result(200, found[0]),
                                                             prefer, e)
                rid = rid or uuid7()
            except SipHubError as err:
                raise _with_entry(err, e.index) from None
            assigned[e.index] = rid
            if e.full_url:
                _maps(mapping, ctx, e.full_url, f"{e.rtype}/{rid}")
        elif e.method == "PUT":
            rid = e.rid
            if rid is None and e.has_query:
                # A conditional update writes its resource under the id that names, or fails
                # (a match of another id is refused): that is its id here. Without one, the
                # match decides, when it is written.
                rid = _body_id(e.resource)
                if rid is None and e.full_url and type(e.resource) in (dict, Prevalidated):
                    # Other entries may refer to it by its fullUrl: its id is decided now, by
                    # the match (its criteria are locked: what they match stays so until it
                    # is written), or a new one for the resource it creates.
                    rid = _conditional_id(tx, ctx, e)
                    e.resource = type(e.resource)({**e.resource, "id": rid})
                if rid:
                    assigned[e.index] = rid
            if rid and e.full_url:
                _maps(mapping, ctx, e.full_url, f"{e.rtype}/{rid}")
    _resolve_conditional(tx, ctx, entries, mapping)
    pending: dict[tuple[str, str], dict[str, Any]] = {}
    for e in entries:
        # A Prepared resource was rewritten and checked before the transaction, by a caller
        # that gives it a basis which still holds (see process_message._prepare_ahead).
        if isinstance(e.resource, dict):
            if not isinstance(e.resource, Prepared):
                checked = isinstance(e.resource, Prevalidated)
                e.resource = rewrite_refs(e.resource, mapping)
                if checked:  # a reference string for another keeps the structure valid
                    e.resource = Prevalidated(e.resource)
            rid = assigned.get(e.index, e.rid)
            if rid and e.index not in responses:
                pending[(e.rtype, rid)] = {**e.resource, "id": rid}
        elif e.patch is not None:
            e.patch = _rewrite_patch(e.patch, mapping)
    if placeholders:
        _placeholders_resolved([e for e in entries if e.index not in responses])
    resolve = tx_resolver(tx, pending)
    ctx = replace(ctx, pending=pending)  # (whose a Provenance of a later entry's record is)
    approvals = ctx.approvals
    assert approvals is not None
    # The entry that wrote each plan ``approvals.plans`` holds (by position): its id can be
    # one the entry does not name (a conditional update's, a POST's), so it is noted here.
    writers: list[int] = []
    for e in sorted(entries, key=lambda x: (_ORDER[x.method], x.index)):
        if e.index in responses:
            continue
        try:
            if e.method == "POST":
                check_type(e.rtype, write=True)
                result = ix.create(tx, ctx, e.rtype, e.resource, rid=assigned[e.index],
                                   resolve=resolve)
            else:
                result = _run(tx, ctx, e, None if isinstance(e.resource, Prepared) else resolve)
        except SipHubError as err:
            raise _with_entry(err, e.index) from None
        responses[e.index] = _response_entry(ctx, result, prefer, e)
        writers += [e.index] * (len(approvals.plans) - len(writers))
    _approved(tx, approvals, writers)
    _notify(tx, ctx)
    return ix.bundle("transaction-response",
                     _distinct_full_urls([responses[e.index] for e in entries]))


def _conditional_id(tx: Tx, ctx: ix.Context, e: _Entry) -> str:
    """The id a conditional update without one in its body writes: its one match's, or a
    new one (none matched)."""
    found = _conditional_match(tx, ctx, e)
    return found.id if found else uuid7()


def _conditional_match(tx: Tx, ctx: ix.Context, e: _Entry) -> Stored | None:
    """The one resource a conditional update's criteria match, if any; several are a 412,
    as when it is written."""
    try:
        check_type(e.rtype, write=True)
        ctx.access.check(e.rtype, "u")
        found = ix.match(tx, ctx, e.rtype, e.query)
    except SipHubError as err:
        raise _with_entry(err, e.index) from None
    if len(found) > 1:
        raise _with_entry(ix.several(ctx, e.rtype, e.query, found, ix.PreconditionFailed(
            f"Conditional update matched {len(found)} {e.rtype} resources")), e.index)
    return found[0] if found else None


def _body_id(resource: Any) -> str | None:
    rid = resource.get("id") if isinstance(resource, dict) else None
    return rid if isinstance(rid, str) and ID_RE.fullmatch(rid) else None


def _approved(tx: Tx, approvals: sp.Approvals, writers: list[int]) -> None:
    """The plans the transaction wrote as established came with the person's approval, now
    that all of its entries (the CareTeam the approvers are checked against) are written;
    ``writers``: the entry that wrote each, named in a refusal."""
    now = now_utc()
    for plan, index in zip(approvals.plans, writers, strict=True):
        try:
            sp.require_approval(tx, approvals.provenances, plan, now)
        except SipHubError as err:
            raise _with_entry(err, index) from None


def _notify(tx: Tx, ctx: ix.Context) -> None:
    """The notifications of the transaction's writes, from its final state
    (``Emitter.after_transaction``): FHIR gives its entries no order but their methods'."""
    if ctx.messaging is None or ctx.changes is None:
        return
    ctx.messaging.after_transaction(tx, ctx, ctx.changes)


def transaction(store: Store, ctx: ix.Context, bundle: dict[str, Any], prefer: str) -> dict:
    with store.begin() as tx:
        return transaction_in(tx, ctx, bundle, prefer, placeholders=True)


def batch(store: Store, ctx: ix.Context, bundle: dict[str, Any], prefer: str) -> dict:
    out = []
    for i, e in enumerate(bundle.get("entry") or []):
        try:
            entry = _entries({"entry": [e]}, ctx, first=i)[0]
            _placeholders_resolved([entry], _IN_A_BATCH)
            with store.begin(write=entry.method != "GET") as tx:
                out.append(_response_entry(ctx, _run(tx, ctx, entry), prefer, entry))
        except SipHubError as err:
            out.append({"response": {"status": f"{err.status}", "outcome": from_error(err)}})
        except Exception:  # noqa: BLE001 (a fault of the hub's own, in this entry alone)
            # The entries before it are committed: failing the whole batch would tell the
            # client that nothing was applied.
            log.exception("Unhandled error in Bundle.entry[%d] of a batch", i)
            err = InternalError(
                f"Bundle.entry[{i}]: internal error; this entry was not applied. It has been "
                f"logged with request id {logs.REQUEST_ID.get()}.")
            out.append({"response": {"status": f"{err.status}", "outcome": from_error(err)}})
    return ix.bundle("batch-response", _distinct_full_urls(out))


def process(store: Store, ctx: ix.Context, body: Any, prefer: str, *,
            max_entries: int | None = None) -> dict[str, Any]:
    """A transaction or batch Bundle posted to the base; ``max_entries``: how many entries
    it may have (``SIP_HUB_MAX_BUNDLE_ENTRIES``), more are a 413 before any is processed."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        raise BadRequest("POST to the base takes a Bundle of type transaction or batch")
    btype = body.get("type")
    if btype not in ("transaction", "batch"):
        raise BadRequest(f"Bundle.type must be transaction or batch, not '{btype}'",
                         expression="Bundle.type")
    if not isinstance(body.get("entry", []), list):
        raise BadRequest("Bundle.entry must be a list", expression="Bundle.entry")
    if max_entries is not None and len(body.get("entry", [])) > max_entries:
        raise PayloadTooLarge(f"The Bundle has {len(body['entry'])} entries; this hub takes "
                              f"at most {max_entries} in one (SIP_HUB_MAX_BUNDLE_ENTRIES): "
                              "send them in several Bundles", expression="Bundle.entry")
    _check_own_elements(body)
    if btype == "transaction":
        return transaction(store, ctx, prevalidate_entries(store, body), prefer)
    return batch(store, ctx, body, prefer)


def _check_own_elements(bundle: dict[str, Any]) -> None:
    """An element FHIR R4 does not define in the Bundle itself is refused, as in any other
    resource: only the entries' resources were checked, and JSON took what XML refused. An
    entry's own are that entry's fault (``_entries``: a batch answers it alone); the
    resources are checked on their own."""
    models.refuse_unknown_elements({k: v for k, v in bundle.items() if k != "entry"})


def prevalidate_entries(store: Store, bundle: dict[str, Any]) -> dict[str, Any]:
    """Check the structure of every entry's resource before the write transaction opens, so
    the database's write lock is not held for it (as for single writes), one thread of the
    process at a time where that pays (see ``sip_hub.cpu``): a turn per entry, so that a
    large Bundle does not hold back every other request of the process until it is done."""
    for i, e in enumerate(bundle.get("entry") or []):
        if isinstance(e, dict) and isinstance(e.get("resource"), dict):
            try:
                with cpu.turn(store):
                    e["resource"] = prevalidate(e["resource"])
            except SipHubError as err:
                raise _with_entry(err, i) from None
    return bundle
