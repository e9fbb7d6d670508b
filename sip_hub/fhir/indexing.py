"""Turn a resource into search index rows, per the search parameter registry."""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson

from . import exact
from .search_params import CANONICAL_TYPES, RESOURCE_TYPES, SearchParam, params_for
from .sip import swedish_range


@dataclass(slots=True)
class IndexRows:
    token: list[tuple[str, str | None, str]] = field(default_factory=list)
    reference: list[tuple[str, str, str]] = field(default_factory=list)
    date: list[tuple[str, int, int]] = field(default_factory=list)
    string: list[tuple[str, str, str]] = field(default_factory=list)


MAX_STRING = 255


def normalise_string(value: str, *, whole: bool = False) -> str:
    """Case- and accent-insensitive form used for string search (FHIR's default matching):
    its first ``MAX_STRING`` characters, the index column's width (``whole``: all of it)."""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    out = " ".join(stripped.casefold().split())
    return out if whole else out[:MAX_STRING]


# Kept for :exact in place of a string longer than the column: its head, a separator no
# stored string holds (validation refuses control characters) and a digest of the whole.
_EXACT_HEAD = MAX_STRING - 1 - 64


def exact_key(value: str) -> str:
    """A string as the index keeps it for :exact: in Unicode's composed form (NFC: "Ö" as one
    character or as "O" and a combining diaeresis are the same text, which browsers and macOS
    input or a PDF give differently; :exact tells case and accents apart, not encodings),
    itself when it fits the column, else its head and the SHA-256 of the whole, so that only
    the whole value finds it (a search value is turned the same way)."""
    value = unicodedata.normalize("NFC", value)
    if len(value) <= MAX_STRING:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
    return value[:_EXACT_HEAD] + "\x1f" + digest


# A long string's normalised form is also kept in overlapping windows (rows of
# "<param>:contains"), so that :contains finds a part beyond the column's width: any part of
# up to CONTAINS_STEP characters lies whole in one window.
CONTAINS_STEP = 128


def contains_windows(norm: str) -> list[str]:
    """The windows of a whole normalised string after the first (which the row of the
    parameter itself holds)."""
    return [norm[i:i + MAX_STRING]
            for i in range(CONTAINS_STEP, len(norm) - MAX_STRING + CONTAINS_STEP, CONTAINS_STEP)]


def is_absolute(ref: str) -> bool:
    """Whether a reference names its scheme (``https:``, ``urn:``): not relative to a base."""
    return ":" in ref.split("/", 1)[0]


def split_reference(ref: str, base: str = "") -> tuple[str, str] | None:
    """A local reference's (type, id): ``Type/id`` (also ``Type/id/_history/v``), or an
    absolute URL of the same under ``base``, this hub's FHIR base. None for anything else: an
    absolute URL of another server (its ``Patient/123`` is not this hub's), ``urn:``, ``#``.
    What the hub stores holds its own references relative (``localise_references``)."""
    if is_absolute(ref):
        base = base.rstrip("/")
        if not base or not ref.startswith(base + "/"):
            return None
        ref = ref[len(base) + 1:]
    parts = ref.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2][:1].isupper() and parts[-1]:
        return parts[-2], parts[-1]
    return None


def reference_holders(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in a resource that holds a literal reference (a string ``reference``),
    in no particular order; its reference may be replaced while this walks on."""
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, dict):
            for k, v in n.items():
                if k == "reference" and isinstance(v, str):
                    yield n
                elif isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(n, list):
            stack.extend(x for x in n if isinstance(x, (dict, list)))


def localise_references(node: Any, base: str) -> None:
    """Make every reference to ``base`` (this hub's FHIR base) in a resource relative, in
    place: a stored resource holds its local references one way, which its index, its access
    rules and the process rules read without knowing the base (as HAPI's "treat base URLs as
    local" does). References to other servers stay as they are: external."""
    prefix = base.rstrip("/") + "/"
    # Most resources name no absolute URL of this hub: one serialisation (a few us for a
    # SIP CarePlan) tells, where the walk below took ten times that.
    if prefix == "/" or orjson.dumps(prefix).strip(b'"') not in exact.dumps(node):
        return
    for holder in reference_holders(node):
        v = holder["reference"]
        if v.startswith(prefix) and split_reference(v, base):
            holder["reference"] = v[len(prefix):]


def reference_targets(node: Any) -> list[tuple[str, str]]:
    """(type, id) of every local literal reference in a resource that ``split_reference``
    reads, in no particular order; ``#contained``, ``urn:`` and other servers' references
    are not among them."""
    out: list[tuple[str, str]] = []
    for holder in reference_holders(node):
        v = holder["reference"]
        if not v.startswith(("#", "urn:")) and (target := split_reference(v)):
            out.append(target)
    return out


def _tokens(value: Any) -> list[tuple[str | None, str]]:
    if isinstance(value, str):
        return [(None, value)]
    if isinstance(value, bool):
        return [(None, "true" if value else "false")]
    if not isinstance(value, dict):
        return []
    if "coding" in value or "text" in value and "system" not in value:
        return [t for c in value.get("coding", ()) for t in _tokens(c)]
    code = value.get("code") if "code" in value else value.get("value")
    if isinstance(code, str):
        return [(value.get("system"), code)]
    return []


# A value the index keeps no other row for is still a value: a reference to another server,
# to a contained resource or given by its display alone, a CodeableConcept given by its text
# alone. Its row ("<param>:other", in the token table) is what ``:missing`` finds it by
# (it counted as missing: FHIR's :missing=true is for an element with no value at all).
OTHER = ":other"


def other_param(name: str) -> str:
    """The token-table parameter of ``name``'s values that have no row of their own."""
    return name + OTHER


# The index tables each parameter type writes to (a reference's identifier is a token).
_TABLES_OF = {"token": ("token",), "uri": ("token",), "reference": ("reference", "token"),
              "date": ("date",), "string": ("string",)}


@lru_cache(maxsize=None)
def index_kinds(resource_type: str) -> frozenset[str]:
    """The index tables (``IndexRows`` fields) a resource of this type can have rows in."""
    return frozenset(t for p in params_for(resource_type).values()
                     for t in _TABLES_OF.get(p.type, ()))


# Raise when ``extract`` writes different rows for the same parameters (a change of this
# module's rules, e.g. how strings are normalised): the store then rebuilds its index.
# 2: token systems cut to MAX_STRING like codes (PostgreSQL refused a longer one with a 5xx).
# 3: strings longer than MAX_STRING: ``exact_key`` for :exact, windows for :contains.
# 4: absolute references (another server's) are not local references (``split_reference``).
# 5: values with no row of their own have a "<param>:other" row (``OTHER``); a canonical
#    resource's url row holds its version as its system (``url=<canonical>|<version>``).
# 6: a Provenance's ``patient`` rows hold the patients of what it targets and its Patient
#    agents, resolved when it is written (``compartment.index_rows``).
# 7: a date without a time is a Swedish day (``sip.swedish_range``), as search values are;
#    ``exact_key`` is of the NFC form.
EXTRACTION_VERSION = 7


@lru_cache(maxsize=1)
def fingerprint() -> str:
    """What the stored index rows were derived with: the search parameters of every type and
    the extraction rules. The store keeps the fingerprint its index was built with and
    rebuilds the index when a release changes it (``store.index_state``); until then, an
    update replaces only the rows that changed (it derives the old ones from the old version)."""
    spec = [(rtype, p.name, p.type, p.paths, p.targets)
            for rtype in RESOURCE_TYPES
            for p in sorted(params_for(rtype).values(), key=lambda p: p.name)]
    return hashlib.sha256(repr((EXTRACTION_VERSION, spec)).encode()).hexdigest()


def extract(resource: dict[str, Any]) -> IndexRows:
    rows = IndexRows()
    for param in params_for(resource["resourceType"]).values():
        _extract_param(param, resource, rows)
    return rows


def key(value: str | None) -> str | None:
    """A token's system or code as the index keeps it: its first ``MAX_STRING`` characters
    (the columns' width; a search value is cut the same way, so it still finds it)."""
    return value[:MAX_STRING] if value is not None else None


def _extract_param(param: SearchParam, resource: dict[str, Any], rows: IndexRows) -> None:
    name = param.name
    for value in param.values(resource):
        if param.type == "token":
            tokens = _tokens(value)
            rows.token.extend((name, key(s), c[:MAX_STRING]) for s, c in tokens)
            if not tokens:
                rows.token.append((other_param(name), None, ""))
        elif param.type == "uri":
            if isinstance(value, str):
                rows.token.append((name, _uri_version(param, resource), value[:MAX_STRING]))
        elif param.type == "reference":
            if isinstance(value, dict):
                _extract_reference(param, value, rows)
        elif param.type == "date":
            rng = _date_range(value)
            if rng:
                rows.date.append((name, rng[0], rng[1]))
        elif param.type == "string":
            if isinstance(value, str) and value.strip():
                norm = normalise_string(value, whole=True)
                rows.string.append((name, norm[:MAX_STRING], exact_key(value)))
                if len(norm) > MAX_STRING:
                    rows.string.extend((f"{name}:contains", w, "")
                                       for w in contains_windows(norm))


def _uri_version(param: SearchParam, resource: dict[str, Any]) -> str | None:
    """The system kept with a uri row: for a canonical resource's ``url``, its ``version``
    (FHIR's ``url=<canonical>|<version>`` finds the one of that version; the url alone, any),
    else none."""
    if param.name != "url" or param.resource not in CANONICAL_TYPES:
        return None
    version = resource.get("version")
    return key(version) if isinstance(version, str) else None


def _extract_reference(param: SearchParam, value: dict[str, Any], rows: IndexRows) -> None:
    """A Reference's rows: its local target, its identifier; or, when it has neither (another
    server's, a contained resource's, a display alone), the ``OTHER`` row that tells it has
    a value, unless it names a type the parameter cannot refer to (``patient``'s Group)."""
    name = param.name
    ref = value.get("reference")
    target = split_reference(ref) if isinstance(ref, str) else None
    allowed = not param.targets or target is None or target[0] in param.targets
    if target and allowed:
        rows.reference.append((name, target[0], target[1]))
    ident = value.get("identifier")
    has_ident = isinstance(ident, dict) and isinstance(ident.get("value"), str)
    if has_ident:
        system = ident.get("system")
        rows.token.append((f"{name}:identifier", key(system) if isinstance(system, str) else None,
                           ident["value"][:MAX_STRING]))
    if target is None and not has_ident and _may_refer(param, value, ref):
        rows.token.append((other_param(name), None, ""))


def _may_refer(param: SearchParam, value: dict[str, Any], ref: Any) -> bool:
    """Whether a Reference the index has no target for is a value of ``param``: it holds a
    reference or a display, and names no type (``type``, or an absolute URL's ``Type/id``)
    outside the parameter's targets."""
    if not isinstance(ref, str) and not isinstance(value.get("display"), str):
        return False
    named = value.get("type")
    if not isinstance(named, str) and isinstance(ref, str) and "://" in ref:
        tail = split_reference(ref.split("://", 1)[1].partition("/")[2])
        named = tail[0] if tail else None
    return not param.targets or not isinstance(named, str) or named in param.targets


_OPEN_LOW, _OPEN_HIGH = -(2**62), 2**62


def _date_range(value: Any) -> tuple[int, int] | None:
    """The range a stored date, dateTime or Period covers: a date without a time is a Swedish
    day (``sip.swedish_range``), as the people who wrote it mean it and as a search value is
    read (a birth date, a plan's period, a consent's end)."""
    try:
        if isinstance(value, str):
            return swedish_range(value)
        if isinstance(value, dict):  # Period
            start, end = value.get("start"), value.get("end")
            if start is None and end is None:
                return None
            low = swedish_range(start)[0] if start else _OPEN_LOW
            high = swedish_range(end)[1] if end else _OPEN_HIGH
            return low, high
    except ValueError:
        return None
    return None
