"""The FHIR R4 rules that ``fhir.resources`` does not check: required bindings, ele-1, invariants.

``models.validate`` checks structure (types, cardinality, primitive formats). This module walks
the client's JSON once more, knowing each element's FHIR type, and reports:

* required code bindings, for resource elements and for datatypes wherever they sit
  (``Patient.contact[0].telecom[1].system``), from ``definitions/required-bindings.json``;
* ``ele-1``: empty objects, empty arrays, empty or whitespace-only strings, stray ``null``;
* the base invariants that matter for the resources sip_hub handles and for the common
  datatypes, each a small Python function in ``_INVARIANTS`` (no FHIRPath at runtime: evaluating
  FHIRPath per write is about 30 resources/s here).

Both JSON files under ``definitions/`` are generated from the official 4.0.1 definitions by
``scripts/gen_required_bindings.py``; they are loaded on the first call and compiled per type as
types are met, so importing this module costs nothing.

Deliberate differences from the 4.0.1 FHIRPath expressions, all towards what the invariant's
text says:

* ppc-2..ppc-5 test ``scope.coding.where(system='something' ...)`` in 4.0.1, a placeholder that
  never matches, so validators never fire them. We apply them as written in prose, for scope
  codes from ``http://terminology.hl7.org/CodeSystem/consentscope``.
* ref-1 as written rejects ``"reference": "#"``, which R4 defines as a reference from a contained
  resource to its container (and dom-3 relies on); we accept it.
* ctm-1 uses ``member.resolve()``; without a server we know the member's type from the reference
  (``Patient/1``, ``https://x/fhir/Patient/1``, ``#contained``) or ``Reference.type``, and pass
  when neither tells it (as ``resolve()`` returning nothing does).
* There is no qrs-2 in R4 (it came with R5), and R4 has no rule against narrative in a contained
  resource (STU3's dom-1 was dropped), so neither is enforced.
* txt-1 is checked against the element and attribute names the official validator allows
  (the HTML 4.0 chapters the invariant names), txt-2 as non-whitespace text or an image; the
  div must also be well-formed XML, parsed by the hardened parser (no DTD, no entities), with
  the XHTML namespace as its default and nothing before or after it (no XML declaration), so
  that the hub can always serve it as FHIR XML. A link's, image's or citation's URL may not
  be a javascript:, vbscript: or data: one (an image's data:image/ source aside): the
  narrative "SHALL NOT contain scripts", which the names alone do not ensure.

Resources nest at most ``MAX_DEPTH`` elements deep (an extension inside an extension counts
a level each): orjson, which writes every resource the hub stores, gives up at about 127, and
the walk counts the levels as it goes, so the limit costs no walk of its own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson

from .. import xml
from ..errors import BadRequest, Issue, IssueCollector, Unprocessable
from .dates import parse_zoned
from . import exact
from .exact import Exact

__all__ = ["Binding", "MAX_DEPTH", "TOO_DEEP", "check", "required_binding", "too_deep"]

_DEFINITIONS: Final = Path(__file__).with_name("definitions")

Json = dict[str, Any]

# How a child element is walked.
_PRIM: Final = 0  # a primitive value
_PRIM_URI: Final = 1  # canonical/uri/url: may hold "#id", which counts as a reference for dom-3
_PRIM_XHTML: Final = 2  # Narrative.div: an XHTML fragment (txt-1, txt-2)
_PRIM_EXT: Final = 3  # the "_name" sibling (id + extensions) of a primitive
_COMPLEX: Final = 4  # a datatype or BackboneElement
_CONTAINED: Final = 5  # DomainResource.contained: a resource in the container's scope
_RESOURCE: Final = 6  # Bundle.entry.resource and the like: a resource with its own scope

# How deep elements may nest (the resource itself is level 0). Far beyond any real resource,
# well within what orjson writes (about 127 levels of elements in arrays) and what the models'
# validation recurses through.
MAX_DEPTH: Final = 100
TOO_DEEP: Final = f"The resource nests elements deeper than {MAX_DEPTH} levels, the most accepted"


def too_deep(*expression: str) -> Unprocessable:
    """The refusal of a resource nested deeper than MAX_DEPTH, where the walk cannot be the
    one to find it (a parser or writer gave up before it)."""
    return Unprocessable(TOO_DEEP, issues=[Issue("structure", TOO_DEEP, expression)])


def read_json(raw: bytes) -> Any:
    """JSON as the hub reads what a client sends (a request's body, a Bundle's JSON Patch):
    a 400 for what is not JSON or gives a key twice in one object, a decimal as written
    (``exact.Exact``), too deep nesting refused. orjson reads 1024 levels but writes about
    255, and everything read is written with orjson first or recurses as deep: writing it is
    the cheap test of depth (3 microseconds for a CarePlan, a sixth of a walk over it in
    Python), and what it writes tells whether a key was given twice."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"Malformed JSON: {exc}") from None
    try:
        written = exact.dumps(body)
    except orjson.JSONEncodeError:  # (the JSON parser makes no other value orjson refuses)
        raise too_deep() from None
    try:
        return exact.as_written(raw, body, written)[0]
    except ValueError as exc:  # (what orjson reads and Python's json does not)
        raise BadRequest(f"Malformed JSON: {exc}") from None

_JSON_TYPE: Final[dict[str, type]] = {
    "boolean": bool, "integer": int, "positiveInt": int, "unsignedInt": int, "decimal": float,
}
# A decimal as JSON input holds it: a whole number, or one with a fraction that a float keeps
# or, when a float would change it (1.50), an ``Exact``.
_DECIMALS: Final = (int, Exact)
_NUMBERS: Final = (int, float, Exact)
_FRACTIONAL: Final = (float, Exact)
_JSON_NAME: Final[dict[type, str]] = {bool: "boolean", int: "integer", float: "number",
                                      str: "string"}

_ELE_1: Final = "ele-1: All FHIR elements must have a @value or children"
_EMPTY_OBJECT: Final = f"{_ELE_1} (empty object)"
_EMPTY_ARRAY: Final = f"{_ELE_1} (empty array: leave the element out instead)"
_EMPTY_STRING: Final = f"{_ELE_1} (a string must contain non-whitespace characters)"
_NULL: Final = (f"{_ELE_1} (null is only allowed in an array of primitives, as the place holder "
                "for an item whose value is in the paired _element array)")
_ONLY_ID: Final = f"{_ELE_1} (an element with only an id has no content)"


@dataclass(frozen=True, slots=True)
class Binding:
    """A required binding expanded to its codes (and the code systems they come from)."""

    value_set: str
    codes: frozenset[str]
    systems: frozenset[str]

    def coding_ok(self, coding: Any) -> bool:
        if not isinstance(coding, dict):
            return False
        code, system = coding.get("code"), coding.get("system")
        return (type(code) is str and code in self.codes
                and (system is None or type(system) is str and system in self.systems))


Child = tuple[int, str, Binding | None]
Invariant = Callable[[Json, str, "_Scope", IssueCollector], None]


@dataclass(slots=True)
class _Scope:
    """What the invariants of one resource (and the resources it contains) need to share."""

    root: Json
    contained_types: dict[str, str]
    local_refs: set[str] = field(default_factory=set)
    container_refs: set[int] = field(default_factory=set)
    current: int = -1  # index of the contained resource being walked, -1 for the root

    @classmethod
    def of(cls, resource: Json) -> _Scope:
        types: dict[str, str] = {}
        contained = resource.get("contained")
        if type(contained) is list:
            for c in contained:
                if isinstance(c, dict) and isinstance(c.get("id"), str):
                    types[c["id"]] = str(c.get("resourceType"))
        return cls(resource, types)


class _Schema:
    """Element types and required bindings, compiled per type on first use."""

    def __init__(self) -> None:
        types_doc = json.loads((_DEFINITIONS / "element-types.json").read_text(encoding="utf-8"))
        bindings_doc = json.loads((_DEFINITIONS / "required-bindings.json").read_text(encoding="utf-8"))
        self.raw: dict[str, dict[str, str | list[str]]] = types_doc["types"]
        self.resources: frozenset[str] = frozenset(types_doc["resources"])
        self.primitives: frozenset[str] = frozenset(types_doc["primitives"])
        value_sets: dict[tuple[str, tuple[str, ...]], Binding] = {}
        self.bindings: dict[str, Binding] = {}
        for path, b in bindings_doc["bindings"].items():
            key = (b["valueSet"], tuple(b["codes"]))
            if key not in value_sets:  # one frozenset per value set, shared by its elements
                value_sets[key] = Binding(b["valueSet"], frozenset(b["codes"]), frozenset(b["systems"]))
            self.bindings[path] = value_sets[key]
        self.compiled: dict[str, tuple[dict[str, Child], tuple[Invariant, ...]]] = {}

    def compile(self, tkey: str) -> tuple[dict[str, Child], tuple[Invariant, ...]]:
        children: dict[str, Child] = {}
        for name, spec in self.raw.get(tkey, {}).items():
            if isinstance(spec, list):  # choice element value[x] -> valueString, valueCoding...
                stem = name[:-3]
                for t in spec:
                    self._add(children, f"{stem}{t[0].upper()}{t[1:]}", t, f"{tkey}.{name}")
            elif name == "contained":
                children[name] = (_CONTAINED, spec, None)
            else:
                self._add(children, name, spec, f"{tkey}.{name}")
        invariants = _INVARIANTS.get(tkey, ())
        if tkey in self.resources and "contained" in children:
            invariants = (_dom_2_to_5, *invariants)
        entry = (children, invariants)
        self.compiled[tkey] = entry
        return entry

    def _add(self, children: dict[str, Child], name: str, ftype: str, path: str) -> None:
        binding = self.bindings.get(path)
        if ftype in self.primitives:
            kind = _PRIM_URI if ftype in ("canonical", "uri", "url") else (
                _PRIM_XHTML if ftype == "xhtml" else _PRIM)
            children[name] = (kind, ftype, binding)
            children[f"_{name}"] = (_PRIM_EXT, "Element", None)
        elif ftype == "Resource":
            children[name] = (_RESOURCE, ftype, None)
        else:
            children[name] = (_COMPLEX, ftype, binding)


_schema_cache: list[_Schema] = []


def _schema() -> _Schema:
    if not _schema_cache:
        _schema_cache.append(_Schema())
    return _schema_cache[0]


def element_names(rtype: str) -> frozenset[str]:
    """The names of a type's own elements, as the definitions write them (``value[x]``)."""
    return frozenset(_schema().raw.get(rtype, {}))


def required_binding(path: str) -> Binding | None:
    """The required binding of an element definition path (``ContactPoint.system``), if any."""
    return _schema().bindings.get(path)


def check(resource: dict[str, Any], collector: IssueCollector) -> None:
    """Add to ``collector`` every required-binding, ele-1 and invariant issue of ``resource``.

    Expects the JSON form of an R4 resource; anything structurally wrong (unknown elements,
    wrong JSON types) is left to ``models.validate`` and skipped here rather than reported twice.
    """
    if not isinstance(resource, dict):
        return
    rtype = resource.get("resourceType")
    schema = _schema()
    if not isinstance(rtype, str) or rtype not in schema.resources:
        return
    _walk(resource, rtype, rtype, schema, _Scope.of(resource), collector, 0)


def _walk(node: Json, tkey: str, path: str, schema: _Schema, scope: _Scope,
          out: IssueCollector, depth: int) -> None:
    if depth > MAX_DEPTH:
        out.add(path, TOO_DEEP, "structure")
        return  # (and nothing below it: the walk itself would recurse too deep)
    children, invariants = schema.compiled.get(tkey) or schema.compile(tkey)
    for name, value in node.items():
        child = children.get(name)
        if child is None:
            continue  # resourceType, or an unknown element that models.validate reports
        kind, ctype, binding = child
        if type(value) is list:
            if not value:
                out.add(f"{path}.{name}", _EMPTY_ARRAY, "structure")
                continue
            if kind <= _PRIM_EXT:
                _primitive_list(node, name, value, child, path, schema, scope, out, depth)
                continue
            for i, item in enumerate(value):
                _element(item, kind, ctype, binding, f"{path}.{name}[{i}]", schema, scope, out,
                         i, depth)
        elif kind <= _PRIM_XHTML:
            _primitive(value, kind, ctype, binding, f"{path}.{name}", scope, out)
        elif kind == _PRIM_EXT:
            _primitive_ext(value, node.get(name[1:]), f"{path}.{name[1:]}", schema, scope, out,
                           depth)
        else:
            _element(value, kind, ctype, binding, f"{path}.{name}", schema, scope, out, 0, depth)
    for invariant in invariants:
        invariant(node, path, scope, out)


def _primitive(value: Any, kind: int, ftype: str, binding: Binding | None, path: str,
               scope: _Scope, out: IssueCollector) -> None:
    # pydantic coerces "true" to a boolean and "3" to an integer while the JSON we store keeps
    # the string, so the JSON type itself is checked here.
    want = _JSON_TYPE.get(ftype, str)
    if value is not None and (type(value) is not want and not (
            want is float and type(value) in _DECIMALS) and not (
            want is int and type(value) is Exact and value.text == "-0")):
        out.add(path, f"{path} is a FHIR {ftype} and must be a JSON "
                      f"{_JSON_NAME[want]}, not {_json_kind(value)} {str(value)[:40]!r}",
                "structure")
        return
    if type(value) is str:
        if not value or value.isspace():
            out.add(path, _EMPTY_STRING, "structure")
            return
        if not value.isprintable():  # most strings: one C pass
            bad = NOT_IN_XML.search(value)
            if bad is not None:
                out.add(path, f"{path} holds a control character (below U+0020, other than tab, "
                              "CR and LF), which a FHIR string must not" if bad.group() < " "
                        else f"{path} holds U+{ord(bad.group()):04X}, which is not a character "
                             "(XML cannot carry it), so a FHIR string must not", "value")
                return
        if binding is not None and value not in binding.codes:
            out.add(path, f"Value '{value}' is not in the required value set {binding.value_set} "
                          f"for {path}", "code-invalid")
        if kind == _PRIM_URI and value[0] == "#":
            _local_ref(value, scope)
        elif kind == _PRIM_XHTML:
            _narrative(value, path, out)
    elif value is None:
        out.add(path, _NULL, "structure")


def _json_kind(value: Any) -> str:
    """What JSON calls ``value``'s type (a decimal as written, ``Exact``, is a number)."""
    return "number" if type(value) is Exact else type(value).__name__


def _primitive_list(node: Json, name: str, values: list[Any], child: Child, path: str,
                    schema: _Schema, scope: _Scope, out: IssueCollector, depth: int) -> None:
    kind, ftype, binding = child
    # JSON represents a repeating primitive as two parallel arrays, "given" and "_given"; a null
    # in one is only a place holder for an item that the other one has.
    ext = kind == _PRIM_EXT
    base = name[1:] if ext else name
    partner = node.get(base if ext else f"_{name}")
    paired = partner if type(partner) is list else None
    if paired is not None and len(paired) != len(values) and not ext:
        out.add(f"{path}.{base}", f"The arrays {base} and _{base} must have the same length "
                                  f"({len(values)} and {len(paired)})", "structure")
    for i, item in enumerate(values):
        ipath = f"{path}.{base}[{i}]"
        if item is None:
            # With both arrays present the primitive side judges each pair, so it is told once.
            if paired is None or (not ext and (i >= len(paired) or paired[i] is None)):
                out.add(ipath, _NULL, "structure")
        elif ext:
            other = paired[i] if paired is not None and i < len(paired) else None
            _primitive_ext(item, other, ipath, schema, scope, out, depth)
        else:
            _primitive(item, kind, ftype, binding, ipath, scope, out)


def _primitive_ext(value: Any, primitive: Any, path: str, schema: _Schema, scope: _Scope,
                   out: IssueCollector, depth: int) -> None:
    if type(value) is dict:
        if not value:
            out.add(path, _EMPTY_OBJECT, "structure")
        elif primitive is None and "extension" not in value:
            out.add(path, _ONLY_ID, "structure")  # neither a value nor children
        else:
            _walk(value, "Element", path, schema, scope, out, depth + 1)
    elif value is None:
        out.add(path, _NULL, "structure")


def _element(value: Any, kind: int, ctype: str, binding: Binding | None, path: str,
             schema: _Schema, scope: _Scope, out: IssueCollector, index: int, depth: int
             ) -> None:
    if type(value) is not dict:
        if value is None:
            out.add(path, _NULL, "structure")
        return
    if not value:
        out.add(path, _EMPTY_OBJECT, "structure")
        return
    if kind == _COMPLEX:
        if len(value) == 1 and "id" in value:
            out.add(path, _ONLY_ID, "structure")
            return
        _walk(value, ctype, path, schema, scope, out, depth + 1)
        if binding is not None:
            _check_coded(value, ctype, binding, path, out)
        return
    rtype = value.get("resourceType")
    if not isinstance(rtype, str) or rtype not in schema.resources:
        return  # models.validate reports resources without a known type
    if kind == _CONTAINED:
        previous, scope.current = scope.current, index
        _walk(value, rtype, path, schema, scope, out, depth + 1)
        scope.current = previous
    else:
        _walk(value, rtype, path, schema, _Scope.of(value), out, depth + 1)


def _check_coded(value: Json, ctype: str, binding: Binding, path: str, out: IssueCollector) -> None:
    if ctype == "Coding":
        if not binding.coding_ok(value):
            out.add(path, f"Coding {value.get('system', '')}|{value.get('code', '')} is not in the "
                          f"required value set {binding.value_set} for {path}", "code-invalid")
    elif ctype == "CodeableConcept":
        codings = value.get("coding")
        if codings is None and "text" not in value:
            return  # only extensions (e.g. data-absent-reason): nothing coded to check
        if not (type(codings) is list and any(binding.coding_ok(c) for c in codings)):
            out.add(path, f"No coding is from the required value set {binding.value_set} for "
                          f"{path}", "code-invalid")


_XHTML: Final = "{http://www.w3.org/1999/xhtml}"
_XML_LANG: Final = "{http://www.w3.org/XML/1998/namespace}lang"
# txt-1's element and attribute names, as the official validator (FHIRPathEngine's
# checkHtmlNames) allows them: HTML 4.0's text, list, table, link and image elements with their
# core, i18n and table attributes; no scripts, forms, frames, objects or event handlers.
_TXT_ELEMENTS: Final = frozenset(
    "p br div h1 h2 h3 h4 h5 h6 a span b em i strong small big tt dfn q var abbr acronym cite "
    "blockquote hr address bdo kbd sub sup ul ol li dl dt dd pre table caption colgroup col "
    "thead tr tfoot tbody th td code samp img map area".split())
_TXT_ATTRIBUTES: Final = frozenset(
    "title style class id lang dir accesskey tabindex span width align valign char charoff "
    "abbr axis headers scope rowspan colspan".split())
_TXT_ELEMENT_ATTRIBUTES: Final = frozenset(
    "a.href a.name a.charset a.type a.hreflang a.rel a.rev a.shape a.coords img.src img.border "
    "img.alt img.longdesc img.height img.width img.usemap img.ismap map.name area.shape "
    "area.coords area.href area.nohref area.alt blockquote.cite q.cite table.summary "
    "table.width table.border table.frame table.rules table.cellspacing table.cellpadding "
    "pre.space td.nowrap".split())
# The attributes of txt-1's elements that hold a URL, which a browser follows or loads when the
# narrative is shown (an image's source at once).
_TXT_URL_ATTRIBUTES: Final = frozenset(
    "a.href area.href img.src img.longdesc blockquote.cite q.cite".split())
# A URL's scheme as a browser reads it: after leading spaces and controls, with tabs and
# newlines anywhere dropped, in any case (" Java&#9;Script:" is "javascript:").
_URL_SCHEME: Final = re.compile(r"[a-z][a-z0-9+.\-]*(?=:)")
_URL_TRIMMED: Final = "".join(map(chr, range(0x21)))
_URL_DROPPED: Final = str.maketrans("", "", "\t\n\r")
# Schemes whose URL runs script, or a document of its own, when followed or loaded (FHIR R4
# narrative.html: a narrative SHALL NOT contain scripts). An image from data: runs none.
_SCRIPT_SCHEMES: Final = frozenset({"javascript", "vbscript", "data"})
_TXT_1: Final = ("txt-1: The narrative SHALL contain only the basic html formatting elements and "
                 "attributes described in chapters 7-11 (except section 4 of chapter 9) and 15 "
                 "of the HTML 4.0 standard, <a> elements (either name or href), images and "
                 "internally contained style attributes")


def _narrative(div: str, path: str, out: IssueCollector) -> None:
    """txt-1 and txt-2 of a Narrative.div, which must also be an XHTML div the hub can write
    as FHIR XML (read by the hardened parser: no DTD, so no entities but XML's own)."""
    bare = div.strip()
    if bare.startswith(("<?", "<!")) or bare.endswith(("?>", "-->")):
        # The parser drops them unseen, but the div is kept as sent: an XML declaration made
        # every FHIR XML answer holding it fail (a str with an encoding declaration), and the
        # div is an element of the resource, not a document of its own.
        out.add(path, "The narrative must be the <div> element alone: no XML declaration, "
                      "processing instruction, comment or DOCTYPE before or after it", "value")
        return
    try:
        root = xml.parse(div)
    except BadRequest as exc:
        out.add(path, f"The narrative is not a well-formed XHTML div: {exc.diagnostics}",
                "value")
        return
    if root.tag != f"{_XHTML}div" or root.prefix is not None:
        out.add(path, 'The narrative must be a <div xmlns="http://www.w3.org/1999/xhtml">, with '
                      "XHTML as its default namespace", "value")
        return
    image = False
    for element in root.iter():  # (the parser leaves out comments and processing instructions)
        tag = element.tag
        name = tag[len(_XHTML):] if tag.startswith(_XHTML) else None
        if name not in _TXT_ELEMENTS:
            out.add(path, f"{_TXT_1} (<{_lxml_name(tag)}> is not one)")
            return
        image = image or name == "img"
        for attribute in element.attrib:
            if not (attribute in _TXT_ATTRIBUTES or attribute == _XML_LANG
                    or f"{name}.{attribute}" in _TXT_ELEMENT_ATTRIBUTES):
                out.add(path, f"{_TXT_1} (the attribute {_lxml_name(attribute)} of <{name}> is "
                              "not one)")
                return
            if f"{name}.{attribute}" in _TXT_URL_ATTRIBUTES:
                scheme = _script_scheme(element.attrib[attribute], name, attribute)
                if scheme:
                    out.add(path, f"The {attribute} of <{name}> is a {scheme}: URL, which can run "
                                  "script when the narrative is shown; a narrative SHALL NOT "
                                  "contain scripts")
                    return
    if not image and not "".join(root.itertext()).strip():
        out.add(path, "txt-2: The narrative SHALL have some non-whitespace content")


def _script_scheme(url: str, element: str, attribute: str) -> str | None:
    """The scheme of ``url`` when it is one that runs script (``_SCRIPT_SCHEMES``), read as a
    browser reads it; None for any other URL, and for an image's data: source."""
    url = url.strip(_URL_TRIMMED).translate(_URL_DROPPED).lower()
    scheme = _URL_SCHEME.match(url)
    if scheme is None or scheme.group() not in _SCRIPT_SCHEMES:
        return None
    if element == "img" and attribute == "src" and url.startswith("data:image/"):
        return None
    return scheme.group()


def _lxml_name(tag: str) -> str:
    """An lxml name (``{namespace}local``) as a reader writes it."""
    namespace, _, local = tag[1:].partition("}") if tag.startswith("{") else ("", "", tag)
    return f"{local} (in {namespace})" if namespace else local


def _local_ref(ref: str, scope: _Scope) -> None:
    if ref == "#":
        if scope.current >= 0:
            scope.container_refs.add(scope.current)
    else:
        scope.local_refs.add(ref)


# --- helpers for invariants ------------------------------------------------------------------

def _has(node: Json, name: str) -> bool:
    """FHIRPath ``exists()``: a primitive exists with a value or with only extensions."""
    return name in node or f"_{name}" in node


def _has_choice(node: Json, stem: str) -> bool:
    return any(k.startswith(stem) or k.startswith(f"_{stem}") for k in node)


def _as_list(value: Any) -> list[Any]:
    if type(value) is list:
        return value
    return [] if value is None else [value]


# The FHIR id datatype, matched whole (fullmatch: "$" would let a trailing newline through).
ID_RE: Final = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# Characters below U+0020 other than tab, CR and LF: FHIR strings should not hold them, XML
# cannot carry them (so the resource could not be served as XML) and PostgreSQL refuses NUL.
_CONTROL: Final = r"\x00-\x08\x0b\x0c\x0e-\x1f"
CONTROL_CHARS: Final = re.compile(f"[{_CONTROL}]")
# The same, and the other code points XML 1.0 has no character for: surrogates (JSON's parser
# refuses a lone one already) and the noncharacters U+FFFE and U+FFFF.
NOT_IN_XML: Final = re.compile(f"[{_CONTROL}\\ud800-\\udfff\\ufffe\\uffff]")


def check_id(value: str, expression: str | None = None) -> None:
    """``value`` is a FHIR id, else BadRequest naming where it came from."""
    if not ID_RE.fullmatch(value):
        where = f"{expression} " if expression else ""
        raise BadRequest(f"{where}'{value[:70]}' is not a valid FHIR id (1-64 of A-Z a-z "
                         "0-9 - .)", expression=expression)


# The widest UTC offset (microseconds): a zoneless time is somewhere within it of UTC.
_TZ_SLACK: Final = 14 * 3_600_000_000


def _instant_range(value: Any) -> tuple[int, int, bool] | None:
    """The earliest and latest instant (UTC microseconds) a partial date/dateTime can mean,
    and if it had a zone; None for what is none (``models.validate`` reports it)."""
    if type(value) is not str:
        return None
    try:
        return parse_zoned(value)
    except ValueError:
        return None


def _definitely_before(a: Any, b: Any) -> bool:
    """True only when every instant ``a`` may denote is earlier than every instant ``b`` may.

    FHIRPath compares dates of different precision as "unknown" rather than false; the ranges
    give the same answer without false alarms, and a time with a zone compared with one without
    allows for any offset.
    """
    ra, rb = _instant_range(a), _instant_range(b)
    if ra is None or rb is None:
        return False
    a_high, b_low = ra[1], rb[0]
    if ra[2] != rb[2]:
        if not ra[2]:
            a_high += _TZ_SLACK
        else:
            b_low -= _TZ_SLACK
    return a_high < b_low


_REF_TYPE: Final = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def _reference_type(ref: Any, scope: _Scope) -> str | None:
    """The resource type a Reference points at, when the reference itself says so."""
    if not isinstance(ref, dict):
        return None
    target = ref.get("reference")
    if isinstance(target, str):
        if target.startswith("#"):
            return scope.contained_types.get(target[1:])
        m = _REF_TYPE.search(target)
        if m is not None:
            return m.group(1)
    rtype = ref.get("type")
    if isinstance(rtype, str):
        return rtype.rsplit("/", 1)[-1]
    return None


def _number(value: Any) -> float | None:
    return float(value) if type(value) in _NUMBERS else None


# --- datatype invariants ---------------------------------------------------------------------

def _ref_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    ref = node.get("reference")
    if type(ref) is str and CONDITIONAL_REF.match(ref):
        # Stored as it came it names nothing: the resource would fall outside every
        # compartment (its person's access rules, searches by patient).
        out.add(f"{path}.reference", f"'{ref[:80]}' is a conditional reference: it is "
                                     "resolved in a transaction Bundle only (where it must "
                                     "match one resource); elsewhere name the resource, "
                                     "Type/id")
    if type(ref) is str and ref[:1] == "#":
        _local_ref(ref, scope)
        if ref != "#" and ref[1:] not in scope.contained_types:
            out.add(f"{path}.reference", f"ref-1: SHALL have a contained resource if a local "
                                         f"reference is provided (no contained resource has id "
                                         f"'{ref[1:]}')")


# FHIR's conditional reference, ``Type?criteria`` (resolved in transactions: sip_hub.bundles).
CONDITIONAL_REF: Final = re.compile(r"[A-Z][A-Za-z]{1,63}\?.", re.S)


def _per_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if "start" in node and "end" in node and _definitely_before(node["end"], node["start"]):
        out.add(path, f"per-1: If present, start SHALL have a lower value than end "
                      f"(start {node['start']}, end {node['end']})")


def _ext_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    types = {k.lstrip("_") for k in node if k.startswith(("value", "_value"))}
    if ("extension" in node) == bool(types):
        out.add(path, "ext-1: Must have either extensions or value[x], not both")
    if len(types) > 1:  # (``valueString`` with ``_valueCode``: the model sees one of each)
        out.add(path, "value[x] takes one type; this extension gives "
                      + ", ".join(sorted(types)))


def _cpt_2(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if _has(node, "value") and not _has(node, "system"):
        out.add(path, "cpt-2: A system is required if a value is provided.")


def _qty_3(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if _has(node, "code") and not _has(node, "system"):
        out.add(path, "qty-3: If a code for the unit is present, the system SHALL also be present")


_UCUM: Final = "http://unitsofmeasure.org"


def _age_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    value = _number(node.get("value"))
    if ((_has(node, "value") and not _has(node, "code"))
            or ("system" in node and node["system"] != _UCUM)
            or (value is not None and value <= 0)):
        out.add(path, "age-1: There SHALL be a code if there is a value and it SHALL be an "
                      "expression of time.  If system is present, it SHALL be UCUM.  If value is "
                      "present, it SHALL be positive.")


def _cnt_3(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    value = node.get("value")
    if ((_has(node, "value") and not _has(node, "code"))
            or ("system" in node and node["system"] != _UCUM)
            or ("code" in node and node["code"] != "1")
            or type(value) in _FRACTIONAL and value != int(value)):
        out.add(path, 'cnt-3: There SHALL be a code with a value of "1" if there is a value. If '
                      "system is present, it SHALL be UCUM.  If present, the value SHALL be a "
                      "whole number.")


def _dis_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if (_has(node, "value") and not _has(node, "code")) or ("system" in node and node["system"] != _UCUM):
        out.add(path, "dis-1: There SHALL be a code if there is a value and it SHALL be an "
                      "expression of length.  If system is present, it SHALL be UCUM.")


def _drt_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if _has(node, "code") and (node.get("system") != _UCUM or not _has(node, "value")):
        out.add(path, "drt-1: There SHALL be a code if there is a value and it SHALL be an "
                      "expression of time.  If system is present, it SHALL be UCUM.")


def _att_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if _has(node, "data") and not _has(node, "contentType"):
        out.add(path, "att-1: If the Attachment has data, it SHALL have a contentType")


def _rng_2(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    low, high = node.get("low"), node.get("high")
    if not (isinstance(low, dict) and isinstance(high, dict)):
        return
    lv, hv = _number(low.get("value")), _number(high.get("value"))
    # Quantities in different units are not comparable without UCUM: FHIRPath gives empty.
    same_unit = (low.get("system"), low.get("code"), low.get("unit")) == (
        high.get("system"), high.get("code"), high.get("unit"))
    if lv is not None and hv is not None and same_unit and lv > hv:
        out.add(path, "rng-2: If present, low SHALL have a lower value than high")


def _rat_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    num, den = "numerator" in node, "denominator" in node
    if num != den or not (num or "extension" in node):
        out.add(path, "rat-1: Numerator and denominator SHALL both be present, or both are "
                      "absent. If both are absent, there SHALL be some extension present")


def _timing_repeat(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    def fail(key: str, text: str) -> None:
        out.add(path, f"{key}: {text}")

    if _has(node, "duration") and not _has(node, "durationUnit"):
        fail("tim-1", "if there's a duration, there needs to be duration units")
    if _has(node, "period") and not _has(node, "periodUnit"):
        fail("tim-2", "if there's a period, there needs to be period units")
    duration, period = _number(node.get("duration")), _number(node.get("period"))
    if duration is not None and duration < 0:
        fail("tim-4", "duration SHALL be a non-negative value")
    if period is not None and period < 0:
        fail("tim-5", "period SHALL be a non-negative value")
    if _has(node, "periodMax") and not _has(node, "period"):
        fail("tim-6", "If there's a periodMax, there must be a period")
    if _has(node, "durationMax") and not _has(node, "duration"):
        fail("tim-7", "If there's a durationMax, there must be a duration")
    if _has(node, "countMax") and not _has(node, "count"):
        fail("tim-8", "If there's a countMax, there must be a count")
    when = _as_list(node.get("when"))
    if _has(node, "offset") and (not _has(node, "when")
                                 or any(w in ("C", "CM", "CD", "CV") for w in when)):
        fail("tim-9", "If there's an offset, there must be a when (and not C, CM, CD, CV)")
    if _has(node, "timeOfDay") and _has(node, "when"):
        fail("tim-10", "If there's a timeOfDay, there cannot be a when, or vice versa")


# --- DomainResource --------------------------------------------------------------------------

def _dom_2_to_5(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    contained = node.get("contained")
    if type(contained) is not list:
        return
    for i, res in enumerate(contained):
        if not isinstance(res, dict):
            continue
        cpath = f"{path}.contained[{i}]"
        if "contained" in res:
            out.add(cpath, "dom-2: If the resource is contained in another resource, it SHALL NOT "
                           "contain nested Resources")
        meta = res.get("meta")
        if isinstance(meta, dict):
            if _has(meta, "versionId") or _has(meta, "lastUpdated"):
                out.add(cpath, "dom-4: If a resource is contained in another resource, it SHALL "
                               "NOT have a meta.versionId or a meta.lastUpdated")
            if "security" in meta:
                out.add(cpath, "dom-5: If a resource is contained in another resource, it SHALL "
                               "NOT have a security label")
        # Referrers anywhere in the container count, so dom-3 waits until the root is walked.
        if node is scope.root:
            cid = res.get("id")
            if not ((isinstance(cid, str) and f"#{cid}" in scope.local_refs)
                    or i in scope.container_refs):
                out.add(cpath, "dom-3: If the resource is contained in another resource, it SHALL "
                               "be referred to from elsewhere in the resource or SHALL refer to "
                               "the containing resource")


# --- resources -------------------------------------------------------------------------------

def _cpl_3(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if "detail" in node and "reference" in node:
        out.add(path, "cpl-3: Provide a reference or detail, not both")


def _ctm_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if "onBehalfOf" not in node:
        return
    member = _reference_type(node.get("member"), scope)
    if member is not None and member != "Practitioner":
        out.add(path, f"ctm-1: CareTeam.participant.onBehalfOf can only be populated when "
                      f"CareTeam.participant.member is a Practitioner (member is a {member})")


def _ppc_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if "policy" not in node and not _has(node, "policyRule"):
        out.add(path, "ppc-1: Either a Policy or PolicyRule")


_CONSENT_SCOPE: Final = "http://terminology.hl7.org/CodeSystem/consentscope"
_PPC_PATIENT: Final = (("ppc-2", "patient-privacy", "privacy"), ("ppc-3", "research", "research"),
                       ("ppc-4", "adr", "adr"), ("ppc-5", "treatment", "treatment"))


def _ppc_2_to_5(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if "patient" in node:
        return
    cc = node.get("scope")
    codes = {c.get("code") for c in _as_list(cc.get("coding") if isinstance(cc, dict) else None)
             if isinstance(c, dict) and c.get("system") == _CONSENT_SCOPE
             and type(c.get("code")) is str}
    for key, code, label in _PPC_PATIENT:
        if code in codes:
            out.add(path, f"{key}: IF Scope={label}, there must be a patient")


def _pat_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if not any(k in node for k in ("name", "telecom", "address", "organization")):
        out.add(path, "pat-1: SHALL at least contain a contact's details or a reference to an "
                      "organization")


def _org(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if not (_has(node, "identifier") or _has(node, "name")):
        out.add(path, "org-1: The organization SHALL at least have a name or an identifier, and "
                      "possibly more than one")
    for key, name, text in (("org-2", "address", "An address of an organization can never be of "
                                                 "use 'home'"),
                            ("org-3", "telecom", "The telecom of an organization can never be of "
                                                 "use 'home'")):
        for i, item in enumerate(_as_list(node.get(name))):
            if isinstance(item, dict) and item.get("use") == "home":
                out.add(f"{path}.{name}[{i}]", f"{key}: {text}")


def _gol_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if _has_choice(node, "detail") and "measure" not in node:
        out.add(path, "gol-1: Goal.target.measure is required if Goal.target.detail is populated")


def _appointment(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    start, end = _has(node, "start"), _has(node, "end")
    status = node.get("status")
    if start != end:
        out.add(path, "app-2: Either start and end are specified, or neither")
    if not (start and end) and status not in ("proposed", "cancelled", "waitlist"):
        out.add(path, "app-3: Only proposed or cancelled appointments can be missing start/end "
                      "dates")
    if "cancelationReason" in node and status not in ("no-show", "cancelled"):
        out.add(path, "app-4: Cancelation reason is only used for appointments that have been "
                      "cancelled, or no-show")


def _app_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if "type" not in node and "actor" not in node:
        out.add(path, "app-1: Either the type or actor on the participant SHALL be specified")


def _task_inv_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if ("lastModified" in node and "authoredOn" in node
            and _definitely_before(node["lastModified"], node["authoredOn"])):
        out.add(path, "inv-1: Last modified date must be greater than or equal to authored-on "
                      "date.")


def _qrs_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if "answer" in node and "item" in node:
        out.add(path, "qrs-1: Nested item can't be beneath both item and answer")


def _sev_1(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if _has(node, "name") and _has(node, "query"):
        out.add(path, "sev-1: Either a name or a query (NOT both)")


def _bundle(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    btype = node.get("type")
    entries = [e if isinstance(e, dict) else {} for e in _as_list(node.get("entry"))]
    if _has(node, "total") and btype not in ("searchset", "history"):
        out.add(path, "bdl-1: total only when a search or history")
    if btype != "searchset" and any("search" in e for e in entries):
        out.add(path, "bdl-2: entry.search only when a search")
    needs_request = btype in ("batch", "transaction", "history")
    if any(("request" in e) != needs_request for e in entries):
        out.add(path, "bdl-3: entry.request mandatory for batch/transaction/history, otherwise "
                      "prohibited")
    needs_response = btype in ("batch-response", "transaction-response", "history")
    if any(("response" in e) != needs_response for e in entries):
        out.add(path, "bdl-4: entry.response mandatory for batch-response/transaction-response/"
                      "history, otherwise prohibited")
    if btype != "history":
        seen: set[tuple[Any, Any]] = set()
        for e in entries:
            full_url = e.get("fullUrl")
            if type(full_url) is not str:
                continue
            res, meta = e.get("resource"), None
            if isinstance(res, dict):
                meta = res.get("meta")
            version = meta.get("versionId") if isinstance(meta, dict) else None
            if type(version) is not str:
                version = None
            key = (full_url, version)
            if key in seen:
                out.add(path, "bdl-7: FullUrl must be unique in a bundle, or else entries with the "
                              "same fullUrl must have different meta.versionId (except in history "
                              f"bundles) ({full_url})")
                break
            seen.add(key)
    first = entries[0].get("resource") if entries else None
    first_type = first.get("resourceType") if isinstance(first, dict) else None
    if btype == "document":
        ident = node.get("identifier")
        if not (isinstance(ident, dict) and _has(ident, "system") and _has(ident, "value")):
            out.add(path, "bdl-9: A document must have an identifier with a system and a value")
        if not isinstance(node.get("timestamp"), str):
            out.add(path, "bdl-10: A document must have a date")
        if first_type != "Composition":
            out.add(path, "bdl-11: A document must have a Composition as the first resource")
    elif btype == "message" and first_type != "MessageHeader":
        out.add(path, "bdl-12: A message must have a MessageHeader as the first resource")


def _bundle_entry(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    if not ("resource" in node or "request" in node or "response" in node):
        out.add(path, "bdl-5: must be a resource unless there's a request or response")
    full_url = node.get("fullUrl")
    if isinstance(full_url, str) and "/_history/" in full_url:
        out.add(f"{path}.fullUrl", "bdl-8: fullUrl cannot be a version specific reference")


_QUANTITY: Final[tuple[Invariant, ...]] = (_qty_3,)


def _txt_div_alone(node: Json, path: str, scope: _Scope, out: IssueCollector) -> None:
    """Refuse a ``_div``: xhtml takes no extensions (xhtml.extension 0..0), and FHIR XML has
    no place for an id of the div apart from the XHTML's own id attribute, so a ``_div``
    stored from JSON was silently lost whenever the resource was read as XML."""
    if "_div" in node:
        out.add(f"{path}.div", "Narrative.div (xhtml) takes no id or extensions: JSON has no "
                               "_div (FHIR XML has no place for one)", "structure")


_INVARIANTS: Final[dict[str, tuple[Invariant, ...]]] = {
    # datatypes
    "Narrative": (_txt_div_alone,),
    "Reference": (_ref_1,),
    "Period": (_per_1,),
    "Extension": (_ext_1,),
    "ContactPoint": (_cpt_2,),
    "Quantity": _QUANTITY,
    "Age": (_qty_3, _age_1),
    "Count": (_qty_3, _cnt_3),
    "Distance": (_qty_3, _dis_1),
    "Duration": (_qty_3, _drt_1),
    "Attachment": (_att_1,),
    "Range": (_rng_2,),
    "Ratio": (_rat_1,),
    "Timing.repeat": (_timing_repeat,),
    # resources
    "CarePlan.activity": (_cpl_3,),
    "CareTeam.participant": (_ctm_1,),
    "Consent": (_ppc_1, _ppc_2_to_5),
    "Patient.contact": (_pat_1,),
    "Organization": (_org,),
    "Goal.target": (_gol_1,),
    "Appointment": (_appointment,),
    "Appointment.participant": (_app_1,),
    "Task": (_task_inv_1,),
    "QuestionnaireResponse.item": (_qrs_1,),
    "AuditEvent.entity": (_sev_1,),
    "Bundle": (_bundle,),
    "Bundle.entry": (_bundle_entry,),
}
