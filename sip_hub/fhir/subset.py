"""The parts of a resource a client asks for: ``_summary`` (true, text, data) and ``_elements``
(search.html#summary and #elements), on searches and reads.

What each keeps of a resource, by the R4 definitions (``definitions/summary-elements.json``,
made by ``scripts/gen_required_bindings.py`` from the official 4.0.1 package):

* ``_summary=true``: the elements marked as summary, the mandatory ones and the modifiers
  (an element that changes what the rest means is never left out of what a client reads);
* ``_summary=text``: ``text``, ``id``, ``meta`` and the mandatory elements;
* ``_summary=data``: everything but ``text``;
* ``_elements=a,b``: those elements (top-level, by name; a choice element by its name
  without ``[x]``), with ``id``, ``meta``, the mandatory elements and the modifiers.

A primitive's extension sibling (``_birthDate``) goes with its element. Every subset is
tagged ``SUBSETTED`` (``meta.tag``), so that it is not taken for the whole resource: written
back as an update, it would drop what was left out, so a write of a resource so tagged is
refused (``refuse_subsetted``, in the one write pipeline). The rest of a resource is as stored:
decimals as written, elements in their order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

from ..errors import BadRequest, IssueCollector
from .validation import element_names

Json = dict[str, Any]

SUBSETTED: Final[Json] = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                          "code": "SUBSETTED", "display": "subsetted"}
SUMMARY_MODES: Final = ("true", "text", "data")
_ALWAYS: Final = frozenset({"resourceType", "id", "meta"})
_DEFINITIONS = Path(__file__).resolve().parent / "definitions"


@dataclass(frozen=True, slots=True)
class Subset:
    """What to keep: a ``_summary`` mode, or the ``_elements`` asked for (by name)."""

    summary: str | None = None
    elements: frozenset[str] | None = None


@lru_cache(maxsize=1)
def _definitions() -> dict[str, Json]:
    doc = json.loads((_DEFINITIONS / "summary-elements.json").read_text(encoding="utf-8"))
    out: dict[str, Json] = doc["resources"]
    return out


def _names(rtype: str, kind: str) -> frozenset[str]:
    """The ``kind`` elements of ``rtype`` (summary, mandatory, modifier) by the name they are
    asked for: a choice element without its ``[x]``."""
    return frozenset(name.removesuffix("[x]")
                     for name in (_definitions().get(rtype) or {}).get(kind, ()))


@lru_cache(maxsize=None)
def _kept(rtype: str, summary: str | None, elements: frozenset[str] | None) -> frozenset[str]:
    if summary == "true":
        names = _names(rtype, "summary") | _names(rtype, "mandatory") | _names(rtype, "modifier")
    elif summary == "text":
        names = _names(rtype, "mandatory") | {"text"}
    else:
        names = (elements or frozenset()) | _names(rtype, "mandatory") | \
            _names(rtype, "modifier")
    return names | _ALWAYS


@lru_cache(maxsize=None)
def _all_names(rtype: str) -> frozenset[str]:
    return frozenset(name.removesuffix("[x]") for name in element_names(rtype))


@lru_cache(maxsize=None)
def _choices(rtype: str) -> frozenset[str]:
    return frozenset(name[:-3] for name in element_names(rtype) if name.endswith("[x]"))


def _element_of(rtype: str, key: str) -> str:
    """The element a JSON key holds: ``_status`` -> status, ``scheduledPeriod`` ->
    scheduled (a choice element)."""
    name = key[1:] if key[:1] == "_" else key
    if name in _all_names(rtype):
        return name
    for base in _choices(rtype):
        if name.startswith(base) and name[len(base):len(base) + 1].isupper():
            return base
    return name


def elements_param(rtype: str, raw: str, key: str = "_elements") -> frozenset[str]:
    """The element names of an ``_elements`` value (``title,status`` or
    ``CarePlan.title``), each a top-level element of ``rtype``; else a 400 naming it."""
    names: set[str] = set()
    known = _all_names(rtype)
    for part in raw.split(","):
        name = part.strip()
        if name.startswith(f"{rtype}."):
            name = name[len(rtype) + 1:]
        if not name:
            continue
        if "." in name or name not in known:
            raise BadRequest(f"_elements: '{part.strip()[:64]}' is not an element of {rtype} "
                             "(top-level elements, by name: a choice element without [x])",
                             expression=key)
        names.add(name)
    if not names:
        raise BadRequest("_elements names no element", expression=key)
    return frozenset(names)


def is_subsetted(tag: Any) -> bool:
    """Whether the Coding ``tag`` is ``SUBSETTED``."""
    return isinstance(tag, dict) and tag.get("code") == SUBSETTED["code"] \
        and tag.get("system") == SUBSETTED["system"]


def refuse_subsetted(res: Json, tags: list[Any], collector: IssueCollector) -> None:
    """A written resource whose ``meta.tag`` (``tags``) holds ``SUBSETTED`` is part of one
    (search.html#summary: the tag is there "to ensure that the incomplete resource is not
    accidentally used to overwrite a complete resource"): stored, it would replace the whole
    with the part and keep the tag for ever. A client that read with _summary or _elements
    and writes back what it got (as client libraries save what they read) is told to read
    the whole resource instead."""
    rtype = res.get("resourceType")
    for i, tag in enumerate(tags):
        if is_subsetted(tag):
            collector.add(f"{rtype}.meta.tag[{i}]",
                          f"The {rtype} is tagged SUBSETTED: it is the part of a resource that "
                          "a read with _summary or _elements returns, and written it would "
                          "replace the whole resource with that part. Read the whole resource "
                          "(without _summary and _elements), change that and write it",
                          "business-rule")


def apply(doc: Json, subset: Subset) -> Json:
    """The part of ``doc`` (a resource, left as it is) that ``subset`` keeps, tagged."""
    rtype = doc.get("resourceType")
    if not isinstance(rtype, str):
        return doc
    if subset.summary == "data":
        out = {k: v for k, v in doc.items() if k not in ("text", "_text")}
    else:
        kept = _kept(rtype, subset.summary, subset.elements)
        out = {k: v for k, v in doc.items() if _element_of(rtype, k) in kept}
    meta = dict(out.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(is_subsetted(t) for t in tags):
        tags.append(dict(SUBSETTED))
    meta["tag"] = tags
    out["meta"] = meta
    # resourceType, id and meta first, as FHIR JSON writes them (a meta added goes there)
    head = {k: out[k] for k in ("resourceType", "id", "meta") if k in out}
    return {**head, **{k: v for k, v in out.items() if k not in head}}
