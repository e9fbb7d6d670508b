"""FHIR ``Parameters``: the input and output of the hub's operations.

Each operation declares its input parameters as data (``Param``); ``read`` checks a body
against them strictly, like searches: an unknown parameter, a value of the wrong type, a
missing required or a repeated single parameter is a 400 naming the parameter by FHIRPath.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import BadRequest, Issue, IssueCollector
from .fhir import models, sip, validation
from .fhir.dates import from_us, parse_range

Json = dict[str, Any]

# A dateTime down to the minute with a zone: the times of meetings and approvals.
_INSTANT_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})$")


@dataclass(frozen=True, slots=True)
class Param:
    """One declared input parameter: its name, accepted ``value[x]`` keys (``resource`` for a
    resource, empty for a parameter made of ``parts``), and cardinality."""

    name: str
    values: tuple[str, ...] = ()
    required: bool = False
    repeats: bool = False
    parts: tuple["Param", ...] = ()


@dataclass(slots=True)
class Params:
    """Parameters checked against their declaration, read by name."""

    operation: str
    path: str
    by_name: dict[str, list[Json]] = field(default_factory=dict)

    def where(self, name: str) -> str:
        return f"{self.path}.where(name='{name}')"

    def _one(self, name: str) -> Json | None:
        found = self.by_name.get(name, [])
        return found[0] if found else None

    def has(self, name: str) -> bool:
        return bool(self.by_name.get(name))

    def value(self, name: str) -> tuple[str, Any] | None:
        """(value[x] key, value) of a single parameter, or None when absent."""
        p = self._one(name)
        if p is None:
            return None
        key = next(k for k in p if k.startswith("value") or k == "resource")
        return key, p[key]

    def code(self, name: str, system: str | None = None) -> str | None:
        """A code, from valueCode or from a valueCoding of ``system``, the code system the
        parameter is bound to: a Coding of another system (or none) is another code, though
        it spells the same ('interpreter' of http://example.org/support was taken as the
        hub's own)."""
        v = self.value(name)
        if v is None:
            return None
        key, value = v
        if key == "valueCoding":
            if system is None or value.get("system") != system:
                raise self.invalid(name, f"'{name}' is a code of {system}, not of "
                                         f"{value.get('system') or 'no code system'}: give "
                                         "it as a valueCode or a valueCoding of that system"
                                   if system else f"'{name}' takes a valueCode")
            return value.get("code")
        return value if isinstance(value, str) else None

    def string(self, name: str) -> str | None:
        v = self.value(name)
        text = v[1] if v is not None and isinstance(v[1], str) else None
        if text is not None and not text.strip():
            raise self.invalid(name, f"'{name}' is empty")
        return text.strip() if text is not None else None

    def reference(self, name: str) -> Json | None:
        v = self.value(name)
        return v[1] if v is not None else None

    def references(self, name: str) -> list[Json]:
        return [p["valueReference"] for p in self.by_name.get(name, [])]

    def concept(self, name: str) -> Json | None:
        """A CodeableConcept from valueCodeableConcept, valueCoding or valueString (as text)."""
        v = self.value(name)
        if v is None:
            return None
        key, value = v
        if key == "valueCoding":
            return {"coding": [value]}
        if key == "valueString":
            return {"text": value}
        return value if isinstance(value, dict) else None

    def resource(self, name: str) -> Json | None:
        v = self.value(name)
        return v[1] if v is not None else None

    def instant(self, name: str) -> tuple[str, datetime] | None:
        """A dateTime with time of day and zone, as (text, UTC datetime)."""
        v = self.value(name)
        if v is None:
            return None
        text = v[1]
        if not isinstance(text, str) or not _INSTANT_RE.match(text):
            raise self.invalid(name, f"'{name}' must be a dateTime with time of day and zone, "
                                     f"e.g. 2026-12-01T13:00:00+01:00, not '{text}'")
        return text, from_us(parse_range(text)[0])

    def when(self, name: str) -> tuple[str, datetime] | None:
        """A date or dateTime, as (text, the UTC start of what it names): a date is a Swedish
        day (``sip.swedish_range``), begun at Swedish midnight, so that a date of today is
        today from the first minute of the day in Sweden."""
        v = self.value(name)
        if v is None:
            return None
        try:
            return v[1], from_us(sip.swedish_range(v[1])[0])
        except (ValueError, AttributeError):
            raise self.invalid(name, f"'{name}' is not a FHIR dateTime: '{v[1]}'") from None

    def parts(self, name: str) -> list["Params"]:
        return [Params(self.operation, f"{self.where(name)}.part",
                       _group(p.get("part", [])))
                for p in self.by_name.get(name, [])]

    def invalid(self, name: str, text: str) -> BadRequest:
        return BadRequest(f"{self.operation}: {text}", expression=self.where(name))

    def require(self, *names: str) -> None:
        missing = [n for n in names if not self.has(n)]
        if missing:
            raise BadRequest(f"{self.operation}: missing {', '.join(missing)}", issues=[
                Issue("required", f"{self.operation} needs '{n}' here", (self.where(n),))
                for n in missing])

    def forbid(self, names: tuple[str, ...], why: str) -> None:
        present = [n for n in names if self.has(n)]
        if present:
            raise self.invalid(present[0], f"'{present[0]}' {why}")


def _group(parameters: list[Json]) -> dict[str, list[Json]]:
    out: dict[str, list[Json]] = {}
    for p in parameters:
        out.setdefault(p.get("name", ""), []).append(p)
    return out


def _check(params: list[Json], declared: tuple[Param, ...], path: str, operation: str,
           issues: list[Issue]) -> None:
    known = {d.name: d for d in declared}
    grouped = _group(params)
    for name, found in grouped.items():
        where = f"{path}.where(name='{name}')"
        spec = known.get(name)
        if spec is None:
            issues.append(Issue("not-supported", f"{operation} has no parameter '{name}'; it "
                                                 f"takes {', '.join(known)}", (where,)))
            continue
        if len(found) > 1 and not spec.repeats:
            issues.append(Issue("structure", f"'{name}' may be given once", (where,)))
        for p in found:
            given = [k for k in p if k.startswith("value") or k == "resource"]
            if spec.parts:
                if given or not p.get("part"):
                    issues.append(Issue("structure", f"'{name}' is made of parts (part), not a "
                                                     "value", (where,)))
                else:
                    _check(p["part"], spec.parts, f"{where}.part", operation, issues)
            elif "part" in p:  # inv-1: a value or a resource, or parts; not both (ignored)
                issues.append(Issue("structure", f"'{name}' takes {' or '.join(spec.values)}, "
                                                 "not parts (part)", (where,)))
            elif len(given) != 1 or given[0] not in spec.values:
                kinds = " or ".join(spec.values)
                issues.append(Issue("structure", f"'{name}' takes {kinds}"
                                    + (f", not {', '.join(given)}" if given else ""), (where,)))
            elif given == ["resource"] and not isinstance(p["resource"], dict):
                issues.append(Issue("structure", f"'{name}' must hold a resource", (where,)))
    for spec in declared:
        if spec.required and spec.name not in grouped:
            issues.append(Issue("required", f"{operation} needs '{spec.name}'",
                                (f"{path}.where(name='{spec.name}')",)))


def read(body: Any, operation: str, declared: tuple[Param, ...]) -> Params:
    """The operation's input: a Parameters resource checked against ``declared``."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise BadRequest(f"{operation} takes a Parameters resource")
    models.validate(body)
    structure = IssueCollector()  # what fhir.resources lets through (a null parameter list)
    validation.check(body, structure)
    structure.raise_if_any(f"{operation}: the Parameters resource is not valid FHIR")
    issues: list[Issue] = []
    parameters = body.get("parameter", [])
    _check(parameters, declared, "Parameters.parameter", operation, issues)
    if issues:
        raise BadRequest(f"{operation}: {issues[0].diagnostics}", issues=issues)
    return Params(operation, "Parameters.parameter", _group(parameters))


# -- output ----------------------------------------------------------------------------------

def value(name: str, key: str, val: Any) -> Json:
    return {"name": name, key: val}


def resource(name: str, res: Json) -> Json:
    return {"name": name, "resource": res}


def out(*parameters: Json | None) -> Json:
    """A Parameters resource of the given (non-None) parameters."""
    return {"resourceType": "Parameters", "parameter": [p for p in parameters if p is not None]}
