"""Parse FHIR search parameters into a typed query that the store turns into SQL."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import BadRequest
from ..identifiers import InvalidIdentifier, canonical_search_token, separated_person_id
from .dates import MAX_US
from .indexing import (MAX_STRING, exact_key, is_absolute, key as index_key,
                       normalise_string, split_reference)
from .search_params import CANONICAL_TYPES, RESOURCE_TYPES, SearchParam, params_for
from .sip import swedish_range
from .subset import SUMMARY_MODES, Subset, elements_param
from .validation import CONTROL_CHARS

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
AUDIT_EVENT = "AuditEvent"
# Rounds of ``:iterate`` includes after the first: a SIP's references are a few steps deep
# (CarePlan -> CareTeam -> its members -> their organisations -> the one above).
MAX_ITERATE = 4
RESULT_PARAMS = frozenset({"_count", "_offset", "_cursor", "_sort", "_include", "_revinclude",
                           "_total", "_summary", "_format", "_pretty", "_elements"})


class UnsupportedParameter(BadRequest):
    """A search parameter the hub does not know, or a modifier or chain it does not support on
    one it knows: what ``Prefer: handling=lenient`` has ignored ("unknown or unsupported
    parameters", R4 search.html#errors). Any other fault of a parameter is in its value and
    stays a 400 when lenient: the search without the parameter would be a wider one than the
    client asked for (``CarePlan?patient=<another server's URL>`` answered every plan)."""


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: str | None  # None: any system; "": explicitly no system
    code: str | None    # None: any code in the system


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    type: str | None
    id: str


@dataclass(frozen=True, slots=True)
class DateValue:
    prefix: str
    low: int
    high: int


Value = TokenValue | ReferenceValue | DateValue | str


@dataclass(slots=True)
class Criterion:
    """One search parameter occurrence: its values are ORed; criteria are ANDed."""

    name: str
    kind: Literal["token", "reference", "date", "string", "uri", "id", "lastUpdated"]
    param: SearchParam | None
    modifier: str | None
    values: list[Value]
    # missing=True/False for the :missing modifier
    missing: bool | None = None
    # one level of chaining: reference parameter -> criterion on the target type
    chain: "Criterion | None" = None
    chain_type: str | None = None
    # What the caller may see of the chain's targets (a ``store.search.Visibility``; None:
    # every one, False: none), set by whoever searches for a client: a chain through a
    # resource it may not read would tell what that resource holds.
    chain_visibility: Any = None


@dataclass(frozen=True, slots=True)
class Include:
    source_type: str
    param: SearchParam
    target_type: str | None
    # ``:iterate``: applied to what was included too, round after round (``MAX_ITERATE``)
    iterate: bool = False


@dataclass(slots=True)
class SearchQuery:
    resource_type: str
    criteria: list[Criterion] = field(default_factory=list)
    sort: list[tuple[str, bool]] = field(default_factory=list)  # (name, descending)
    count: int = 50
    offset: int = 0
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    total: bool = True
    summary_count: bool = False
    # ``_summary`` (true, text, data) or ``_elements``: what of each resource is returned
    subset: Subset | None = None
    ignored: list[str] = field(default_factory=list)
    # The (key, value) pairs ignored (lenient): not part of the search the links tell.
    ignored_items: list[tuple[str, str]] = field(default_factory=list)
    # ``_cursor``: the position in the order (``store.search.position``) a page continues
    # after (keyset paging), instead of an offset.
    after: tuple[Any, ...] | None = None
    # Set by the store: whether it paged by position (else by offset, the access log), and
    # the position of the page's last match when more follow (what the next link tells).
    keyset: bool = False
    next_after: tuple[Any, ...] | None = None


def _split_escaped(value: str, sep: str) -> list[str]:
    """Split on ``sep`` where no backslash escapes it, the escapes kept in the parts (FHIR
    search escaping: ``\\,``, ``\\|``, ``\\$`` and ``\\\\`` stand for the character)."""
    out, start, i = [], 0, 0
    while i < len(value):
        c = value[i]
        if c == "\\":
            i += 2
            continue
        if c == sep:
            out.append(value[start:i])
            start = i + 1
        i += 1
    out.append(value[start:])
    return out


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            out.append(value[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def _split_commas(value: str) -> list[str]:
    """Split on commas not escaped with a backslash, then unescape (FHIR search escaping)."""
    return [_unescape(v) for v in _split_escaped(value, ",")]


def _token(raw: str) -> TokenValue:
    """A token value (escapes kept: ``\\|`` is a bar within the system or code, not the one
    between them). A Swedish identifier in the form writes store it (``identifiers``:
    '19121212-1212' is kept as '191212121212'), then cut as the index cuts what it keeps
    (``indexing.key``)."""
    parts = _split_escaped(raw, "|")
    if len(parts) > 1:
        system, code = _unescape(parts[0]), _unescape(raw[len(parts[0]) + 1:])
        try:
            system, code = canonical_search_token(system, code or None)
        except InvalidIdentifier:
            # Writes refuse it, and keep an invalid one they are given as it is (data from
            # before a rule, or written by the store's own callers): searched for as sent,
            # it finds only such a one.
            pass
        return TokenValue(index_key(system), index_key(code) or None)
    return TokenValue(None, index_key(_unescape(raw)))


def _tokens(raw: str) -> list[TokenValue]:
    """What a token value is searched as: itself, and a personnummer or samordningsnummer
    written with its separator but no system also as writes store it (the 12 digits, in its
    system). '19121212-1212' finds the person written so, as it does with the system; bare
    digits are left as they are (they may be another identifier's)."""
    token = _token(raw)
    if token.system is None and token.code is not None:
        person = separated_person_id(_unescape(raw))
        if person is not None:
            return [token, TokenValue(index_key(person[0]), index_key(person[1]))]
    return [token]


# A time's fraction of a second (its digits): what its precision is.
_FRACTION = re.compile(r"T[^.]*\.(\d+)")


def date_value(raw: str, name: str) -> DateValue:
    """A date search value (also ``_lastUpdated``, and history's ``_since`` and ``_at``): a
    date without a time is a Swedish day (month, year), a time without a zone Swedish time
    (``sip.swedish_range``), as R4 search.html asks ("the server's local time zone") and as
    the index keeps stored dates: ``date=2024-05-10`` finds a meeting at 01:30 that day in
    Sweden, written ``2024-05-09T23:30:00Z``."""
    prefix = "eq"
    if raw[:2] in PREFIXES:
        prefix, raw = raw[:2], raw[2:]
    try:
        low, high = swedish_range(raw)
    except ValueError:
        raise BadRequest(f"Search parameter '{name}': '{raw}' is not a valid date",
                         expression=name) from None
    fraction = _FRACTION.search(raw)
    if fraction and len(fraction[1]) < 6:
        # The precision a value is given to is the range it stands for: '10:00:00.123Z' is
        # that whole millisecond (it was its first microsecond alone).
        high = min(low + 10 ** (6 - len(fraction[1])) - 1, MAX_US)
    return DateValue(prefix, low, high)


def _reference(raw: str, param: SearchParam, type_modifier: str | None,
               base_url: str) -> ReferenceValue:
    if base_url and raw.startswith(base_url.rstrip("/") + "/"):
        raw = raw[len(base_url.rstrip("/")) + 1:]
    target = split_reference(raw)
    if target:
        if param.targets and target[0] not in param.targets:
            raise BadRequest(f"Search parameter '{param.name}' cannot refer to {target[0]}",
                             expression=param.name)
        if type_modifier and target[0] != type_modifier:
            raise BadRequest(f"Search parameter '{param.name}:{type_modifier}': '{raw}' is "
                             f"not a reference to a {type_modifier}", expression=param.name)
        return ReferenceValue(target[0], target[1])
    if is_absolute(raw):
        raise BadRequest(f"Search parameter '{param.name}': '{raw}' is a reference to "
                         "another server; this hub finds references to its own resources",
                         expression=param.name)
    if "/" in raw:
        raise BadRequest(f"Search parameter '{param.name}': '{raw}' is not a reference",
                         expression=param.name)
    if type_modifier:
        return ReferenceValue(type_modifier, raw)
    return ReferenceValue(param.targets[0] if len(param.targets) == 1 else None, raw)


def _criterion(rtype: str, key: str, raw: str, base_url: str) -> Criterion:
    # ``patient:Patient.name:exact``: the modifier before the dot is the reference's (a type),
    # the rest the chained parameter's, with its own modifier (it was read as the
    # reference's: ``patient.identifier:not=X`` searched for ``patient.identifier=X``).
    head, dot, chain_rest_part = key.partition(".")
    chain_rest = chain_rest_part if dot else None
    name, colon, modifier_part = head.partition(":")
    if colon and not modifier_part:
        # (``patient:=x`` was searched as ``patient=x``: a modifier left out is a typo)
        raise BadRequest(f"'{key}': a ':' names no modifier", expression=key)
    modifier = modifier_part or None
    if name in ("_id", "_lastUpdated") and (modifier or chain_rest is not None):
        # They are columns, searched by value only: a modifier dropped turned ``_id:not=X``
        # into ``_id=X``.
        raise UnsupportedParameter(f"'{key}': no modifier or chain is supported on '{name}'",
                                   expression=key)
    if name == "_id":
        return Criterion(name, "id", None, modifier, _split_commas(raw))
    if name == "_lastUpdated":
        return Criterion(name, "lastUpdated", None, None,
                         [date_value(v, name) for v in _split_commas(raw)])
    param = params_for(rtype).get(name)
    if param is None:
        raise UnsupportedParameter(f"Unknown search parameter '{name}' for {rtype}",
                                   expression=name)
    if modifier == "missing" and chain_rest is None:
        if raw not in ("true", "false"):
            raise BadRequest(f"':missing' takes true or false, not '{raw}'", expression=key)
        return Criterion(name, param.type, param, modifier, [], missing=raw == "true")
    if chain_rest is not None:
        if param.type != "reference":
            raise BadRequest(f"Chained search needs a reference parameter, '{name}' is not",
                             expression=key)
        if modifier and not modifier[:1].isupper():
            raise BadRequest(f"Chained search on '{name}' takes a type modifier, not "
                             f"':{modifier}'", expression=key)
        if modifier and param.targets and modifier not in param.targets:
            raise BadRequest(f"Search parameter '{name}' cannot refer to {modifier}",
                             expression=key)
        target = modifier or (param.targets[0] if len(param.targets) == 1 else None)
        if target is None:
            raise BadRequest(f"Chained search on '{name}' needs a type modifier, e.g. "
                             f"{name}:Patient.{chain_rest}", expression=key)
        if "." in chain_rest:
            raise NotImplementedChain(key)
        inner = _criterion(target, chain_rest, raw, base_url)
        return Criterion(name, "reference", param, None, [], chain=inner, chain_type=target)
    raws = _split_escaped(raw, ",")  # (escapes kept: a token's \\| is not its separator)
    allowed = {"token": {None, "not"}, "uri": {None}, "date": {None},
               "string": {None, "exact", "contains"}, "reference": {None, "identifier"}}
    type_modifier = None
    if param.type == "reference" and modifier and modifier[:1].isupper():
        if param.targets and modifier not in param.targets:  # (none: any type)
            raise BadRequest(f"Search parameter '{name}' cannot refer to {modifier}",
                             expression=key)
        type_modifier, modifier = modifier, None
    if modifier not in allowed[param.type]:
        raise UnsupportedParameter(f"Modifier ':{modifier}' is not supported on {param.type} "
                                   f"parameter '{name}'", expression=key)
    if any(v == "" for v in raws):
        raise BadRequest(f"Search parameter '{key}' has an empty value", expression=key)
    values: list[Value]
    if param.type == "token" or (param.type == "reference" and modifier == "identifier"):
        tokens = [t for v in raws for t in _tokens(v)]
        if any(t.system == "" and t.code is None for t in tokens):
            # ``|`` alone: no system and no code (it matched every code without a system)
            raise BadRequest(f"Search parameter '{key}': '|' alone names neither a system "
                             "nor a code", expression=key)
        values = list(tokens)
    elif param.type == "date":
        values = [date_value(_unescape(v), name) for v in raws]
    elif param.type == "reference":
        values = [_reference(_unescape(v), param, type_modifier, base_url) for v in raws]
    elif param.type == "string":
        raws = [_unescape(v) for v in raws]
        if modifier == "exact":
            blank = [v for v in raws if not v.strip()]
            values = [exact_key(v) for v in raws]
        else:
            values = [normalise_string(v) for v in raws]
            blank = [v for v, n in zip(raws, values) if not n]
        if blank:
            # It would match every resource with the parameter (a prefix of every value).
            raise BadRequest(f"Search parameter '{key}' has a value with nothing to match "
                             f"once spaces, case and accents are set aside: {blank[0][:40]!r}",
                             expression=key)
    elif param.type == "uri" and param.name == "url" and rtype in CANONICAL_TYPES:
        values = [_canonical(v) for v in raws]
    else:
        values = [_unescape(v) for v in raws]
    return Criterion(name, param.type, param, modifier, values)


def _canonical(raw: str) -> Value:
    """A canonical resource's ``url`` value: ``<url>|<version>`` names one version (FHIR R4
    search, "Searching by version": the index keeps the version beside the url, as a token's
    system), ``<url>|`` one without a version; a url alone, any version. (It was searched
    for as one url holding the bar, which no resource has.)"""
    parts = _split_escaped(raw, "|")
    if len(parts) == 1:
        return _unescape(raw)
    url, version = _unescape(parts[0]), _unescape(raw[len(parts[0]) + 1:])
    return TokenValue(index_key(version), url[:MAX_STRING])


class NotImplementedChain(UnsupportedParameter):
    def __init__(self, key: str) -> None:
        super().__init__(f"Only one level of chaining is supported ('{key}')", expression=key)


def _add_once(includes: list[Include], inc: Include) -> None:
    """An include named again is the same include: a thousand copies of one cost a query
    each (0.3 s for a single match), for nothing."""
    if inc not in includes:
        includes.append(inc)


def _iterates(key: str) -> bool:
    """Whether an ``_include`` or ``_revinclude`` key asks for ``:iterate`` (``:recurse``,
    its name before R4); another modifier is a 400."""
    modifier = key.partition(":")[2]
    if modifier in ("iterate", "recurse"):
        return True
    if modifier:
        raise BadRequest(f"{key}: the modifier of {key.partition(':')[0]} can be :iterate "
                         "only", expression=key)
    return False


def _include(raw: str, key: str, *, rev: bool, rtype: str) -> Include:
    iterate = _iterates(key)
    parts = raw.split(":")
    if len(parts) not in (2, 3):
        raise BadRequest(f"{key} must be Type:parameter[:targetType], not '{raw}'",
                         expression=key)
    source, pname = parts[0], parts[1]
    param = params_for(source).get(pname)
    if param is None or param.type != "reference":
        raise BadRequest(f"{key}: '{source}:{pname}' is not a reference search parameter",
                         expression=key)
    target = parts[2] if len(parts) == 3 else None
    if target is not None and target not in (param.targets or RESOURCE_TYPES):
        # (a typo, or ':iterate' where the target type goes, included nothing silently)
        raise BadRequest(f"{key}: '{source}:{pname}' cannot refer to '{target}'",
                         expression=key)
    if iterate:
        # (what an iteration starts from is any type included; the access log is read from
        # the events themselves, not from the index an iteration walks)
        if AUDIT_EVENT in (source, target):
            raise BadRequest(f"{key}: the access log (AuditEvent) is not included by "
                             ":iterate", expression=key)
        return Include(source, param, target, iterate=True)
    if not rev and source != rtype:
        raise BadRequest(f"_include must start with the searched type {rtype} (or be "
                         "_include:iterate)", expression=key)
    if rev and param.targets and rtype not in param.targets:
        raise BadRequest(f"_revinclude '{raw}' cannot point at {rtype}", expression=key)
    return Include(source, param, target)


def summary_param(raw: str, key: str, before: str | None = None) -> str:
    """A ``_summary`` value (a 400 for another, or for a second one that differs)."""
    if raw not in (*SUMMARY_MODES, "count", "false"):
        raise BadRequest(f"_summary must be one of {', '.join(SUMMARY_MODES)}, count or false",
                         expression=key)
    if before is not None and before != raw:
        raise BadRequest(f"_summary is given twice ({before} and {raw})", expression=key)
    return raw


def subset_of(summary: str | None, elements: frozenset[str]) -> Subset | None:
    """What of each resource the answer holds (None: all of it); ``_summary=count`` holds
    none, whatever ``_elements`` asks for."""
    if summary in SUMMARY_MODES:
        if elements:
            raise BadRequest(f"_summary={summary} and _elements cannot be combined: each says "
                             "what of a resource to return", expression="_elements")
        return Subset(summary=summary)
    if elements and summary != "count":
        return Subset(elements=elements)
    return None


def read_subset(rtype: str, items: list[tuple[str, str]], *, lenient: bool = False
                ) -> Subset | None:
    """What of the resource a read (or vread) returns, by its ``_summary`` and ``_elements``
    (the read's other parameters are not looked at)."""
    summary: str | None = None
    elements: frozenset[str] = frozenset()
    for key, raw in items:
        if key == "_summary":
            summary = summary_param(raw, key, summary)
            if summary == "count":
                raise BadRequest("_summary=count counts a search's matches; a read returns "
                                 "its resource", expression=key)
        elif key == "_elements":
            try:
                elements |= elements_param(rtype, raw, key)
            except BadRequest:
                if not lenient:  # (ignored, only more of the resource is returned)
                    raise
    return subset_of(summary, elements)


def parse(rtype: str, items: list[tuple[str, str]], *, default_count: int, max_count: int,
          base_url: str = "", lenient: bool = False) -> SearchQuery:
    q = SearchQuery(rtype, count=default_count)
    cursor: str | None = None
    summary: str | None = None
    elements: frozenset[str] = frozenset()
    offset_given = sort_given = False
    for key, raw in items:
        base = key.split(":", 1)[0]
        if CONTROL_CHARS.search(key) or CONTROL_CHARS.search(raw):
            raise BadRequest(f"Search parameter {key[:40]!r} holds a control character "
                             "(below U+0020), which no stored value can match",
                             expression=key[:40])
        try:
            if base in RESULT_PARAMS and base != key and base not in ("_include", "_revinclude"):
                # (``_sort:desc=birthdate``, DSTU2's descending sort, was answered ascending:
                # the modifier dropped. Refused when lenient too: a result parameter
                # ignored changes the answer, not only which matches it holds.)
                hint = " (a key sorted descending is written with a '-': _sort=-date)" \
                    if base == "_sort" else ""
                raise BadRequest(f"'{key[:40]}': {base} takes no modifier{hint}",
                                 expression=key[:40])
            if base == "_count":
                q.count = min(nonneg_int(raw, key), max_count)
            elif base == "_offset":
                q.offset = nonneg_int(raw, key)
                offset_given = True
            elif base == "_cursor":
                if cursor is not None:
                    raise BadRequest("_cursor is given twice", expression=key)
                cursor = raw
            elif base == "_sort":
                if sort_given:
                    # (the second replaced the first: a half-ignored order)
                    raise BadRequest("_sort is given twice: give several keys in one, "
                                     "separated by commas (_sort=family,given)",
                                     expression=key)
                sort_given = True
                q.sort = [(s.lstrip("-"), s.startswith("-")) for s in raw.split(",") if s]
                if len(q.sort) > MAX_SORT_KEYS:
                    raise BadRequest(f"_sort has {len(q.sort)} keys; at most {MAX_SORT_KEYS} "
                                     "may be given", expression="_sort")
                # A key given again orders nothing its first place did not (ties on it are
                # ties on its repeat): left out, as it would only cost the statement.
                firsts: dict[str, tuple[str, bool]] = {}
                for name, desc in q.sort:
                    firsts.setdefault(name, (name, desc))
                q.sort = list(firsts.values())
                for name, _ in q.sort:
                    p = params_for(rtype).get(name)
                    if name not in ("_id", "_lastUpdated") and (
                            p is None or p.type not in ("date", "string", "token", "uri")):
                        raise BadRequest(f"Cannot sort {rtype} by '{name}'", expression="_sort")
            elif base == "_include":
                _add_once(q.includes, _include(raw, key, rev=False, rtype=rtype))
            elif base == "_revinclude":
                _add_once(q.revincludes, _include(raw, key, rev=True, rtype=rtype))
            elif base == "_total":
                if raw not in ("none", "estimate", "accurate"):
                    raise BadRequest("_total must be none, estimate or accurate", expression=key)
                q.total = raw != "none"
            elif base == "_summary":
                summary = summary_param(raw, key, summary)
                q.summary_count = summary == "count"
            elif base in ("_format", "_pretty"):
                continue
            elif base == "_elements":
                elements |= elements_param(rtype, raw, key)
            else:
                q.criteria.append(_criterion(rtype, key, raw, base_url))
        except BadRequest as exc:
            # Lenient handling ignores a parameter the hub does not know or support
            # (``UnsupportedParameter``), not one whose value is invalid. A result parameter
            # ignored would change the answer; _elements ignored only keeps more of each
            # resource, which FHIR allows a server ("not obliged to return just the
            # requested elements").
            ignorable = base == "_elements" or (
                isinstance(exc, UnsupportedParameter) and base not in RESULT_PARAMS)
            if not lenient or not ignorable:
                raise
            q.ignored.append(f"{key}: {exc.diagnostics}")
            q.ignored_items.append((key, raw))
    _check_value_counts(q.criteria)  # also when lenient: ignoring one would widen the result
    q.subset = subset_of(summary, elements)
    if cursor is not None:
        if offset_given:
            raise BadRequest("_cursor and _offset cannot be combined: a page continues after "
                             "a position or starts at an offset", expression="_cursor")
        if rtype == "AuditEvent":
            raise BadRequest("The access log (AuditEvent) is paged by _offset",
                             expression="_cursor")
        # (what was ignored is not part of the search: the next link leaves it out, and a
        # client that keeps it beside the token asks for the same search)
        bound = [kv for kv in items if kv not in q.ignored_items] if q.ignored_items \
            else items
        q.after = read_page_token(rtype, bound, q.sort, cursor)
    return q


# -- page tokens (``_cursor``) ------------------------------------------------------------------
# A next link continues after the last match of its page: the token holds that match's place
# in the order (its sort keys, lastUpdated and id) with a checksum that binds it to the
# search it came from. It is not a secret and grants nothing: the search is run again with
# the caller's own criteria and access conditions, and only the matches beyond the position
# are answered. Every value is checked for the type its sort key has, so a token made up
# by hand is a 400 (or a page of what the caller may see anyway), never a fault.
_TOKEN_VERSION = 1
_TOKEN_KEY = b"sip-hub page token v1"
_NOT_BOUND = frozenset({"_cursor", "_offset", "_count", "_total", "_format", "_pretty"})
_MAX_TOKEN_STRING = 1024
_TOKEN_FORM = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{16}")  # (its length: _MAX_TOKEN)


def _token_mac(rtype: str, items: list[tuple[str, str]], payload: bytes) -> bytes:
    bound = sorted((k, v) for k, v in items if k.split(":", 1)[0] not in _NOT_BOUND)
    search = json.dumps([rtype, bound], ensure_ascii=True).encode()
    return hmac.new(_TOKEN_KEY, search + b"\0" + payload, hashlib.blake2b).digest()[:12]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def page_token(rtype: str, items: list[tuple[str, str]], after: tuple[Any, ...]) -> str:
    """The ``_cursor`` of the page after ``after``, in the search of ``items``."""
    payload = json.dumps([_TOKEN_VERSION, *after], ensure_ascii=False,
                         separators=(",", ":")).encode()
    return f"{_b64(payload)}.{_b64(_token_mac(rtype, items, payload))}"


def _sort_value_kinds(rtype: str, sort: list[tuple[str, bool]]) -> list[tuple[type, bool]]:
    """(type, may be None) of each value of a position (``store.search.position``)."""
    kinds = []
    for name, _ in sort:
        if name in ("_id", "_lastUpdated"):
            kinds.append((str if name == "_id" else int, False))
        else:
            kinds.append((int if params_for(rtype)[name].type == "date" else str, True))
    return kinds + [(int, False), (str, False)]


def _fits(value: Any, kind: type, nullable: bool) -> bool:
    if value is None:
        return nullable
    if kind is int:
        return type(value) is int and -MAX_INT - 1 <= value <= MAX_INT
    if not isinstance(value, str) or len(value) > _MAX_TOKEN_STRING or "\0" in value:
        return False
    try:
        value.encode("utf-8")  # (a lone surrogate cannot be sent to the database)
    except UnicodeEncodeError:
        return False
    return True


def read_page_token(rtype: str, items: list[tuple[str, str]], sort: list[tuple[str, bool]],
                    token: str) -> tuple[Any, ...]:
    """The position a ``_cursor`` continues after; a 400 for anything but a token of a next
    link of this very search (the same type, criteria and _sort)."""
    bad = BadRequest("_cursor is not a page token of this search (take the next link of the "
                     "search's last page as it is)", expression="_cursor")
    if len(token) > _MAX_TOKEN or not _TOKEN_FORM.fullmatch(token):
        raise bad
    data, mac = token.split(".")
    try:
        payload = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
        given = base64.urlsafe_b64decode(mac + "=" * (-len(mac) % 4))
    except ValueError:
        raise bad from None
    if not hmac.compare_digest(given, _token_mac(rtype, items, payload)):
        raise bad
    try:
        values = json.loads(payload)
    except (ValueError, RecursionError):
        raise bad from None
    kinds = _sort_value_kinds(rtype, sort)
    if not isinstance(values, list) or len(values) != len(kinds) + 1 or \
            values[0] != _TOKEN_VERSION or type(values[0]) is not int or \
            not all(_fits(v, *k) for v, k in zip(values[1:], kinds)):
        raise bad
    return tuple(values[1:])


# Values ORed in a search. Each is a condition the database parses and binds, and both have
# limits (SQLite: an expression at most 1000 deep; PostgreSQL: 65,535 bound values) whose
# errors look like an outage; these are well inside them, and a search beyond is a 400.
MAX_VALUES_PER_PARAMETER = 100
MAX_VALUES = 500
# Keys of a _sort. Each adds terms to the ORDER BY: SQLite refuses one of 2000 terms with an
# error that looks like an outage (a 503; ~1000 keys did it), and each key costs time before
# that. No type has as many sortable parameters (Task, the most: 11 with _id, _lastUpdated).
MAX_SORT_KEYS = 20
# The longest token the hub issues: each sort key's value at most MAX_STRING characters (the
# index columns' width; an id, less), each at most 6 bytes of JSON (a character escaped),
# base64'd. (It was 16384: a next link of twenty keys holding long values of four-byte
# characters was refused by the hub that made it, a 400.)
_MAX_TOKEN = 4 * -(-((MAX_SORT_KEYS + 2) * (6 * MAX_STRING + 3) + 32) // 3)
# Parameters ANDed in a search: PostgreSQL's planning time grows faster than their number
# (measured: 50 take 0.3 s, 100 take 2 s, 200 take 36 s).
MAX_PARAMETERS = 50


def _value_count(cr: Criterion) -> int:
    """The values a criterion ORs (``:missing`` counts as one; a chain, its inner values)."""
    return _value_count(cr.chain) if cr.chain is not None else max(1, len(cr.values))


def _check_value_counts(criteria: list[Criterion]) -> None:
    if len(criteria) > MAX_PARAMETERS:
        raise BadRequest(f"The search has {len(criteria)} parameters; at most "
                         f"{MAX_PARAMETERS} may be combined in one search")
    total = 0
    for cr in criteria:
        n = _value_count(cr)
        name = cr.name if cr.chain is None else f"{cr.name}.{cr.chain.name}"
        if n > MAX_VALUES_PER_PARAMETER:
            raise BadRequest(f"Search parameter '{name}' has {n} values; at most "
                             f"{MAX_VALUES_PER_PARAMETER} may be ORed in one parameter",
                             expression=name)
        total += n
    if total > MAX_VALUES:
        raise BadRequest(f"The search has {total} values in all; at most {MAX_VALUES} may be "
                         "searched for at once (each parameter, and each of its comma-separated "
                         "values, counts)")


MAX_INT = 2**63 - 1  # what a 64-bit database integer and OFFSET hold
# The store keeps version ids in a 32-bit column: no version goes beyond this one, and
# PostgreSQL refuses to compare the column with a larger number (a 5xx, not a 404 or 412).
MAX_VERSION = 2**31 - 1


def uint(raw: str, maximum: int = MAX_VERSION) -> int | None:
    """A non-negative integer written in ASCII digits, at most ``maximum`` (by default a
    version id that can exist), else None (``str.isdigit`` alone accepts '²', which int()
    refuses, and any length)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
        return None
    value = int(raw)
    return value if value <= maximum else None


def nonneg_int(raw: str, key: str) -> int:
    value = uint(raw, MAX_INT)
    if value is None:
        raise BadRequest(f"{key} must be a non-negative integer of at most {MAX_INT}, not "
                         f"'{raw[:40]}'", expression=key)
    return value
